"""A plain ViT (2x2 patches, learned positions, CLS token) on the 8x8 digits, second-half test split.

Command: jaxarch run digits-vit-plain
Wall time: MEASURE.
Expected: MEASURE.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.vit({"name": "digits"})
    config.model.patch_size = 2
    config.train.steps = 2000
    config.train.eval_batch_size = 300
    return config
