"""Logical axis names on parameters: the vocabulary in which tensor parallelism is written.

Layers name each dimension of a parameter by what it means (`"embed"`, `"heads"`, `"mlp"`, ...); the training
core maps the names onto device-mesh axes with Flax's logical axis rules (`jaxarch.train.sharding`), so a
`model` mesh axis splits attention heads, MLP hidden units and vocabularies without any change to model code
(the scheme of t5x and MaxText; Megatron-LM's column- and row-parallel layers fall out of it).

The names are attached (as `flax.linen.LogicallyPartitioned` boxes) only while logical axis rules are active
(`with nn.logical_axis_rules(...)`). Everywhere else `init` returns plain arrays, so code that reads parameters
directly (`params["query"]["kernel"].shape`) is unaffected by the annotations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn

from jaxarch.checks import fail

EMBED = "embed"  # the model width: the residual stream's features
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (fewer than HEADS with grouped-query attention)
HEAD_DIM = "head_dim"  # features within one head
MLP = "mlp"  # hidden units of the Transformer MLP
VOCAB = "vocab"  # token ids of an embedding table or an output layer
LAYERS = "layers"  # the stacked layer axis added by `nn.scan` over blocks

AXIS_NAMES = (EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB, LAYERS)


def with_axes(init: Callable, names: Sequence[str | None]) -> Callable:
    """Wraps the initialiser `init` so that, while logical axis rules are active, its parameter carries the
    logical axis `names` (one per dimension, None for a dimension with no name)."""
    names = tuple(names)
    if any(name is not None and name not in AXIS_NAMES for name in names):
        fail("with_axes", "names", repr(names), f"entries from {list(AXIS_NAMES)} or None")
    boxed = nn.with_logical_partitioning(init, names)

    def initializer(*args, **kwargs):
        return boxed(*args, **kwargs) if nn.get_logical_axis_rules() else init(*args, **kwargs)

    return initializer
