"""What a mask hides, one definition for every kernel: the "xla" and "blockwise" kernels and the liveness helpers of
`MaskSpec` against a dense float64 reference whose mask is written out plainly here, over random problems.

The reference states the rule of `dot_product_attention`'s docstring directly: query row `i` of example `b` sits at
`p = i + q_offset[b]` and sees key `j` iff `j <= p` (causal), `p - j < window` (window), `j - p < window` (window,
not causal), `j < kv_lengths[b]`, `i < q_lengths[b]` and the dense mask is True. A row that sees no key returns
zeros.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.layers import attention_xla, dot_product_attention
from jaxarch.layers.masks import MaskSpec


def reference_mask(batch, heads, q_len, kv_len, *, is_causal, window, offsets, q_lengths, kv_lengths, dense):
    """bool [batch, heads, q_len, kv_len], by a loop over every (example, query, key)."""
    mask = np.zeros((batch, heads, q_len, kv_len), bool)
    for b in range(batch):
        for i in range(q_len):
            p = i + offsets[b]
            for j in range(kv_len):
                visible = True
                if is_causal and j > p:
                    visible = False
                if window is not None and (p - j >= window or (not is_causal and j - p >= window)):
                    visible = False
                if kv_lengths is not None and j >= kv_lengths[b]:
                    visible = False
                if q_lengths is not None and i >= q_lengths[b]:
                    visible = False
                mask[b, :, i, j] = visible
    if dense is not None:
        mask &= np.broadcast_to(dense, mask.shape)
    return mask


def reference_attention(q, k, v, mask):
    """float64 softmax attention with a full boolean mask [B, H, Q, K]; rows with no key give zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)  # query head h reads kv head h // groups
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    peak = np.max(logits, axis=-1, keepdims=True)
    weights = np.where(mask, np.exp(logits - np.where(np.isfinite(peak), peak, 0.0)), 0.0)
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def test_window_rows_past_the_last_key_return_zeros_in_every_kernel():
    """6 queries, 2 keys, window of 2: the window of row `i` starts at key `i - 1`, past the last key (1) from row 3
    on, so rows 3-5 see no key and return zeros whichever kernel runs (the "xla" kernel used to return the mean of
    the values, as if every key were visible)."""
    q, k, v = jnp.ones((1, 6, 1, 4)), jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4))
    for implementation in ("xla", "blockwise"):
        for is_causal in (True, False):
            out = dot_product_attention(q, k, v, is_causal=is_causal, window_size=2, implementation=implementation)
            np.testing.assert_array_equal(out[0, :, 0, 0], [1, 1, 1, 0, 0, 0], err_msg=f"{implementation} "
                                          f"is_causal={is_causal}")
    spec = MaskSpec(is_causal=True, window_size=2, q_offset=None, q_lengths=None, kv_lengths=None)
    assert not spec.every_row_sees_a_key(np.arange(6), 2)
    assert spec.every_row_sees_a_key(np.arange(3), 2)
    np.testing.assert_array_equal(spec.rows_with_keys(6, 2)[0, 0], [True] * 3 + [False] * 3)


