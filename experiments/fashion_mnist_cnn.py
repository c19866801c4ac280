"""A 2-D CNN on Fashion-MNIST (Xiao et al. 2017), downloaded from Zalando Research on first use.

Command: jaxarch run fashion-mnist-cnn
Wall time: 4000 steps of 128 images (about 8.5 epochs; 94,186 params). Measured on synthetic files of the real
format and shapes on a shared, loaded 2-core CPU: 0.92 steps/s while charlm-gpt ran at 0.73 (14.1 when quiet),
so an estimated 17 steps/s and about 4 minutes of training on a quiet one.
Expected: not measured here (this machine cannot download the data). Published anchors: the best classical
classifier in Xiao et al. (2017, Table 3) is an RBF SVC at 89.7% test accuracy; small CNNs of two or three conv
layers report 91-93% in the benchmark list of the Fashion-MNIST repository.
"""

from jaxarch.experiments._base import base_config


def get_config():
    config = base_config()
    config.data = {"name": "fashion_mnist", "augment": "none"}
    config.model.name = "cnn"
    config.model.kernel_size = (3, 3)
    config.model.features = (32, 64, 128)
    config.model.norm = "batch"
    config.model.dropout_rate = 0.3
    config.optim.learning_rate = 2e-3
    config.optim.weight_decay = 5e-4
    config.train.batch_size = 128
    config.train.steps = 4000  # about 8.5 epochs of the 60,000 training images
    config.train.eval_every = 1000
    config.train.eval_batch_size = 1000
    return config
