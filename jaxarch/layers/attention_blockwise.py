"""The "blockwise" attention kernel: memory-efficient attention (Rabe & Staats 2021) with FlashAttention's online
softmax (running max, running denominator, rescaled accumulator).

The forward pass is a `lax.map` over query chunks, each looping over key/value chunks. Its `custom_vjp` backward
keeps only the output and the log-sum-exp and recomputes each chunk (FlashAttention-2, Dao 2023): a `lax.scan`
over key/value chunks accumulating dK, dV, each looping over query chunks adding into dQ. Forward and backward
memory grow linearly with sequence length. Causal, length and sliding-window masks are generated per chunk from
`MaskSpec`; the inner loops are `lax.fori_loop`s whose traced bounds cover only the chunks those masks leave
visible (`MaskSpec.chunk_is_live`; causal attention does half the work). A dense `mask` or `bias` is sliced per
chunk. Reverse-mode differentiation only (no `jax.jvp`), no dropout.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxarch.layers.attention_xla import accumulation_dtype
from jaxarch.layers.masks import MaskSpec


@dataclasses.dataclass(frozen=True)
class _BlockwiseConfig:
    """Static description of one blockwise call (hashable: it is a `nondiff_argnums` argument)."""

    scale: float
    q_chunk: int
    kv_chunk: int
    kv_len: int  # unpadded key length; keys at or beyond it are padding


def _slice_chunk(x, axis: int, start, size: int):
    """Chunk of a dense mask/bias along `axis`, or the whole array when that axis broadcasts (size 1)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis)


def _live_interval(live):
    """`[first, stop)`: from the first True entry of a bool vector to just past its last (`[0, 0)` when none).
    The live chunks along one axis form one interval for one example; across examples with other offsets or
    lengths this is their hull, which may include dead chunks: computing one is harmless (its pairs are masked),
    skipping a live one never happens."""
    any_live = jnp.any(live)
    first = jnp.argmax(live)
    stop = live.shape[0] - jnp.argmax(live[::-1])
    return jnp.where(any_live, first, 0), jnp.where(any_live, stop, 0)


def _chunk_logits_and_mask(config, spec, query_chunk, key, bias, mask, q_start, kv_start):
    """Scaled logits `[B, KVH, G, qc, kc]` (float32) and their mask `[B|1, ., ., qc, kc]` for one chunk pair."""
    key_chunk = lax.dynamic_slice_in_dim(key, kv_start, config.kv_chunk, axis=2)
    logits = jnp.einsum("bhgqd,bhkd->bhgqk", query_chunk, key_chunk,
                        preferred_element_type=accumulation_dtype(query_chunk.dtype)) * config.scale
    if bias is not None:
        logits = logits + _slice_chunk(_slice_chunk(bias, 3, q_start, config.q_chunk), 4, kv_start,
                                       config.kv_chunk)
    q_index = q_start + jnp.arange(config.q_chunk)
    kv_index = kv_start + jnp.arange(config.kv_chunk)
    chunk_mask = spec.mask(q_index, kv_index, config.kv_len)[:, :, None]  # [B|1, 1, 1, qc, kc]; hides padding
    if mask is not None:
        chunk_mask = jnp.logical_and(
            chunk_mask, _slice_chunk(_slice_chunk(mask, 3, q_start, config.q_chunk), 4, kv_start,
                                     config.kv_chunk))
    return logits, chunk_mask


def _blockwise_forward(config, query, key, value, bias, aux):
    """Online-softmax forward. query `[B, KVH, G, Tq, D]`, key `[B, KVH, Tk, D]`, value `[B, KVH, Tk, Dv]`
    (Tq, Tk padded to chunk multiples). Returns output `[B, KVH, G, Tq, Dv]` and log-sum-exp `[B, KVH, G, Tq]`
    (+inf on rows with nothing to attend)."""
    mask, spec = aux
    num_q_chunks = query.shape[3] // config.q_chunk
    num_kv_chunks = key.shape[2] // config.kv_chunk
    accumulation = accumulation_dtype(query.dtype)

    def q_chunk_step(q_chunk_index):
        q_start = q_chunk_index * config.q_chunk
        query_chunk = lax.dynamic_slice_in_dim(query, q_start, config.q_chunk, axis=3)
        stats_shape = query_chunk.shape[:-1]  # [B, KVH, G, qc]
        initial = (jnp.full(stats_shape, -jnp.inf, accumulation), jnp.zeros(stats_shape, accumulation),
                   jnp.zeros(stats_shape + (value.shape[-1],), accumulation))

        def kv_chunk_step(kv_chunk_index, carry):
            running_max, denominator, accumulator = carry
            kv_start = kv_chunk_index * config.kv_chunk
            logits, chunk_mask = _chunk_logits_and_mask(config, spec, query_chunk, key, bias, mask,
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
        live = spec.chunk_is_live(q_start, config.q_chunk, jnp.arange(num_kv_chunks) * config.kv_chunk,
                                  config.kv_chunk, config.kv_len)[0]  # [nk]
        first, stop = _live_interval(live)
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
    mask, spec = aux
    accumulation = accumulation_dtype(query.dtype)
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
            logits, chunk_mask = _chunk_logits_and_mask(config, spec, query_chunk, key, bias, mask,
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

        live = spec.chunk_is_live(jnp.arange(num_q_chunks) * config.q_chunk, config.q_chunk, kv_start,
                                  config.kv_chunk, config.kv_len)[:, 0]  # [nq]
        first, stop = _live_interval(live)
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


def blockwise_attention(query, key, value, mask5, bias5, spec: MaskSpec, scale, q_chunk_size: int,
                        kv_chunk_size: int):
    """Pads to chunk multiples, moves heads ahead of time and runs the custom-VJP blockwise kernel.

    query `[B, Tq, H, D]`, key/value `[B, Tk, KVH, D|Dv]`; `mask5`/`bias5` `[B|1, KVH|1, G|1, Tq|1, Tk|1]` or
    None. Returns `[B, Tq, H, Dv]`.
    """
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
        bias5 = _pad_axis(_pad_axis(bias5.astype(accumulation_dtype(query.dtype)), 3, q_padded), 4, kv_padded)
    config = _BlockwiseConfig(scale=float(scale), q_chunk=q_chunk, kv_chunk=kv_chunk, kv_len=kv_len)
    out = _blockwise_attention(config, query, key, value, bias5, (mask5, spec))  # [B, KVH, G, Tq, Dv]
    out = jnp.transpose(out[:, :, :, :q_len], (0, 3, 1, 2, 4))
    return jnp.reshape(out, (batch, q_len, heads, out.shape[-1]))
