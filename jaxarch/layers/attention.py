"""Scaled dot-product attention, boolean mask helpers and multi-head attention.

Layout follows `jax.nn.dot_product_attention`: queries `[batch, q_len, heads, head_dim]`, keys and values
`[batch, kv_len, kv_heads, head_dim]`, with `heads` a multiple of `kv_heads` (grouped-query attention).
One mask convention everywhere: boolean, True means attend, broadcastable to `[batch, heads, q_len, kv_len]`.
Causal masks are top-left aligned (query `i` sees keys `<= i + offset`, offset 0 by default), as in
`jax.nn.dot_product_attention`.

Three implementations share one contract (float32 softmax, scale `1/sqrt(head_dim)`, a query row with no key to
attend returns zeros and zero gradients):

- `"xla"`: the plain einsum formula; materialises the `[batch, heads, q_len, kv_len]` logits (causal attention
  only their lower staircase, query chunk by query chunk, see `_causal_xla_attention`).
- `"blockwise"`: memory-efficient attention (Rabe & Staats 2021) with FlashAttention's online softmax (running
  max, running denominator, rescaled accumulator): a `lax.map` over query chunks, each looping over key/value
  chunks. Its `custom_vjp` backward keeps only the output and the log-sum-exp and recomputes each chunk
  (FlashAttention-2, Dao 2023): a `lax.scan` over key/value chunks accumulating dK, dV, each looping over
  query chunks adding into dQ. Forward and backward memory grow linearly with sequence length. Causal, length
  and sliding-window masks are generated per chunk; the inner loops are `lax.fori_loop`s whose traced bounds
  cover only the chunks those masks leave visible (causal attention does half the work). A dense `mask` or
  `bias` is sliced per chunk. Reverse-mode differentiation only (no `jax.jvp`), no dropout.
- `"cudnn"`: `jax.nn.dot_product_attention(..., implementation="cudnn")`, GPU only, float16/bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxarch.checks import (check_axis_size, check_broadcastable, check_floating, check_integer,
                            check_positive_ints, check_rank, check_size_as_at_init, fail)
from jaxarch.layers.dense import flat_dot_general
from jaxarch.layers.partitioning import EMBED, HEAD_DIM, HEADS, KV_HEADS, with_axes
from jaxarch.layers.position import RoPEConfig, apply_rope

Dtype = Any

IMPLEMENTATIONS = ("xla", "blockwise", "cudnn")

# `implementation=None` switches from "xla" to "blockwise" once the float32 logits would exceed this size.
BLOCKWISE_MIN_LOGITS_BYTES = 2**28

_MODULE = "dot_product_attention"


# ----------------------------------------------------------------------------------------------------------
# Mask helpers.


def _check_offset(module: str, offset):
    """Returns `offset` (int or integer array `[]` / `[batch]`) as an int32 array `[1]` or `[batch]`."""
    if isinstance(offset, (int, np.integer)):
        return jnp.full((1,), int(offset), jnp.int32)
    check_rank(module, "offset", offset, (0, 1), "[] or [batch]")
    check_integer(module, "offset", offset)
    return jnp.reshape(jnp.asarray(offset, jnp.int32), (-1,))


def _check_lengths(module: str, name: str, lengths, batch: int | None = None):
    """Returns integer lengths `[batch]` as int32."""
    check_rank(module, name, lengths, 1, "[batch]")
    check_integer(module, name, lengths)
    if batch is not None:
        check_axis_size(module, name, lengths, 0, batch, "batch size")
    return jnp.asarray(lengths, jnp.int32)


def _index_mask(q_index, kv_index, *, is_causal=False, window_size=None, q_offset=None, q_lengths=None,
                kv_lengths=None, kv_valid=None):
    """Boolean `[B|1, 1, q, kv]` mask (or None) for query rows `q_index: [q]` and key columns `kv_index: [kv]`.

    Query `i` sits at key position `i + q_offset` (`q_offset: [B|1]`). `kv_valid` (a static int) hides padding
    keys added by the blockwise path. The one place where generated masks are defined: the public helpers,
    the xla path and every blockwise chunk call it.
    """
    parts = []
    kv_row = kv_index[None, None, :]  # [1, 1, kv]
    if is_causal or window_size is not None:
        offset = jnp.zeros((1,), jnp.int32) if q_offset is None else q_offset
        q_position = (q_index[None, :] + offset[:, None])[:, :, None]  # [B|1, q, 1]
        if is_causal:
            parts.append(kv_row <= q_position)
        if window_size is not None:
            parts.append(q_position - kv_row < window_size)
            if not is_causal:
                parts.append(kv_row - q_position < window_size)
    if kv_lengths is not None:
        parts.append(kv_row < kv_lengths[:, None, None])  # [B, 1, kv]
    if q_lengths is not None:
        parts.append(q_index[None, :, None] < q_lengths[:, None, None])  # [B, q, 1]
    if kv_valid is not None:
        parts.append(kv_row < kv_valid)
    if not parts:
        return None
    mask = functools.reduce(jnp.logical_and, parts)
    return jnp.broadcast_to(mask, mask.shape[:1] + (q_index.shape[0], kv_index.shape[0]))[:, None]


def causal_mask(q_len: int, kv_len: int | None = None, offset=0) -> jnp.ndarray:
    """Causal mask: query `i` attends to keys `j <= i + offset`.

    Returns bool `[1, 1, q_len, kv_len]`, or `[batch, 1, q_len, kv_len]` when `offset` is an integer array
    `[batch]`. `offset` 0 aligns the first query with the first key (as `jax.nn.dot_product_attention`);
    `kv_len - q_len` aligns the last query with the last key (queries that continue a cached prefix).
    """
    module = "causal_mask"
    kv_len = q_len if kv_len is None else kv_len
    check_positive_ints(module, "q_len", q_len)
    check_positive_ints(module, "kv_len", kv_len)
    return _index_mask(jnp.arange(q_len), jnp.arange(kv_len), is_causal=True,
                       q_offset=_check_offset(module, offset))


def sliding_window_mask(q_len: int, kv_len: int, window: int, causal: bool = True, offset=0) -> jnp.ndarray:
    """Local attention (Beltagy et al. 2020): query at position `p = i + offset` attends to keys `j` with
    `p - window < j <= p` (causal; `window` keys including itself) or `|p - j| < window` (not causal).

    Returns bool `[1 or batch, 1, q_len, kv_len]` (see `causal_mask` for `offset`).
    """
    module = "sliding_window_mask"
    check_positive_ints(module, "q_len", q_len)
    check_positive_ints(module, "kv_len", kv_len)
    check_positive_ints(module, "window", window)
    return _index_mask(jnp.arange(q_len), jnp.arange(kv_len), is_causal=causal, window_size=int(window),
                       q_offset=_check_offset(module, offset))


def padding_mask(*, kv_lengths=None, kv_len: int | None = None, q_lengths=None, q_len: int | None = None):
    """Mask from sequence lengths: key `j` is visible iff `j < kv_lengths[b]`, query row `i` attends at all iff
    `i < q_lengths[b]` (padded query rows then return zeros).

    `*_lengths`: int `[batch]`; `*_len`: the padded time length of that axis, required with its lengths.
    Returns bool `[batch, 1, q_len or 1, kv_len or 1]`.
    """
    module = "padding_mask"
    if kv_lengths is None and q_lengths is None:
        fail(module, "kv_lengths and q_lengths", "both None", "at least one of them")
    batch = None
    if kv_lengths is not None:
        if kv_len is None:
            fail(module, "kv_len", None, "the padded key length (an int) when kv_lengths is given")
        check_positive_ints(module, "kv_len", kv_len)
        kv_lengths = _check_lengths(module, "kv_lengths", kv_lengths)
        batch = kv_lengths.shape[0]
    if q_lengths is not None:
        if q_len is None:
            fail(module, "q_len", None, "the padded query length (an int) when q_lengths is given")
        check_positive_ints(module, "q_len", q_len)
        q_lengths = _check_lengths(module, "q_lengths", q_lengths, batch)
    q_index = jnp.arange(q_len if q_lengths is not None else 1)
    kv_index = jnp.arange(kv_len if kv_lengths is not None else 1)
    return _index_mask(q_index, kv_index, q_lengths=q_lengths, kv_lengths=kv_lengths)


def _as_rank4(module: str, name: str, x):
    """Left-pads the shape of a mask or bias of rank <= 4 with ones (the model runs with rank promotion off)."""
    check_rank(module, name, x, (1, 2, 3, 4), "broadcastable to [batch, heads, q_len, kv_len]")
    x = jnp.asarray(x)
    return jnp.reshape(x, (1,) * (4 - x.ndim) + x.shape)


def combine_masks(*masks):
    """Logical AND of boolean masks, skipping None; None when every mask is None. Returns rank 4."""
    module = "combine_masks"
    present = []
    for index, mask in enumerate(masks):
        if mask is None:
            continue
        if jnp.result_type(mask) != jnp.bool_:
            fail(module, f"masks[{index}] dtype", str(jnp.result_type(mask)), "bool (True means attend)")
        present.append(_as_rank4(module, f"masks[{index}]", mask))
    if not present:
        return None
    try:
        np.broadcast_shapes(*(m.shape for m in present))
    except ValueError:
        fail(module, "mask shapes", str([tuple(m.shape) for m in present]),
             "shapes broadcastable to one [batch, heads, q_len, kv_len]")
    return functools.reduce(jnp.logical_and, present)


# ----------------------------------------------------------------------------------------------------------
# dot_product_attention.


@dataclasses.dataclass(frozen=True)
class _Generated:
    """Masks that are described by a few numbers and generated where needed (per chunk in blockwise)."""

    is_causal: bool
    window_size: int | None
    q_offset: Any  # int32 [B|1]; None when statically zero or unused (neither causal nor windowed)
    q_lengths: Any  # int32 [B] or None
    kv_lengths: Any  # int32 [B] or None

    @property
    def every_row_sees_a_key(self) -> bool:
        """True when no query row can be fully masked by these masks alone: causal at offset 0 (top-left
        aligned) without lengths, where every row sees key 0."""
        return (self.is_causal and self.q_offset is None and self.q_lengths is None and self.kv_lengths is None)

    def mask(self, q_index, kv_index, kv_valid=None):
        return _index_mask(q_index, kv_index, is_causal=self.is_causal, window_size=self.window_size,
                           q_offset=self.q_offset, q_lengths=self.q_lengths, kv_lengths=self.kv_lengths,
                           kv_valid=kv_valid)


jax.tree_util.register_dataclass(
    _Generated, data_fields=["q_offset", "q_lengths", "kv_lengths"], meta_fields=["is_causal", "window_size"])


def _heads_to_groups(x, kv_heads: int):
    """`[B|1, H|1, Q|1, K|1]` mask or bias to `[B|1, KVH|1, G|1, Q|1, K|1]` (head `h` = `kvh * G + g`)."""
    b, h, q, k = x.shape
    if h == 1:
        return jnp.reshape(x, (b, 1, 1, q, k))
    return jnp.reshape(x, (b, kv_heads, h // kv_heads, q, k))


def _and(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return jnp.logical_and(a, b)


def _accumulation_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _xla_attention(query, key, value, mask5, bias5, generated, scale, dropout_rate, dropout_rng, q_start: int = 0):
    """Plain einsum attention. Returns `([B, Tq, H, Dv], weights [B, H, Tq, Tk] float32)`.

    `q_start`: the index of the first query row, when `query` is a chunk of the rows (see `_causal_xla_attention`).
    """
    batch, q_len, heads, head_dim = query.shape
    kv_len, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    accumulation = _accumulation_dtype(query.dtype)
    grouped = groups > 1
    if grouped:
        query = jnp.reshape(query, (batch, q_len, kv_heads, groups, head_dim))  # [B, Tq, KVH, G, D]
        logits_spec, out_spec = "bqhgd,bkhd->bhgqk", "bhgqk,bkhd->bqhgd"
    else:  # one query head per key head: 4-D einsums skip the grouped layout's copies (ViT step: 3-6% less CPU)
        logits_spec, out_spec = "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"
        mask5, bias5 = (None if x is None else x[:, :, 0] for x in (mask5, bias5))  # [B|1, H|1, Tq|1, Tk|1]
    logits = jnp.einsum(logits_spec, query, key, preferred_element_type=accumulation) * scale
    if bias5 is not None:
        logits = logits + bias5.astype(accumulation)
    index_mask = generated.mask(jnp.arange(q_start, q_start + q_len), jnp.arange(kv_len))  # [B|1, 1, Tq, Tk]
    if index_mask is not None and grouped:
        index_mask = index_mask[:, :, None]
    mask = _and(mask5, index_mask)
    if mask is not None:
        # A finite fill keeps fully-masked rows finite (uniform); the second `where` then zeros them.
        logits = jnp.where(mask, logits, jnp.finfo(accumulation).min)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, KVH, G, Tq, Tk], or [B, H, Tq, Tk]
    if mask is not None and not (mask5 is None and generated.every_row_sees_a_key):
        # Only a fully-masked row keeps weight on masked keys; elsewhere exp(min - max) is exactly 0 already, so
        # the pass is skipped when no row can be fully masked (causal attention: ~10% of its time on a CPU).
        weights = jnp.where(mask, weights, 0.0)
    attended = weights
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (batch, kv_heads, groups, q_len, kv_len))
        attended = jnp.where(jnp.reshape(keep, weights.shape), weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(out_spec, attended.astype(value.dtype), value, preferred_element_type=accumulation)
    out = jnp.reshape(out, (batch, q_len, heads, value.shape[-1])).astype(query.dtype)
    return out, jnp.reshape(weights, (batch, heads, q_len, kv_len))


# Causal attention on the "xla" path computes only the lower staircase of the logits: the queries are split into
# static chunks and a chunk reads only the keys before its end, (n + 1) / 2n of the square for n chunks. Each row's
# softmax is unchanged (a masked logit adds exp(min - max) = 0 either way), so the values equal the unchunked ones
# to float rounding, and both differentiation modes work. Measured on a 2-core CPU (batch 16, T 256, 4 heads of
# 64, forward + backward, CPU time): 4 chunks 76 ms, 2 chunks 84 ms, unchunked 119 ms.
CAUSAL_QUERY_CHUNK = 64  # the smallest query chunk; shorter sequences are not split
CAUSAL_MAX_CHUNKS = 8  # more chunks save little and grow the program


def _causal_chunks(q_len: int) -> list[tuple[int, int]]:
    """Static `(start, stop)` query ranges for `_causal_xla_attention`."""
    if q_len < 2 * CAUSAL_QUERY_CHUNK:
        return [(0, q_len)]
    size = max(CAUSAL_QUERY_CHUNK, -(-q_len // CAUSAL_MAX_CHUNKS))
    return [(start, min(start + size, q_len)) for start in range(0, q_len, size)]


def _slice_dense(x5, start: int, stop: int, visible: int):
    """Rows `start:stop` and keys `:visible` of a `[B|1, KVH|1, G|1, Q|1, K|1]` mask or bias (None passes)."""
    if x5 is None:
        return None
    rows = slice(start, stop) if x5.shape[3] > 1 else slice(None)
    keys = slice(0, visible) if x5.shape[4] > 1 else slice(None)
    return x5[:, :, :, rows, keys]


def _causal_xla_attention(query, key, value, mask5, bias5, generated, scale):
    """`_xla_attention` for causal masks at query offset 0 (no dropout, no weights), one query chunk at a time;
    query `i` sees keys `<= i`, so chunk `start:stop` needs keys `:stop` only."""
    outs = []
    for start, stop in _causal_chunks(query.shape[1]):
        visible = min(stop, key.shape[1])
        out, _ = _xla_attention(query[:, start:stop], key[:, :visible], value[:, :visible],
                                _slice_dense(mask5, start, stop, visible), _slice_dense(bias5, start, stop, visible),
                                generated, scale, 0.0, None, q_start=start)
        outs.append(out)
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


# ---- blockwise ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _BlockwiseConfig:
    """Static description of one blockwise call (hashable: it is a `nondiff_argnums` argument)."""

    scale: float
    is_causal: bool
    window_size: int | None
    q_chunk: int
    kv_chunk: int
    kv_len: int  # unpadded key length; keys at or beyond it are padding


def _slice_chunk(x, axis: int, start, size: int):
    """Chunk of a dense mask/bias along `axis`, or the whole array when that axis broadcasts (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _chunk_is_live(config: _BlockwiseConfig, generated: _Generated, q_start, kv_start):
    """False where the generated masks hide every (query, key) pair of a chunk. Elementwise in the chunk
    starts; along either axis the live chunks form one interval (each mask is a half-plane in positions)."""
    live = jnp.ones(jnp.broadcast_shapes(jnp.shape(q_start), jnp.shape(kv_start)), bool)
    q_first = q_start
    q_last = q_start + config.q_chunk - 1
    if generated.q_offset is not None:
        q_first = q_first + jnp.min(generated.q_offset)
        q_last = q_last + jnp.max(generated.q_offset)
    kv_first, kv_last = kv_start, kv_start + config.kv_chunk - 1
    if config.is_causal:
        live &= kv_first <= q_last
    if config.window_size is not None:
        live &= q_first - kv_last < config.window_size
        if not config.is_causal:
            live &= kv_first - q_last < config.window_size
    if generated.kv_lengths is not None:
        live &= kv_first < jnp.max(generated.kv_lengths)
    if generated.q_lengths is not None:
        live &= q_start < jnp.max(generated.q_lengths)
    return live


def _live_interval(live):
    """`[first, stop)` of the True entries of a bool vector that holds one interval; `[0, 0)` when none."""
    any_live = jnp.any(live)
    first = jnp.argmax(live)
    stop = live.shape[0] - jnp.argmax(live[::-1])
    return jnp.where(any_live, first, 0), jnp.where(any_live, stop, 0)


def _chunk_logits_and_mask(config, generated, query_chunk, key, bias, mask, q_start, kv_start):
    """Scaled logits `[B, KVH, G, qc, kc]` (float32) and their mask `[B|1, ., ., qc, kc]` for one chunk pair."""
    key_chunk = lax.dynamic_slice_in_dim(key, kv_start, config.kv_chunk, axis=2)
    logits = jnp.einsum("bhgqd,bhkd->bhgqk", query_chunk, key_chunk,
                        preferred_element_type=_accumulation_dtype(query_chunk.dtype)) * config.scale
    if bias is not None:
        logits = logits + _slice_chunk(_slice_chunk(bias, 3, q_start, config.q_chunk), 4, kv_start,
                                       config.kv_chunk)
    q_index = q_start + jnp.arange(config.q_chunk)
    kv_index = kv_start + jnp.arange(config.kv_chunk)
    chunk_mask = generated.mask(q_index, kv_index, kv_valid=config.kv_len)[:, :, None]  # [B|1, 1, 1, qc, kc]
    if mask is not None:
        chunk_mask = jnp.logical_and(
            chunk_mask, _slice_chunk(_slice_chunk(mask, 3, q_start, config.q_chunk), 4, kv_start,
                                     config.kv_chunk))
    return logits, chunk_mask


def _blockwise_forward(config, query, key, value, bias, aux):
    """Online-softmax forward. query `[B, KVH, G, Tq, D]`, key `[B, KVH, Tk, D]`, value `[B, KVH, Tk, Dv]`
    (Tq, Tk padded to chunk multiples). Returns output `[B, KVH, G, Tq, Dv]` and log-sum-exp `[B, KVH, G, Tq]`
    (+inf on rows with nothing to attend)."""
    mask, generated = aux
    num_q_chunks = query.shape[3] // config.q_chunk
    num_kv_chunks = key.shape[2] // config.kv_chunk
    accumulation = _accumulation_dtype(query.dtype)

    def q_chunk_step(q_chunk_index):
        q_start = q_chunk_index * config.q_chunk
        query_chunk = lax.dynamic_slice_in_dim(query, q_start, config.q_chunk, axis=3)
        stats_shape = query_chunk.shape[:-1]  # [B, KVH, G, qc]
        initial = (jnp.full(stats_shape, -jnp.inf, accumulation), jnp.zeros(stats_shape, accumulation),
                   jnp.zeros(stats_shape + (value.shape[-1],), accumulation))

        def kv_chunk_step(kv_chunk_index, carry):
            running_max, denominator, accumulator = carry
            kv_start = kv_chunk_index * config.kv_chunk
            logits, chunk_mask = _chunk_logits_and_mask(config, generated, query_chunk, key, bias, mask,
                                                        q_start, kv_start)
            logits = jnp.where(chunk_mask, logits, -jnp.inf)
            new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
            # Rows that have seen no key yet keep max -inf; shift them by 0 so exp() gives 0, not NaN.
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            probabilities = jnp.exp(logits - shift[..., None])
            correction = jnp.exp(running_max - shift)
            value_chunk = lax.dynamic_slice_in_dim(value, kv_start, config.kv_chunk, axis=2)
            accumulator = accumulator * correction[..., None] + jnp.einsum(
                "bhgqk,bhkd->bhgqd", probabilities.astype(value.dtype), value_chunk,
                preferred_element_type=accumulation)
            denominator = denominator * correction + jnp.sum(probabilities, axis=-1)
            return new_max, denominator, accumulator

        # Only the key chunks the generated masks leave visible: causal attention does half the work.
        first, stop = _live_interval(_chunk_is_live(config, generated, q_start,
                                                    jnp.arange(num_kv_chunks) * config.kv_chunk))
        running_max, denominator, accumulator = lax.fori_loop(first, stop, kv_chunk_step, initial)
        attended = denominator > 0
        safe_denominator = jnp.where(attended, denominator, 1.0)
        out = jnp.where(attended[..., None], accumulator / safe_denominator[..., None], 0.0)
        log_sum_exp = jnp.where(attended, running_max + jnp.log(safe_denominator), jnp.inf)
        return out.astype(query.dtype), log_sum_exp

    out, log_sum_exp = lax.map(q_chunk_step, jnp.arange(num_q_chunks))  # [nq, B, KVH, G, qc, ...]
    out = jnp.moveaxis(out, 0, 3)  # [B, KVH, G, nq, qc, Dv]
    out = jnp.reshape(out, out.shape[:3] + (-1, out.shape[-1]))
    log_sum_exp = jnp.reshape(jnp.moveaxis(log_sum_exp, 0, 3), log_sum_exp.shape[1:4] + (-1,))
    return out, log_sum_exp


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise_attention(config, query, key, value, bias, aux):
    return _blockwise_forward(config, query, key, value, bias, aux)[0]


def _blockwise_fwd(config, query, key, value, bias, aux):
    out, log_sum_exp = _blockwise_forward(config, query, key, value, bias, aux)
    return out, (query, key, value, bias, aux, out, log_sum_exp)


def _blockwise_bwd(config, residuals, d_out):
    """FlashAttention-2 backward: outer scan over key chunks accumulating dK, dV; inner loop over the live
    query chunks recomputing probabilities from the stored log-sum-exp and adding into dQ (and dBias)."""
    query, key, value, bias, aux, out, log_sum_exp = residuals
    mask, generated = aux
    accumulation = _accumulation_dtype(query.dtype)
    num_q_chunks = query.shape[3] // config.q_chunk
    num_kv_chunks = key.shape[2] // config.kv_chunk
    d_out = d_out.astype(accumulation)
    delta = jnp.sum(d_out * out.astype(accumulation), axis=-1)  # D_i = sum_j P_ij dP_ij = dO_i . O_i

    def kv_chunk_step(carry, kv_chunk_index):
        d_query, d_bias = carry
        kv_start = kv_chunk_index * config.kv_chunk
        key_chunk = lax.dynamic_slice_in_dim(key, kv_start, config.kv_chunk, axis=2)
        value_chunk = lax.dynamic_slice_in_dim(value, kv_start, config.kv_chunk, axis=2)

        def q_chunk_step(q_chunk_index, inner):
            d_key, d_value, d_query, d_bias = inner
            q_start = q_chunk_index * config.q_chunk
            query_chunk = lax.dynamic_slice_in_dim(query, q_start, config.q_chunk, axis=3)
            logits, chunk_mask = _chunk_logits_and_mask(config, generated, query_chunk, key, bias, mask,
                                                        q_start, kv_start)
            lse_chunk = lax.dynamic_slice_in_dim(log_sum_exp, q_start, config.q_chunk, axis=3)
            d_out_chunk = lax.dynamic_slice_in_dim(d_out, q_start, config.q_chunk, axis=3)
            delta_chunk = lax.dynamic_slice_in_dim(delta, q_start, config.q_chunk, axis=3)
            probabilities = jnp.where(chunk_mask, jnp.exp(logits - lse_chunk[..., None]), 0.0)
            d_value = d_value + jnp.einsum("bhgqk,bhgqd->bhkd", probabilities, d_out_chunk)
            d_probabilities = jnp.einsum("bhgqd,bhkd->bhgqk", d_out_chunk, value_chunk,
                                         preferred_element_type=accumulation)
            d_logits = probabilities * (d_probabilities - delta_chunk[..., None])  # [B, KVH, G, qc, kc]
            d_key = d_key + config.scale * jnp.einsum("bhgqk,bhgqd->bhkd", d_logits, query_chunk,
                                                      preferred_element_type=accumulation)
            d_query_chunk = config.scale * jnp.einsum("bhgqk,bhkd->bhgqd", d_logits, key_chunk,
                                                      preferred_element_type=accumulation)
            d_query = lax.dynamic_update_slice_in_dim(
                d_query, lax.dynamic_slice_in_dim(d_query, q_start, config.q_chunk, axis=3) + d_query_chunk,
                q_start, axis=3)
            if bias is not None:
                summed = tuple(axis for axis in range(5) if bias.shape[axis] == 1)
                d_bias_chunk = jnp.sum(d_logits, axis=summed, keepdims=True)
                start = (0, 0, 0, q_start if bias.shape[3] > 1 else 0, kv_start if bias.shape[4] > 1 else 0)
                current = lax.dynamic_slice(d_bias, start, d_bias_chunk.shape)
                d_bias = lax.dynamic_update_slice(d_bias, current + d_bias_chunk, start)
            return d_key, d_value, d_query, d_bias

        first, stop = _live_interval(_chunk_is_live(config, generated, jnp.arange(num_q_chunks) * config.q_chunk,
                                                    kv_start))
        initial = (jnp.zeros(key_chunk.shape, accumulation), jnp.zeros(value_chunk.shape, accumulation),
                   d_query, d_bias)
        d_key, d_value, d_query, d_bias = lax.fori_loop(first, stop, q_chunk_step, initial)
        return (d_query, d_bias), (d_key, d_value)

    initial = (jnp.zeros(query.shape, accumulation),
               None if bias is None else jnp.zeros(bias.shape, accumulation))
    (d_query, d_bias), (d_key, d_value) = lax.scan(kv_chunk_step, initial, jnp.arange(num_kv_chunks))

    def unchunk(chunks):  # [nk, B, KVH, kc, D] -> [B, KVH, Tk, D]
        chunks = jnp.moveaxis(chunks, 0, 2)
        return jnp.reshape(chunks, chunks.shape[:2] + (-1, chunks.shape[-1]))

    d_bias = None if bias is None else d_bias.astype(bias.dtype)
    return (d_query.astype(query.dtype), unchunk(d_key).astype(key.dtype), unchunk(d_value).astype(value.dtype),
            d_bias, None)


_blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)


