"""The model registry: `MODELS.get(name)` is a Linen module class (or factory) taking `num_outputs`."""

from jaxarch.registry import Registry

MODELS = Registry("model")