def _problem(rng, index):
    """A random attention problem; `index % 3` picks q_len <, = or > kv_len."""
    batch, kv_heads, groups, head_dim = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 3)), 3
    kv_len = int(rng.integers(1, 7))
    q_len = {0: max(1, kv_len - int(rng.integers(1, 4))), 1: kv_len, 2: kv_len + int(rng.integers(1, 4))}[index % 3]
    heads = kv_heads * groups
    is_causal = bool(rng.random() < 0.6)
    window = int(rng.integers(1, 4)) if rng.random() < 0.5 else None
    kind = rng.integers(3)
    offsets = np.zeros(batch, int)
    q_offset = 0
    if kind == 1:
        q_offset = int(rng.integers(-3, 5))
        offsets[:] = q_offset
    elif kind == 2:
        offsets = rng.integers(-3, 5, size=batch)
        q_offset = jnp.asarray(offsets, jnp.int32)
    if not (is_causal or window is not None):
        offsets[:] = 0  # an offset places queries for the causal and window masks only
    q_lengths = rng.integers(0, q_len + 1, size=batch) if rng.random() < 0.4 else None
    kv_lengths = rng.integers(0, kv_len + 1, size=batch) if rng.random() < 0.4 else None
    dense = None
    if rng.random() < 0.5:
        shape = (batch if rng.random() < 0.5 else 1, heads if rng.random() < 0.5 else 1, q_len, kv_len)
        dense = rng.random(shape) < 0.7
        dense[..., 0, :] = False  # a query row that the dense mask alone empties
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in
              ((batch, q_len, heads, head_dim), (batch, kv_len, kv_heads, head_dim),
               (batch, kv_len, kv_heads, head_dim))]
    kwargs = dict(is_causal=is_causal, window_size=window, q_offset=q_offset,
                  q_seq_lengths=None if q_lengths is None else jnp.asarray(q_lengths, jnp.int32),
                  kv_seq_lengths=None if kv_lengths is None else jnp.asarray(kv_lengths, jnp.int32),
                  mask=None if dense is None else jnp.asarray(dense))
    mask = reference_mask(batch, heads, q_len, kv_len, is_causal=is_causal, window=window, offsets=offsets,
                          q_lengths=q_lengths, kv_lengths=kv_lengths, dense=dense)
    generated = reference_mask(batch, 1, q_len, kv_len, is_causal=is_causal, window=window, offsets=offsets,
                               q_lengths=q_lengths, kv_lengths=kv_lengths, dense=None)
    spec = MaskSpec(is_causal=is_causal, window_size=window,
                    q_offset=None if kind == 0 else jnp.asarray(np.broadcast_to(offsets, (batch,)), jnp.int32),
                    q_lengths=kwargs["q_seq_lengths"], kv_lengths=kwargs["kv_seq_lengths"])
    return arrays, kwargs, mask, generated, spec, dense


@pytest.mark.parametrize("seed", range(2))
def test_kernels_and_liveness_helpers_match_the_dense_reference(seed, monkeypatch):
    # Causal "xla" attention splits queries into chunks of 2 here, so its staircase path is crossed too.
    monkeypatch.setattr(attention_xla, "CAUSAL_QUERY_CHUNK", 2)
    rng = np.random.default_rng(seed)
    empty_rows_seen = 0
    for index in range(6):
        (q, k, v), kwargs, mask, generated, spec, dense = _problem(rng, index)
        q_len, kv_len = q.shape[1], k.shape[1]
        chunks = dict(q_chunk_size=int(rng.integers(1, 4)), kv_chunk_size=int(rng.integers(1, 4)))

        @jax.jit
        def run(q, k, v):
            return {implementation: dot_product_attention(q, k, v, implementation=implementation, **chunks,
                                                          **kwargs)
                    for implementation in ("xla", "blockwise")}

        expected = reference_attention(q, k, v, mask)
        empty = ~mask.any(-1).transpose(0, 2, 1)  # [B, Q, H]
        empty_rows_seen += int(empty.sum())
        for implementation, out in run(q, k, v).items():
            message = f"seed {seed} problem {index} {implementation}: {kwargs} {chunks}"
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5, err_msg=message)
            np.testing.assert_array_equal(np.asarray(out)[empty], 0.0, err_msg=message)

        # The helpers every kernel derives its liveness from.
        full = lambda x, shape: np.broadcast_to(np.asarray(x), shape)  # [B|1, ...] helpers against [B, ...]
        np.testing.assert_array_equal(full(spec.mask(jnp.arange(q_len), jnp.arange(kv_len)), generated.shape),
                                      generated)
        rows = generated.any(-1)  # [B, 1, Q]
        np.testing.assert_array_equal(full(spec.rows_with_keys(q_len, kv_len), rows.shape), rows)
        if dense is not None:
            rows = (generated & dense).any(-1)
            np.testing.assert_array_equal(full(spec.rows_with_keys(q_len, kv_len, jnp.asarray(dense)), rows.shape),
                                          rows)
        if spec.every_row_sees_a_key(np.arange(q_len), kv_len):
            assert generated.any(-1).all()
        q_chunk, kv_chunk = chunks["q_chunk_size"], chunks["kv_chunk_size"]
        q_starts, kv_starts = np.arange(0, q_len, q_chunk), np.arange(0, kv_len, kv_chunk)
        live = np.asarray(spec.chunk_is_live(jnp.asarray(q_starts), q_chunk, jnp.asarray(kv_starts), kv_chunk,
                                             kv_len))
        for a, q_start in enumerate(q_starts):
            for c, kv_start in enumerate(kv_starts):
                visible = generated[:, :, q_start:q_start + q_chunk, kv_start:kv_start + kv_chunk].any()
                assert live[a, c] or not visible, (a, c, kwargs, chunks)
    assert empty_rows_seen > 0
