"""A ViT on the 8x8 digits with a convolutional stem, one-pixel shift augmentation, dropout and weight decay.

Command: jaxarch run digits-vit
Wall time: MEASURE.
Expected: MEASURE.
"""

from jaxarch.experiments import digits_vit_plain


def get_config():
    config = digits_vit_plain.get_config()
    config.data.shift_augment = 1
    config.model.stem = (32,)
    config.model.pooling = "mean"
    config.model.dropout_rate = 0.1
    config.optim.weight_decay = 0.05
    config.optim.learning_rate = 2e-3
    return config
