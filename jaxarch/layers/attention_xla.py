"""The "xla" attention kernel: the plain einsum formula, materialising the `[batch, heads, q_len, kv_len]` logits
(for causal attention only their lower staircase, query chunk by query chunk).

Shared contract of every kernel (see `dot_product_attention`): float32 softmax, a query row with no key to attend
returns zeros and zero gradients. Masks follow `jaxarch.layers.masks`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.layers.masks import MaskSpec, logical_and

# Causal attention computes only the lower staircase of the logits: the queries are split into static chunks and
# a chunk reads only the keys before its end, (n + 1) / 2n of the square for n chunks (timings:
# docs/performance/attention.md).
CAUSAL_QUERY_CHUNK = 64  # the smallest query chunk; shorter sequences are not split
CAUSAL_MAX_CHUNKS = 8  # more chunks save little and grow the program


def accumulation_dtype(dtype):
    """The dtype logits, softmax statistics and sums are kept in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


def xla_attention(query, key, value, mask5, bias5, spec: MaskSpec, scale, dropout_rate, dropout_rng,
                  q_start: int = 0, kv_len: int | None = None):
    """Plain einsum attention. Returns `([B, Tq, H, Dv], weights [B, H, Tq, Tk] float32)`.

    query `[B, Tq, H, D]`, key/value `[B, Tk, KVH, D|Dv]`; `mask5`/`bias5` `[B|1, KVH|1, G|1, Tq|1, Tk|1]` or
    None. `q_start`: the index of the first query row, when `query` is a chunk of the rows; `kv_len`: the
    number of real keys (default `Tk`).
    """
    batch, q_len, heads, head_dim = query.shape
    chunk_keys, kv_heads = key.shape[1], key.shape[2]
    kv_len = chunk_keys if kv_len is None else kv_len
    groups = heads // kv_heads
    accumulation = accumulation_dtype(query.dtype)
    grouped = groups > 1
    if grouped:
        query = jnp.reshape(query, (batch, q_len, kv_heads, groups, head_dim))  # [B, Tq, KVH, G, D]
        logits_spec, out_spec = "bqhgd,bkhd->bhgqk", "bhgqk,bkhd->bqhgd"
    else:  # one query head per key head: 4-D einsums skip the grouped layout's reshapes
        logits_spec, out_spec = "bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd"
        mask5, bias5 = (None if x is None else x[:, :, 0] for x in (mask5, bias5))  # [B|1, H|1, Tq|1, Tk|1]
    logits = jnp.einsum(logits_spec, query, key, preferred_element_type=accumulation) * scale
    if bias5 is not None:
        logits = logits + bias5.astype(accumulation)
    q_index = np.arange(q_start, q_start + q_len)
    index_mask = None
    if not spec.hides_nothing:
        index_mask = spec.mask(jnp.asarray(q_index), jnp.arange(chunk_keys), kv_len)  # [B|1, 1, Tq, Tk]
        if grouped:
            index_mask = index_mask[:, :, None]
    mask = logical_and(mask5, index_mask)
    if mask is not None:
        # A finite fill keeps fully-masked rows finite (uniform); the second `where` then zeros them.
        logits = jnp.where(mask, logits, jnp.finfo(accumulation).min)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, KVH, G, Tq, Tk], or [B, H, Tq, Tk]
    if mask is not None and not (mask5 is None and spec.every_row_sees_a_key(q_index, kv_len)):
        # Only a fully-masked row keeps weight on masked keys; in a row with any visible key, exp(min - max)
        # underflows to exactly 0, so the pass may be skipped when (statically) every row sees a key.
        weights = jnp.where(mask, weights, 0.0)
    attended = weights
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (batch, kv_heads, groups, q_len, chunk_keys))
        attended = jnp.where(jnp.reshape(keep, weights.shape), weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(out_spec, attended.astype(value.dtype), value, preferred_element_type=accumulation)
    out = jnp.reshape(out, (batch, q_len, heads, value.shape[-1])).astype(query.dtype)
    return out, jnp.reshape(weights, (batch, heads, q_len, chunk_keys))


def causal_chunks(q_len: int) -> list[tuple[int, int]]:
    """Static `(start, stop)` query ranges for `causal_xla_attention`."""
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


def causal_xla_attention(query, key, value, mask5, bias5, spec: MaskSpec, scale):
    """`xla_attention` for causal masks at query offset 0 (no dropout, no weights), one query chunk at a time.

    Query `i` sees keys `<= i` only, so chunk `start:stop` needs keys `:stop`: the logits it leaves out are
    masked ones, each of which adds exp(min - max) = 0 to its row's softmax, so every row's values equal the
    unchunked ones to float rounding, and both differentiation modes work (the chunking is static slicing).
    """
    kv_len = key.shape[1]
    outs = []
    for start, stop in causal_chunks(query.shape[1]):
        visible = min(stop, kv_len)
        out, _ = xla_attention(query[:, start:stop], key[:, :visible], value[:, :visible],
                               _slice_dense(mask5, start, stop, visible), _slice_dense(bias5, start, stop, visible),
                               spec, scale, 0.0, None, q_start=start, kv_len=kv_len)
        outs.append(out)
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
