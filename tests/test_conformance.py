"""Every registered layer and model (jaxarch.conformance.CASES) through the same checks: jit equals eager, vmap,
gradients equal to finite differences, bfloat16, no retrace, rank promotion set to raise, and a ValueError that
names the module for every kind of bad input the case lists."""

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxarch import layers
from jaxarch.compat import enable_x64
from jaxarch.conformance import CASES, NOT_CASES
from jaxarch.models import MODELS

NAMES = CASES.names()
BUILT = [name for name in NAMES if CASES.get(name).build is not None]
DIFFERENTIABLE = [name for name in NAMES if CASES.get(name).differentiable is not None]
INVALID = [(name, label) for name in NAMES for label in CASES.get(name).invalid]


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@functools.cache
def subject(name):
    return CASES.get(name).subject()


def in_dtype(name, dtype):
    """The case computing in `dtype`, with the float32 case's parameters cast to `dtype`."""
    params = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p,
                          subject(name).params)
    return CASES.get(name).subject(dtype, params=params)


def other_args(name, dtype=jnp.float32):
    """Arguments shaped like the example's, with other values."""
    return CASES.get(name).example(np.random.default_rng(1), dtype)


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-5):
    chex.assert_trees_all_equal_structs(actual, expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
        if jnp.issubdtype(a.dtype, jnp.floating):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(a, e)


def test_every_public_layer_and_model_has_a_case():
    covered = {name.split("[")[0] for name in NAMES}
    assert [n for n in layers.__all__ if n not in covered and n not in NOT_CASES] == []
    assert [n for n in MODELS.names() if f"model:{n}" not in covered] == []
    assert set(NOT_CASES) <= set(layers.__all__)  # No stale exemptions.


@pytest.mark.parametrize("name", NAMES)
def test_jit_equals_eager_and_a_second_call_does_not_retrace(name):
    s = subject(name)
    chex.clear_trace_counter()  # The counter is keyed by the wrapped function's code, shared by every case.
    jitted = jax.jit(chex.assert_max_traces(lambda params, *args: s.fn(params, *args), n=1))
    assert_trees_close(jitted(s.params, *s.args), s.fn(s.params, *s.args))
    again = jitted(s.params, *other_args(name))  # Same shapes, other values: must reuse the trace.
    chex.assert_trees_all_equal_shapes_and_dtypes(again, s.fn(s.params, *s.args))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_an_extra_leading_axis_equals_one_call_per_slice(name):
    s = subject(name)
    second = other_args(name)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s.args, second)
    in_axes = (None,) + (0,) * len(s.args)
    mapped = jax.jit(jax.vmap(s.fn, in_axes=in_axes))(s.params, *stacked)
    one_by_one = jax.tree.map(lambda a, b: jnp.stack([a, b]), jax.jit(s.fn)(s.params, *s.args),
                              jax.jit(s.fn)(s.params, *second))
    assert_trees_close(mapped, one_by_one)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradients_are_finite_and_match_finite_differences(name):
    case = CASES.get(name)
    subject(name)  # Parameters initialised outside the float64 context, as every other check sees them.
    with enable_x64(True):
        s = in_dtype(name, jnp.float64)
        params = s.params
        outputs = jax.eval_shape(s.fn, params, *s.args)
        rng = np.random.default_rng(2)
        # A random projection of every output, so no output's gradient can hide behind a symmetric sum.
        weights = jax.tree.map(lambda o: jnp.asarray(rng.standard_normal(o.shape)), outputs)
        wrt = case.differentiable

        def loss(params, *differentiated):
            args = list(s.args)
            for index, value in zip(wrt, differentiated):
                args[index] = value
            out = s.fn(params, *args)
            return sum(jnp.sum(o * w) for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(weights)))

        loss = jax.jit(loss)
        primals = (params, *(s.args[i] for i in wrt))
        grads = jax.grad(loss, argnums=tuple(range(len(primals))))(*primals)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
        # Central differences with a step of 1e-6: float64 rounding stays near 1e-10, and the truncation error
        # stays small even where LayerNorm of near-constant inputs makes the loss sharply curved.
        check_grads(loss, primals, order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_bfloat16_compute_is_finite_and_close_to_float32(name):
    full, half = subject(name), in_dtype(name, jnp.bfloat16)
    expected = jax.jit(full.fn)(full.params, *full.args)
    actual = jax.jit(half.fn)(half.params, *half.args)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == e.shape
        a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
        assert np.all(np.isfinite(a))
        scale = max(1.0, float(np.max(np.abs(e))))
        # bfloat16 keeps 8 significant bits (relative step 2^-8); a few layers of rounding stay within 5%.
        assert float(np.max(np.abs(a - e))) <= 0.05 * scale, (float(np.max(np.abs(a - e))), scale)


@pytest.mark.parametrize("name,label", INVALID, ids=[f"{n}-{label}" for n, label in INVALID])
def test_bad_input_raises_a_value_error_naming_the_module(name, label):
    case, s = CASES.get(name), subject(name)
    bad = case.invalid[label](s.args)
    with pytest.raises(ValueError, match=rf"^{re.escape(case.module)}\b.*expected"):
        s.fn(s.params, *bad)


def _boxes(tree):
    return [leaf for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
            if isinstance(leaf, nn.Partitioned)]


@pytest.mark.parametrize("name", BUILT)
def test_parameters_initialised_under_logical_axis_rules_apply_as_the_plain_ones(name):
    """The Flax/MaxText sharding recipe: `with nn.logical_axis_rules(rules): params = model.init(...)` returns
    `nn.LogicallyPartitioned` boxes; unboxed, they are the plain tree (structure, shapes, dtypes), and applying
    the boxed tree works and gives the same output."""
    plain = subject(name)
    abstract, boxed = CASES.get(name).logically_boxed(plain.params)
    chex.assert_trees_all_equal_shapes_and_dtypes(nn.unbox(abstract), plain.params)
    assert_trees_close(jax.jit(plain.fn)(boxed, *plain.args), jax.jit(plain.fn)(plain.params, *plain.args),
                       rtol=0, atol=0)


def test_layers_that_declare_logical_axes_are_boxed_under_the_rules():
    """The check above is not vacuous: attention, the Transformer blocks and the models box their parameters."""
    for name in ("MultiHeadAttention", "MLPBlock", "EncoderBlock", "TransformerDecoder", "model:gpt"):
        assert _boxes(CASES.get(name).logically_boxed(subject(name).params)[1]), name
        assert not _boxes(subject(name).params), name