def _pad_axis(x, axis: int, length: int, value=0):
    if x.shape[axis] == 1 or x.shape[axis] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _blockwise(query, key, value, mask5, bias5, generated, scale, q_chunk_size, kv_chunk_size):
    """Pads to chunk multiples, moves heads ahead of time and runs the custom-VJP blockwise kernel."""
    batch, q_len, heads, head_dim = query.shape
    kv_len, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q_chunk, kv_chunk = min(q_chunk_size, q_len), min(kv_chunk_size, kv_len)
    q_padded = -(-q_len // q_chunk) * q_chunk
    kv_padded = -(-kv_len // kv_chunk) * kv_chunk
    query = jnp.reshape(query, (batch, q_len, kv_heads, groups, head_dim))
    query = _pad_axis(jnp.transpose(query, (0, 2, 3, 1, 4)), 3, q_padded)  # [B, KVH, G, Tq, D]
    key = _pad_axis(jnp.transpose(key, (0, 2, 1, 3)), 2, kv_padded)  # [B, KVH, Tk, D]
    value = _pad_axis(jnp.transpose(value, (0, 2, 1, 3)), 2, kv_padded)  # [B, KVH, Tk, Dv]
    if mask5 is not None:
        mask5 = _pad_axis(_pad_axis(mask5, 3, q_padded, False), 4, kv_padded, False)
    if bias5 is not None:
        bias5 = _pad_axis(_pad_axis(bias5.astype(_accumulation_dtype(query.dtype)), 3, q_padded), 4, kv_padded)
    config = _BlockwiseConfig(scale=float(scale), is_causal=generated.is_causal,
                              window_size=generated.window_size, q_chunk=q_chunk, kv_chunk=kv_chunk,
                              kv_len=kv_len)
    out = _blockwise_attention(config, query, key, value, bias5, (mask5, generated))  # [B, KVH, G, Tq, Dv]
    out = jnp.transpose(out[:, :, :, :q_len], (0, 3, 1, 2, 4))
    return jnp.reshape(out, (batch, q_len, heads, out.shape[-1]))



# ---- cuDNN -------------------------------------------------------------------------------------------------


def _cudnn_unsupported(query, value, dropout_rate, return_weights, generated, q_offset_static, backend):
    """`(got, expected)` saying why the cuDNN flash-attention kernel cannot run this call, or None. Checked
    before calling it, so a user meets our ValueError rather than a cuDNN trace."""
    if backend != "gpu":
        return f"backend {backend!r}", "a GPU (cuDNN flash attention runs only on NVIDIA GPUs)"
    if query.dtype not in (jnp.float16, jnp.bfloat16):
        return f"dtype {query.dtype}", "float16 or bfloat16 inputs for implementation='cudnn'"
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    max_head_dim = 256 if float(capability) >= 9.0 else 128
    head_dim = query.shape[-1]
    if head_dim > max_head_dim or head_dim % 8:
        return f"head_dim {head_dim}", f"a multiple of 8 up to {max_head_dim} for implementation='cudnn'"
    if value.shape[-1] != head_dim:
        return f"value head_dim {value.shape[-1]}", f"{head_dim} (the query head_dim) for implementation='cudnn'"
    if dropout_rate > 0.0:
        return f"dropout_rate {dropout_rate}", "0.0 for implementation='cudnn' (use 'xla')"
    if return_weights:
        return "return_weights=True", "False for implementation='cudnn' (use 'xla')"
    if not q_offset_static:
        return "a q_offset other than 0", "q_offset=0 for implementation='cudnn'"
    if generated.window_size is not None and not generated.is_causal:
        return "a non-causal window", "is_causal=True with window_size for implementation='cudnn'"
    return None


def _rows_with_keys(q_len: int, kv_len: int, generated: _Generated):
    """Bool `[B|1, q_len]`: whether the generated masks leave query row `i` any key, computed from the
    interval of visible keys without building `[q_len, kv_len]`."""
    q_index = jnp.arange(q_len)[None, :]  # [1, Tq]
    position = q_index if generated.q_offset is None else q_index + generated.q_offset[:, None]
    lowest = jnp.zeros_like(position)
    highest = jnp.full_like(position, kv_len - 1)
    if generated.kv_lengths is not None:
        highest = jnp.minimum(highest, generated.kv_lengths[:, None] - 1)
    if generated.is_causal:
        highest = jnp.minimum(highest, position)
    if generated.window_size is not None:
        lowest = jnp.maximum(lowest, position - generated.window_size + 1)
        if not generated.is_causal:
            highest = jnp.minimum(highest, position + generated.window_size - 1)
    rows = lowest <= highest
    if generated.q_lengths is not None:
        rows = jnp.logical_and(rows, q_index < generated.q_lengths[:, None])
    return rows


def _cudnn_attention(query, key, value, mask4, bias4, generated, scale):
    """cuDNN flash attention through `jax.nn`; rows with no visible key are zeroed to honour the contract."""
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    full = (q_len, kv_len)
    if mask4 is not None:  # cuDNN wants the full [q_len, kv_len] extent
        mask4 = jnp.broadcast_to(mask4, mask4.shape[:2] + full)
    if bias4 is not None:
        bias4 = jnp.broadcast_to(bias4, bias4.shape[:2] + full).astype(query.dtype)
    lengths = {}
    if generated.q_lengths is not None or generated.kv_lengths is not None:
        lengths = dict(
            query_seq_lengths=jnp.full((batch,), q_len, jnp.int32) if generated.q_lengths is None
            else generated.q_lengths,
            key_value_seq_lengths=jnp.full((batch,), kv_len, jnp.int32) if generated.kv_lengths is None
            else generated.kv_lengths)
    window = None if generated.window_size is None else (generated.window_size - 1, 0)
    out = jax.nn.dot_product_attention(query, key, value, bias=bias4, mask=mask4, scale=scale,
                                       is_causal=generated.is_causal, local_window_size=window,
                                       implementation="cudnn", **lengths)
    if mask4 is None:
        rows = _rows_with_keys(q_len, kv_len, generated)[:, :, None, None]  # [B|1, Tq, 1, 1]
    else:  # an arbitrary dense mask: count visible keys exactly
        index_mask = generated.mask(jnp.arange(q_len), jnp.arange(kv_len))
        rows = jnp.any(_and(mask4, index_mask), axis=-1)  # [B|1, H|1, Tq]
        rows = jnp.transpose(rows, (0, 2, 1))[..., None]  # [B|1, Tq, H|1, 1]
    return jnp.where(rows, out, jnp.zeros((), out.dtype))


# ---- public entry point --------------------------------------------------------------------------------------


def _choose_implementation(requested, query, value, kv_len, dropout_rate, return_weights, generated,
                           q_offset_static, allow_cudnn):
    """`requested` once checked, or for None: cuDNN where it supports the call, else "blockwise" when the
    float32 logits would exceed `BLOCKWISE_MIN_LOGITS_BYTES` (and neither dropout nor weights are asked
    for), else "xla"."""
    if requested in ("cudnn", None) and allow_cudnn:
        reason = _cudnn_unsupported(query, value, dropout_rate, return_weights, generated, q_offset_static,
                                    jax.default_backend())
        if requested == "cudnn" and reason is not None:
            fail(_MODULE, "implementation='cudnn' input", reason[0], reason[1])
        if reason is None:
            return "cudnn"
    if requested is not None:
        return requested
    batch, q_len, heads, _ = query.shape
    logits_bytes = 4 * batch * heads * q_len * kv_len
    if return_weights or dropout_rate > 0.0 or logits_bytes <= BLOCKWISE_MIN_LOGITS_BYTES:
        return "xla"
    return "blockwise"



def _check_dense(name: str, x, target, dtype_kind: str, module: str = _MODULE):
    """Validates a dense mask or bias against `target` = (B, H, Tq, Tk) and returns it at rank 4."""
    if dtype_kind == "bool" and jnp.result_type(x) != jnp.bool_:
        fail(module, f"{name} dtype", str(jnp.result_type(x)),
             "bool (True means attend); pass additive masks as bias=")
    if dtype_kind == "float":
        check_floating(module, name, x)
    x = _as_rank4(module, name, x)
    check_broadcastable(module, name, x.shape, target, "[batch, heads, q_len, kv_len]")
    return x


def check_mask_and_bias(module: str, mask, bias, target) -> None:
    """A module's own check of the `mask` (bool) and `bias` (float) it passes down, against `target` =
    (batch, heads, q_len, kv_len), so that a wrong shape is reported under the module the user called."""
    if mask is not None:
        _check_dense("mask", mask, target, "bool", module)
    if bias is not None:
        _check_dense("bias", bias, target, "float", module)


def dot_product_attention(query, key, value, *, mask=None, bias=None, is_causal: bool = False,
                          q_seq_lengths=None, kv_seq_lengths=None, window_size: int | None = None, q_offset=0,
                          scale: float | None = None, dropout_rate: float = 0.0, dropout_rng=None,
                          implementation: str | None = None, return_weights: bool = False,
                          q_chunk_size: int = 512, kv_chunk_size: int = 512):
    """Scaled dot-product attention `softmax(q k^T * scale + bias, masked) v` per head.

    Args:
      query: `[batch, q_len, heads, head_dim]`.
      key: `[batch, kv_len, kv_heads, head_dim]`, `heads % kv_heads == 0` (grouped-query; query head `h`
        reads key/value head `h // (heads // kv_heads)`, as `jax.nn.dot_product_attention`).
      value: `[batch, kv_len, kv_heads, value_dim]`.
      mask: bool, True = attend, broadcastable to `[batch, heads, q_len, kv_len]`.
      bias: float, added to the logits, broadcastable likewise (e.g. `alibi_bias`); keep it finite and hide
        keys with `mask` (an all `-inf` row has no softmax).
      is_causal: query `i` attends to keys `<= i + q_offset` (top-left aligned).
      q_seq_lengths, kv_seq_lengths: int `[batch]`; padded queries return zeros, padded keys are hidden.
      window_size: sliding window; keys `p - window_size < j <= p` when causal, `|p - j| < window_size`
        otherwise (`p = i + q_offset`).
      q_offset: int or int array `[]`/`[batch]`: key position of query 0 for `is_causal`/`window_size`
        (the cache index when decoding).
      scale: logit scale; default `1/sqrt(head_dim)`.
      dropout_rate, dropout_rng: dropout on the attention weights ("xla" only).
      implementation: "xla", "blockwise", "cudnn" or None (cuDNN on a GPU when it supports the call;
        otherwise "blockwise" once float32 logits would exceed `BLOCKWISE_MIN_LOGITS_BYTES`, else "xla";
        always "xla" with dropout or `return_weights`).
      return_weights: also return the (pre-dropout) weights `[batch, heads, q_len, kv_len]` float32 ("xla").
      q_chunk_size, kv_chunk_size: "blockwise" chunk lengths (need not divide the sequence lengths).

    Returns:
      `[batch, q_len, heads, value_dim]` in the inputs' dtype; `(out, weights)` with `return_weights`.
      A query row that can attend to no key returns zeros (and zero gradients), never NaN or an average.
    """
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_rank(_MODULE, name, x, 4, "[batch, time, heads, head_dim]")
        check_floating(_MODULE, name, x)
    batch, q_len, heads, head_dim = query.shape
    _, kv_len, kv_heads, _ = key.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        fail(_MODULE, "key/value batch size", f"{key.shape[0]}/{value.shape[0]}", f"{batch} (query batch)")
    check_axis_size(_MODULE, "key", key, 3, head_dim, "head_dim")
    if value.shape[1:3] != (kv_len, kv_heads):
        fail(_MODULE, "value shape", str(value.shape), f"[{batch}, {kv_len}, {kv_heads}, value_dim] (as key)")
    if heads % kv_heads:
        fail(_MODULE, "query heads / key heads", f"{heads}/{kv_heads} (query {query.shape}, key {key.shape})",
             "key/value heads that divide the query heads")
    if implementation not in (None,) + IMPLEMENTATIONS:
        fail(_MODULE, "implementation", repr(implementation), f"None or one of {IMPLEMENTATIONS}")
    if not 0.0 <= dropout_rate < 1.0:
        fail(_MODULE, "dropout_rate", dropout_rate, "a float in [0, 1)")
    if dropout_rate > 0.0 and dropout_rng is None:
        fail(_MODULE, "dropout_rng", None, "a PRNG key when dropout_rate > 0")
    if window_size is not None:
        window_size = check_positive_ints(_MODULE, "window_size", window_size)[0]
    check_positive_ints(_MODULE, "q_chunk_size", q_chunk_size)
    check_positive_ints(_MODULE, "kv_chunk_size", kv_chunk_size)

    target = (batch, heads, q_len, kv_len)
    mask4 = None if mask is None else _check_dense("mask", mask, target, "bool")
    bias4 = None if bias is None else _check_dense("bias", bias, target, "float")
    q_offset_static = isinstance(q_offset, (int, np.integer)) and int(q_offset) == 0
    offset = None if q_offset_static else _check_offset(_MODULE, q_offset)
    if offset is not None and offset.shape[0] not in (1, batch):
        fail(_MODULE, "q_offset shape", str(offset.shape), f"[] or [{batch}] (batch)")
    generated = _Generated(
        is_causal=bool(is_causal), window_size=window_size,
        q_offset=offset if (is_causal or window_size is not None) else None,
        q_lengths=None if q_seq_lengths is None else _check_lengths(_MODULE, "q_seq_lengths", q_seq_lengths, batch),
        kv_lengths=None if kv_seq_lengths is None
        else _check_lengths(_MODULE, "kv_seq_lengths", kv_seq_lengths, batch))

    dtype = jnp.result_type(query, key, value)
    query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    choose = functools.partial(_choose_implementation, implementation, query, value, kv_len, dropout_rate,
                               return_weights, generated, q_offset_static)
    chosen = choose(allow_cudnn=True)
    if chosen == "cudnn":
        try:
            return _cudnn_attention(query, key, value, mask4, bias4, generated, scale)
        except (NotImplementedError, RuntimeError) as error:  # jax.nn's own cuDNN checks, at trace time
            if implementation == "cudnn":
                fail(_MODULE, "implementation='cudnn'", f"rejected by cuDNN ({error})",
                     "a call cuDNN supports, or implementation='xla'/'blockwise'")
            chosen = choose(allow_cudnn=False)

    mask5 = None if mask4 is None else _heads_to_groups(mask4, kv_heads)
    bias5 = None if bias4 is None else _heads_to_groups(bias4, kv_heads)
    if chosen == "blockwise":
        if dropout_rate > 0.0:
            fail(_MODULE, "dropout_rate with implementation='blockwise'", dropout_rate,
                 "0.0 (attention dropout is supported by implementation='xla' only)")
        if return_weights:
            fail(_MODULE, "return_weights with implementation='blockwise'", True,
                 "False (the blockwise path never materialises the weights; use implementation='xla')")
        return _blockwise(query, key, value, mask5, bias5, generated, scale, q_chunk_size, kv_chunk_size)
    if generated.is_causal and generated.q_offset is None and dropout_rate == 0.0 and not return_weights:
        return _causal_xla_attention(query, key, value, mask5, bias5, generated, scale)
    out, weights = _xla_attention(query, key, value, mask5, bias5, generated, scale, dropout_rate, dropout_rng)
    return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------------------------------------
# MultiHeadAttention.


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query heads, optional RoPE, q/k normalisation and a decoding cache.

    `__call__(inputs_q: [batch, q_len, features], inputs_kv: [batch, kv_len, kv_features] | None, *, mask,
    bias, is_causal, deterministic, return_weights, positions) -> [batch, q_len, out_features]`
    (`(out, weights [batch, heads, q_len, kv_len])` with `return_weights`). `inputs_kv=None` is
    self-attention. The weights are computed (on the "xla" path) when `return_weights=True` or when the
    "intermediates" collection is mutable, and then always sown as `intermediates/attention_weights`.

    Decoding (`decode=True`, self-attention, always causal): the "cache" collection holds `cached_key`,
    `cached_value` `[batch, max_decode_length, kv_heads, head_dim]` (keys already rotated by RoPE),
    `cache_index` and `overflowed`. `init` creates an empty cache (and runs ordinary causal attention); each
    later call with `mutable=["cache"]` appends its `q_len` tokens (a prefill of any length, then one token at
    a time) at positions `cache_index + arange(q_len)` and attends to everything cached so far. `mask`/`bias`
    then broadcast to `[batch, heads, q_len, max_decode_length]`.

    Overflow: a call whose tokens do not fit raises `ValueError` when that is known while tracing
    (`q_len > max_decode_length`, or an eager call with a concrete `cache_index`). Under `jit` (or inside a
    scanned stack) the index is traced and cannot raise without `checkify`, so the overflowing call and every
    later one return NaN instead; the write itself is clamped by `dynamic_update_slice`, hence the poisoning.
    """

    num_heads: int
    num_kv_heads: int | None = None  # None: num_heads (multi-head); 1: multi-query; else grouped-query
    head_dim: int | None = None  # None: query features // num_heads
    out_features: int | None = None  # None: query features
    qk_norm: bool | str = False  # True / "layernorm": LayerNorm on q and k per head (Dehghani et al. 2023); "rmsnorm"
    dropout_rate: float = 0.0  # dropout on the attention weights
    use_bias: bool = True  # biases of the q/k/v/out projections
    implementation: str | None = None  # see `dot_product_attention`
    chunk_size: int = 512  # query and key chunk length of the "blockwise" implementation
    rope: bool | RoPEConfig | None = None  # rotary embedding on q and k (self-attention); True: RoPEConfig()
    decode: bool = False  # autoregressive decoding with the "cache" collection
    max_decode_length: int | None = None  # cache length; required with decode=True
    dtype: Dtype | None = None  # compute dtype; None: the inputs' dtype
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    def _dense(self, features, axis, name, kernel_axes, bias_axes):
        """`kernel_axes`, `bias_axes`: logical axis names of the kernel and bias (see `layers.partitioning`)."""
        return nn.DenseGeneral(features, axis=axis, use_bias=self.use_bias, dtype=self.dtype,
                               param_dtype=self.param_dtype, dot_general=flat_dot_general,
                               kernel_init=with_axes(self.kernel_init, kernel_axes),
                               bias_init=with_axes(self.bias_init, bias_axes), name=name)

    def _check_config(self, module: str, features: int):
        check_positive_ints(module, "num_heads", self.num_heads)
        kv_heads = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        check_positive_ints(module, "num_kv_heads", kv_heads)
        if self.num_heads % kv_heads:
            fail(module, "num_heads / num_kv_heads", f"{self.num_heads}/{kv_heads}",
                 "num_kv_heads that divides num_heads")
        head_dim = self.head_dim
        if head_dim is None:
            if features % self.num_heads:
                fail(module, "query features", f"{features}", f"a multiple of num_heads={self.num_heads}, "
                     "or an explicit head_dim")
            head_dim = features // self.num_heads
        check_positive_ints(module, "head_dim", head_dim)
        if self.rope and head_dim % 2:
            fail(module, "head_dim with rope", head_dim, "an even number (rotary channels come in pairs)")
        if self.qk_norm not in (False, True, "layernorm", "rmsnorm"):
            fail(module, "qk_norm", repr(self.qk_norm), "False, True, 'layernorm' or 'rmsnorm'")
        return kv_heads, head_dim

    def _normalise(self, x, name):
        if self.qk_norm in (True, "layernorm"):
            return nn.LayerNorm(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
        return nn.RMSNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, *, mask=None, bias=None, is_causal: bool = False,
                 deterministic: bool = True, return_weights: bool = False, positions=None):
        module = "MultiHeadAttention"
        check_rank(module, "inputs_q", inputs_q, 3, "[batch, q_len, features]")
        check_floating(module, "inputs_q", inputs_q)
        batch, q_len, features = inputs_q.shape
        kv_heads, head_dim = self._check_config(module, features)
        check_size_as_at_init(module, "inputs_q features (axis -1)", features, inputs_q.shape, self,
                              ("query", "kernel"))
        self_attention = inputs_kv is None
        if not self_attention:
            check_rank(module, "inputs_kv", inputs_kv, 3, "[batch, kv_len, kv_features]")
            check_floating(module, "inputs_kv", inputs_kv)
            check_axis_size(module, "inputs_kv", inputs_kv, 0, batch, "batch size")
            check_size_as_at_init(module, "inputs_kv features (axis -1)", inputs_kv.shape[-1], inputs_kv.shape,
                                  self, ("key", "kernel"))
            if self.decode:
                fail(module, "inputs_kv with decode=True", "given", "None (the cache serves self-attention)")
            if self.rope:
                fail(module, "inputs_kv with rope", "given", "None (rotary embeddings need shared positions)")
        if not self.decode:  # Decoding masks span the cache and are checked against its length.
            kv_len = q_len if self_attention else inputs_kv.shape[1]
            check_mask_and_bias(module, mask, bias, (batch, self.num_heads, q_len, kv_len))
        inputs_kv = inputs_q if self_attention else inputs_kv

        # Heads are the tensor-parallel axis: q/k/v split their output heads, `out` its input heads.
        query = self._dense((self.num_heads, head_dim), -1, "query", (EMBED, HEADS, HEAD_DIM),
                            (HEADS, HEAD_DIM))(inputs_q)  # [B, Tq, H, D]
        kv_axes = ((EMBED, KV_HEADS, HEAD_DIM), (KV_HEADS, HEAD_DIM))
        key = self._dense((kv_heads, head_dim), -1, "key", *kv_axes)(inputs_kv)  # [B, Tk, KVH, D]
        value = self._dense((kv_heads, head_dim), -1, "value", *kv_axes)(inputs_kv)
        if self.qk_norm:
            query, key = self._normalise(query, "query_norm"), self._normalise(key, "key_norm")

        q_offset = 0
        if self.decode:
            query, key, value, q_offset = self._decode_step(module, query, key, value, positions)
            is_causal = True
        elif self.rope:
            query, key = self._rotate(query, positions), self._rotate(key, positions)

        want_weights = return_weights or (self.is_mutable_collection("intermediates")
                                          and self.implementation in (None, "xla"))
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        result = dot_product_attention(
            query, key, value, mask=mask, bias=bias, is_causal=is_causal, q_offset=q_offset,
            dropout_rate=self.dropout_rate if dropout_rng is not None else 0.0, dropout_rng=dropout_rng,
            implementation=self.implementation, return_weights=want_weights, q_chunk_size=self.chunk_size,
            kv_chunk_size=self.chunk_size)
        out, weights = result if want_weights else (result, None)
        if weights is not None:
            self.sow("intermediates", "attention_weights", weights)
        if self.decode:
            out = jnp.where(self.get_variable("cache", "overflowed"), jnp.nan, out)
        out = self._dense(self.out_features or features, (-2, -1), "out", (HEADS, HEAD_DIM, EMBED),
                          (EMBED,))(out)  # [B, Tq, F_out]
        return (out, weights) if return_weights else out

    def _rotate(self, x, positions):
        config = self.rope if isinstance(self.rope, RoPEConfig) else RoPEConfig()
        return apply_rope(x, positions, base=config.base)

    def _decode_step(self, module, query, key, value, positions):
        """Writes the new keys/values into the cache; returns the query, keys, values and query offset that
        attention should read."""
        if self.max_decode_length is None:
            fail(module, "max_decode_length", None, "the cache length (an int) when decode=True")
        length = check_positive_ints(module, "max_decode_length", self.max_decode_length)[0]
        batch, q_len = query.shape[:2]
        if q_len > length:
            fail(module, "decode input length", f"{q_len} (query shape {query.shape})",
                 f"<= max_decode_length {length}")
        initialised = self.has_variable("cache", "cached_key")
        cache_shape = (batch, length) + key.shape[2:]
        cached_key = self.variable("cache", "cached_key", jnp.zeros, cache_shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, cache_shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        overflowed = self.variable("cache", "overflowed", lambda: jnp.array(False))
        if not initialised:  # init: create the cache, run plain causal attention over the inputs
            if self.rope:
                query, key = self._rotate(query, positions), self._rotate(key, positions)
            return query, key, value, 0
        if cached_key.value.shape != cache_shape:
            fail(module, "decode inputs batch/heads", f"key shape {key.shape}",
                 f"[{cached_key.value.shape[0]}, q_len, {key.shape[2]}, {key.shape[3]}] (the cache's batch)")
        index = cache_index.value
        if not isinstance(index, jax.core.Tracer) and int(index) + q_len > length:
            fail(module, "cache_index + decode input length", f"{int(index)} + {q_len}",
                 f"<= max_decode_length {length} (the cache is full)")
        if positions is None:
            positions = index + jnp.arange(q_len)
        if self.rope:
            query, key = self._rotate(query, positions), self._rotate(key, positions)
        cached_key.value = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                                    (0, index, 0, 0))
        cached_value.value = lax.dynamic_update_slice(cached_value.value,
                                                      value.astype(cached_value.value.dtype), (0, index, 0, 0))
        cache_index.value = index + q_len
        overflowed.value = jnp.logical_or(overflowed.value, index + q_len > length)
        # Keys beyond index + q_len are still zeros; the causal mask at offset `index` hides them.
        return query, cached_key.value, cached_value.value, index
