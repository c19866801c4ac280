"""Fully connected baselines: logistic regression and the multilayer perceptron."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxarch.checks import check_floating, check_rank, check_size_as_at_init
from jaxarch.models.common import activation
from jaxarch.models.registry import MODELS


def _check_flat_size(module: str, x: jax.Array, owner: nn.Module) -> None:
    """The flattened example size must be the one the first Dense layer was initialised for."""
    check_size_as_at_init(module, "input size per example", math.prod(x.shape[1:]), x.shape, owner,
                          ("Dense_0", "kernel"))


@MODELS.register("logreg")
class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one Dense layer on the flattened input. x: [batch, ...] -> logits."""

    num_outputs: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """`x: [batch, *features]` floats (flattened) -> logits `[batch, num_outputs]`; `train` changes nothing."""
        del train  # No dropout or normalisation: train and eval behave the same.
        check_rank("LogisticRegression", "input", x, range(2, 6), "[batch, *features]")
        check_floating("LogisticRegression", "input", x)
        _check_flat_size("LogisticRegression", x, self)
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x.reshape(x.shape[0], -1))


@MODELS.register("mlp")
class MLP(nn.Module):
    """Dense layers with a nonlinearity between them. x: [batch, ...] (flattened) -> [batch, num_outputs]."""

    num_outputs: int
    hidden_sizes: tuple[int, ...] = (100, 100)  # The MNIST-1D paper's MLP: two hidden layers of 100.
    activation: str = "relu"
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """`x: [batch, *features]` floats (flattened) -> `[batch, num_outputs]`; `train` turns dropout on (a
        "dropout" rng).
        """
        check_rank("MLP", "input", x, range(2, 6), "[batch, *features]")
        check_floating("MLP", "input", x)
        _check_flat_size("MLP", x, self)
        act = activation("MLP", self.activation)
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            x = act(nn.Dense(width, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x)
