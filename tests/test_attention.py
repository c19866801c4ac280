"""Attention against a float64 NumPy formula, the mask helpers against loops, and MultiHeadAttention's cache.

Every dimension has its own size so a swapped axis fails: batch 2, q_len 5, kv_len 7, kv_heads 3, 4 query heads
per kv head (heads 12), head_dim 8, value_dim 6. Compiles dominate the run time on CPU, so each test jits
one function that covers both implementations.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.layers import attention as attention_lib
from jaxarch.layers import attention_dispatch, attention_xla
from jaxarch.layers.attention import (MultiHeadAttention, causal_mask, combine_masks, dot_product_attention,
                                      padding_mask, sliding_window_mask)
from jaxarch.layers.position import (LearnedPositionEmbedding, RelativePositionBias, RoPEConfig, alibi_bias,
                                     alibi_slopes, apply_rope, sinusoidal_positions)

B, TQ, TK, KVH, G, D, DV = 2, 5, 7, 3, 4, 8, 6
H = KVH * G
SCALE = 1.0 / np.sqrt(D)
CHUNKS = dict(q_chunk_size=2, kv_chunk_size=3)  # divide neither 5 nor 7


def _inputs(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, TQ, H, D))
    k = rng.normal(size=(B, TK, KVH, D))
    v = rng.normal(size=(B, TK, KVH, DV))
    d_out = rng.normal(size=(B, TQ, H, DV))
    return [jnp.asarray(x, dtype) for x in (q, k, v, d_out)]


def reference_attention(q, k, v, mask, bias):
    """float64 NumPy attention with an explicit full mask `[B, H, Q, K]`; returns the output and its VJP."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    k_heads, v_heads = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)  # head h reads kv head h // G
    logits = np.einsum("bqhd,bkhd->bhqk", q, k_heads) * SCALE
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    logits = np.where(mask, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    weights = np.where(mask, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    total = weights.sum(-1, keepdims=True)
    weights = weights / np.where(total > 0, total, 1.0)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v_heads)

    def vjp(d_out):
        d_out = np.asarray(d_out, np.float64)
        d_weights = np.einsum("bqhd,bkhd->bhqk", d_out, v_heads)
        d_logits = weights * (d_weights - (d_weights * weights).sum(-1, keepdims=True))
        fold = lambda x: x.reshape(B, TK, KVH, G, -1).sum(3)  # sum the query heads sharing a kv head
        grads = [SCALE * np.einsum("bhqk,bkhd->bqhd", d_logits, k_heads),
                 fold(SCALE * np.einsum("bhqk,bqhd->bkhd", d_logits, q)),
                 fold(np.einsum("bhqk,bqhd->bkhd", weights, d_out))]
        if bias is not None:
            axes = tuple(i for i, n in enumerate(np.shape(bias)) if n == 1)
            grads.append(d_logits.sum(axes, keepdims=True))
        return grads

    return out, vjp


def _case(name):
    """(dot_product_attention kwargs, full NumPy mask [B, H, Q, K], bias or None) built without the helpers."""
    rng = np.random.default_rng(1)
    i = np.arange(TQ)[None, None, :, None]
    j = np.arange(TK)[None, None, None, :]
    full = np.ones((B, H, TQ, TK), bool)
    if name == "none":
        return {}, full, None
    if name == "causal_lengths_head_mask":
        q_lengths, kv_lengths = np.array([5, 3]), np.array([4, 0])  # batch 1 has no key at all
        head_mask = rng.random((B, H, TQ, TK)) < 0.8
        mask = (full & (j <= i) & (j < kv_lengths[:, None, None, None]) & (i < q_lengths[:, None, None, None])
                & head_mask)
        return dict(is_causal=True, q_seq_lengths=jnp.asarray(q_lengths), kv_seq_lengths=jnp.asarray(kv_lengths),
                    mask=jnp.asarray(head_mask)), mask, None
    if name == "causal_window_batch_offset":
        offsets = np.array([2, -1])[:, None, None, None]  # batch 1: query 0 sits before every key
        position = i + offsets
        mask = full & (j <= position) & (position - j < 2)
        return dict(is_causal=True, window_size=2, q_offset=jnp.array([2, -1])), mask, None
    if name == "window_padding_mask_bias":
        key_mask = rng.random((B, 1, 1, TK)) < 0.7
        bias = rng.normal(size=(B, 1, 1, TK))
        mask = full & (np.abs(i - j) < 3) & key_mask
        return dict(window_size=3, mask=jnp.asarray(key_mask)), mask, bias
    if name == "query_mask_head_bias":
        query_mask = rng.random((1, 1, TQ, TK)) < 0.6
        query_mask[0, 0, 1] = False  # a fully masked query row
        bias = rng.normal(size=(1, H, TQ, TK))
        return dict(mask=jnp.asarray(query_mask)), full & query_mask, bias
    raise KeyError(name)


CASES = ["none", "causal_lengths_head_mask", "causal_window_batch_offset", "window_padding_mask_bias",
         "query_mask_head_bias"]


@pytest.mark.parametrize("name", CASES)
def test_attention_values_and_gradients_match_float64_reference(name):
    kwargs, mask, bias = _case(name)
    q, k, v, d_out = _inputs()
    bias_in = None if bias is None else jnp.asarray(bias, jnp.float32)

    @jax.jit
    def run(q, k, v, bias):
        results = {}
        for implementation in ("xla", "blockwise"):
            def loss(q, k, v, bias):
                out = dot_product_attention(q, k, v, bias=bias, implementation=implementation, **CHUNKS, **kwargs)
                return jnp.sum(out * d_out), out

            (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, bias)
            results[implementation] = (out, [g for g in grads if g is not None])
        return results

    expected_out, vjp = reference_attention(q, k, v, mask, bias)
    expected_grads = vjp(d_out)
    empty_rows = ~mask.any(-1).transpose(0, 2, 1)  # [B, Q, H]
    for implementation, (out, grads) in run(q, k, v, bias_in).items():
        np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=2e-5, err_msg=implementation)
        assert len(grads) == len(expected_grads)
        for got, want, what in zip(grads, expected_grads, ["dq", "dk", "dv", "dbias"]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=f"{implementation} {what}")
        # a query row with nothing to attend returns exact zeros, and every gradient is finite
        np.testing.assert_array_equal(np.asarray(out)[empty_rows], 0.0)
        assert all(np.isfinite(g).all() for g in grads)
    if name in ("causal_lengths_head_mask", "causal_window_batch_offset", "query_mask_head_bias"):
        assert empty_rows.any()


