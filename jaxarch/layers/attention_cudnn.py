"""The "cudnn" attention kernel: `jax.nn.dot_product_attention(..., implementation="cudnn")`, GPU only,
float16/bfloat16, with the rows that see no key zeroed to keep the shared contract of every kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxarch.layers.masks import MaskSpec


def cudnn_unsupported(query, value, dropout_rate, return_weights, spec: MaskSpec, q_offset_static, backend):
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
    if spec.window_size is not None and not spec.is_causal:
        return "a non-causal window", "is_causal=True with window_size for implementation='cudnn'"
    return None


def cudnn_attention(query, key, value, mask4, bias4, spec: MaskSpec, scale):
    """cuDNN flash attention through `jax.nn`. query `[B, Tq, H, D]`, key/value `[B, Tk, KVH, D]`, `mask4`/`bias4`
    `[B|1, H|1, Tq|1, Tk|1]` or None. Returns `[B, Tq, H, D]`.

    cuDNN's output on a row with no visible key is not specified by `jax.nn`, so such rows (by
    `MaskSpec.rows_with_keys`, the one definition of what the masks hide) are zeroed here.
    """
    batch, q_len, heads, _ = query.shape
    kv_len = key.shape[1]
    full = (q_len, kv_len)
    if mask4 is not None:  # cuDNN wants the full [q_len, kv_len] extent
        mask4 = jnp.broadcast_to(mask4, mask4.shape[:2] + full)
    if bias4 is not None:
        bias4 = jnp.broadcast_to(bias4, bias4.shape[:2] + full).astype(query.dtype)
    lengths = {}
    if spec.q_lengths is not None or spec.kv_lengths is not None:
        lengths = dict(
            query_seq_lengths=jnp.full((batch,), q_len, jnp.int32) if spec.q_lengths is None else spec.q_lengths,
            key_value_seq_lengths=jnp.full((batch,), kv_len, jnp.int32) if spec.kv_lengths is None
            else spec.kv_lengths)
    # jax.nn's causal window (left, right) counts keys before and after the query: `window_size - 1` before.
    window = None if spec.window_size is None else (spec.window_size - 1, 0)
    out = jax.nn.dot_product_attention(query, key, value, bias=bias4, mask=mask4, scale=scale,
                                       is_causal=spec.is_causal, local_window_size=window,
                                       implementation="cudnn", **lengths)
    rows = spec.rows_with_keys(q_len, kv_len, mask4)  # [B|1, H|1, Tq]
    rows = jnp.transpose(rows, (0, 2, 1))[..., None]  # [B|1, Tq, H|1, 1]
    return jnp.where(rows, out, jnp.zeros((), out.dtype))
