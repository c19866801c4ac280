"""A Transformer on MNIST-1D with what the field uses on small data: a convolutional stem, one token per
sample, shift augmentation, dropout and weight decay.

Command: jaxarch run mnist1d-transformer
Wall time: MEASURE.
Expected: MEASURE.
"""

from jaxarch.experiments import mnist1d_transformer_plain


def get_config():
    config = mnist1d_transformer_plain.get_config()
    config.data.shift_augment = 3
    config.model.stem = (32, 64)
    config.model.stem_kernel_size = 5
    config.model.patch_size = 2
    config.model.pooling = "mean"
    config.model.dropout_rate = 0.1
    config.optim.weight_decay = 0.05
    config.optim.learning_rate = 2e-3
    config.train.steps = 4000
    return config