def test_causal_xla_attention_by_query_chunks_matches_reference_in_both_modes(monkeypatch):
    """Causal "xla" attention computes only the lower staircase of the logits, one query chunk at a time (chunks
    shrunk to 2 rows here, so 5 queries make 3 chunks against 7 keys): values and reverse-mode gradients match the
    float64 reference, and forward mode equals the unchunked path given the same causal mask densely."""
    monkeypatch.setattr(attention_xla, "CAUSAL_QUERY_CHUNK", 2)
    assert attention_lib._causal_chunks(TQ) == [(0, 2), (2, 4), (4, 5)]
    kwargs, mask, _ = _case("causal_lengths_head_mask")
    dense = dict(kwargs, is_causal=False, mask=kwargs["mask"] & causal_mask(TQ, TK))
    q, k, v, d_out = _inputs()
    tangents = tuple(_inputs(seed=1)[:3])

    @jax.jit
    def run(q, k, v):
        chunked = lambda q, k, v: dot_product_attention(q, k, v, implementation="xla", **kwargs)
        unchunked = lambda q, k, v: dot_product_attention(q, k, v, implementation="xla", **dense)
        out, vjp = jax.vjp(chunked, q, k, v)
        return out, vjp(d_out), jax.jvp(chunked, (q, k, v), tangents), jax.jvp(unchunked, (q, k, v), tangents)

    out, grads, (jvp_out, jvp_tangent), (dense_out, dense_tangent) = run(q, k, v)
    expected_out, vjp = reference_attention(q, k, v, mask, None)
    np.testing.assert_allclose(out, expected_out, rtol=1e-4, atol=2e-5)
    for got, want, what in zip(grads, vjp(d_out), ["dq", "dk", "dv"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=what)
    np.testing.assert_allclose(jvp_out, dense_out, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jvp_tangent, dense_tangent, rtol=1e-5, atol=1e-6)


def test_mask_helpers_match_loops():
    def loop(q_len, kv_len, visible):
        return np.array([[visible(i, j) for j in range(kv_len)] for i in range(q_len)])[None, None]

    np.testing.assert_array_equal(causal_mask(3, 5), loop(3, 5, lambda i, j: j <= i))
    np.testing.assert_array_equal(causal_mask(3, 5, offset=2), loop(3, 5, lambda i, j: j <= i + 2))
    per_batch = causal_mask(3, 5, offset=jnp.array([0, 2]))
    assert per_batch.shape == (2, 1, 3, 5)
    np.testing.assert_array_equal(per_batch[1:], loop(3, 5, lambda i, j: j <= i + 2))
    np.testing.assert_array_equal(sliding_window_mask(4, 6, 2, offset=1),
                                  loop(4, 6, lambda i, j: i + 1 - 2 < j <= i + 1))
    np.testing.assert_array_equal(sliding_window_mask(4, 6, 2, causal=False), loop(4, 6, lambda i, j: abs(i - j) < 2))
    lengths = padding_mask(kv_lengths=jnp.array([2, 5]), kv_len=6, q_lengths=jnp.array([1, 3]), q_len=4)
    assert lengths.shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(lengths[1:], loop(4, 6, lambda i, j: i < 3 and j < 5))
    assert padding_mask(kv_lengths=jnp.array([2, 5]), kv_len=6).shape == (2, 1, 1, 6)
    combined = combine_masks(None, causal_mask(4, 6), lengths, None)
    np.testing.assert_array_equal(combined, np.asarray(causal_mask(4, 6)) & np.asarray(lengths))
    assert combine_masks(None, None) is None


def test_rows_with_keys_matches_the_dense_masks():
    """The cuDNN path zeros empty rows from this interval formula instead of building [q_len, kv_len]."""
    for causal, window, offset, lengths in [(True, None, 0, (7, 0)), (True, 2, 3, (2, 7)),
                                            (False, 2, -4, (7, 5)), (False, None, 0, (3, 1))]:
        generated = attention_lib._Generated(
            is_causal=causal, window_size=window, q_offset=jnp.array([offset]), q_lengths=jnp.array([5, 2]),
            kv_lengths=jnp.array(lengths))
        dense = generated.mask(jnp.arange(TQ), jnp.arange(TK))
        np.testing.assert_array_equal(attention_lib._rows_with_keys(TQ, TK, generated),
                                      np.asarray(dense).any(-1)[:, 0])


def test_cudnn_rules_are_checked_before_calling_cudnn():
    """The GPU-only rules, exercised on CPU by naming the backend."""
    q, k, v, _ = _inputs()
    generated = attention_lib._Generated(is_causal=True, window_size=None, q_offset=None, q_lengths=None,
                                         kv_lengths=None)
    reason = lambda q, v, **kw: attention_lib._cudnn_unsupported(
        q, v, kw.get("dropout", 0.0), kw.get("weights", False), kw.get("generated", generated),
        kw.get("static_offset", True), kw.get("backend", "gpu"))
    half = lambda x, dim: jnp.zeros(x.shape[:-1] + (dim,), jnp.bfloat16)
    assert reason(q, v, backend="cpu")[0] == "backend 'cpu'"
    assert reason(q, v)[0] == "dtype float32"
    assert reason(half(q, 12), half(v, 12))[0] == "head_dim 12"
    assert reason(half(q, 64), half(v, 32))[0] == "value head_dim 32"
    assert reason(half(q, 64), half(v, 64), dropout=0.1)[0] == "dropout_rate 0.1"
    assert reason(half(q, 64), half(v, 64), static_offset=False)[0] == "a q_offset other than 0"
    assert reason(half(q, 64), half(v, 64)) is None


def test_grouped_query_attention_equals_repeated_heads():
    q, k, v, _ = _inputs(2)

    @jax.jit
    def run(q, k, v):
        repeated = dot_product_attention(q, jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2), is_causal=True,
                                         implementation="xla")
        grouped = [dot_product_attention(q, k, v, is_causal=True, implementation=impl, **CHUNKS)
                   for impl in ("xla", "blockwise")]
        return repeated, grouped

    repeated, grouped = run(q, k, v)
    for out in grouped:
        np.testing.assert_allclose(out, repeated, rtol=1e-5, atol=1e-6)


