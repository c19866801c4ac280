"""Small pieces the models share."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "gelu": nn.gelu, "tanh": nn.tanh, "silu": nn.silu, "elu": nn.elu,
}


def activation(module: str, name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called `name`, or a ValueError naming the allowed ones."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"{module}: activation is {name!r}, expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]
