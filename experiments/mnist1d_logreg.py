"""Logistic regression on MNIST-1D: the linear baseline.

Command: jaxarch run mnist1d-logreg
Wall time: about 5 s of training on a 2-core CPU.
Expected: test accuracy 33.0 +- 0.7% mean +- std over n=5 seeds (`jaxarch sweep mnist1d-logreg`,
docs/results.md; published: 32%, Greydanus 2020).
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.model.name = "logreg"
    config.optim.learning_rate = 1e-2
    config.optim.weight_decay = 0.0
    config.train.steps = 2000
    return config