def test_bfloat16_runs_finite_with_float32_softmax():
    q, k, v, d_out = _inputs(3, jnp.bfloat16)
    lengths = jnp.array([7, 2])

    @jax.jit
    def run(q, k, v):
        results = []
        for implementation in ("xla", "blockwise"):
            def loss(q, k, v):
                out = dot_product_attention(q, k, v, is_causal=True, kv_seq_lengths=lengths,
                                            implementation=implementation, **CHUNKS)
                return jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32)), out

            (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
            results.append((out, grads))
        return results

    mask = np.broadcast_to(np.tril(np.ones((TQ, TK), bool)) & (np.arange(TK) < np.array([7, 2])[:, None, None]),
                           (H, B, TQ, TK)).transpose(1, 0, 2, 3)
    expected, _ = reference_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, None)
    for out, grads in run(q, k, v):
        assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
        assert np.isfinite(np.asarray(out, np.float32)).all()
        assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=5e-2)


def test_jit_equals_eager():
    q, k, v, _ = _inputs(4)

    def run(q, k, v):  # eager "blockwise" compiles its loops anyway; the eager xla path is op by op
        return dot_product_attention(q, k, v, is_causal=True, kv_seq_lengths=jnp.array([3, 7]),
                                     implementation="xla")

    np.testing.assert_allclose(run(q, k, v), jax.jit(run)(q, k, v), rtol=1e-6, atol=1e-6)


