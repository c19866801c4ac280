"""Transformer blocks against a float64 NumPy composition, causality, scanned == unrolled stacks, cached decoding.

Sizes: batch 2, target time 7, source time 5, features 12, 4 heads over 2 kv heads (encoder) and 2 heads over
1 kv head with RoPE (decoder), MLP hidden 18, 3 layers.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.layers import attention as attention_lib
from jaxarch.layers import attention_dispatch
from jaxarch.layers.transformer import DecoderBlock, EncoderBlock, MLPBlock, TransformerDecoder, TransformerEncoder

B, T, S, F = 2, 7, 5, 12
ENCODER = dict(num_heads=4, num_kv_heads=2, mlp_ratio=1.5)
DECODER = dict(num_heads=2, num_kv_heads=1, mlp_ratio=1.5, rope=True, use_cross_attention=True)


def init_variables(model, *args, seed=0, **kwargs):
    """Random parameters and an empty cache shaped by `jax.eval_shape(model.init)`: no init compile."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    variables = {"params": jax.tree.map(lambda leaf: jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype),
                                        shapes["params"])}
    if "cache" in shapes:
        variables["cache"] = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes["cache"])
    return variables


def _features(seed, time=T):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, time, F)), jnp.float32)


# ---- float64 NumPy reference ----------------------------------------------------------------------------------

_erf = np.vectorize(math.erf)


def np_layer_norm(x, p, epsilon=1e-6):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * p["scale"] + p["bias"]


def np_mlp(x, p):
    hidden = x @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.sqrt(2.0)))
    return hidden @ p["output"]["kernel"] + p["output"]["bias"]


def np_attention(x, p, mask):
    project = lambda name: np.einsum("btf,fhd->bthd", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = project("query"), project("key"), project("value")
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.where(mask, np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]), -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return np.einsum("bqhd,hdf->bqf", out, p["out"]["kernel"]) + p["out"]["bias"]


def np_encoder_block(x, p, mask):
    x = x + np_attention(np_layer_norm(x, p["attention_norm"]), p["attention"], mask)
    return x + np_mlp(np_layer_norm(x, p["mlp_norm"]), p["mlp"])


def _float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---- tests ------------------------------------------------------------------------------------------------------


def test_mlp_block_matches_reference_jit_equals_eager_and_dropout():
    x = _features(0)
    model = MLPBlock(mlp_ratio=1.5, dropout_rate=0.5)
    variables = init_variables(model, x, deterministic=True)
    assert variables["params"]["hidden"]["kernel"].shape == (F, 18)
    eager = model.apply(variables, x, deterministic=True)
    np.testing.assert_allclose(eager, np_mlp(np.asarray(x, np.float64), _float64(variables["params"])),
                               rtol=1e-4, atol=1e-5)

    @jax.jit
    def run(variables, x, rng):
        train = lambda rng: model.apply(variables, x, deterministic=False, rngs={"dropout": rng})
        return model.apply(variables, x, deterministic=True), train(rng), train(rng)

    jitted, dropped, again = run(variables, x, jax.random.PRNGKey(1))
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dropped, again)
    assert not np.allclose(dropped, jitted)


def test_encoder_block_matches_reference_and_is_permutation_equivariant():
    x = _features(1)
    lengths = np.array([7, 4])
    mask = (np.arange(T) < lengths[:, None])[:, None, None, :]  # [B, 1, 1, T] key padding
    model = EncoderBlock(**ENCODER)
    params = init_variables(model, x)["params"]
    permutation = np.array([4, 0, 6, 2, 1, 5, 3])

    @jax.jit
    def run(params, x, mask):
        apply = lambda x, mask: model.apply({"params": params}, x, mask=mask)
        return apply(x, mask), apply(x, None)[:, permutation], apply(x[:, permutation], None)

    out, permuted_out, out_of_permuted = run(params, x, jnp.asarray(mask))
    expected = np_encoder_block(np.asarray(x, np.float64), _float64(params), mask)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(permuted_out, out_of_permuted, rtol=1e-5, atol=1e-5)


def test_decoder_block_gradients_never_flow_from_the_future():
    x, memory = _features(2), _features(3, time=S)
    model = DecoderBlock(**DECODER)
    params = init_variables(model, x, memory)["params"]
    jacobian = jax.jit(jax.jacrev(lambda x: model.apply({"params": params}, x, memory)))(x)  # [B,T,F,B,T,F]
    per_time = np.abs(np.asarray(jacobian)).sum(axis=(0, 2, 3, 5))  # [t_out, t_in]
    assert (per_time[np.triu_indices(T, 1)] == 0).all()
    assert (per_time[np.tril_indices(T)] > 0).all()


