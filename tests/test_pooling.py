"""Pooling: NumPy loop references, equality with flax.linen (values and gradients), adaptive bins, errors.

Sizes differ on every axis (batch 3, spatial 11/9/7, features 5) so a swapped axis fails. Inputs are NumPy
draws (a new shape through jax.random costs XLA compile time on a small CPU).
"""

import itertools
import math

import chex
import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen.pooling import min_pool as flax_min_pool
from hypothesis import given, settings
from jax.test_util import check_grads

from jaxarch.compat import enable_x64
from jaxarch.layers.pooling import (adaptive_avg_pool, adaptive_max_pool, avg_pool, global_avg_pool,
                                    global_max_pool, max_pool, min_pool)

BATCH, FEATURES = 3, 5
SPATIAL = {1: (11,), 2: (11, 9), 3: (7, 9, 6)}


def _inputs(spatial, seed=0, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shape = (BATCH,) + tuple(spatial) + (FEATURES,)
    if ties:  # ReLU of rounded values: many tied maxima, zeros above all
        return jnp.asarray(np.maximum(np.round(rng.normal(size=shape) * 1.5), 0.0), dtype)
    return jnp.asarray(rng.normal(size=shape), dtype)


def _same_pads(spatial, window, strides):
    """TensorFlow's SAME rule, written out: out = ceil(n / s), the odd padding element goes after."""
    pads = []
    for n, w, s in zip(spatial, window, strides):
        total = max((math.ceil(n / s) - 1) * s + w - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _np_pool(x, window, strides, pads, kind, count_include_pad=True):
    """Loop reference: `kind` is "max", "min" or "avg"; padding never wins max/min."""
    x = np.asarray(x, np.float64)
    rank = len(window)
    fill = {"max": -np.inf, "min": np.inf, "avg": 0.0}[kind]
    padded = np.pad(x, [(0, 0)] + list(pads) + [(0, 0)], constant_values=fill)
    real = np.pad(np.ones(x.shape[1:-1]), list(pads))
    out_spatial = [(n - w) // s + 1 for n, w, s in zip(padded.shape[1:-1], window, strides)]
    out = np.zeros((x.shape[0],) + tuple(out_spatial) + (x.shape[-1],))
    axes = tuple(range(1, rank + 1))
    for index in np.ndindex(*out_spatial):
        box = tuple(slice(i * s, i * s + w) for i, s, w in zip(index, strides, window))
        patch = padded[(slice(None),) + box + (slice(None),)]
        if kind == "max":
            value = patch.max(axis=axes)
        elif kind == "min":
            value = patch.min(axis=axes)
        else:
            value = patch.sum(axis=axes) / (np.prod(window) if count_include_pad else real[box].sum())
        out[(slice(None),) + index + (slice(None),)] = value
    return out


def _np_max_pool_grad(x, window, strides, cotangent):
    """VALID max-pool gradient: each window's cotangent goes to its first maximum in row-major order."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    cotangent = np.asarray(cotangent, np.float64)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for index in np.ndindex(*cotangent.shape[1:-1]):
            starts = [i * s for i, s in zip(index, strides)]
            patch = x[(b,) + tuple(slice(o, o + w) for o, w in zip(starts, window)) + (c,)]
            first = np.unravel_index(np.argmax(patch), patch.shape)  # argmax returns the first maximum
            grad[(b,) + tuple(o + f for o, f in zip(starts, first)) + (c,)] += cotangent[(b,) + index + (c,)]
    return grad


def _value_and_vjp(pool, x, seed=2):
    """`(pool(x), vjp(cotangent))` for a random cotangent, jitted: one compile instead of one per eager op."""
    out = jax.eval_shape(pool, x)
    cotangent = jnp.asarray(np.random.default_rng(seed).normal(size=out.shape), out.dtype)

    @jax.jit
    def value_and_vjp(x, cotangent):
        y, vjp = jax.vjp(pool, x)
        return y, vjp(cotangent)[0]

    return value_and_vjp(x, cotangent)


# --------------------------------------------------------------------------------- NumPy references

CASES = [  # (rank, window, strides): non-overlapping (fast path) and overlapping (reduce_window)
    (1, (3,), None), (1, (3,), (2,)), (2, (2, 3), None), (2, (3, 2), (2, 1)), (3, (2, 2, 3), None),
    (3, (3, 2, 2), (2, 1, 2)),
]


@pytest.mark.parametrize("rank,window,strides", CASES)
@pytest.mark.parametrize("padding", ["VALID", "SAME", "explicit"])
def test_pools_match_numpy_loops(rank, window, strides, padding):
    x = _inputs(SPATIAL[rank], ties=True)
    effective_strides = strides or window
    if padding == "VALID":
        pads = [(0, 0)] * rank
    elif padding == "SAME":
        pads = _same_pads(SPATIAL[rank], window, effective_strides)
    else:
        pads = padding = [(1, 0), (0, 1), (1, 1)][:rank]
    for pool, kind in [(max_pool, "max"), (min_pool, "min")]:
        y = pool(x, window, strides, padding)
        np.testing.assert_array_equal(y, _np_pool(x, window, effective_strides, pads, kind))
    for count_include_pad in (True, False):
        y = avg_pool(x, window, strides, padding, count_include_pad=count_include_pad)
        np.testing.assert_allclose(y, _np_pool(x, window, effective_strides, pads, "avg", count_include_pad),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank,window,strides", CASES)
def test_max_pool_gradient_matches_numpy_first_maximum_rule(rank, window, strides):
    x = _inputs(SPATIAL[rank], ties=True)
    y, vjp = jax.vjp(lambda x: max_pool(x, window, strides), x)
    cotangent = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0],
                               _np_max_pool_grad(x, window, strides or window, cotangent), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", [
    lambda x: max_pool(x, (2, 3)), lambda x: min_pool(x, (2, 3), padding="SAME"),
    lambda x: avg_pool(x, (2, 3), padding="SAME", count_include_pad=False), lambda x: avg_pool(x, (3, 2), (2, 1)),
    lambda x: adaptive_avg_pool(x, (3, 4)), lambda x: adaptive_max_pool(x, (3, 2)),
    global_avg_pool, global_max_pool,
])
def test_gradients_match_finite_differences(pool):
    with enable_x64(True):
        # A permutation has no ties and gaps of 1, far wider than the finite-difference step.
        values = np.random.default_rng(0).permutation(2 * 7 * 5 * 3).reshape(2, 7, 5, 3)
        check_grads(jax.jit(pool), (jnp.asarray(values, jnp.float64),), order=1, modes=["rev"])


# ------------------------------------------------------------ fast path == reduce_window (flax.linen)


@pytest.mark.parametrize("rank,window,padding", [
    (1, (3,), "SAME"), (2, (2, 2), "SAME"), (2, (3, 2), [(1, 1), (0, 1)]), (2, (4, 3), "VALID"), (3, (2, 3, 2), "SAME"),
])
def test_fast_path_equals_flax_values_and_gradients_with_ties(rank, window, padding):
    x = _inputs(SPATIAL[rank], ties=True)
    ours = {"max": lambda x: max_pool(x, window, padding=padding),
            "min": lambda x: min_pool(x, window, padding=padding),
            "avg": lambda x: avg_pool(x, window, padding=padding)}
    theirs = {"max": lambda x: nn.max_pool(x, window, window, padding),
              "min": lambda x: flax_min_pool(x, window, window, padding),
              "avg": lambda x: nn.avg_pool(x, window, window, padding)}
    for kind in ours:
        assert "reduce_window" not in str(jax.make_jaxpr(ours[kind])(x)), "fast path not taken"
        y, grad = _value_and_vjp(ours[kind], x)
        y_ref, grad_ref = _value_and_vjp(theirs[kind], x)
        if kind == "avg":
            np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(grad, grad_ref)


def test_overlapping_windows_use_reduce_window():
    x = _inputs(SPATIAL[2])
    assert "reduce_window" in str(jax.make_jaxpr(lambda x: max_pool(x, (3, 3), (2, 2)))(x))


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_fast_max_pool_equals_reduce_window_property(data):
    rank = data.draw(st.integers(1, 3), label="rank")
    window = tuple(data.draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank), label="window"))
    spatial = tuple(w * data.draw(st.integers(1, 3)) + data.draw(st.integers(0, w - 1)) for w in window)
    padding = data.draw(st.sampled_from(["VALID", "SAME"]), label="padding")
    batch, features = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    # Few distinct values, so windows are often tied.
    x = jnp.asarray(rng.integers(-2, 3, size=(batch,) + spatial + (features,)), jnp.float32)
    y, grad = _value_and_vjp(lambda x: max_pool(x, window, padding=padding), x)
    y_ref, grad_ref = _value_and_vjp(lambda x: nn.max_pool(x, window, window, padding), x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(grad, grad_ref)


def test_fast_path_under_jit_and_vmap():
    x = _inputs(SPATIAL[2], ties=True)

    def loss(x):
        return jnp.sum(max_pool(x, (2, 2)) ** 2)

    eager = jax.grad(loss)(x)
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), eager)
    # vmap over the batch of unbatched [H, W, C] examples gives the per-example gradients of the batch.
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.grad(loss)))(x), eager)
    stacked = jnp.stack([x, x[::-1]])  # an extra leading vmap axis over batched inputs
    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.grad(loss)))(stacked)[1], eager[::-1])


def test_fast_path_forward_mode_equals_flax():
    x = _inputs((7, 6), ties=True)
    tangent = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
    ours = jax.jit(lambda x, t: jax.jvp(lambda x: max_pool(x, (2, 3)), (x,), (t,)))
    theirs = jax.jit(lambda x, t: jax.jvp(lambda x: nn.max_pool(x, (2, 3), (2, 3)), (x,), (t,)))
    chex.assert_trees_all_equal(ours(x, tangent), theirs(x, tangent))


@pytest.mark.parametrize("pool", [max_pool, min_pool, avg_pool])
def test_unbatched_input_equals_batched(pool):
    x = _inputs(SPATIAL[2])
    np.testing.assert_array_equal(pool(x[1], (2, 3), padding="SAME"), pool(x, (2, 3), padding="SAME")[1])


@pytest.mark.parametrize("pool", [max_pool, min_pool, avg_pool])
def test_bfloat16_runs_and_stays_bfloat16(pool):
    x = _inputs(SPATIAL[2], dtype=jnp.bfloat16)
    for strides in (None, 1):
        y = pool(x, (2, 2), strides)
        assert y.dtype == jnp.bfloat16
        np.testing.assert_allclose(y.astype(jnp.float32), pool(x.astype(jnp.float32), (2, 2), strides),
                                   rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------- adaptive and global


def _np_adaptive(x, output_size, reduce):
    """PyTorch's AdaptiveAvg/MaxPool bin formula, written out with floor/ceil."""
    x = np.asarray(x, np.float64)
    bins = [[(math.floor(i * n / o), math.ceil((i + 1) * n / o)) for i in range(o)]
            for n, o in zip(x.shape[1:-1], output_size)]
    out = np.zeros((x.shape[0],) + tuple(output_size) + (x.shape[-1],))
    axes = tuple(range(1, len(output_size) + 1))
    for index in np.ndindex(*output_size):
        box = tuple(slice(*bins[axis][i]) for axis, i in enumerate(index))
        out[(slice(None),) + index + (slice(None),)] = reduce(x[(slice(None),) + box + (slice(None),)], axis=axes)
    return out


@pytest.mark.parametrize("spatial,output_size", [
    ((11,), (3,)), ((7,), (5,)), ((12,), (4,)), ((3,), (5,)), ((11,), 1), ((11, 7), (3, 5)), ((12, 9), (4, 3)),
    ((7, 9, 6), (2, 4, 3)), ((7, 9, 6), (7, 9, 6)),
])
def test_adaptive_pools_match_pytorch_bins(spatial, output_size):
    x = _inputs(spatial)
    sizes = (output_size,) if isinstance(output_size, int) else output_size
    np.testing.assert_allclose(adaptive_avg_pool(x, output_size), _np_adaptive(x, sizes, np.mean),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(adaptive_max_pool(x, output_size), _np_adaptive(x, sizes, np.max))


def test_adaptive_avg_pool_of_divisible_size_equals_avg_pool():
    x = _inputs((12, 9))
    np.testing.assert_allclose(adaptive_avg_pool(x, (4, 3)), avg_pool(x, (3, 3)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial", [(11,), (11, 9), (7, 9, 6)])
def test_global_pools(spatial):
    x = _inputs(spatial)
    axes = tuple(range(1, len(spatial) + 1))
    np.testing.assert_allclose(global_avg_pool(x), np.asarray(x).mean(axis=axes), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(global_max_pool(x), np.asarray(x).max(axis=axes))
    chex.assert_shape(global_avg_pool(x), (BATCH, FEATURES))
    chex.assert_shape([global_avg_pool(x, keepdims=True), global_max_pool(x, keepdims=True)],
                      (BATCH,) + (1,) * len(spatial) + (FEATURES,))


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,match", [
    (lambda: max_pool(_inputs((11, 9)), (2,)), r"^max_pool: x rank is 4 \(shape \(3, 11, 9, 5\)\), expected "
                                                r"rank 2 or 3"),
    (lambda: avg_pool(jnp.ones((11, 5)), (2, 2)), r"^avg_pool: x rank is 2"),
    (lambda: min_pool(_inputs((11, 9)), (2, 10)), r"^min_pool: x spatial shape is \(11, 9\).*expected at least "
                                                  r"window_shape \(2, 10\)"),
    (lambda: max_pool(_inputs((11,)), 3, padding="FULL"), r"^max_pool: padding is 'FULL', expected one of "
                                                          r"'VALID', 'SAME'"),
    (lambda: max_pool(_inputs((11,)), 3, padding=[(3, 0)]), r"^max_pool: padding is \[\(3, 0\)\], expected "
                                                            r"\(low, high\) pairs with 0 <= pad < window_shape"),
    (lambda: max_pool(_inputs((11,)), 3, padding=[(1, 0), (1, 0)]), r"^max_pool: padding is"),
    (lambda: avg_pool(_inputs((11,)), 3, strides=0), r"^avg_pool: strides is 0, expected a positive int"),
    (lambda: avg_pool(_inputs((11, 9)), (3, 3), strides=(1, 1, 1)), r"^avg_pool: strides is \(1, 1, 1\)"),
    (lambda: max_pool(_inputs((11,)), (0,)), r"^max_pool: window_shape is \(0,\)"),
    (lambda: max_pool(jnp.ones((3, 11, 5), jnp.int32), 2), r"^max_pool: x dtype is int32, expected a floating"),
    (lambda: adaptive_avg_pool(_inputs((11,)), (0,)), r"^adaptive_avg_pool: output_size is \(0,\)"),
    (lambda: adaptive_max_pool(_inputs((11, 9)), 3), r"^adaptive_max_pool: x rank is 4"),
    (lambda: adaptive_max_pool(jnp.ones((3, 11, 5), jnp.int32), 3), r"^adaptive_max_pool: x dtype is int32"),
    (lambda: global_avg_pool(jnp.ones((3, 5))), r"^global_avg_pool: x rank is 2 \(shape \(3, 5\)\), expected "
                                                r"rank 3 or 4 or 5"),
    (lambda: global_max_pool(jnp.ones((3, 11, 5), jnp.int32)), r"^global_max_pool: x dtype is int32"),
])
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