def test_dropout_on_weights_and_return_weights():
    q, k, v, _ = _inputs(5)

    @jax.jit
    def run(q, k, v, rng):
        plain, weights = dot_product_attention(q, k, v, return_weights=True)
        dropped = dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)
        return plain, weights, dropped, dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)

    plain, weights, dropped, again = run(q, k, v, jax.random.PRNGKey(0))
    assert weights.shape == (B, H, TQ, TK)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    expected, _ = reference_attention(q, k, v, np.ones((B, H, TQ, TK), bool), None)
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=2e-5)
    np.testing.assert_array_equal(dropped, again)  # same key, same mask
    assert not np.allclose(dropped, plain)


def test_implementation_none_picks_blockwise_for_large_logits(monkeypatch):
    q, k, v, _ = _inputs(6)
    is_blockwise = lambda **kw: "custom_vjp" in str(jax.make_jaxpr(
        lambda q, k, v: dot_product_attention(q, k, v, **kw))(q, k, v))
    assert not is_blockwise()
    monkeypatch.setattr(attention_dispatch, "BLOCKWISE_MIN_LOGITS_BYTES", 0)
    assert is_blockwise()
    assert not is_blockwise(return_weights=True)  # only xla can return weights


def _error_cases():
    q, k, v, _ = _inputs()
    yield "rank", lambda: dot_product_attention(q[0], k, v), "query rank is 3 (shape (5, 12, 8)), expected rank 4"
    yield "float", lambda: dot_product_attention(q.astype(jnp.int32), k, v), "query dtype is int32"
    yield "heads", lambda: dot_product_attention(q[:, :, :10], k, v), "query heads / key heads is 10/3"
    yield "head_dim", lambda: dot_product_attention(q, k[..., :5], v), "key head_dim (axis 3) is 5"
    yield "value", lambda: dot_product_attention(q, k, v[:, :6]), "value shape is (2, 6, 3, 6)"
    yield "mask_shape", lambda: dot_product_attention(q, k, v, mask=jnp.ones((B, 1, 6, TK), bool)), \
        "mask shape is (2, 1, 6, 7), expected broadcastable to (2, 12, 5, 7)"
    yield "mask_heads", lambda: dot_product_attention(q, k, v, mask=jnp.ones((1, 4, TQ, TK), bool)), \
        "mask shape is (1, 4, 5, 7), expected broadcastable to (2, 12, 5, 7)"
    yield "mask_dtype", lambda: dot_product_attention(q, k, v, mask=jnp.ones((TQ, TK))), \
        "mask dtype is float32, expected bool"
    yield "bias_shape", lambda: dot_product_attention(q, k, v, bias=jnp.ones((B, H, TK, TQ))), \
        "bias shape is (2, 12, 7, 5), expected broadcastable to (2, 12, 5, 7)"
    yield "lengths", lambda: dot_product_attention(q, k, v, kv_seq_lengths=jnp.array([1, 2, 3])), \
        "kv_seq_lengths batch size (axis 0) is 3 (shape (3,)), expected 2"
    yield "cudnn_cpu", lambda: dot_product_attention(q, k, v, implementation="cudnn"), \
        "implementation='cudnn' input is backend 'cpu', expected a GPU"
    yield "implementation", lambda: dot_product_attention(q, k, v, implementation="flash"), \
        "implementation is 'flash', expected None or one of"
    yield "dropout_rng", lambda: dot_product_attention(q, k, v, dropout_rate=0.1), "dropout_rng is None"
    yield "blockwise_dropout", lambda: dot_product_attention(
        q, k, v, dropout_rate=0.1, dropout_rng=jax.random.PRNGKey(0), implementation="blockwise"), \
        "dropout_rate with implementation='blockwise' is 0.1"
    yield "blockwise_weights", lambda: dot_product_attention(q, k, v, return_weights=True,
                                                             implementation="blockwise"), \
        "return_weights with implementation='blockwise'"
    yield "combine", lambda: combine_masks(jnp.ones((2, 1, 3, 4), bool), jnp.ones((3, 1, 3, 4), bool)), \
        "mask shapes is [(2, 1, 3, 4), (3, 1, 3, 4)]"
    yield "padding_len", lambda: padding_mask(kv_lengths=jnp.array([1])), "kv_len is None"
    yield "window", lambda: sliding_window_mask(3, 4, 0), "window is 0"


