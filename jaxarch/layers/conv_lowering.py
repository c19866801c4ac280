"""`conv`: the channels-last convolution behind `Conv`, as XLA's convolution or as a matmul over patches.

XLA:CPU runs 2-D and 3-D convolutions, and above all their kernel gradient, well below the speed of its
matmuls. The kernel gradient is itself a convolution, of the input with the output gradient, whose window is the
whole output and whose result is only the kernel's few positions: a shape XLA:CPU handles slowly. The "patches"
lowering (im2col, as Caffe lowered convolutions) writes the layer as one matmul instead. With `patches(x)` the
`[batch * out_spatial, prod(window) * in_features]` matrix of every window the kernel sees,

    y = patches(x) @ kernel.reshape(prod(window) * in_features, features)
    dL/dkernel = patches(x).T @ dL/dy
    dL/dx = XLA's transposed convolution of dL/dy (as in the "xla" lowering).

With few products per output (`prod(window) * in_features <= SUMMED_PRODUCTS_MAX`: a 3x3 first layer on grey
images, a 2x2 one on RGB), the forward product is instead a sum of that many column-times-kernel-row terms, which
XLA fuses with the bias and activation; the kernel gradient stays the matmul above.

The rule is a JVP (`custom_jvp`, like the pooling fast path), so forward-mode differentiation works too, and the
input gradient is skipped when the input needs none (the network's first layer). The patches are computed once in
the forward pass and kept for the backward one: `prod(window)` times the layer input's memory, the usual price of
im2col.

Measured on a 2-core CPU (Intel Xeon), the reference CNN's training step (batch 128, 28x28x1, conv3x3(32)-
maxpool2-conv3x3(64)-maxpool2-dense, Adam), median of interleaved runs: 72 ms with XLA's convolutions, 53 ms with
XLA's forward and input gradient and the patch kernel gradient, 43 ms with the patch forward as well (with the
batch a compile-time constant, which let XLA fold the first layer's patches away: under 1 ms). In `jaxarch bench`,
batch passed to the step, that is 0.82-0.93x PyTorch eager's step (started with OMP_WAIT_POLICY=PASSIVE) across
runs, from 0.51x with XLA's convolutions.
The summed first layer (9 products) then took the step from 43.3 to 39.6 ms on a 2-core AMD EPYC (family 25,
model 17), interleaved in one process.

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
# column-times-kernel-row terms, which XLA fuses with the bias and activation into one pass over the output. A
# matmul with so short a contraction runs far below speed. On a 2-core AMD EPYC, a 3x3 first layer on
# [128, 28, 28, 1] with 32 features (9 products) trained 1.75x faster summed; 12 products (2x2 over 3 channels)
# 1.3x; 16 even; 18 and more lost.
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


def use_patches(lowering: str, input_dilation: Sequence[int], feature_group_count: int) -> bool:
    """Whether `conv` takes the patch lowering: asked for, or `"auto"` for a 2-D or 3-D convolution on CPU.

    1-D convolutions stay with XLA under "auto": there XLA's kernel gradient is not the bottleneck, and on a 2-CPU
    machine the patch lowering was 7-35% slower (MNIST-1D's CNN step, batch 128 and 1024; single 1-D layers of
    32 -> 64 and 64 -> 128 channels), where a 2-D layer of 64 -> 64 channels on [64, 32, 32, 64] ran 2.2x faster
    and a 3-D layer of 16 -> 32 channels on [8, 16, 16, 16, 16] 1.4x. Grouped and input-dilated convolutions
    always take XLA's.
    """
    if feature_group_count != 1 or any(d != 1 for d in input_dilation):
        return False
    if lowering == "auto":
        return len(input_dilation) >= 2 and jax.default_backend() == "cpu"
    return lowering == "patches"


def conv(x, kernel, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], input_dilation: tuple[int, ...],
         kernel_dilation: tuple[int, ...], feature_group_count: int, dimension_numbers: lax.ConvDimensionNumbers,
         precision=None, lowering: str = "auto"):
    """Channels-last `lax.conv_general_dilated` (`x: [B, *spatial, C]`, `kernel: [*window, C / groups, F]`).

    `lowering`: "patches" (matmuls over the input's patches, see the module docstring), "xla" (XLA's
    convolution), or "auto": "patches" for 2-D and 3-D convolutions on the CPU backend, otherwise "xla".
    """
    if use_patches(lowering, input_dilation, feature_group_count):
        return _patch_conv(x, kernel, strides, pads, kernel_dilation, dimension_numbers, precision)
    return lax.conv_general_dilated(x, kernel, strides, pads, lhs_dilation=input_dilation,
                                    rhs_dilation=kernel_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, precision=precision)
