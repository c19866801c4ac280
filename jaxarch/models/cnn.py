"""Convolutional classifiers for 1-D signals, 2-D images and 3-D volumes: conv blocks, pooling, a global
pooling head. The spatial rank comes from `kernel_size`, so one module serves MNIST-1D and digits."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxarch.checks import check_floating, check_rank, check_size_as_at_init, fail
from jaxarch.layers.conv import Conv
from jaxarch.layers.pooling import avg_pool, global_avg_pool, global_max_pool, max_pool
from jaxarch.models.common import activation
from jaxarch.models.registry import MODELS

_POOLS: dict[str, Callable | None] = {"max": max_pool, "avg": avg_pool, "none": None}
_HEADS = ("avg", "max", "flatten")
_NORMS = ("none", "batch", "layer")


@MODELS.register("cnn")
class CNN(nn.Module):
    """x: [batch, *spatial, channels] -> logits [batch, num_outputs].

    Each block is `convs_per_block` x (conv -> norm -> activation), then pooling with window and stride
    `pool_size` (non-overlapping, so jaxarch's reshape fast path applies). The head pools globally (or
    flattens), applies dropout and a Dense layer.
    """

    num_outputs: int
    features: tuple[int, ...] = (32, 64)  # Channels of each block.
    kernel_size: tuple[int, ...] = (3, 3)  # Its length sets the spatial rank: (5,) for 1-D, (3, 3) for 2-D.
    convs_per_block: int = 1
    pool: str = "max"
    pool_size: int = 2
    head: str = "avg"  # Global "avg" or "max" pooling, or "flatten" (the classic dense head).
    norm: str = "none"
    activation: str = "relu"
    dropout_rate: float = 0.0  # Before the final Dense layer.
    dtype: jnp.dtype | None = None
    lowering: str = "auto"  # Conv's: "patches" (im2col matmuls), "xla", or "auto" (the faster on CPU, see Conv).

    def _check(self, x: jax.Array) -> None:
        rank = len(self.kernel_size)
        check_rank("CNN", "input", x, rank + 2, f"[batch, {rank} spatial axes, channels]")
        check_floating("CNN", "input", x)
        check_size_as_at_init("CNN", "input channels (axis -1)", x.shape[-1], x.shape, self, ("Conv_0", "kernel"),
                              axis=-2)
        if self.pool not in _POOLS:
            fail("CNN", "pool", repr(self.pool), f"one of {sorted(_POOLS)}")
        if self.head not in _HEADS:
            fail("CNN", "head", repr(self.head), f"one of {list(_HEADS)}")
        if self.norm not in _NORMS:
            fail("CNN", "norm", repr(self.norm), f"one of {list(_NORMS)}")
        if self.pool != "none":
            smallest = min(x.shape[1:-1]) // self.pool_size ** (len(self.features) - 1)
            if smallest < self.pool_size:
                fail("CNN", "spatial size", f"{x.shape[1:-1]} (too small for one pooling stage of pool_size="
                     f"{self.pool_size} per entry of features={self.features})",
                     f"at least {self.pool_size ** len(self.features)} per axis")

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """`x: [batch, *spatial, channels]` floats, `len(spatial) == len(kernel_size)` -> logits
        `[batch, num_outputs]`. `train`: batch statistics are computed and updated (norm="batch", with
        `mutable=["batch_stats"]`) and dropout is on (a "dropout" rng).
        """
        self._check(x)
        act = activation("CNN", self.activation)
        pool = _POOLS[self.pool]
        window = (self.pool_size,) * len(self.kernel_size)
        for features in self.features:
            for _ in range(self.convs_per_block):
                x = Conv(features, self.kernel_size, use_bias=self.norm == "none", dtype=self.dtype,
                         lowering=self.lowering)(x)
                if self.norm == "batch":
                    x = nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x)
                elif self.norm == "layer":
                    x = nn.LayerNorm(dtype=self.dtype)(x)
                x = act(x)
            if pool is not None:
                x = pool(x, window, strides=window)
        if self.head == "avg":
            x = global_avg_pool(x)
        elif self.head == "max":
            x = global_max_pool(x)
        else:
            x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, dtype=self.dtype)(x)