@pytest.mark.parametrize("name,call,message", list(_error_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_invalid_inputs_raise_value_error(name, call, message):
    with pytest.raises(ValueError, match=re.escape(message) if "|" not in message else message):
        call()


# ---- MultiHeadAttention -------------------------------------------------------------------------------------

F = 10  # model features


def _tokens(seed=0, time=TK):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, time, F))


def init_variables(model, *args, seed=0, **kwargs):
    """Random parameters and an empty cache shaped by `jax.eval_shape(model.init)`: no init compile."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    rng = np.random.default_rng(seed)  # NumPy: an eager jax.random call per shape would compile each
    variables = {"params": jax.tree.map(lambda leaf: jnp.asarray(0.5 * rng.normal(size=leaf.shape), leaf.dtype),
                                        shapes.get("params", {}))}
    if "cache" in shapes:
        variables["cache"] = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes["cache"])
    return variables


def _projection_reference(params, x, num_heads, num_kv_heads, mask):
    """float64 NumPy multi-head attention from the module's parameters."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    project = lambda name: np.einsum("btf,fhd->bthd", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = project("query"), project("key"), project("value")
    group = num_heads // num_kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return np.einsum("bqhd,hdf->bqf", out, p["out"]["kernel"]) + p["out"]["bias"], weights


def test_mha_matches_float64_reference_and_sows_weights():
    x = _tokens()
    model = MultiHeadAttention(num_heads=4, num_kv_heads=2, head_dim=3, out_features=11, sow_weights=True)
    params = init_variables(model, x)["params"]
    assert params["query"]["kernel"].shape == (F, 4, 3) and params["key"]["kernel"].shape == (F, 2, 3)

    @jax.jit
    def run(params, x):
        (out, weights), state = model.apply({"params": params}, x, is_causal=True, return_weights=True,
                                            mutable=["intermediates"])
        return out, weights, state["intermediates"]["attention_weights"][0]

    out, weights, sown = run(params, x)
    expected, expected_weights = _projection_reference(params, x, 4, 2, np.tril(np.ones((TK, TK), bool)))
    assert out.shape == (B, TK, 11)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(sown, weights)


