"""`conv`: the channels-last convolution behind `Conv`, as XLA's convolution or as a matmul over patches.

XLA:CPU runs 3-D convolutions, and 2-D ones when it gives them to YNNPACK, well below the speed of its matmuls,
above all their kernel gradient: a convolution of the input with the output gradient whose window is the whole
output and whose result is only the kernel's few positions. The "patches" lowering (im2col, as Caffe lowered
convolutions) writes the layer as one matmul instead. With `patches(x)` the `[batch * out_spatial,
prod(window) * in_features]` matrix of every window the kernel sees,

    y = patches(x) @ kernel.reshape(prod(window) * in_features, features)
    dL/dkernel = patches(x).T @ dL/dy
    dL/dx = XLA's transposed convolution of dL/dy (as in the "xla" lowering).

With few products per output (`prod(window) * in_features <= SUMMED_PRODUCTS_MAX`: a 3x3 first layer on grey
images, a 2x2 one on RGB), the forward product is instead a sum of that many column-times-kernel-row terms, which
XLA fuses with the bias and activation; the kernel gradient stays the matmul above. Which lowering `"auto"` takes
is `use_patches`'s rule; the measurements behind it are in docs/performance/cpu.md.

The rule is a JVP (`custom_jvp`, like the pooling fast path), so forward-mode differentiation works too, and the
input gradient is skipped when the input needs none (the network's first layer). The patches are computed once in
the forward pass and kept for the backward one: `prod(window)` times the layer input's memory, the usual price of
im2col.

Values equal XLA's up to the order of a float sum (tests compare them in float64), and the parameters are the
same arrays, so `flax.linen.Conv` checkpoints load unchanged. Grouped and input-dilated (transposed) convolutions
always take XLA's lowering.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["conv", "patches", "LOWERINGS"]

LOWERINGS = ("auto", "patches", "xla")


def patches(x, window: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]],
            kernel_dilation: Sequence[int]):
    """`[B, *spatial, C]` -> `[B, *out_spatial, prod(window) * C]`: the inputs of every window, zero-padded.

    Window offsets in row-major order with the input features fastest: the order of a `[*window, C, F]` kernel
    reshaped to `[prod(window) * C, F]`. Negative pads crop, as in `lax.conv_general_dilated`.
    """
    padded = lax.pad(x, np.zeros((), x.dtype), ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),))
    # One spatial axis at a time, the last first, so each concatenation prepends that axis's window offset to
    # the feature order: fewer bytes moved than slicing every window offset of the whole window at once.
    for axis in reversed(range(len(window))):
        size, step, dilation = window[axis], strides[axis], kernel_dilation[axis]
        length = padded.shape[axis + 1]
        out = (length - (size - 1) * dilation - 1) // step + 1
        shifted = [lax.slice_in_dim(padded, i * dilation, i * dilation + (out - 1) * step + 1, step, axis + 1)
                   for i in range(size)]
        padded = shifted[0] if size == 1 else lax.concatenate(shifted, dimension=x.ndim - 1)
    return padded


def _times_kernel(columns, kernel, precision):
    """`[B, *out, prod(window) * C] @ [*window, C, F]` -> `[B, *out, F]`, as one 2-D matmul."""
    features = kernel.shape[-1]
    rows = math.prod(columns.shape[:-1])
    out = lax.dot(columns.reshape(rows, columns.shape[-1]), kernel.reshape(-1, features), precision=precision)
    return out.reshape(columns.shape[:-1] + (features,))


# Up to this many products per output (prod(window) * in_features), the forward product is an unrolled sum of
# column-times-kernel-row terms, which XLA fuses with the bias and activation into one pass over the output: a
# matmul with so short a contraction runs far below speed (the crossover measured is in docs/performance/cpu.md).
SUMMED_PRODUCTS_MAX = 12


def _summed_products(columns, kernel):
    """`_times_kernel` as a sum of `columns[..., i] * kernel_row[i]` terms, accumulated in at least float32."""
    accumulate = jnp.promote_types(columns.dtype, jnp.float32)
    rows = kernel.reshape((-1,) + (1,) * (columns.ndim - 1) + kernel.shape[-1:]).astype(accumulate)
    terms = [columns[..., i:i + 1].astype(accumulate) * rows[i] for i in range(columns.shape[-1])]
    return functools.reduce(jnp.add, terms).astype(jnp.result_type(columns, kernel))


def _forward(columns, kernel, precision):
    if columns.shape[-1] <= SUMMED_PRODUCTS_MAX:
        return _summed_products(columns, kernel)
    return _times_kernel(columns, kernel, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _patch_conv(x, kernel, strides, pads, kernel_dilation, dimension_numbers, precision):
    columns = patches(x, kernel.shape[:-2], strides, pads, kernel_dilation)
    return _forward(columns, kernel, precision)


@functools.partial(_patch_conv.defjvp, symbolic_zeros=True)
def _patch_conv_jvp(strides, pads, kernel_dilation, dimension_numbers, precision, primals, tangents):
    (x, kernel), (x_dot, kernel_dot) = primals, tangents
    columns = patches(x, kernel.shape[:-2], strides, pads, kernel_dilation)  # shared by the output and dL/dkernel
    out = _forward(columns, kernel, precision)
    terms = []
    if not isinstance(x_dot, SymbolicZero):
        # Transposed, this is XLA's input gradient, which runs as fast as its forward convolution.
        terms.append(lax.conv_general_dilated(x_dot, kernel, strides, pads, rhs_dilation=kernel_dilation,
                                              dimension_numbers=dimension_numbers, precision=precision))
    if not isinstance(kernel_dot, SymbolicZero):
        terms.append(_times_kernel(columns, kernel_dot, precision))
    out_dot = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(out)
    return out, out_dot


@functools.cache
def ynnpack_runs_convolutions() -> bool:
    """Whether XLA:CPU gives this process's convolutions to YNNPACK: the compiled HLO of a probe convolution
    (the reference CNN's second layer, `[128, 14, 14, 32]` by `[3, 3, 32, 64]`) names a YNN fusion.

    It depends on the jaxlib and on the process's `XLA_FLAGS` as XLA read them when JAX's backends started:
    `jaxarch.tune_cpu()` takes convolutions away from YNNPACK (jaxarch/xla_flags.py), an untuned process leaves
    them there from jaxlib 0.10.1 on. Compiling the probe takes about 20 ms, once a process.
    """
    def probe(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    compiled = jax.jit(probe).lower(jax.ShapeDtypeStruct((128, 14, 14, 32), jnp.float32),
                                    jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.float32)).compile()
    return "__ynn_fusion" in compiled.as_text()


def use_patches(lowering: str, input_dilation: Sequence[int], feature_group_count: int, products: int) -> bool:
    """Whether `conv` takes the patch lowering, `products` being `prod(window) * in_features`: asked for, or
    `"auto"` on the CPU backend for

    - 3-D convolutions: XLA:CPU's own ran below the patch matmuls whichever library ran them;
    - 2-D convolutions with at most `SUMMED_PRODUCTS_MAX` products per output (the summed forward product beats
      any convolution there), and every 2-D convolution while XLA:CPU gives convolutions to YNNPACK
      (`ynnpack_runs_convolutions()`), which runs them on one core. Eigen's 2-D convolutions, which XLA uses
      without YNNPACK, beat the patches.

    1-D convolutions stay with XLA, whose kernel gradient is not the bottleneck there. Grouped and input-dilated
    convolutions always take XLA's. The measurements behind each case are in docs/performance/cpu.md.
    """
    if feature_group_count != 1 or any(d != 1 for d in input_dilation):
        return False
    if lowering != "auto":
        return lowering == "patches"
    rank = len(input_dilation)
    if rank < 2 or jax.default_backend() != "cpu":
        return False
    return rank > 2 or products <= SUMMED_PRODUCTS_MAX or ynnpack_runs_convolutions()


def conv(x, kernel, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], input_dilation: tuple[int, ...],
         kernel_dilation: tuple[int, ...], feature_group_count: int, dimension_numbers: lax.ConvDimensionNumbers,
         precision=None, lowering: str = "auto"):
    """Channels-last `lax.conv_general_dilated` (`x: [B, *spatial, C]`, `kernel: [*window, C / groups, F]`).

    `lowering`: "patches" (matmuls over the input's patches, see the module docstring), "xla" (XLA's
    convolution), or "auto": on the CPU backend the faster of the two as `use_patches` picks it, otherwise "xla".
    """
    if use_patches(lowering, input_dilation, feature_group_count, math.prod(kernel.shape[:-1])):
        return _patch_conv(x, kernel, strides, pads, kernel_dilation, dimension_numbers, precision)
    return lax.conv_general_dilated(x, kernel, strides, pads, lhs_dilation=input_dilation,
                                    rhs_dilation=kernel_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision)