def test_block_chunk_size_reaches_blockwise_attention(monkeypatch):
    chunk_sizes = []
    attention = attention_lib.dot_product_attention

    def recording_attention(*args, **kwargs):
        chunk_sizes.append((kwargs["q_chunk_size"], kwargs["kv_chunk_size"]))
        return attention(*args, **kwargs)

    monkeypatch.setattr(attention_lib, "dot_product_attention", recording_attention)
    x = _features(4)
    blockwise = DecoderBlock(num_heads=2, implementation="blockwise", chunk_size=3)  # divides neither 7 nor 12
    params = init_variables(blockwise, x)["params"]
    out = jax.jit(lambda x: blockwise.apply({"params": params}, x))(x)
    assert chunk_sizes and set(chunk_sizes) == {(3, 3)}  # at init and at apply
    plain = DecoderBlock(num_heads=2, implementation="xla")
    np.testing.assert_allclose(out, plain.apply({"params": params}, x), rtol=1e-5, atol=1e-5)


def test_scanned_rematerialised_encoder_equals_unrolled_values_gradients_and_intermediates():
    x = _features(4)
    mask = jnp.asarray((np.arange(T) < np.array([7, 5])[:, None])[:, None, None, :])
    unrolled = TransformerEncoder(**ENCODER, num_layers=3, sow_weights=True)
    scanned = TransformerEncoder(**ENCODER, num_layers=3, scan_layers=True, remat=True, sow_weights=True)
    params = init_variables(unrolled, x)["params"]
    layers = [params[f"layers_{i}"] for i in range(3)]
    stacked = {"final_norm": params["final_norm"], "layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}
    assert jax.tree.structure(stacked) == jax.tree.structure(init_variables(scanned, x)["params"])

    def run(model):
        def loss(params):
            out, state = model.apply({"params": params}, x, mask=mask, mutable=["intermediates"])
            return jnp.sum(out ** 2), (out, state["intermediates"])

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    (_, (out_u, inter_u)), grads_u = run(unrolled)(params)
    (_, (out_s, inter_s)), grads_s = run(scanned)(stacked)
    np.testing.assert_allclose(out_s, out_u, rtol=1e-5, atol=1e-5)
    for i in range(3):
        np.testing.assert_allclose(inter_s["layers"]["attention"]["attention_weights"][0][i],
                                   inter_u[f"layers_{i}"]["attention"]["attention_weights"][0], atol=1e-6)
        jax.tree.map(lambda s, u: np.testing.assert_allclose(s[i], u, rtol=1e-4, atol=1e-5),
                     grads_s["layers"], grads_u[f"layers_{i}"])
    assert inter_s["layers"]["attention"]["attention_weights"][0].shape == (3, B, 4, T, T)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoder_stack_cached_decoding_equals_full_pass(scan_layers):
    x, memory = _features(5), _features(6, time=S)
    config = dict(**DECODER, num_layers=2, scan_layers=scan_layers)
    model = TransformerDecoder(**config)
    decoder = TransformerDecoder(**config, decode=True, max_decode_length=9)
    variables = init_variables(decoder, x[:, :1], memory)
    full = jax.jit(lambda p: model.apply({"params": p}, x, memory))(variables["params"])

    @jax.jit
    def step(params, cache, tokens):
        out, state = decoder.apply({"params": params, "cache": cache}, tokens, memory, mutable=["cache"])
        return out, state["cache"]

    cache, outputs = variables["cache"], []
    for start, stop in [(0, 3)] + [(t, t + 1) for t in range(3, T)]:
        out, cache = step(variables["params"], cache, x[:, start:stop])
        outputs.append(out)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full, rtol=1e-4, atol=1e-5)


def test_bfloat16_stack_runs_finite():
    x, memory = _features(7), _features(8, time=S)
    model = TransformerDecoder(**DECODER, num_layers=2, scan_layers=True, remat=True, dtype=jnp.bfloat16)
    params = init_variables(model, x, memory)["params"]

    def loss(params):
        out = model.apply({"params": params}, x, memory)
        return jnp.sum(out.astype(jnp.float32) ** 2), out

    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert out.dtype == jnp.bfloat16
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_invalid_inputs_raise_value_error():
    x, memory = _features(0), _features(1, time=S)
    cases = [
        (EncoderBlock(**ENCODER), (x[0],), {}, "EncoderBlock: x rank is 2 (shape (7, 12)), expected rank 3"),
        (EncoderBlock(**ENCODER), (x.astype(jnp.int32),), {}, "EncoderBlock: x dtype is int32"),
        (DecoderBlock(**DECODER), (x,), {}, "DecoderBlock: encoder_outputs is None, expected encoder outputs"),
        (DecoderBlock(num_heads=2), (x, memory), {}, "DecoderBlock: encoder_outputs is given"),
        (DecoderBlock(**DECODER), (x, memory[0]), {}, "encoder_outputs rank is 2 (shape (5, 12)), expected rank 3"),
        (TransformerEncoder(**ENCODER, num_layers=0), (x,), {}, "TransformerEncoder: num_layers is 0"),
        (TransformerEncoder(num_heads=5, num_layers=2), (x,), {}, "query features is 12, expected a multiple of "
                                                                   "num_heads=5"),
        (TransformerEncoder(**ENCODER, num_layers=2), (x,), dict(mask=jnp.ones((B, 1, 1, S), bool)),
         "mask shape is (2, 1, 1, 5), expected broadcastable to (2, 4, 7, 7)"),
        (TransformerDecoder(**DECODER, num_layers=1, decode=True, max_decode_length=6), (x, memory), {},
         "decode input length is 7 (query shape (2, 7, 2, 6)), expected <= max_decode_length 6"),
        (MLPBlock(), (jnp.ones(3),), {}, "MLPBlock: x rank is 1"),
    ]
    for model, args, kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))


