"""A 2-D CNN on scikit-learn's 8x8 digits, trained on the first half and tested on the second.

Command: jaxarch run digits-cnn
Wall time: about 20 s of training on a 2-core CPU.
Expected: test accuracy 98.5 +- 0.3% mean +- std over n=5 seeds (`jaxarch sweep digits-cnn`, docs/results.md);
target >= 98% (scikit-learn's SVC example: 97%).
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.data.name = "digits"
    config.data.shift_augment = 1  # One-pixel shifts: 898 training images are few.
    config.model.name = "cnn"
    config.model.kernel_size = (3, 3)
    config.model.features = (32, 64)
    config.model.dropout_rate = 0.2
    config.optim.learning_rate = 3e-3
    config.train.steps = 2000
    config.train.eval_batch_size = 300
    return config
