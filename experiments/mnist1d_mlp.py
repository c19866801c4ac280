"""A two-layer MLP (100 hidden units each) on MNIST-1D.

Command: jaxarch run mnist1d-mlp
Wall time: about 10 s of training on a 2-core CPU.
Expected: test accuracy 68.5 +- 0.5% mean +- std over n=5 seeds (`jaxarch sweep mnist1d-mlp`,
docs/results.md; published: 68%, Greydanus 2020).
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden_sizes = (100, 100)
    config.model.dropout_rate = 0.2
    config.optim.learning_rate = 3e-3
    config.train.steps = 4000
    return config
