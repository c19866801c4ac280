"""A small ViT on CIFAR-10 with crop-and-flip augmentation, downloaded from the CIFAR page on first use.

Command: jaxarch run cifar10-vit
Wall time: 3000 steps of 128 images (7.7 epochs; 311,242 params). Measured on synthetic files of the real format
and shapes on a shared, loaded 2-core CPU: 0.31-0.36 steps/s while charlm-gpt ran 11-19x slower than its quiet
14.1 steps/s, so an estimated 3.5-6.5 steps/s and 8-14 minutes of training on a quiet one.
Expected: not measured here (this machine cannot download the data). Published anchor: small ViTs trained from
scratch on CIFAR-10 reach about 80% test accuracy after hundreds of GPU epochs (the "tiny ViT" figure quoted by
Wu 2025, arXiv:2501.06220); this CPU budget of a few epochs should land well below that.
"""

from jaxarch.experiments import _attention


def get_config():
    config = _attention.vit({"name": "cifar10", "augment": "crop_flip"})
    config.model.patch_size = 4  # 64 tokens of 4 x 4 x 3 pixels
    config.model.embed_dim = 96
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.mlp_ratio = 2.0
    config.model.pooling = "mean"
    config.model.dropout_rate = 0.1
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 500
    config.train.batch_size = 128
    config.train.steps = 3000
    config.train.eval_every = 1000
    config.train.eval_batch_size = 500
    return config
