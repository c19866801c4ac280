"""A 1-D CNN on MNIST-1D: locality and weight sharing at work.

Command: jaxarch run mnist1d-cnn
Wall time: under 60 s of training on a quiet 2-core CPU (47 s measured; up to 287 s on a shared one).
Expected: test accuracy 98.3 +- 0.5% mean +- std over n=5 seeds (`jaxarch sweep mnist1d-cnn`, docs/results.md);
target >= 98% (published CNN: 94%, Greydanus 2020).
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.model.name = "cnn"
    config.model.kernel_size = (5,)
    config.model.features = (32, 64, 128)
    config.model.convs_per_block = 1
    config.model.dropout_rate = 0.2
    # Shifting signals by up to 3 samples: the published CNN overfits 4000 examples (train loss -> 0).
    config.data.shift_augment = 3
    config.optim.learning_rate = 3e-3
    config.optim.weight_decay = 1e-4
    config.train.steps = 4000
    return config
