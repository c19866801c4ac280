"""Multi-head attention with its decoding cache, and the public face of the attention family.

The pieces live in flat modules beside this one, each importable from here as before:
`masks` (what a mask hides, defined once, and `causal_mask`, `sliding_window_mask`, `padding_mask`,
`combine_masks`), `attention_dispatch` (`dot_product_attention` and its choice of kernel), and the kernels
`attention_xla`, `attention_blockwise`, `attention_cudnn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxarch.checks import (check_axis_size, check_floating, check_positive_ints, check_rank, check_size_as_at_init,
                            fail, resolve_deterministic)
from jaxarch.compat import concrete_or_none
from jaxarch.layers.attention_cudnn import cudnn_unsupported as _cudnn_unsupported  # noqa: F401 (kept importable)
from jaxarch.layers.attention_dispatch import BLOCKWISE_MIN_LOGITS_BYTES, IMPLEMENTATIONS, dot_product_attention
from jaxarch.layers.attention_xla import CAUSAL_MAX_CHUNKS, CAUSAL_QUERY_CHUNK
from jaxarch.layers.attention_xla import causal_chunks as _causal_chunks  # noqa: F401 (kept importable)
from jaxarch.layers.dense import flat_dot_general
from jaxarch.layers.masks import (MaskSpec, causal_mask, check_mask_and_bias, combine_masks, padding_mask,
                                  sliding_window_mask)
from jaxarch.layers.partitioning import EMBED, HEAD_DIM, HEADS, KV_HEADS, with_axes
from jaxarch.layers.position import RoPEConfig, apply_rope

Dtype = Any

# Names this module held before the split, kept importable (`_Generated` is the old name of `MaskSpec`). The
# constants are read where they are defined: tuning one means setting it on `attention_dispatch` or
# `attention_xla`.
_Generated = MaskSpec

__all__ = [
    "BLOCKWISE_MIN_LOGITS_BYTES", "CAUSAL_MAX_CHUNKS", "CAUSAL_QUERY_CHUNK", "IMPLEMENTATIONS", "MaskSpec",
    "MultiHeadAttention", "causal_mask", "check_mask_and_bias", "combine_masks", "dot_product_attention",
    "padding_mask", "sliding_window_mask",
]


def _rows_with_keys(q_len: int, kv_len: int, spec: MaskSpec):
    """Bool `[B|1, q_len]`: whether the generated masks leave query row `i` any key (`MaskSpec.rows_with_keys`)."""
    return spec.rows_with_keys(q_len, kv_len)[:, 0]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query heads, optional RoPE, q/k normalisation and a decoding cache.

    `__call__(inputs_q: [batch, q_len, features], inputs_kv: [batch, kv_len, kv_features] | None, *, mask,
    bias, is_causal, deterministic, return_weights, positions) -> [batch, q_len, out_features]`
    (`(out, weights [batch, heads, q_len, kv_len])` with `return_weights`). `inputs_kv=None` is
    self-attention. The weights are computed (on the "xla" path) when `return_weights=True` or `sow_weights=True`;
    with `sow_weights` they are also sown as `intermediates/attention_weights`. A mutable "intermediates"
    collection alone never changes the kernel (it may hold someone else's `sow`).

    Dropout on the weights (`dropout_rate > 0`) needs `deterministic` as a field or a call argument (not both,
    as `nn.Dropout`); `deterministic=False` also needs a "dropout" rng.

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
    deterministic: bool | None = None  # or given to __call__; required (one or the other) with dropout_rate > 0
    sow_weights: bool = False  # sow the weights as intermediates/attention_weights (computes them: "xla" only)

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
                 deterministic: bool | None = None, return_weights: bool = False, positions=None):
        """Attends from `inputs_q` to `inputs_kv` (or to itself).

        Args:
          inputs_q: `[batch, q_len, features]` float queries.
          inputs_kv: `[batch, kv_len, kv_features]` keys and values; None for self-attention.
          mask: bool, True means attend, broadcastable to `[batch, heads, q_len, kv_len]` (a `[batch, kv_len]`
            padding mask goes in as `mask[:, None, None, :]`); when decoding, `kv_len` is `max_decode_length`.
          bias: float, added to the logits, broadcastable as `mask`.
          is_causal: hide the keys after each query (self-attention).
          deterministic: no attention dropout; as the field, exactly one of the two when `dropout_rate > 0`.
          return_weights: also return the weights `[batch, heads, q_len, kv_len]`.
          positions: int `[q_len]` or `[batch, q_len]` absolute positions for RoPE (default `arange(q_len)`, or the
            cache index onwards when decoding).

        Returns: `[batch, q_len, out_features]`, or `(out, weights)` with `return_weights`.
        """
        module = "MultiHeadAttention"
        deterministic = resolve_deterministic(module, self.deterministic, deterministic,
                                              {"dropout_rate": self.dropout_rate})
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

        if self.sow_weights and self.implementation not in (None, "xla"):
            fail(module, "sow_weights with implementation", repr(self.implementation),
                 "implementation None or 'xla' (only the 'xla' kernel materialises the weights)")
        want_weights = return_weights or self.sow_weights
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        result = dot_product_attention(
            query, key, value, mask=mask, bias=bias, is_causal=is_causal, q_offset=q_offset,
            dropout_rate=self.dropout_rate if dropout_rng is not None else 0.0, dropout_rng=dropout_rng,
            implementation=self.implementation, return_weights=want_weights, q_chunk_size=self.chunk_size,
            kv_chunk_size=self.chunk_size)
        out, weights = result if want_weights else (result, None)
        if self.sow_weights:
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
        known_index = concrete_or_none(index)  # None under jit: a full cache can only be caught on known values
        if known_index is not None and int(known_index) + q_len > length:
            fail(module, "cache_index + decode input length", f"{int(known_index)} + {q_len}",
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
