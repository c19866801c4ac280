"""Shared bases for the attention experiments: a causal language model, a sequence encoder and a ViT.

Transformers carry no locality or recurrence prior, so the classifiers lean on the usual substitutes for small
data: shift augmentation, a convolutional stem (Xiao et al. 2021), dropout and decoupled weight decay.
"""

from jaxarch.experiments._base import base_config


def _attention_defaults():
    config = base_config()
    config.optim.b2 = 0.98  # the Transformer's Adam setting: adapts faster to the large early gradients
    config.optim.weight_decay = 0.01
    return config


def gpt(data: dict):
    """A decoder-only causal model over token ids (vocab supplied by the dataset)."""
    config = _attention_defaults()
    config.data = data
    config.model = {"name": "gpt", "embed_dim": 64, "num_layers": 2, "num_heads": 4, "max_length": 256,
                    "positions": "learned"}
    return config


def sequence_encoder(data: dict):
    """A BERT-style encoder over a float feature sequence with a regression or classification head."""
    config = _attention_defaults()
    config.data = data
    config.model = {"name": "transformer", "embed_dim": 64, "num_layers": 2, "num_heads": 4,
                    "pooling": "mean", "positions": "learned"}
    return config


def vit(data: dict):
    """A plain ViT: raw patches, learned positions, a CLS token; the derived configs add the tricks."""
    config = _attention_defaults()
    config.data = data
    config.model = {"name": "vit", "embed_dim": 64, "num_layers": 3, "num_heads": 4, "patch_size": 4,
                    "pooling": "cls", "positions": "learned"}
    config.optim.learning_rate = 1e-3
    config.train.steps = 600
    return config