def test_mha_mutable_intermediates_alone_keeps_the_kernel_and_sows_nothing(monkeypatch):
    """A mutable "intermediates" collection (e.g. for another module's `sow`) never switches attention to the
    materialised-weights kernel; `sow_weights=True` does, explicitly."""
    monkeypatch.setattr(attention_dispatch, "BLOCKWISE_MIN_LOGITS_BYTES", 0)  # implementation None: blockwise
    x = _tokens()
    model = MultiHeadAttention(num_heads=2)
    params = init_variables(model, x)["params"]
    jaxpr = lambda model, **kw: str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, is_causal=True, **kw))(
        params))
    assert "custom_vjp" in jaxpr(model) and "custom_vjp" in jaxpr(model, mutable=["intermediates"])
    assert "custom_vjp" not in jaxpr(model.clone(sow_weights=True), mutable=["intermediates"])
    _, state = jax.eval_shape(lambda p: model.apply({"params": p}, x, mutable=["intermediates"]), params)
    assert state == {}


def test_mha_grouped_query_equals_multi_head_with_repeated_kv_projections():
    x = _tokens(1)
    grouped = MultiHeadAttention(num_heads=4, num_kv_heads=2, head_dim=3)
    full = MultiHeadAttention(num_heads=4, head_dim=3)
    params = init_variables(grouped, x)["params"]
    repeated = dict(params)
    for name in ("key", "value"):  # kv head h serves query heads 2h, 2h+1
        repeated[name] = {"kernel": jnp.repeat(params[name]["kernel"], 2, axis=1),
                          "bias": jnp.repeat(params[name]["bias"], 2, axis=0)}

    @jax.jit
    def run(params, repeated, x):
        return (grouped.apply({"params": params}, x, is_causal=True),
                full.apply({"params": repeated}, x, is_causal=True))

    a, b = run(params, repeated, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mha_causal_gradients_and_permutation_equivariance():
    x = _tokens(2)
    model = MultiHeadAttention(num_heads=2, qk_norm="rmsnorm")
    params = init_variables(model, x)["params"]

    @jax.jit
    def run(params, x, permutation):
        jacobian = jax.jacrev(lambda x: model.apply({"params": params}, x, is_causal=True))(x)  # [B,T,F,B,T,F]
        plain = lambda x: model.apply({"params": params}, x)
        return jacobian, plain(x)[:, permutation], plain(x[:, permutation])

    permutation = jnp.array([3, 0, 6, 1, 5, 2, 4])
    jacobian, permuted_out, out_of_permuted = run(params, x, permutation)
    per_time = np.abs(np.asarray(jacobian)).sum(axis=(0, 2, 3, 5))  # [t_out, t_in]
    assert (per_time[np.triu_indices(TK, 1)] == 0).all()  # exactly zero towards the future
    assert (np.diag(per_time) > 0).all()
    np.testing.assert_allclose(permuted_out, out_of_permuted, rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_only_on_relative_offset():
    rng = np.random.default_rng(7)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
    score = lambda p, s: float(jnp.sum(apply_rope(q, jnp.array([p])) * apply_rope(k, jnp.array([s]))))
    for p, s in [(3, 1), (0, 5), (9, 9)]:
        assert score(p, s) == pytest.approx(score(p + 17, s + 17), rel=1e-4, abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(q, jnp.array([5]))), jnp.linalg.norm(q), rtol=1e-6)


def _decode(cache, params, x, prefill, step):
    outputs, start = [], 0
    for stop in [prefill] + list(range(prefill + 1, x.shape[1] + 1)):
        out, cache = step(params, cache, x[:, start:stop])
        outputs.append(out)
        start = stop
    return np.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize("implementation,prefills", [("xla", (1, 4)), ("blockwise", (3,))])
def test_mha_cached_decoding_equals_full_causal_pass(implementation, prefills):
    x = _tokens(3)
    config = dict(num_heads=4, num_kv_heads=2, head_dim=4, qk_norm=True, rope=RoPEConfig(base=100.0),
                  implementation=implementation, chunk_size=2)
    model = MultiHeadAttention(**config)
    decoder = MultiHeadAttention(**config, decode=True, max_decode_length=9)
    variables = init_variables(decoder, x[:, :1])
    assert variables["cache"]["cached_key"].shape == (B, 9, 2, 4)
    full = jax.jit(lambda p, x: model.apply({"params": p}, x, is_causal=True))(variables["params"], x)

    @jax.jit
    def step(params, cache, tokens):
        out, state = decoder.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])
        return out, state["cache"]

    for prefill in prefills:
        decoded, cache = _decode(variables["cache"], variables["params"], x, prefill, step)
        np.testing.assert_allclose(decoded, full, rtol=1e-4, atol=1e-5, err_msg=f"prefill {prefill}")
        assert int(cache["cache_index"]) == TK


