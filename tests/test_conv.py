"""Conv and ConvTranspose: shapes, equality with flax.linen, padding semantics, gradients and errors.

Sizes differ on every axis (batch 3, spatial 11/9/6, in 4, out 6) so a swapped axis fails.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxarch.compat import enable_x64
from jaxarch.layers.conv import Conv, ConvTranspose

BATCH, IN, OUT = 3, 4, 6
SPATIAL = {1: (11,), 2: (11, 9), 3: (7, 9, 6)}
KERNEL = {1: (3,), 2: (3, 2), 3: (3, 2, 2)}


def _inputs(rank, seed=0, spatial=None, features=IN, dtype=jnp.float32):
    # NumPy draws: every new shape through jax.random (and the default truncated-normal kernel_init) costs
    # seconds of XLA compilation on a small CPU.
    shape = (BATCH,) + (spatial or SPATIAL[rank]) + (features,)
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _params(module, x, seed=1):
    """Variables shaped by `module.init` (traced abstractly, so validation still runs), filled by NumPy."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(0.3 * rng.normal(size=leaf.shape), leaf.dtype), shapes)


def _per_axis(value, rank):
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _expected_spatial(spatial, kernel, strides, padding, kernel_dilation=1, input_dilation=1):
    """Output spatial shape from the textbook formulas, independently of the implementation."""
    rank = len(spatial)
    strides = _per_axis(strides, rank)
    windows = [(k - 1) * d + 1 for k, d in zip(kernel, _per_axis(kernel_dilation, rank))]
    lengths = [(n - 1) * d + 1 for n, d in zip(spatial, _per_axis(input_dilation, rank))]
    if padding in ("SAME", "CAUSAL", "CIRCULAR", "REFLECT"):
        return tuple(math.ceil(n / s) for n, s in zip(lengths, strides))
    pads = [(0, 0)] * rank if padding == "VALID" else padding
    return tuple((n + lo + hi - w) // s + 1 for n, w, s, (lo, hi) in zip(lengths, windows, strides, pads))


# ------------------------------------------------------------------- shapes and equality with flax.linen


def _flax_conv_has_reflect() -> bool:
    """Whether the installed flax's `nn.Conv` accepts padding="REFLECT" (flax 0.10.0, the minimum, does not: it
    passes the string on to `lax`, which raises at trace time)."""
    try:
        jax.eval_shape(nn.Conv(1, (2,), padding="REFLECT").init, jax.random.key(0), jnp.zeros((1, 3, 1)))
    except RuntimeError:
        return False
    return True


FLAX_CONV_HAS_REFLECT = _flax_conv_has_reflect()


def _reflect_then_valid(kwargs, variables, x):
    """What newer flax's `nn.Conv(**kwargs)` does for padding="REFLECT", spelled out: reflect-pad each spatial
    axis of `x: [batch, *spatial, in]` by `((w - 1) // 2, w // 2)` for the dilated window `w`, then a "VALID"
    `nn.Conv` with the same strides and groups."""
    rank = x.ndim - 2
    windows = [(k - 1) * d + 1 for k, d in zip(kwargs["kernel_size"], _per_axis(kwargs["kernel_dilation"], rank))]
    pads = [(0, 0)] + [((w - 1) // 2, w // 2) for w in windows] + [(0, 0)]
    padded = jnp.asarray(np.pad(np.asarray(x), pads, mode="reflect"))
    return nn.Conv(**{**kwargs, "padding": "VALID"}).apply(variables, padded)


def _flax_conv(kwargs, variables, x):
    """`flax.linen.Conv(**kwargs)` on `x`; for "REFLECT" on a flax without it, `_reflect_then_valid`."""
    if kwargs["padding"] == "REFLECT" and not FLAX_CONV_HAS_REFLECT:
        return _reflect_then_valid(kwargs, variables, x)
    return nn.Conv(**kwargs).apply(variables, x)


@pytest.mark.skipif(not FLAX_CONV_HAS_REFLECT, reason="the installed flax's nn.Conv has no REFLECT padding")
def test_spelled_out_reflect_reference_equals_flax_reflect():
    """The stand-in for flax's REFLECT (used on flax versions without it) is what flax computes, where it has it."""
    kwargs = dict(features=OUT, kernel_size=KERNEL[2], strides=(2, 1), padding="REFLECT", kernel_dilation=(1, 2),
                  feature_group_count=2)
    x = _inputs(2)
    variables = _params(nn.Conv(**kwargs), x)
    np.testing.assert_allclose(_reflect_then_valid(kwargs, variables, x), nn.Conv(**kwargs).apply(variables, x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "CAUSAL", "CIRCULAR", "REFLECT", "explicit"])
@pytest.mark.parametrize("strides,kernel_dilation,groups", [(1, 1, 1), (2, 1, 2), ((2, 1, 3), (1, 2, 1), 1),
                                                            (2, 2, IN)])
def test_conv_shapes_and_equality_with_flax(rank, padding, strides, kernel_dilation, groups):
    if padding == "explicit":
        padding = [(1, 2), (0, 1), (2, 0)][:rank]
    if not isinstance(strides, int):
        strides, kernel_dilation = strides[:rank], kernel_dilation[:rank]
    features = OUT * 2 if groups == IN else OUT  # depthwise with channel multiplier 3
    kwargs = dict(features=features, kernel_size=KERNEL[rank], strides=strides, padding=padding,
                  kernel_dilation=kernel_dilation, feature_group_count=groups)
    x = _inputs(rank)
    variables = _params(Conv(**kwargs), x)
    y = Conv(**kwargs).apply(variables, x)
    chex.assert_shape(y, (BATCH,) + _expected_spatial(SPATIAL[rank], KERNEL[rank], strides, padding,
                                                      kernel_dilation) + (features,))
    chex.assert_shape(variables["params"]["kernel"], KERNEL[rank] + (IN // groups, features))
    chex.assert_shape(variables["params"]["bias"], (features,))
    if padding != "CAUSAL" or rank == 1:  # flax has CAUSAL for 1-D only
        np.testing.assert_allclose(y, _flax_conv(kwargs, variables, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "CAUSAL", [(2, 1), (0, 3)]])
def test_conv_input_dilation_equals_conv_of_zero_stuffed_input(rank, padding):
    if not isinstance(padding, str):
        padding = padding[:rank]
    x = _inputs(rank)
    dilation = (2, 3)[:rank]
    stuffed_shape = (BATCH,) + tuple((n - 1) * d + 1 for n, d in zip(SPATIAL[rank], dilation)) + (IN,)
    stuffed = jnp.zeros(stuffed_shape).at[(slice(None),) + tuple(slice(None, None, d) for d in dilation)].set(x)
    dilated = Conv(OUT, KERNEL[rank], padding=padding, input_dilation=dilation)
    params = _params(dilated, x)
    y = dilated.apply(params, x)
    chex.assert_shape(y, (BATCH,) + _expected_spatial(SPATIAL[rank], KERNEL[rank], 1, padding,
                                                      input_dilation=dilation) + (OUT,))
    expected = Conv(OUT, KERNEL[rank], padding=padding).apply(params, stuffed)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", [Conv(OUT, (3, 2)), ConvTranspose(OUT, (3, 2), strides=2)])
def test_unbatched_input_equals_batched(module):
    x = _inputs(2)
    params = _params(module, x)
    chex.assert_trees_all_close(module.apply(params, x[1]), module.apply(params, x)[1], rtol=1e-6, atol=1e-6)


def test_no_bias():
    variables = _params(Conv(OUT, 3, use_bias=False), _inputs(1))
    assert set(variables["params"]) == {"kernel"}


@pytest.mark.parametrize("ours,theirs", [
    (Conv(OUT, (3, 2), feature_group_count=2), nn.Conv(OUT, (3, 2), feature_group_count=2)),
    (Conv(OUT, (3, 3), use_bias=False), nn.Conv(OUT, (3, 3), use_bias=False)),
    (ConvTranspose(OUT, (3, 2), transpose_kernel=True), nn.ConvTranspose(OUT, (3, 2), transpose_kernel=True)),
])
def test_parameter_tree_matches_flax(ours, theirs):
    x = _inputs(2)
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(ours.init, jax.random.key(0), x),
                                                  jax.eval_shape(theirs.init, jax.random.key(0), x))


def test_default_initializers_match_flax():
    x = _inputs(1, spatial=(5,))
    chex.assert_trees_all_equal(Conv(OUT, 3).init(jax.random.key(3), x), nn.Conv(OUT, 3).init(jax.random.key(3), x))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR", "explicit", 1])
@pytest.mark.parametrize("strides,kernel_dilation,transpose_kernel", [
    (1, 1, False), (2, 1, True), ((2, 3, 1), (1, 2, 1), False), ((2, 3, 1), (1, 2, 1), True)])
def test_conv_transpose_matches_flax(rank, padding, transpose_kernel, strides, kernel_dilation):
    if padding == "explicit":
        padding = [(1, 2), (0, 1), (2, 0)][:rank]
    if not isinstance(strides, int):
        strides, kernel_dilation = strides[:rank], kernel_dilation[:rank]
    kwargs = dict(features=OUT, kernel_size=KERNEL[rank], strides=strides, padding=padding,
                  kernel_dilation=kernel_dilation, transpose_kernel=transpose_kernel)
    x = _inputs(rank)
    params = _params(ConvTranspose(**kwargs), x)
    y = ConvTranspose(**kwargs).apply(params, x)
    np.testing.assert_allclose(y, nn.ConvTranspose(**kwargs).apply(params, x), rtol=1e-6, atol=1e-6)
    kernel_io = (OUT, IN) if transpose_kernel else (IN, OUT)
    chex.assert_shape(params["params"]["kernel"], KERNEL[rank] + kernel_io)
    if padding in ("SAME", "CIRCULAR"):
        chex.assert_shape(y, (BATCH,) + tuple(n * s for n, s in zip(SPATIAL[rank], _per_axis(strides, rank)))
                          + (OUT,))


# ------------------------------------------------------------------------------------ padding semantics


@pytest.mark.parametrize("rank,kernel,shift", [(1, (3,), (4,)), (1, (4,), (-3,)), (2, (3, 2), (5, -2))])
def test_circular_padding_is_translation_equivariant(rank, kernel, shift):
    x = _inputs(rank)
    conv = Conv(OUT, kernel, padding="CIRCULAR")
    params = _params(conv, x)
    axes = tuple(range(1, rank + 1))
    np.testing.assert_allclose(conv.apply(params, jnp.roll(x, shift, axes)),
                               jnp.roll(conv.apply(params, x), shift, axes), rtol=1e-5, atol=1e-5)


def _jacobian(conv, x):
    """d y[0, *t, :] / d x[0, *s, :] summed over features: `[*out_spatial, *in_spatial]`."""
    params = _params(conv, x)
    jacobian = jax.jacrev(lambda x: conv.apply(params, x)[0])(x)[..., 0, :, :]  # [*t, F, *s, C]
    rank = x.ndim - 2
    return jnp.sum(jnp.abs(jacobian), axis=(rank, jacobian.ndim - 1))


@pytest.mark.parametrize("kernel_dilation", [1, 2])
def test_causal_1d_output_ignores_the_future(kernel_dilation):
    x = _inputs(1)[:1]
    dependence = np.asarray(_jacobian(Conv(OUT, 3, padding="CAUSAL", kernel_dilation=kernel_dilation), x))
    t, s = np.indices(dependence.shape)
    assert np.all(dependence[s > t] == 0.0)
    assert np.all(np.diag(dependence) > 0.0)  # each output sees its own time step


def test_causal_2d_is_causal_along_every_axis():
    x = _inputs(2)[:1]
    dependence = np.asarray(_jacobian(Conv(OUT, (3, 2), padding="CAUSAL"), x))  # [t0, t1, s0, s1]
    t0, t1, s0, s1 = np.indices(dependence.shape)
    assert np.all(dependence[(s0 > t0) | (s1 > t1)] == 0.0)
    assert np.all(dependence[(s0 == t0) & (s1 == t1)] > 0.0)


def test_causal_axes_restricts_causality_to_the_listed_axes():
    x = _inputs(2)[:1]
    conv = Conv(OUT, (3, 3), padding="CAUSAL", causal_axes=(0,))
    dependence = np.asarray(_jacobian(conv, x))
    t0, t1, s0, s1 = np.indices(dependence.shape)
    assert np.all(dependence[s0 > t0] == 0.0)
    assert np.any(dependence[(s0 <= t0) & (s1 > t1)] > 0.0)  # axis 1 is SAME padded: sees its right neighbour
    chex.assert_shape(conv.apply(_params(conv, x), x), (1,) + SPATIAL[2] + (OUT,))


@pytest.mark.parametrize("rank,kernel,kernel_dilation", [(1, (4,), 1), (2, (3, 2), (2, 1))])
def test_reflect_padding_matches_numpy_reflect_pad_then_valid(rank, kernel, kernel_dilation):
    x = _inputs(rank)
    windows = [(k - 1) * d + 1 for k, d in zip(kernel, _per_axis(kernel_dilation, rank))]
    pads = [(0, 0)] + [((w - 1) // 2, w // 2) for w in windows] + [(0, 0)]
    padded = np.pad(np.asarray(x), pads, mode="reflect")
    conv = Conv(OUT, kernel, padding="REFLECT", kernel_dilation=kernel_dilation)
    params = _params(conv, x)
    valid = Conv(OUT, kernel, padding="VALID", kernel_dilation=kernel_dilation)
    np.testing.assert_allclose(conv.apply(params, x), valid.apply(params, padded), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------- gradients, jit, vmap, dtypes


@pytest.mark.parametrize("module,rank", [
    (Conv(OUT, (3, 2), strides=(2, 1), padding="CIRCULAR", feature_group_count=2), 2),
    (Conv(OUT, 3, padding="CAUSAL", kernel_dilation=2), 1),
    (ConvTranspose(OUT, (3, 2), strides=2, padding="CIRCULAR", transpose_kernel=True), 2),
])
def test_gradients_match_finite_differences(module, rank):
    with enable_x64(True):
        x = _inputs(rank, spatial=(5, 4)[:rank], dtype=jnp.float64)
        module = module.clone(param_dtype=jnp.float64)
        params = _params(module, x)
        check_grads(jax.jit(module.apply), (params, x), order=1, modes=["rev"])


@pytest.mark.parametrize("module", [Conv(OUT, (3, 2), strides=2, padding="REFLECT"),
                                    ConvTranspose(OUT, (3, 2), strides=2)])
def test_jit_equals_eager_without_retracing(module):
    x = _inputs(2)
    params = _params(module, x)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, x):
        return module.apply(params, x)

    np.testing.assert_allclose(apply(params, x), module.apply(params, x), rtol=1e-6, atol=1e-6)
    apply(params, x + 1.0)


def test_vmap_over_unbatched_inputs_equals_batched_call():
    conv = Conv(OUT, (3, 2), padding="CAUSAL")
    x = _inputs(2)
    params = _params(conv, x)
    np.testing.assert_allclose(jax.vmap(conv.apply, in_axes=(None, 0))(params, x), conv.apply(params, x),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("module", [Conv(OUT, (3, 2), padding="CIRCULAR"), ConvTranspose(OUT, (3, 2), strides=2)])
def test_bfloat16_compute(module):
    x = _inputs(2)
    params = _params(module, x)
    y = module.clone(dtype=jnp.bfloat16).apply(params, x)
    assert y.dtype == jnp.bfloat16
    assert params["params"]["kernel"].dtype == jnp.float32  # storage stays float32
    np.testing.assert_allclose(y.astype(jnp.float32), module.apply(params, x), rtol=0.05, atol=0.05)


def test_dtype_is_inferred_like_flax():
    x = _inputs(1, dtype=jnp.bfloat16)
    conv = Conv(OUT, 3, param_dtype=jnp.bfloat16)
    assert conv.apply(_params(conv, x), x).dtype == jnp.bfloat16


# -------------------------------------------------------------------------------------------- errors


def _raises(module, x, match, params=None):
    with pytest.raises(ValueError, match=match):
        if params is None:
            _params(module, x)
        else:
            module.apply(params, x)


@pytest.mark.parametrize("module,x,match", [
    (Conv(OUT, 3), _inputs(2), r"^Conv: inputs rank is 4 \(shape \(3, 11, 9, 4\)\), expected rank 2 or 3"),
    (Conv(OUT, (3, 3)), jnp.ones((11, 4)), r"^Conv: inputs rank is 2 .*expected rank 3 or 4"),
    (Conv(OUT, 3), jnp.ones((3, 11, 4), jnp.int32), r"^Conv: inputs dtype is int32, expected a floating"),
    (Conv(OUT, 3, dtype=jnp.int32), _inputs(1), r"^Conv: dtype is int32"),
    (Conv(OUT, 3, feature_group_count=3), _inputs(1), r"^Conv: input features .* is 4 .*multiple of "
                                                      r"feature_group_count=3"),
    (Conv(5, 3, feature_group_count=2), _inputs(1), r"^Conv: features is 5, expected a multiple of "
                                                    r"feature_group_count=2"),
    (Conv(OUT, 5, padding="VALID", kernel_dilation=3), _inputs(1), r"^Conv: input spatial shape is \(11,\).*"
                                                                   r"expected at least the dilated kernel size"),
    (Conv(OUT, (3, 12), padding="VALID"), _inputs(2), r"^Conv: input spatial shape is \(11, 9\)"),
    (Conv(OUT, 3, padding="same_lower"), _inputs(1), r"^Conv: padding is 'same_lower', expected one of 'SAME', "
                                                     r"'VALID', 'CAUSAL', 'CIRCULAR', 'REFLECT'"),
    (Conv(OUT, (3, 3), padding=[(1, 1)]), _inputs(2), r"^Conv: padding is \(\(1, 1\),\).* 2 \(low, high\)"),
    (Conv(OUT, (3, 3), padding=[(1, 1, 1), (1, 1)]), _inputs(2), r"^Conv: padding is"),
    (Conv(OUT, 3, strides=0), _inputs(1), r"^Conv: strides is 0, expected a positive int"),
    (Conv(OUT, (3, 3), strides=(1, -2)), _inputs(2), r"^Conv: strides is \(1, -2\)"),
    (Conv(OUT, (3, 3), strides=(1, 2, 1)), _inputs(2), r"^Conv: strides is \(1, 2, 1\), expected an int or 2"),
    (Conv(OUT, (3, 3), kernel_dilation=0), _inputs(2), r"^Conv: kernel_dilation is 0"),
    (Conv(OUT, (3, 0)), _inputs(2), r"^Conv: kernel_size is \(3, 0\)"),
    (Conv(0, 3), _inputs(1), r"^Conv: features is 0"),
    (Conv(OUT, (3, 3), causal_axes=(0,)), _inputs(2), r"^Conv: causal_axes is \(0,\), expected None unless"),
    (Conv(OUT, (3, 3), padding="CAUSAL", causal_axes=(2,)), _inputs(2), r"^Conv: causal_axes is \(2,\), "
                                                                        r"expected distinct spatial-axis"),
    (Conv(OUT, 3, padding="CIRCULAR", input_dilation=2), _inputs(1), r"^Conv: padding is 'CIRCULAR'.*"
                                                                     r"input_dilation"),
    (ConvTranspose(OUT, 3), _inputs(2), r"^ConvTranspose: inputs rank is 4"),
    (ConvTranspose(OUT, 3), jnp.ones((3, 11, 4), jnp.int8), r"^ConvTranspose: inputs dtype"),
    (ConvTranspose(OUT, 3, padding="CAUSAL"), _inputs(1), r"^ConvTranspose: padding is 'CAUSAL', expected one "
                                                          r"of 'SAME', 'VALID', 'CIRCULAR'"),
    (ConvTranspose(OUT, 3, strides=0), _inputs(1), r"^ConvTranspose: strides is 0"),
    (ConvTranspose(OUT, 3, padding=[(-7, -7)]), _inputs(1), r"^ConvTranspose: padding is \(\(-7, -7\),\).*"
                                                            r"non-empty output"),
])
def test_invalid_configurations_raise(module, x, match):
    _raises(module, x, match)


@pytest.mark.parametrize("module", [Conv(OUT, (3, 2)), Conv(OUT, (3, 2), feature_group_count=2),
                                    ConvTranspose(OUT, (3, 2)), ConvTranspose(OUT, (3, 2), transpose_kernel=True)])
def test_changed_input_features_between_init_and_apply_raise(module):
    params = _params(module, _inputs(2))
    name = type(module).__name__
    _raises(module, _inputs(2, features=IN + 2), rf"^{name}: input features \(axis -1\) is {IN + 2} "
                                                 rf"\(shape \(3, 11, 9, {IN + 2}\)\), expected {IN} as at init",
            params=params)


def test_kernel_from_another_configuration_raises():
    params = _params(Conv(OUT, (3, 3)), _inputs(2))
    _raises(Conv(OUT, (3, 2)), _inputs(2), r"^Conv: kernel shape is \(3, 3, 4, 6\), expected \(3, 2, 4, 6\)",
            params=params)


def test_error_names_a_submodule():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Conv(OUT, 3, name="stem")(x)

    _raises(Net(), _inputs(2), r"^Conv 'stem': inputs rank is 4")
