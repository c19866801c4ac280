"""Property tests over random shapes: convolution against flax.linen.Conv, pooling against a NumPy loop, the RNN
wrapper against a hand-stepped cell, and attention against a float64 NumPy formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attention_masks import reference_attention

from jaxarch import layers

# Every example has new shapes and so compiles anew: few examples, no per-example deadline.
FEW = settings(max_examples=12, deadline=None)


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@st.composite
def conv_problems(draw):
    rank = draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = draw(st.sampled_from(["SAME", "VALID", "CAUSAL"]))
    window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
    spatial = tuple(draw(st.integers(w, w + 6)) for w in window)
    return dict(batch=draw(st.integers(1, 3)), spatial=spatial, in_features=draw(st.integers(1, 4)),
                features=draw(st.integers(1, 5)), kernel=kernel, strides=strides, dilation=dilation,
                padding=padding, seed=draw(st.integers(0, 2**16)))


@FEW
@given(conv_problems())
def test_conv_equals_flax_conv_and_the_shape_formula(p):
    x = _normal(p["seed"], (p["batch"], *p["spatial"], p["in_features"]))
    ours = layers.Conv(p["features"], p["kernel"], strides=p["strides"], kernel_dilation=p["dilation"],
                       padding=p["padding"])
    params = ours.init(jax.random.PRNGKey(p["seed"]), x)
    window = [(k - 1) * d + 1 for k, d in zip(p["kernel"], p["dilation"])]
    # CAUSAL is explicit left padding of window - 1 in flax's terms.
    flax_padding = [(w - 1, 0) for w in window] if p["padding"] == "CAUSAL" else p["padding"]
    reference = nn.Conv(p["features"], p["kernel"], strides=p["strides"], kernel_dilation=p["dilation"],
                        padding=flax_padding)
    y = ours.apply(params, x)
    np.testing.assert_allclose(y, reference.apply(params, x), rtol=1e-5, atol=1e-5)
    if p["padding"] == "VALID":
        expected = [(n - w) // s + 1 for n, w, s in zip(p["spatial"], window, p["strides"])]
    else:
        expected = [-(-n // s) for n, s in zip(p["spatial"], p["strides"])]
    assert y.shape == (p["batch"], *expected, p["features"])


def _pool_reference(x, window, strides, reduce):
    """VALID pooling by an explicit loop over output positions of `x: [B, *spatial, C]`."""
    spatial = x.shape[1:-1]
    out_shape = [(n - w) // s + 1 for n, w, s in zip(spatial, window, strides)]
    out = np.empty((x.shape[0], *out_shape, x.shape[-1]), np.float64)
    for index in np.ndindex(*out_shape):
        region = tuple(slice(i * s, i * s + w) for i, s, w in zip(index, strides, window))
        block = x[(slice(None), *region, slice(None))]
        out[(slice(None), *index, slice(None))] = reduce(block, axis=tuple(range(1, len(window) + 1)))
    return out


@FEW
@given(rank=st.integers(1, 2), data=st.data())
def test_pooling_equals_a_loop_over_windows(rank, data):
    window = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    spatial = tuple(data.draw(st.integers(w, w + 5)) for w in window)
    x = _normal(data.draw(st.integers(0, 2**16)), (2, *spatial, 3))
    np.testing.assert_allclose(layers.max_pool(x, window, strides), _pool_reference(x, window, strides, np.max),
                               rtol=1e-6)
    np.testing.assert_allclose(layers.min_pool(x, window, strides), _pool_reference(x, window, strides, np.min),
                               rtol=1e-6)
    np.testing.assert_allclose(layers.avg_pool(x, window, strides), _pool_reference(x, window, strides, np.mean),
                               rtol=1e-5, atol=1e-6)


@FEW
@given(cell_name=st.sampled_from(["lstm", "gru", "rnn"]), batch=st.integers(1, 4), time=st.integers(1, 7),
       in_features=st.integers(1, 5), features=st.integers(1, 5), reverse=st.booleans(), data=st.data())
def test_rnn_equals_a_hand_stepped_cell_with_lengths(cell_name, batch, time, in_features, features, reverse, data):
    seed = data.draw(st.integers(0, 2**16))
    lengths = np.asarray(data.draw(st.lists(st.integers(0, time), min_size=batch, max_size=batch)), np.int32)
    x = _normal(seed, (batch, time, in_features))
    rnn = layers.RNN(layers.CELLS[cell_name](features), reverse=reverse, return_carry=True)
    params = rnn.init(jax.random.PRNGKey(seed), x, seq_lengths=lengths)
    carry, outputs = rnn.apply(params, x, seq_lengths=lengths)

    cell = layers.CELLS[cell_name](features)
    cell_params = {"params": params["params"]["cell"]}
    expected = np.zeros((batch, time, features), np.float32)
    for b in range(batch):
        state = cell.initialize_carry(None, (1, in_features))
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:  # Padding (t >= length) is never read and outputs zeros.
            state, y = cell.apply(cell_params, state, x[b:b + 1, t])
            expected[b, t] = y[0]
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(state)):
            np.testing.assert_allclose(got[b], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


@FEW
@given(batch=st.integers(1, 3), q_len=st.integers(1, 6), kv_len=st.integers(1, 6), kv_heads=st.integers(1, 2),
       groups=st.integers(1, 3), head_dim=st.integers(1, 4), is_causal=st.booleans(),
       implementation=st.sampled_from(["xla", "blockwise"]), data=st.data())
def test_attention_equals_a_float64_formula(batch, q_len, kv_len, kv_heads, groups, head_dim, is_causal,
                                            implementation, data):
    seed = data.draw(st.integers(0, 2**16))
    heads = kv_heads * groups
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((batch, q_len, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((batch, kv_len, kv_heads, head_dim)).astype(np.float32)
    mask = rng.random((batch, 1, q_len, kv_len)) < 0.7
    full = np.broadcast_to(mask, (batch, heads, q_len, kv_len))
    if is_causal:
        full = full & (np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None])
    out = layers.dot_product_attention(q, k, v, mask=jnp.asarray(mask), is_causal=is_causal,
                                       implementation=implementation, q_chunk_size=2, kv_chunk_size=3)
    np.testing.assert_allclose(out, reference_attention(q, k, v, full), rtol=1e-4, atol=1e-5)
