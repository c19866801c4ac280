"""The "patches" convolution lowering computes what XLA's convolution computes: values, both gradients and the
forward-mode derivative, in float64, for every padding mode, stride and dilation Conv accepts.

Sizes differ on every axis (batch 3, spatial 11/9/6, in 4, out 5) so a swapped axis fails. With one input
channel, windows of up to `SUMMED_PRODUCTS_MAX` products take the summed forward product instead of the matmul.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.compat import enable_x64
from jaxarch.layers import conv_lowering
from jaxarch.layers.conv import Conv
from jaxarch.layers.conv_lowering import SUMMED_PRODUCTS_MAX, patches, use_patches

BATCH, IN, OUT = 3, 4, 5
SPATIAL = {1: (11,), 2: (11, 9), 3: (7, 9, 6)}
KERNEL = {1: (3,), 2: (3, 2), 3: (3, 2, 2)}

CASES = {
    "same": dict(),
    "valid, strided, dilated": dict(padding="VALID", strides=(2, 1, 3), kernel_dilation=(1, 2, 1)),
    "causal, dilated": dict(padding="CAUSAL", kernel_dilation=2),
    "explicit with a crop": dict(padding=[(1, 2), (-1, 1), (2, 0)], strides=2),
    "circular, strided": dict(padding="CIRCULAR", strides=2),
    "reflect": dict(padding="REFLECT"),
}


def _rng_array(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _conv_kwargs(rank, case):
    kwargs = dict(features=OUT, kernel_size=KERNEL[rank], **CASES[case])
    for key in ("strides", "kernel_dilation"):
        if isinstance(kwargs.get(key), tuple):
            kwargs[key] = kwargs[key][:rank]
    if isinstance(kwargs.get("padding"), list):
        kwargs["padding"] = kwargs["padding"][:rank]
    return kwargs


def _value_grads_and_jvp(module, variables, x, cotangent, tangents):
    y, vjp = jax.vjp(module.apply, variables, x)
    _, y_dot = jax.jvp(module.apply, (variables, x), tangents)
    return y, vjp(cotangent), y_dot


@pytest.mark.parametrize("in_features", [IN, 1])
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_patch_lowering_equals_xla_in_float64(rank, case, in_features):
    with enable_x64(True):
        kwargs = _conv_kwargs(rank, case)
        x = jnp.asarray(_rng_array((BATCH,) + SPATIAL[rank] + (in_features,), 0))
        xla, patch = Conv(**kwargs, lowering="xla"), Conv(**kwargs, lowering="patches")
        variables = jax.tree.map(lambda leaf: jnp.asarray(_rng_array(leaf.shape, 1)),
                                 jax.eval_shape(xla.init, jax.random.key(0), x))
        out_shape = jax.eval_shape(xla.apply, variables, x).shape
        cotangent = jnp.asarray(_rng_array(out_shape, 2))
        tangents = (jax.tree.map(lambda leaf: jnp.asarray(_rng_array(leaf.shape, 3)), variables),
                    jnp.asarray(_rng_array(x.shape, 4)))
        want = _value_grads_and_jvp(xla, variables, x, cotangent, tangents)
        got = _value_grads_and_jvp(patch, variables, x, cotangent, tangents)
        assert got[0].dtype == jnp.float64
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def _naive_patches(x, window, strides, pads, dilation):
    """im2col by loops over every output position and window offset (float64 NumPy)."""
    x = np.pad(np.asarray(x, np.float64), [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads] + [(0, 0)])
    crop = tuple(slice(-min(lo, 0), x.shape[a + 1] + min(hi, 0)) for a, (lo, hi) in enumerate(pads))
    x = x[(slice(None),) + crop]
    spans = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    out = [(n - span) // s + 1 for n, span, s in zip(x.shape[1:-1], spans, strides)]
    result = np.zeros((x.shape[0], *out, int(np.prod(window)) * x.shape[-1]))
    for position in itertools.product(*map(range, out)):
        columns = []
        for offset in np.ndindex(*window):
            index = tuple(p * s + o * d for p, s, o, d in zip(position, strides, offset, dilation))
            columns.append(x[(slice(None),) + index])
        result[(slice(None),) + position] = np.concatenate(columns, axis=-1)
    return result


@pytest.mark.parametrize("window,strides,pads,dilation", [
    ((3,), (1,), ((1, 1),), (1,)),
    ((3, 2), (2, 1), ((0, 1), (1, 0)), (1, 2)),
    ((2, 3, 2), (1, 2, 1), ((1, 0), (-1, 2), (0, 0)), (2, 1, 1)),
])
def test_patches_equal_the_loop_definition(window, strides, pads, dilation):
    rank = len(window)
    x = _rng_array((BATCH,) + SPATIAL[rank] + (IN,), 0, np.float32)
    got = patches(jnp.asarray(x), window, strides, pads, dilation)
    np.testing.assert_array_equal(got, _naive_patches(x, window, strides, pads, dilation).astype(np.float32))


@pytest.mark.parametrize("ynnpack", [True, False])
def test_auto_takes_the_patches_where_they_were_faster(monkeypatch, ynnpack):
    monkeypatch.setattr(conv_lowering, "ynnpack_runs_convolutions", lambda: ynnpack)
    on_cpu = jax.default_backend() == "cpu"
    few, many = SUMMED_PRODUCTS_MAX, SUMMED_PRODUCTS_MAX + 1
    assert use_patches("auto", (1, 1), 1, few) == on_cpu
    assert use_patches("auto", (1, 1), 1, many) == (on_cpu and ynnpack)
    assert use_patches("auto", (1, 1, 1), 1, many) == on_cpu
    assert not use_patches("auto", (1,), 1, few) and use_patches("patches", (1,), 1, many)
    assert not use_patches("patches", (1, 1), 2, few) and not use_patches("patches", (2, 1), 1, few)
    assert not use_patches("xla", (1, 1), 1, few)


def test_auto_follows_this_process_s_convolution_library():
    # Whatever XLA_FLAGS this process started with (the suite runs untuned, a `jaxarch` command tuned): 2-D layers
    # with many products take the patches exactly while YNNPACK runs XLA's convolutions. Which library that is
    # depends on the jaxlib and the flags (tests/test_import_settings.py checks the flag's effect).
    on_cpu = jax.default_backend() == "cpu"
    ynnpack = on_cpu and conv_lowering.ynnpack_runs_convolutions()
    assert use_patches("auto", (1, 1), 1, SUMMED_PRODUCTS_MAX + 1) == ynnpack


def test_a_first_layer_skips_its_input_gradient():
    x = jnp.asarray(_rng_array((BATCH, 11, 9, IN), 0, np.float32))
    conv = Conv(OUT, (3, 3), lowering="patches")
    variables = conv.init(jax.random.key(0), x)
    grad = jax.grad(lambda v: jnp.sum(conv.apply(v, x) ** 2))
    jaxpr = str(jax.make_jaxpr(grad)(variables))  # nested jaxprs print inline
    assert "dot_general" in jaxpr
    # Only the input gradient would be a convolution; the network's input has none to compute.
    assert "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize("kernel_size,in_features,summed", [
    ((3, 3), 1, True),  # 9 products: a first layer on grey images
    ((2, 2), 3, True),  # 12, the most that are summed
    ((4, 4), 1, False),  # 16
    ((3, 3), IN, False),  # 36
])
def test_few_products_per_output_are_summed_not_a_matmul(kernel_size, in_features, summed):
    assert SUMMED_PRODUCTS_MAX == 12
    x = jnp.asarray(_rng_array((BATCH, 11, 9, in_features), 0, np.float32))
    conv = Conv(OUT, kernel_size, lowering="patches")
    variables = conv.init(jax.random.key(0), x)
    assert ("dot_general" not in str(jax.make_jaxpr(conv.apply)(variables, x))) == summed
    want = Conv(OUT, kernel_size, lowering="xla").apply(variables, x)
    np.testing.assert_allclose(conv.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    # The kernel gradient stays one matmul over the patches either way.
    grad = jax.grad(lambda v: jnp.sum(conv.apply(v, x) ** 2))
    assert "dot_general" in str(jax.make_jaxpr(grad)(variables))


def test_bfloat16_patch_lowering_is_close_to_float32():
    x = jnp.asarray(_rng_array((BATCH, 11, 9, IN), 0, np.float32))
    variables = Conv(OUT, (3, 3)).init(jax.random.key(0), x)

    def loss_and_grad(dtype):
        conv = Conv(OUT, (3, 3), dtype=dtype, lowering="patches")
        return jax.value_and_grad(lambda v: jnp.sum(conv.apply(v, x).astype(jnp.float32) ** 2))(variables)

    (loss16, grads16), (loss32, grads32) = loss_and_grad(jnp.bfloat16), loss_and_grad(jnp.float32)
    np.testing.assert_allclose(loss16, loss32, rtol=0.05)
    for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert g16.dtype == jnp.float32  # parameter gradients keep the parameters' dtype
        np.testing.assert_allclose(g16, g32, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(g32))))


def test_summed_products_in_bfloat16_round_once():
    # Accumulated in float32, the bfloat16 output is the float32 one rounded: within half a bfloat16 step.
    x = jnp.asarray(_rng_array((BATCH, 11, 9, 1), 0, np.float32))
    variables = Conv(OUT, (3, 3)).init(jax.random.key(0), x)
    x16 = x.astype(jnp.bfloat16).astype(jnp.float32)  # the input as the bfloat16 layer sees it
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), variables)
    got = Conv(OUT, (3, 3), dtype=jnp.bfloat16, lowering="patches").apply(variables, x)
    want = Conv(OUT, (3, 3), lowering="xla").apply(params16, x16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=2.0 ** -8, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(feature_group_count=2), dict(input_dilation=2)])
def test_grouped_and_input_dilated_convolutions_keep_xla(kwargs):
    x = jnp.asarray(_rng_array((BATCH, 11, IN), 0, np.float32))
    conv = Conv(6, 3, lowering="patches", **kwargs)
    variables = conv.init(jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(conv.apply)(variables, x))
    assert "conv_general_dilated" in jaxpr and "dot_general" not in jaxpr


def test_unknown_lowering_raises():
    with pytest.raises(ValueError, match=r"^Conv: lowering is 'im2col', expected one of 'auto', 'patches', 'xla'"):
        Conv(OUT, 3, lowering="im2col").init(jax.random.key(0), jnp.ones((BATCH, 11, IN)))