def test_mha_cache_overflow_raises_eagerly_and_poisons_under_jit():
    x = _tokens(4, time=4)
    model = MultiHeadAttention(num_heads=2, decode=True, max_decode_length=5)
    variables = init_variables(model, x[:, :1])
    with pytest.raises(ValueError, match=re.escape("decode input length is 6 (query shape (2, 6, 2, 5)), "
                                                   "expected <= max_decode_length 5")):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(5), _tokens(4, time=6)))
    step = jax.jit(lambda v, t: model.apply(v, t, mutable=["cache"]))
    state = {}
    for t in range(4):  # 4 of 5 slots
        _, state = step({**variables, **state}, x[:, t:t + 1])
    with pytest.raises(ValueError, match=re.escape("cache_index + decode input length is 4 + 2, "
                                                   "expected <= max_decode_length 5")):
        model.apply({**variables, **state}, x[:, :2], mutable=["cache"])  # eager: the index is concrete
    fits, state = step({**variables, **state}, x[:, :1])  # slot 5 of 5
    assert np.isfinite(fits).all()
    overflow, state = step({**variables, **state}, x[:, :1])
    assert np.isnan(overflow).all()
    assert np.isnan(step({**variables, **state}, x[:, :1])[0]).all()  # and it stays poisoned


def test_mha_invalid_configurations_raise_value_error():
    x = _tokens()
    cases = [
        (MultiHeadAttention(num_heads=3), x, {}, "query features is 10, expected a multiple of num_heads=3"),
        (MultiHeadAttention(num_heads=4, num_kv_heads=3, head_dim=2), x, {}, "num_heads / num_kv_heads is 4/3"),
        (MultiHeadAttention(num_heads=2), x[0], {}, "inputs_q rank is 2 (shape (7, 10)), expected rank 3"),
        (MultiHeadAttention(num_heads=2), x.astype(jnp.int32), {}, "inputs_q dtype is int32"),
        (MultiHeadAttention(num_heads=2), x, dict(inputs_kv=x[:1]), "inputs_kv batch size (axis 0) is 1"),
        (MultiHeadAttention(num_heads=2, head_dim=4, rope=True), x, dict(inputs_kv=x),
         "inputs_kv with rope is given"),
        (MultiHeadAttention(num_heads=2, decode=True), x, {}, "max_decode_length is None"),
        (MultiHeadAttention(num_heads=2, head_dim=3, rope=True), x, {}, "head_dim with rope is 3"),
        (MultiHeadAttention(num_heads=2), x, dict(mask=jnp.ones((B, 1, TK, 3), bool)),
         "mask shape is (2, 1, 7, 3), expected broadcastable to (2, 2, 7, 7)"),
        (MultiHeadAttention(num_heads=2, implementation="cudnn"), x, {}, "backend 'cpu', expected a GPU"),
        (MultiHeadAttention(num_heads=2, sow_weights=True, implementation="blockwise"), x, {},
         "MultiHeadAttention: sow_weights with implementation is 'blockwise', expected implementation None or 'xla'"),
        (MultiHeadAttention(num_heads=2, dropout_rate=0.1), x, {},
         "MultiHeadAttention: deterministic is None with dropout_rate=0.1"),
        (MultiHeadAttention(num_heads=2, dropout_rate=0.1, deterministic=False), x, dict(deterministic=True),
         "MultiHeadAttention: deterministic is given both as a field (False) and as a call argument (True)"),
    ]
    for model, inputs, kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), inputs, **kwargs))


