"""Convolutions on channels-last arrays: `Conv` (1-D, 2-D, 3-D) and `ConvTranspose`.

Both modules name and shape their parameters exactly like `flax.linen.Conv` / `flax.linen.ConvTranspose`
(`kernel: [*window, in_features // feature_group_count, features]`, `bias: [features]`), so parameters move
between the two libraries unchanged and give the same outputs (to float rounding where `Conv` takes its CPU
lowering, matmuls over the input's patches: `jaxarch/layers/conv_lowering.py`). What they add is input validation
with readable errors, `"CAUSAL"` padding for every rank (optionally only along some axes), `"SAME"` padding that
also works with `input_dilation`, and on CPU the faster lowering.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxarch.checks import check_floating, check_positive_ints, check_rank, fail
from jaxarch.layers.conv_lowering import LOWERINGS, conv

__all__ = ["Conv", "ConvTranspose"]

Padding = str | int | Sequence[int | tuple[int, int]]

CONV_PADDING_MODES = ("SAME", "VALID", "CAUSAL", "CIRCULAR", "REFLECT")
CONV_TRANSPOSE_PADDING_MODES = ("SAME", "VALID", "CIRCULAR")


def canonical_padding(module: str, padding: Padding, rank: int,
                      modes: Sequence[str]) -> str | tuple[tuple[int, int], ...]:
    """Normalises `padding` to an upper-case mode from `modes` or to `rank` explicit `(low, high)` pairs.

    An int pads both sides of every spatial axis by that amount; an int inside the sequence pads both sides
    of its axis (flax's convention).
    """
    expected = (f"one of {', '.join(repr(m) for m in modes)}, an int, or {rank} (low, high) int pairs "
                "(one per spatial axis)")
    if isinstance(padding, str):
        if padding.upper() not in modes:
            fail(module, "padding", repr(padding), expected)
        return padding.upper()
    if isinstance(padding, (int, np.integer)):
        return ((int(padding), int(padding)),) * rank
    pairs = []
    if isinstance(padding, Sequence) and len(padding) == rank:
        for pair in padding:
            if isinstance(pair, (int, np.integer)):
                pairs.append((int(pair), int(pair)))
            elif (isinstance(pair, Sequence) and len(pair) == 2
                  and all(isinstance(v, (int, np.integer)) for v in pair)):
                pairs.append((int(pair[0]), int(pair[1])))
            else:
                break
    if len(pairs) != rank:
        fail(module, "padding", repr(padding), expected)
    return tuple(pairs)


def _per_axis(module: str, name: str, value, rank: int) -> tuple[int, ...]:
    """An int or a `rank`-long sequence of positive ints (strides, dilations) as a `rank`-tuple."""
    values = check_positive_ints(module, name, value)
    if len(values) == 1:
        return values * rank
    if len(values) != rank:
        fail(module, name, repr(value), f"an int or {rank} ints (one per spatial axis)")
    return values


def _dilated(sizes: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Size of an axis of `sizes` after inserting `dilation - 1` holes between elements."""
    return tuple((n - 1) * d + 1 for n, d in zip(sizes, dilation))


def _label(module: nn.Module) -> str:
    kind = type(module).__name__
    return kind if module.name is None else f"{kind} '{module.name}'"


def _spatial_layout(rank: int) -> str:
    return f"[batch, *spatial, features] or unbatched [*spatial, features] (spatial rank {rank})"


def _check_dtype(module: str, dtype) -> None:
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        fail(module, "dtype", str(jnp.dtype(dtype)), "None or a floating dtype (float32, bfloat16, float16, float64)")


def _check_kernel(module: nn.Module, label: str, inputs, expected_shape: tuple[int, ...],
                  in_axis: int, in_per_kernel: int) -> None:
    """Compares an existing kernel (apply time) with the shape these inputs need.

    flax's own parameter-shape check would fire instead, with a message about initialisers; a changed
    input feature count is by far the usual cause, so it gets its own message.
    """
    if not module.has_variable("params", "kernel"):
        return
    kernel_shape = tuple(module.get_variable("params", "kernel").shape)
    if kernel_shape == expected_shape:
        return
    if (len(kernel_shape) == len(expected_shape)
            and kernel_shape[:in_axis] + kernel_shape[in_axis + 1:]
            == expected_shape[:in_axis] + expected_shape[in_axis + 1:]):
        fail(label, "input features (axis -1)", f"{inputs.shape[-1]} (shape {tuple(inputs.shape)})",
             f"{kernel_shape[in_axis] * in_per_kernel} as at init (kernel shape {kernel_shape})")
    fail(label, "kernel shape", str(kernel_shape), f"{expected_shape} for inputs of shape {tuple(inputs.shape)}")


def _add_batch_axis(inputs, rank: int):
    """`[batch, *spatial, features]` or `[*spatial, features]` -> `[batch, *spatial, features]`, squeeze flag."""
    if inputs.ndim == rank + 1:
        return inputs[None], True
    return inputs, False


def _channels_last_dimension_numbers(rank: int) -> lax.ConvDimensionNumbers:
    # lhs/out [batch, *spatial, features]; rhs [*window, in, out], as flax.linen.Conv.
    lhs = (0, rank + 1) + tuple(range(1, rank + 1))
    rhs = (rank + 1, rank) + tuple(range(rank))
    return lax.ConvDimensionNumbers(lhs, rhs, lhs)


class Conv(nn.Module):
    """N-d convolution (N = `len(kernel_size)`) on channels-last inputs.

    inputs: `[batch, *spatial, in_features]` or unbatched `[*spatial, in_features]`. Unlike flax, several
      leading batch axes are refused rather than flattened: a 2-D image fed to a 1-D conv is an error, not a
      batch of sequences.
    returns: `[batch, *out_spatial, features]` (unbatched in, unbatched out).

    Padding modes (per spatial axis, with `window = kernel_dilation * (kernel_size - 1) + 1`):
      "SAME": zero padding so that `out = ceil(in / stride)`; with `input_dilation` the input length is the
        dilated one, `(in - 1) * input_dilation + 1`.
      "VALID": none.
      "CAUSAL": zero padding of `window - 1` before the axis only, so output position t sees inputs <= t; on
        every spatial axis, or only on `causal_axes` (indices into the spatial axes) with "SAME" elsewhere.
      "CIRCULAR" / "REFLECT": `jnp.pad(mode="wrap" / "reflect")` by `((window - 1) // 2, window // 2)`, the
        stride-1 "SAME" amount, whatever the stride (as flax does).
      int p or `[(low, high), ...]`: explicit zero padding (negative values crop).
    """

    features: int
    kernel_size: int | Sequence[int]  # an int means a 1-D convolution
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    input_dilation: int | Sequence[int] = 1  # d > 1: a transposed convolution with stride d
    kernel_dilation: int | Sequence[int] = 1  # atrous convolution
    feature_group_count: int = 1  # = in_features gives a depthwise convolution
    use_bias: bool = True
    causal_axes: Sequence[int] | None = None  # only with padding="CAUSAL"; None means every spatial axis
    dtype: jnp.dtype | None = None  # compute dtype; None infers it from inputs and params like flax
    param_dtype: jnp.dtype = jnp.float32
    precision: lax.PrecisionLike = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init  # lecun_normal
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    # "patches": one matmul over the input's patches (im2col), "xla": XLA's convolution, "auto": on the CPU
    # backend, whichever measured faster for the rank and size (`use_patches` in jaxarch/layers/conv_lowering.py).
    lowering: str = "auto"

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        """`inputs: [batch, *spatial, in_features]` (or unbatched `[*spatial, in_features]`) ->
        `[batch, *out_spatial, features]` (unbatched in, unbatched out); `len(spatial) == len(kernel_size)`.
        """
        label = _label(self)
        kernel_size = check_positive_ints(label, "kernel_size", self.kernel_size)
        rank = len(kernel_size)
        check_positive_ints(label, "features", self.features)
        if self.lowering not in LOWERINGS:
            fail(label, "lowering", repr(self.lowering), f"one of {', '.join(map(repr, LOWERINGS))}")
        groups = check_positive_ints(label, "feature_group_count", self.feature_group_count)[0]
        strides = _per_axis(label, "strides", self.strides, rank)
        input_dilation = _per_axis(label, "input_dilation", self.input_dilation, rank)
        kernel_dilation = _per_axis(label, "kernel_dilation", self.kernel_dilation, rank)
        padding = canonical_padding(label, self.padding, rank, CONV_PADDING_MODES)
        causal_axes = self._causal_axes(label, padding, rank)
        _check_dtype(label, self.dtype)

        check_floating(label, "inputs", inputs)
        check_rank(label, "inputs", inputs, (rank + 1, rank + 2), _spatial_layout(rank))
        in_features = inputs.shape[-1]
        kernel_shape = kernel_size + (in_features // groups, self.features)
        _check_kernel(self, label, inputs, kernel_shape, rank, groups)
        if in_features % groups:
            fail(label, "input features (axis -1)", f"{in_features} (shape {tuple(inputs.shape)})",
                 f"a multiple of feature_group_count={groups}")
        if self.features % groups:
            fail(label, "features", self.features, f"a multiple of feature_group_count={groups}")

        x, unbatched = _add_batch_axis(inputs, rank)
        window = _dilated(kernel_size, kernel_dilation)
        pads, pad_mode = _conv_pads(padding, x.shape[1:-1], window, strides, input_dilation, causal_axes)
        if pad_mode != "constant" and any(d != 1 for d in input_dilation):
            fail(label, "padding", repr(self.padding), "'SAME', 'VALID', 'CAUSAL' or explicit pairs when "
                 f"input_dilation={input_dilation} (wrap/reflect of a dilated input is not defined)")
        padded = tuple(n + lo + hi for n, (lo, hi) in zip(_dilated(x.shape[1:-1], input_dilation), pads))
        if any(p < w for p, w in zip(padded, window)):
            fail(label, "input spatial shape", f"{tuple(x.shape[1:-1])} ({padded} after dilation and "
                 f"padding {pads})", f"at least the dilated kernel size {window} on every axis")

        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

        if pad_mode != "constant":
            x = jnp.pad(x, ((0, 0),) + pads + ((0, 0),), mode=pad_mode)
            pads = ((0, 0),) * rank
        y = conv(x, kernel, strides, tuple(tuple(p) for p in pads), input_dilation, kernel_dilation, groups,
                 _channels_last_dimension_numbers(rank), self.precision, self.lowering)  # [B, *out_spatial, F]
        if bias is not None:
            y = y + bias.reshape((1,) * (rank + 1) + (self.features,))
        return y[0] if unbatched else y

    def _causal_axes(self, label: str, padding, rank: int) -> tuple[int, ...]:
        if self.causal_axes is None:
            return tuple(range(rank))
        if padding != "CAUSAL":
            fail(label, "causal_axes", repr(self.causal_axes), "None unless padding='CAUSAL'")
        axes = tuple(self.causal_axes)
        if (not axes or any(not isinstance(a, (int, np.integer)) or not -rank <= a < rank for a in axes)
                or len({a % rank for a in axes}) != len(axes)):
            fail(label, "causal_axes", repr(self.causal_axes),
                 f"distinct spatial-axis indices in [0, {rank}) (0 is the first axis after batch)")
        return tuple(sorted(int(a) % rank for a in axes))


def _conv_pads(padding, spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
               input_dilation: Sequence[int], causal_axes: Sequence[int]):
    """Resolves a canonical Conv padding to explicit `(low, high)` pairs and the `jnp.pad` mode that fills them."""
    rank = len(window)
    if not isinstance(padding, str):
        return padding, "constant"
    if padding in ("CIRCULAR", "REFLECT"):
        pads = tuple(((w - 1) // 2, w // 2) for w in window)
        return pads, {"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding]
    if padding == "VALID":
        return ((0, 0),) * rank, "constant"
    # "SAME" exactly as lax computes it for a string, but on the dilated input so input_dilation works too.
    same = tuple(tuple(p) for p in lax.padtype_to_pads(_dilated(spatial, input_dilation), window, strides, "SAME"))
    if padding == "SAME":
        return same, "constant"
    pads = tuple((w - 1, 0) if axis in causal_axes else same[axis] for axis, w in enumerate(window))
    return pads, "constant"


class ConvTranspose(nn.Module):
    """Transposed N-d convolution (`lax.conv_transpose`), the layer and semantics of `flax.linen.ConvTranspose`.

    inputs: `[batch, *spatial, in_features]` or unbatched `[*spatial, in_features]`.
    returns: `[batch, *out_spatial, features]`, `out = in * stride` for "SAME" and "CIRCULAR",
      `(in - 1) * stride + window` for "VALID".
    kernel: `[*kernel_size, in_features, features]`, or `[*kernel_size, features, in_features]` with
      `transpose_kernel=True` (then a Conv's kernel gives that Conv's gradient-transpose).

    Padding: "SAME", "VALID", "CIRCULAR" (the VALID output summed periodically onto `in * stride`, as flax)
    or explicit pairs/int, which pad the stride-dilated input of the underlying convolution (flax/lax's
    convention, not PyTorch's `padding`).
    """

    features: int
    kernel_size: int | Sequence[int]  # an int means 1-D
    strides: int | Sequence[int] = 1
    padding: Padding = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    use_bias: bool = True
    transpose_kernel: bool = False  # flip the window and swap the kernel's in/out axes
    dtype: jnp.dtype | None = None  # compute dtype; None infers it like flax
    param_dtype: jnp.dtype = jnp.float32
    precision: lax.PrecisionLike = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init  # lecun_normal
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        """`inputs: [batch, *spatial, in_features]` (or unbatched `[*spatial, in_features]`) ->
        `[batch, *out_spatial, features]` (unbatched in, unbatched out); see the class docstring for the output size.
        """
        label = _label(self)
        kernel_size = check_positive_ints(label, "kernel_size", self.kernel_size)
        rank = len(kernel_size)
        check_positive_ints(label, "features", self.features)
        strides = _per_axis(label, "strides", self.strides, rank)
        kernel_dilation = _per_axis(label, "kernel_dilation", self.kernel_dilation, rank)
        padding = canonical_padding(label, self.padding, rank, CONV_TRANSPOSE_PADDING_MODES)
        _check_dtype(label, self.dtype)

        check_floating(label, "inputs", inputs)
        check_rank(label, "inputs", inputs, (rank + 1, rank + 2), _spatial_layout(rank))
        in_features = inputs.shape[-1]
        if self.transpose_kernel:
            kernel_shape, in_axis = kernel_size + (self.features, in_features), rank + 1
        else:
            kernel_shape, in_axis = kernel_size + (in_features, self.features), rank
        _check_kernel(self, label, inputs, kernel_shape, in_axis, 1)

        x, unbatched = _add_batch_axis(inputs, rank)
        spatial = x.shape[1:-1]
        window = _dilated(kernel_size, kernel_dilation)
        if not isinstance(padding, str):
            out = tuple(n + lo + hi - w + 1
                        for n, w, (lo, hi) in zip(_dilated(spatial, strides), window, padding))
            if any(o < 1 for o in out):
                fail(label, "padding", repr(self.padding),
                     f"pairs that leave a non-empty output for inputs {tuple(spatial)} (output would be {out})")

        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

        y = lax.conv_transpose(
            x, kernel, strides, "VALID" if padding == "CIRCULAR" else padding, rhs_dilation=kernel_dilation,
            transpose_kernel=self.transpose_kernel, precision=self.precision)  # [B, *out_spatial, features]
        if padding == "CIRCULAR":
            y = _wrap_periodically(y, tuple(n * s for n, s in zip(spatial, strides)), self.transpose_kernel)
        if bias is not None:
            y = y + bias.reshape((1,) * (rank + 1) + (self.features,))
        return y[0] if unbatched else y


def _wrap_periodically(y, periods: Sequence[int], transpose_kernel: bool):
    """Folds the VALID transposed-conv output `[B, *spatial, F]` onto `periods` by periodic summation.

    Pads each axis to a whole number of periods, placed so that the input's origin lands on a period
    boundary (otherwise the result is circularly shifted), then sums the periods: flax's CIRCULAR.
    """
    size_diffs = [-(n - period) % (2 * period) for n, period in zip(y.shape[1:-1], periods)]
    if transpose_kernel:
        # The odd element goes on the right, mirroring Conv, so that a Conv's kernel gives its transpose.
        pads = [(diff // 2, (diff + 1) // 2) for diff in size_diffs]
    else:
        pads = [((diff + 1) // 2, diff // 2) for diff in size_diffs]
    y = jnp.pad(y, [(0, 0)] + pads + [(0, 0)])
    for axis, period in enumerate(periods, start=1):
        y = y.reshape(y.shape[:axis] + (-1, period) + y.shape[axis + 1:]).sum(axis=axis)
    return y
