"""Position information for attention: sinusoidal and learned embeddings, rotary embeddings, ALiBi biases and
learned relative position biases.

Layouts: token features `[batch, time, features]`; per-head queries and keys `[batch, time, heads, head_dim]`
(the layout of `jax.nn.dot_product_attention`); attention biases broadcast to `[batch, heads, q_len, kv_len]`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxarch.checks import (check_floating, check_integer, check_positive_ints, check_rank, check_size_as_at_init,
                            fail)

Dtype = Any


def sinusoidal_positions(length: int, dim: int, base: float = 10000.0) -> jnp.ndarray:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017, section 3.5), `[length, dim]` float32.

    Channels interleave sine and cosine: `pe[p, 2i] = sin(p / base^(2i/dim))`, `pe[p, 2i+1] = cos(...)`.
    """
    module = "sinusoidal_positions"
    check_positive_ints(module, "length", length)
    check_positive_ints(module, "dim", dim)
    if dim % 2:
        fail(module, "dim", dim, "an even number (sine and cosine channels come in pairs)")
    positions = np.arange(length, dtype=np.float64)[:, None]  # [T, 1]
    frequencies = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim / 2]
    angles = positions * frequencies[None, :]  # [T, dim / 2]
    encoding = np.stack([np.sin(angles), np.cos(angles)], axis=-1)  # [T, dim / 2, 2]
    return jnp.asarray(encoding.reshape(length, dim), dtype=jnp.float32)


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned embedding per absolute position: `inputs + table[positions]`.

    `__call__(inputs: [batch, time, features], positions: [time] or [batch, time] int = arange(time))`.
    Traced positions at or beyond `max_length` cannot be checked under `jit`; they read NaN rows so the
    mistake shows in the output instead of silently repeating the last row.
    """

    max_length: int  # number of rows in the table: the longest sequence the model accepts
    embedding_init: Callable = nn.initializers.normal(stddev=0.02)  # BERT / GPT-2 scale
    dtype: Dtype | None = None  # compute dtype; None: the inputs' dtype
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs, positions=None):
        """`inputs: [batch, time, features]` float plus the table's rows at `positions` (int `[time]` or
        `[batch, time]`, default `arange(time)`, each below `max_length`) -> `[batch, time, features]`.
        """
        module = "LearnedPositionEmbedding"
        check_rank(module, "inputs", inputs, 3, "[batch, time, features]")
        check_floating(module, "inputs", inputs)
        batch, length, features = inputs.shape
        check_size_as_at_init(module, "inputs features (axis -1)", features, inputs.shape, self, ("embedding",), 1)
        if length > self.max_length:
            fail(module, "inputs time length", f"{length} (shape {inputs.shape})",
                 f"<= max_length {self.max_length}")
        table = self.param("embedding", self.embedding_init, (self.max_length, features), self.param_dtype)
        dtype = self.dtype or inputs.dtype
        if positions is None:
            return inputs.astype(dtype) + table[None, :length].astype(dtype)
        positions = _check_positions(module, positions, batch, length)
        rows = jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)  # [T, F] or [B, T, F]
        if rows.ndim == 2:
            rows = rows[None]
        return inputs.astype(dtype) + rows.astype(dtype)


def _check_positions(module: str, positions, batch: int, length: int):
    """Checks integer positions shaped `[time]` or `[batch, time]`."""
    check_rank(module, "positions", positions, (1, 2), "[time] or [batch, time]")
    check_integer(module, "positions", positions)
    positions = jnp.asarray(positions)
    expected = (length,) if positions.ndim == 1 else (batch, length)
    if positions.shape != expected:
        fail(module, "positions shape", str(positions.shape), f"{expected} ([time] or [batch, time])")
    return positions


@dataclasses.dataclass(frozen=True)
class RoPEConfig:
    """Rotary position embedding settings for `MultiHeadAttention(rope=...)`."""

    base: float = 10000.0  # wavelength base; larger bases (e.g. 500000) stretch the usable context


def apply_rope(x, positions=None, base: float = 10000.0):
    """Rotary position embedding (Su et al. 2021, RoFormer) on `x: [batch, time, heads, head_dim]`.

    Uses the half-split pairing of GPT-NeoX / LLaMA: channel `i` rotates with channel `i + head_dim/2` by the
    angle `position * base^(-2i/head_dim)`, so `apply_rope(q, p)·apply_rope(k, s)` depends on `p - s` only.
    `positions`: int `[time]` or `[batch, time]`, default `arange(time)`. Rotation runs in at least float32
    (float64 stays float64) and the result keeps `x`'s dtype.
    """
    module = "apply_rope"
    check_rank(module, "x", x, 4, "[batch, time, heads, head_dim]")
    check_floating(module, "x", x)
    batch, length, _, head_dim = x.shape
    if head_dim % 2:
        fail(module, "x head_dim (axis 3)", f"{head_dim} (shape {x.shape})", "an even number")
    if positions is None:
        positions = jnp.arange(length)
    positions = _check_positions(module, positions, batch, length)
    if positions.ndim == 1:
        positions = positions[None]  # [1, T]
    half = head_dim // 2
    compute = jnp.promote_types(x.dtype, jnp.float32)
    inverse_frequency = base ** (-jnp.arange(half, dtype=compute) / half)  # [D/2]
    angles = positions.astype(compute)[:, :, None] * inverse_frequency[None, None, :]  # [B|1, T, D/2]
    sin = jnp.sin(angles)[:, :, None, :]  # [B|1, T, 1, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(compute), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """Per-head ALiBi slopes (Press et al. 2022): the geometric sequence `2^(-8/n), 2^(-16/n), ...` for `n`
    a power of two; otherwise the slopes of the closest smaller power of two followed by every other slope of
    the next power of two, as in the paper's reference code. float64 `[num_heads]`."""
    check_positive_ints("alibi_slopes", "num_heads", num_heads)

    def power_of_two_slopes(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float64)


