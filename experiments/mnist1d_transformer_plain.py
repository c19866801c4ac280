"""A plain patch-embedding Transformer (1-D ViT, patches of 4 samples) on MNIST-1D, without the tricks.

Command: jaxarch run mnist1d-transformer-plain
Wall time: MEASURE.
Expected: MEASURE.
"""

from jaxarch.experiments import _attention


def get_config():
    return _attention.vit({"name": "mnist1d"})
