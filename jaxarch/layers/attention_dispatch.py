"""Scaled dot-product attention: argument checks and the choice of kernel.

Layout follows `jax.nn.dot_product_attention`: queries `[batch, q_len, heads, head_dim]`, keys and values
`[batch, kv_len, kv_heads, head_dim]`, with `heads` a multiple of `kv_heads` (grouped-query attention).
Masks follow `jaxarch.layers.masks` (boolean, True means attend, broadcastable to `[batch, heads, q_len, kv_len]`;
causal masks top-left aligned).

Three kernels share one contract (float32 softmax, scale `1/sqrt(head_dim)`, a query row with no key to attend
returns zeros and zero gradients), so the choice among them changes the result only by float rounding:

- `"xla"` (`attention_xla`): the plain einsum formula; materialises the logits.
- `"blockwise"` (`attention_blockwise`): memory-efficient online-softmax attention with a FlashAttention-2
  backward; memory linear in sequence length.
- `"cudnn"` (`attention_cudnn`): `jax.nn.dot_product_attention(..., implementation="cudnn")`, GPU only,
  float16/bfloat16.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.checks import check_axis_size, check_floating, check_positive_ints, check_rank, fail
from jaxarch.layers.attention_blockwise import blockwise_attention
from jaxarch.layers.attention_cudnn import cudnn_attention, cudnn_unsupported
from jaxarch.layers.attention_xla import causal_xla_attention, xla_attention
from jaxarch.layers.masks import MaskSpec, check_dense, check_lengths, check_offset

IMPLEMENTATIONS = ("xla", "blockwise", "cudnn")

# `implementation=None` switches from "xla" to "blockwise" once the float32 logits would exceed this size.
BLOCKWISE_MIN_LOGITS_BYTES = 2**28

_MODULE = "dot_product_attention"


def _heads_to_groups(x, kv_heads: int):
    """`[B|1, H|1, Q|1, K|1]` mask or bias to `[B|1, KVH|1, G|1, Q|1, K|1]` (head `h` = `kvh * G + g`)."""
    b, h, q, k = x.shape
    if h == 1:
        return jnp.reshape(x, (b, 1, 1, q, k))
    return jnp.reshape(x, (b, kv_heads, h // kv_heads, q, k))


def _choose_implementation(requested, query, value, kv_len, dropout_rate, return_weights, spec,
                           q_offset_static, allow_cudnn):
    """`requested` once checked, or for None: cuDNN where it supports the call, else "blockwise" when the
    float32 logits would exceed `BLOCKWISE_MIN_LOGITS_BYTES` (and neither dropout nor weights are asked
    for), else "xla"."""
    if requested in ("cudnn", None) and allow_cudnn:
        reason = cudnn_unsupported(query, value, dropout_rate, return_weights, spec, q_offset_static,
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
    mask4 = None if mask is None else check_dense(_MODULE, "mask", mask, target, "bool")
    bias4 = None if bias is None else check_dense(_MODULE, "bias", bias, target, "float")
    q_offset_static = isinstance(q_offset, (int, np.integer)) and int(q_offset) == 0
    offset = None if q_offset_static else check_offset(_MODULE, q_offset)
    if offset is not None and offset.shape[0] not in (1, batch):
        fail(_MODULE, "q_offset shape", str(offset.shape), f"[] or [{batch}] (batch)")
    spec = MaskSpec(
        is_causal=bool(is_causal), window_size=window_size,
        q_offset=offset if (is_causal or window_size is not None) else None,
        q_lengths=None if q_seq_lengths is None else check_lengths(_MODULE, "q_seq_lengths", q_seq_lengths, batch),
        kv_lengths=None if kv_seq_lengths is None
        else check_lengths(_MODULE, "kv_seq_lengths", kv_seq_lengths, batch))

    dtype = jnp.result_type(query, key, value)
    query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale

    choose = functools.partial(_choose_implementation, implementation, query, value, kv_len, dropout_rate,
                               return_weights, spec, q_offset_static)
    chosen = choose(allow_cudnn=True)
    if chosen == "cudnn":
        try:
            return cudnn_attention(query, key, value, mask4, bias4, spec, scale)
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
        return blockwise_attention(query, key, value, mask5, bias5, spec, scale, q_chunk_size, kv_chunk_size)
    if spec.is_causal and spec.q_offset is None and dropout_rate == 0.0 and not return_weights:
        return causal_xla_attention(query, key, value, mask5, bias5, spec, scale)
    out, weights = xla_attention(query, key, value, mask5, bias5, spec, scale, dropout_rate, dropout_rng)
    return (out, weights) if return_weights else out
