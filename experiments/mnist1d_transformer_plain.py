"""A plain patch-embedding Transformer (1-D ViT, patches of 4 samples, CLS token) on MNIST-1D, no tricks.

Command: jaxarch run mnist1d-transformer-plain
Wall time: 20.2 s of training (600 steps; quiet 2-core CPU).
Expected: test accuracy 83.9 +- 1.1% mean +- std over n=5 seeds (`jaxarch sweep mnist1d-transformer-plain`,
docs/results.md; 151,818 params); mnist1d-transformer adds the tricks (97.8 +- 0.6%).
"""

from jaxarch.experiments import _attention


def get_config():
    return _attention.vit({"name": "mnist1d"})