def alibi_bias(num_heads: int, q_len: int, kv_len: int | None = None, offset: int = 0) -> jnp.ndarray:
    """ALiBi attention bias `-slope_h * |q_position - kv_position|`, float32 `[1, num_heads, q_len, kv_len]`.

    Query `i` sits at position `i + offset` (offset 0: top-left aligned, as `causal_mask`; use
    `kv_len - q_len` when the queries are the last tokens). Combine with a causal mask for the paper's
    left-to-right model; the symmetric distance also serves bidirectional encoders.
    """
    module = "alibi_bias"
    kv_len = q_len if kv_len is None else kv_len
    check_positive_ints(module, "q_len", q_len)
    check_positive_ints(module, "kv_len", kv_len)
    if not isinstance(offset, (int, np.integer)):
        fail(module, "offset", repr(offset), "a Python int")
    slopes = alibi_slopes(num_heads)
    distance = np.abs(np.arange(q_len)[:, None] + offset - np.arange(kv_len)[None, :])  # [Q, K]
    bias = -slopes[:, None, None] * distance[None]  # [H, Q, K]
    return jnp.asarray(bias[None], dtype=jnp.float32)


class RelativePositionBias(nn.Module):
    """A learned attention bias per head and relative offset (Shaw et al. 2018; the per-head scalar form of T5).

    `__call__(q_len, kv_len, offset=0) -> [1, num_heads, q_len, kv_len]` float32 (at least), to pass as
    attention `bias`.
    Query `i` sits at position `i + offset` (an int or a traced int scalar: the cache index when decoding),
    key `j` at `j`. Each offset `key - query` in `[-max_distance, max_distance]` owns one scalar per head; larger
    offsets share the scalar of the nearest end. Causal models (`bidirectional=False`) only need the past:
    offsets `0 ... -max_distance`, and future keys (masked anyway) read offset 0's entry. The table starts at
    zero, so an untrained bias leaves attention unchanged.

    A fixed offset is one parameter per head here, however far back; with absolute positions the same lookup
    has to be learned for every pair of positions.
    """

    num_heads: int
    max_distance: int  # offsets beyond it are clipped to it
    bidirectional: bool = True  # False: causal attention, past offsets only
    embedding_init: Callable = nn.initializers.zeros_init()
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, q_len: int, kv_len: int, offset=0):
        """The bias for `q_len` queries at positions `offset + arange(q_len)` (an int or a traced int scalar) and
        `kv_len` keys at `arange(kv_len)` -> float32 `[1, num_heads, q_len, kv_len]`, to pass as attention `bias`.
        """
        module = "RelativePositionBias"
        check_positive_ints(module, "num_heads", self.num_heads)
        check_positive_ints(module, "max_distance", self.max_distance)
        check_positive_ints(module, "q_len", q_len)
        check_positive_ints(module, "kv_len", kv_len)
        if jnp.ndim(offset) != 0 or not jnp.issubdtype(jnp.result_type(offset), jnp.integer):
            fail(module, "offset", f"{offset!r} (shape {jnp.shape(offset)})", "an integer scalar")
        buckets = 2 * self.max_distance + 1 if self.bidirectional else self.max_distance + 1
        table = self.param("embedding", self.embedding_init, (buckets, self.num_heads), self.param_dtype)
        distance = jnp.arange(kv_len)[None, :] - (jnp.arange(q_len)[:, None] + offset)  # [Q, K], < 0: the past
        if self.bidirectional:
            index = jnp.clip(distance, -self.max_distance, self.max_distance) + self.max_distance
        else:
            index = jnp.clip(-distance, 0, self.max_distance)
        bias = jnp.take(table, index, axis=0).astype(jnp.promote_types(table.dtype, jnp.float32))  # [Q, K, H]
        return jnp.transpose(bias, (2, 0, 1))[None]