def test_dropout_rates_need_deterministic_given_once():
    """As `nn.Dropout`: with a dropout rate above 0, `deterministic` comes from the field or the call (not both);
    a rate is never silently ignored. The stacks pass their own down to every block."""
    x = _features(9)
    missing = [
        (MLPBlock(dropout_rate=0.1), "MLPBlock: deterministic is None with dropout_rate=0.1"),
        (EncoderBlock(**ENCODER, dropout_rate=0.1), "EncoderBlock: deterministic is None with dropout_rate=0.1"),
        (DecoderBlock(num_heads=2, attention_dropout_rate=0.2),
         "DecoderBlock: deterministic is None with attention_dropout_rate=0.2"),
        (TransformerEncoder(**ENCODER, num_layers=1, attention_dropout_rate=0.2),
         "TransformerEncoder: deterministic is None with attention_dropout_rate=0.2"),
        (TransformerDecoder(num_heads=2, num_layers=1, dropout_rate=0.1),
         "TransformerDecoder: deterministic is None with dropout_rate=0.1"),
    ]
    for model, message in missing:
        with pytest.raises(ValueError, match=re.escape(message)):
            jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    with pytest.raises(ValueError, match=re.escape("EncoderBlock: deterministic is given both as a field (True) "
                                                   "and as a call argument (False)")):
        jax.eval_shape(lambda: EncoderBlock(**ENCODER, dropout_rate=0.1, deterministic=True).init(
            jax.random.PRNGKey(0), x, deterministic=False))

    config = dict(**ENCODER, num_layers=2, dropout_rate=0.3, attention_dropout_rate=0.3)
    params = init_variables(TransformerEncoder(**config), x, deterministic=True)["params"]
    rngs = {"dropout": jax.random.PRNGKey(3)}

    @jax.jit
    def run(params, x):
        apply = lambda model, **kw: model.apply({"params": params}, x, rngs=rngs, **kw)
        return (apply(TransformerEncoder(**config), deterministic=False),
                apply(TransformerEncoder(**config, deterministic=False)),
                apply(TransformerEncoder(**config, deterministic=True)),
                apply(TransformerEncoder(**{**config, "dropout_rate": 0.0, "attention_dropout_rate": 0.0})))

    by_argument, by_field, evaluation, without_dropout = run(params, x)
    np.testing.assert_array_equal(by_field, by_argument)
    np.testing.assert_array_equal(evaluation, without_dropout)  # rate 0: no deterministic needed
    assert not np.allclose(by_argument, evaluation)


def test_sow_weights_is_explicit_and_a_mutable_collection_changes_nothing(monkeypatch):
    """Blocks sow `mlp_output` and `attention_output` themselves: a mutable "intermediates" collection must not
    switch attention to materialised weights; `sow_weights=True` does, and sows them."""
    monkeypatch.setattr(attention_dispatch, "BLOCKWISE_MIN_LOGITS_BYTES", 0)  # implementation None: blockwise
    x = _features(10)
    model = EncoderBlock(**ENCODER)
    params = init_variables(model, x)["params"]
    plain = lambda params, x: model.apply({"params": params}, x)
    probed = lambda params, x: model.apply({"params": params}, x, mutable=["intermediates"])
    uses_blockwise = lambda fn: "custom_vjp" in str(jax.make_jaxpr(fn)(params, x))
    assert uses_blockwise(plain) and uses_blockwise(probed)
    out, state = jax.jit(probed)(params, x)
    np.testing.assert_array_equal(out, jax.jit(plain)(params, x))
    assert set(state["intermediates"]) == {"attention_output", "mlp_output"}

    sowing = EncoderBlock(**ENCODER, sow_weights=True)
    sown_out, state = jax.jit(lambda params, x: sowing.apply({"params": params}, x, mutable=["intermediates"]))(
        params, x)
    weights = state["intermediates"]["attention"]["attention_weights"][0]
    assert weights.shape == (B, ENCODER["num_heads"], T, T)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sown_out, out, rtol=1e-5, atol=1e-5)
