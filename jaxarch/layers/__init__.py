"""Layers: convolution, pooling, recurrence and attention, as pure-function Flax Linen modules."""

from jaxarch.layers.conv import Conv, ConvTranspose
from jaxarch.layers.pooling import (adaptive_avg_pool, adaptive_max_pool, avg_pool, global_avg_pool,
                                    global_max_pool, max_pool, min_pool)

__all__ = [
    "Conv", "ConvTranspose",
    "adaptive_avg_pool", "adaptive_max_pool", "avg_pool", "global_avg_pool", "global_max_pool", "max_pool",
    "min_pool",
]
