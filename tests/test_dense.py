"""`flat_dot_general` computes what `lax.dot_general` computes, for every contraction flax's Dense layers make."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxarch.layers.dense import flat_dot_general

# Sizes differ on every axis (batch 3, time 5, features 4, heads 2, head dim 6) so a swapped axis fails.
CASES = {
    "dense on [batch, time, features]": (dict(features=7, axis=-1), (3, 5, 4)),
    "dense on a matrix": (dict(features=7, axis=-1), (3, 4)),
    "to heads [.., heads, head_dim]": (dict(features=(2, 6), axis=-1), (3, 5, 4)),
    "from heads (axis -2, -1)": (dict(features=7, axis=(-2, -1)), (3, 5, 2, 6)),
}


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("case", list(CASES))
def test_dense_general_values_and_gradients_match_lax(case):
    kwargs, shape = CASES[case]
    x = _x(shape)
    plain = nn.DenseGeneral(**kwargs)
    flat = nn.DenseGeneral(**kwargs, dot_general=flat_dot_general)
    params = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(flat.init(jax.random.key(0), x))
    np.testing.assert_allclose(flat.apply(params, x), plain.apply(params, x), rtol=1e-6, atol=1e-6)
    cotangent = _x(plain.apply(params, x).shape, seed=1)

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * cotangent), argnums=(0, 1))(params, x)

    for got, want in zip(jax.tree.leaves(grads(flat)), jax.tree.leaves(grads(plain))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_flattening_is_one_matrix_product():
    x, kernel = _x((3, 5, 4)), _x((4, 7), seed=1)
    jaxpr = jax.make_jaxpr(lambda x: flat_dot_general(x, kernel, (((2,), (0,)), ((), ()))))(x)
    (dot,) = [eqn for eqn in jaxpr.eqns if eqn.primitive is lax.dot_general_p]
    assert [v.aval.shape for v in dot.invars] == [(15, 4), (4, 7)]


def test_other_contractions_fall_back_to_lax():
    a, b = _x((2, 3, 4)), _x((2, 4, 5), seed=1)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(flat_dot_general(a, b, batched), lax.dot_general(a, b, batched))
    leading = (((0,), (0,)), ((), ()))  # contracts lhs's first axis: not a trailing block
    c = _x((2, 6), seed=2)
    np.testing.assert_array_equal(flat_dot_general(a, c, leading), lax.dot_general(a, c, leading))


def test_empty_batch_keeps_its_shape():
    out = flat_dot_general(jnp.zeros((0, 5, 4)), _x((4, 7)), (((2,), (0,)), ((), ())))
    assert out.shape == (0, 5, 7)