# ---- position encodings --------------------------------------------------------------------------------------


def test_position_encodings():
    table = sinusoidal_positions(6, 4)
    position, channel = np.arange(6)[:, None], np.arange(2)[None, :]
    angle = position / 10000.0 ** (2 * channel / 4)
    np.testing.assert_allclose(table[:, 0::2], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(table[:, 1::2], np.cos(angle), atol=1e-6)

    np.testing.assert_allclose(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    np.testing.assert_allclose(alibi_slopes(6), [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])
    bias = alibi_bias(6, 3, 5, offset=2)
    assert bias.shape == (1, 6, 3, 5)
    np.testing.assert_allclose(bias[0, 4], -0.5 * np.abs(np.arange(3)[:, None] + 2 - np.arange(5)[None]))

    x = _tokens(time=5)
    embed = LearnedPositionEmbedding(max_length=6)
    variables = init_variables(embed, x)
    table = variables["params"]["embedding"]
    whole, shifted, beyond = jax.jit(lambda v, x: (
        embed.apply(v, x), embed.apply(v, x[:, :2], jnp.array([4, 5])), embed.apply(v, x[:, :2], jnp.array([5, 6]))
    ))(variables, x)
    np.testing.assert_allclose(whole, x + table[None, :5], rtol=1e-6)
    np.testing.assert_allclose(shifted, x[:, :2] + table[None, 4:6], rtol=1e-6)
    assert np.isfinite(beyond[:, 0]).all() and np.isnan(beyond[:, 1]).all()  # position 6 is past the table
    with pytest.raises(ValueError, match=re.escape("inputs time length is 7 (shape (2, 7, 10)), "
                                                   "expected <= max_length 6")):
        embed.apply(variables, _tokens())
    with pytest.raises(ValueError, match=re.escape("positions shape is (3,), expected (5,)")):
        embed.apply(variables, x, positions=jnp.arange(3))
    with pytest.raises(ValueError, match="dim is 5, expected an even number"):
        sinusoidal_positions(3, 5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_relative_position_bias_reads_the_offset_entry(bidirectional):
    heads, max_distance, q_len, kv_len, offset = 3, 4, 5, 9, 2
    module = RelativePositionBias(heads, max_distance, bidirectional=bidirectional)
    variables = module.init(jax.random.PRNGKey(0), q_len, kv_len, offset)
    buckets = 2 * max_distance + 1 if bidirectional else max_distance + 1
    np.testing.assert_array_equal(variables["params"]["embedding"], np.zeros((buckets, heads)))  # starts neutral
    table = np.random.default_rng(0).normal(size=(buckets, heads)).astype(np.float32)
    bias = jax.jit(module.apply, static_argnums=(1, 2))({"params": {"embedding": table}}, q_len, kv_len,
                                                         jnp.int32(offset))
    chex.assert_shape(bias, (1, heads, q_len, kv_len))
    for i in range(q_len):
        for j in range(kv_len):
            distance = j - (i + offset)  # < 0: a key in the query's past
            row = (min(max(distance, -max_distance), max_distance) + max_distance if bidirectional
                   else min(max(-distance, 0), max_distance))
            np.testing.assert_array_equal(bias[0, :, i, j], table[row])


def test_relative_position_bias_errors():
    module = RelativePositionBias(2, 4)
    with pytest.raises(ValueError, match=r"RelativePositionBias: offset is 1.5 \(shape \(\)\), expected an integer"):
        module.init(jax.random.PRNGKey(0), 3, 3, 1.5)
    with pytest.raises(ValueError, match="RelativePositionBias: max_distance is 0"):
        RelativePositionBias(2, 0).init(jax.random.PRNGKey(0), 3, 3)
    with pytest.raises(ValueError, match="RelativePositionBias: q_len is 0"):
        module.init(jax.random.PRNGKey(0), 0, 3)
