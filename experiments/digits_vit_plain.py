"""A plain ViT (2x2 patches, learned positions, CLS token) on the 8x8 digits, second-half test split.

Command: jaxarch run digits-vit-plain
Wall time: 24.4 s of training (600 steps; quiet 2-core AMD EPYC), 47.5 s on a 2-core Intel Xeon.
Expected: test accuracy 85.7 +- 1.2% mean +- std over n=5 seeds on an Intel Xeon (`jaxarch sweep digits-vit-plain`,
docs/results.md; one seed 88.0% on the AMD EPYC; 152,202 params; train loss -> 2e-4: it overfits 898 images).
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.vit({"name": "digits"})
    config.model.patch_size = 2
    config.train.steps = 600
    config.train.eval_batch_size = 300
    return config
