"""Recurrent layers: one-step cells, the `RNN` scan wrapper, `Bidirectional` and `StackedRNN`.

Cells are one step and nothing else, in flax's argument order: `cell(carry, x) -> (carry, y)` with
`x: [batch, in]`, `y: [batch, features]` and `cell.initialize_carry(rng, input_shape=[batch, in])`. They subclass
`flax.linen.RNNCellBase`, so they also run inside `flax.linen.RNN`. `RNN` owns the time axis, `seq_lengths` and
`reverse`; `Bidirectional` and `StackedRNN` compose `RNN`s.

Parameter layout (that of PyTorch's `nn.LSTM`/`nn.GRU`/`nn.RNN`, see `jaxarch.torch_weights`), with G gates of
H = `features` units each:

    input_kernel       [in, G*H]   torch `weight_ih_l{k}`, transposed
    recurrent_kernel   [H, G*H]    torch `weight_hh_l{k}`, transposed
    input_bias         [G*H]       torch `bias_ih_l{k}`
    recurrent_bias     [G*H]       torch `bias_hh_l{k}`

with the gate chunks in torch's order: LSTM (i, f, g, o), GRU (r, z, n), simple RNN a single chunk. Two biases are
redundant for most cells, but GRU's reset-after form needs `b_hn` inside the `r *` term, and keeping both everywhere
makes PyTorch weights load by transposition alone.

Speed: every cell splits its step into `project_inputs(x)`, the input matmul `x @ input_kernel + input_bias`
that does not depend on the carry, and `step_projected(carry, projected_x_t)`, the recurrent matmul and gate
arithmetic; `cell(carry, x)` is `step_projected(carry, project_inputs(x))`. `RNN(project_first=True)` calls
`project_inputs` once on the whole `[time, batch, in]` sequence (one large matmul, as cuDNN does) and scans only
`step_projected`. On XLA:CPU that measured slower than projecting inside the scan (batch 64, time 128, in 64,
hidden 256, jitted train step: about 0.41 vs 0.31 CPU-seconds a step for the LSTM, 0.30 vs 0.23 for the GRU): the
`[time, batch, G*H]` buffer is written and re-read from memory instead of staying in cache. So the default,
`project_first=None`, projects first on accelerators and inside the scan on CPU.

Where the projection stays inside the scan, plain LSTM cells (the defaults: no peepholes or layer norm,
sigmoid/tanh, one float32 or float64 dtype throughout) and tanh `SimpleRNNCell`s (likewise one dtype) run as one
whole-sequence kernel, `_lstm_sequence` or `_rnn_sequence`, with the forward operations of `step_projected`
(its two matmuls fused into one) and a hand-derived tangent: the backward loop keeps only the recurrent matmul, the
weight gradients become large matmuls after it, and far fewer per-step intermediates are stored
(`RNN(fused_sequence=False)` turns it off). Tried and dropped on the 2-core CPU:
splitting the batch into independent scans to use both cores (XLA:CPU runs independent while loops one after
another, so it only added overhead), unroll 2/4/8, projecting first inside the kernel (slower, as above), the same
kernel for the GRU (no faster than its scan), storing only the gate activations a step, with every tangent
coefficient computed after the loop (within 2%, noise), and one tanh over all four gate blocks (sigmoid(x) as
tanh(x / 2) / 2 + 1 / 2, the halving folded into the kernel's columns): XLA:CPU gave bitwise the same gradients,
so it already computes the logistic through tanh, and the layer's gradient took the same time (62 against 63 ms,
fastest of 21 interleaved rounds).

Precision: matmuls run in `dtype` (e.g. bfloat16); gate pre-activations, nonlinearities, the cell update and
layer-norm statistics run in at least float32, and the carry keeps the dtype it was initialised with (float32 by
default), so long sequences do not accumulate bfloat16 rounding in the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import initializers

from jaxarch.checks import (check_axis_size, check_floating, check_integer, check_positive_ints, check_rank,
                            check_size_as_at_init, fail)

Array = jax.Array
Carry = Any
Initializer = Callable[..., Array]

# Collection and variable name of the additive zeros on every h_t that `jaxarch.diagnostics` differentiates.
HIDDEN_STATE_PERTURBATIONS = "hidden_state_perturbations"
HIDDEN_STATE_PERTURBATION_NAME = "hidden_states"

_default_kernel_init = initializers.lecun_normal()


def _expand_to(v: Array, ndim: int, leading: bool = True) -> Array:
    """Reshapes a vector to broadcast explicitly against a rank-`ndim` array (rank promotion is an error here).

    `leading=True`: `[n] -> [1, ..., 1, n]` (a feature vector); `leading=False`: `[n] -> [n, 1, ..., 1]` (a batch
    vector).
    """
    ones = (1,) * (ndim - v.ndim)
    return jnp.reshape(v, ones + v.shape if leading else v.shape + ones)


def _compute_dtype(module_dtype, x: Array, param_dtype) -> Any:
    return module_dtype if module_dtype is not None else jnp.promote_types(x.dtype, param_dtype)


def _gate_dtype(dtype) -> Any:
    """Gate arithmetic runs in at least float32 (float64 stays float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _layer_norm(x: Array, num_groups: int, eps: float = 1e-5) -> Array:
    """Zero-mean unit-variance normalisation of each of `num_groups` equal chunks of the last axis (no affine).

    Statistics are computed in at least float32; the result has x's dtype.
    """
    stats_dtype = _gate_dtype(x.dtype)
    grouped = x.astype(stats_dtype).reshape(x.shape[:-1] + (num_groups, x.shape[-1] // num_groups))
    mean = grouped.mean(axis=-1, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=-1, keepdims=True)
    normed = (grouped - mean) * jax.lax.rsqrt(var + eps)
    return normed.reshape(x.shape).astype(x.dtype)


def _per_gate(init: Initializer, num_gates: int) -> Initializer:
    """Applies `init` to each `[H, H]` gate block of a fused `[H, G*H]` kernel (an orthogonal matrix per gate)."""

    def init_fn(key, shape, dtype=jnp.float32):
        rows, cols = shape
        keys = jax.random.split(key, num_gates)
        return jnp.concatenate([init(k, (rows, cols // num_gates), dtype) for k in keys], axis=-1)

    return init_fn


def _identity_init(key, shape, dtype=jnp.float32):
    del key
    return jnp.eye(shape[0], shape[1], dtype=dtype)


def _check_has_features(name: str, x) -> None:
    if np.ndim(x) < 1:
        fail(name, "inputs rank", f"0 (shape {np.shape(x)})", "rank >= 1 [*batch, features]")


def _chrono_bias(key, features: int, chrono_max: int, dtype) -> Array:
    """`log(U[1, chrono_max - 1])` per unit (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"):
    gates that start open for time scales spread up to `chrono_max` steps, where a constant forget bias of 1
    remembers for only a few steps."""
    return jnp.log(jax.random.uniform(key, (features,), dtype, 1.0, max(chrono_max - 1.0, 1.0)))


def _check_chrono(name: str, chrono_max: int) -> None:
    if chrono_max and chrono_max < 2:
        fail(name, "chrono_max", str(chrono_max), "0 (off) or the longest dependency in steps, >= 2")


class _FusedGateCell(nn.RNNCellBase):
    """Shared machinery of the cells: the fused PyTorch-layout parameters and the two-part step.

    Subclasses define the dataclass fields (`features`, `kernel_init`, `recurrent_kernel_init`, `bias_init`,
    `dtype`, `param_dtype`), `num_gates`, `step_projected` and, when they have extra parameters, `_declare_extra`.
    """

    num_gates: ClassVar[int]

    @property
    def num_feature_axes(self) -> int:
        return 1

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: Sequence[int]) -> Carry:
        """Zero carry for inputs of shape `[*batch, in]`: `h: [*batch, features]` (LSTM: the pair `(c, h)`)."""
        del rng
        return jnp.zeros(tuple(input_shape[:-1]) + (self.features,), self.carry_dtype)

    @property
    def carry_dtype(self):
        """The parameters' dtype, or the compute dtype where that is wider (float64 compute keeps a float64
        state; bfloat16 compute keeps a float32 one)."""
        return self.param_dtype if self.dtype is None else jnp.promote_types(self.param_dtype, self.dtype)

    def _recurrent_init(self) -> Initializer:
        return _per_gate(self.recurrent_kernel_init, self.num_gates)

    def _input_bias_init(self) -> Initializer:
        return self.bias_init

    def _declare_extra(self) -> None:
        """Hook for cell-specific parameters (peepholes, layer-norm scales)."""

    @nn.compact
    def project_inputs(self, x: Array) -> Array:
        """`x: [*lead, in] -> [*lead, G*H]`, the carry-independent part of a step, for any leading axes.

        Declares every parameter of the cell (the input size is first known here), so it runs before
        `step_projected`.
        """
        name = type(self).__name__
        _check_has_features(name, x)
        check_floating(name, "inputs", x)
        in_features = x.shape[-1]
        if self.has_variable("params", "input_kernel"):
            expected = self.get_variable("params", "input_kernel").shape[0]
            check_axis_size(name, "inputs (vs. existing input_kernel)", x, -1, expected)
        width = self.num_gates * self.features
        kernel = self.param("input_kernel", self.kernel_init, (in_features, width), self.param_dtype)
        bias = self.param("input_bias", self._input_bias_init(), (width,), self.param_dtype)
        self.param("recurrent_kernel", self._recurrent_init(), (self.features, width), self.param_dtype)
        self.param("recurrent_bias", self.bias_init, (width,), self.param_dtype)
        self._declare_extra()

        dtype = _compute_dtype(self.dtype, x, self.param_dtype)
        projected = jnp.dot(x.astype(dtype), kernel.astype(dtype))  # [*lead, G*H]
        projected = self._normalize_projection(projected)
        return projected + _expand_to(bias.astype(dtype), projected.ndim)

    def _normalize_projection(self, projected: Array) -> Array:
        return projected

    def _params(self, *names: str) -> list[Array]:
        values = [self.get_variable("params", n) for n in names]
        if any(v is None for v in values):
            fail(type(self).__name__, "parameters", "missing", "project_inputs (or __call__) to run first; it "
                 "declares them")
        return values

    def fused_weights(self, x: Array) -> tuple[Array, Array, Array, Array]:
        """`(input_kernel, input_bias, recurrent_kernel, recurrent_bias)` for `RNN`'s whole-sequence kernels, the
        biases as `[1, G*H]` rows (rank promotion is an error here); `x: [*lead, in]` is checked against
        `input_kernel` as `project_inputs` does."""
        input_kernel, input_bias, recurrent_kernel, recurrent_bias = self._params(
            "input_kernel", "input_bias", "recurrent_kernel", "recurrent_bias")
        check_axis_size(type(self).__name__, "inputs (vs. existing input_kernel)", x, -1, input_kernel.shape[0])
        return input_kernel, input_bias[None, :], recurrent_kernel, recurrent_bias[None, :]

    def _recurrent_projection(self, h: Array, dtype) -> Array:
        """`h @ recurrent_kernel + recurrent_bias`: `[*batch, H] -> [*batch, G*H]`, in `dtype`."""
        kernel, bias = self._params("recurrent_kernel", "recurrent_bias")
        projected = jnp.dot(h.astype(dtype), kernel.astype(dtype))
        projected = self._normalize_recurrent(projected)
        return projected + _expand_to(bias.astype(dtype), projected.ndim)

    def _normalize_recurrent(self, projected: Array) -> Array:
        return projected

    def __call__(self, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One step: `x: [*batch, in]` -> `(new_carry, y: [*batch, features])`."""
        name = type(self).__name__
        _check_has_features(name, x)
        expected = jax.eval_shape(lambda: self.initialize_carry(jax.random.key(0), x.shape))
        _check_carry(name, "carry", carry, expected, f"initialize_carry for inputs {x.shape}")
        return self.step_projected(carry, self.project_inputs(x))


class SimpleRNNCell(_FusedGateCell):
    """Elman RNN: `h' = activation_fn(x W_i + b_i + h W_h + b_h)` (PyTorch `nn.RNN`).

    `identity_init=True` is the IRNN of Le, Jaitly & Hinton 2015 ("A simple way to initialize recurrent networks of
    rectified linear units"): recurrent kernel = identity, usually with `activation_fn=nn.relu`.
    Carry: `h: [*batch, features]`.
    """

    features: int
    activation_fn: Callable[[Array], Array] = jnp.tanh
    identity_init: bool = False  # IRNN: recurrent kernel starts as the identity (overrides recurrent_kernel_init)
    kernel_init: Initializer = _default_kernel_init
    recurrent_kernel_init: Initializer = initializers.orthogonal()
    bias_init: Initializer = initializers.zeros_init()
    dtype: Any = None  # compute dtype of the matmuls; None infers it from inputs and params
    param_dtype: Any = jnp.float32

    num_gates: ClassVar[int] = 1

    def _recurrent_init(self) -> Initializer:
        return _identity_init if self.identity_init else self.recurrent_kernel_init

    def step_projected(self, carry: Array, projected: Array) -> tuple[Array, Array]:
        """`carry h: [*batch, H]`, `projected: [*batch, H]` from `project_inputs`."""
        h = carry
        dtype = _compute_dtype(self.dtype, projected, self.param_dtype)
        gate_dtype = _gate_dtype(h.dtype)
        pre = projected.astype(gate_dtype) + self._recurrent_projection(h, dtype).astype(gate_dtype)
        new_h = self.activation_fn(pre).astype(h.dtype)
        return new_h, new_h


class LSTMCell(_FusedGateCell):
    """LSTM (Hochreiter & Schmidhuber 1997) in PyTorch's form, gates in the order (i, f, g, o):

        i, f, g, o = x W_i + b_i + h W_h + b_h
        i, f, o = sigmoid(i), sigmoid(f), sigmoid(o);  g = tanh(g)
        c' = f * c + i * g;  h' = o * tanh(c')

    `peephole=True` adds Gers & Schmidhuber 2000 peepholes, diagonal weights from the cell state:
    `i += w_ci * c`, `f += w_cf * c`, `o += w_co * c'` (params `peephole_input`, `peephole_forget`,
    `peephole_output`, each `[H]`).
    `layer_norm=True` follows Ba, Kiros & Hinton 2016 ("Layer normalization", sec. 3.1): each gate block of
    `x W_i` and of `h W_h` is normalised separately with a learned scale (`input_norm_scale`,
    `recurrent_norm_scale`, `[G*H]`, the two biases act as the shift), and `h' = o * tanh(LN(c'))` with
    `cell_norm_scale`/`cell_norm_bias` `[H]`. Statistics in float32. Per-gate rather than whole-vector
    normalisation (the paper writes one LN over all four blocks) follows TF's `LayerNormBasicLSTMCell`: a
    gate's scale then does not depend on the others'.

    Carry: `(c, h)`, each `[*batch, features]`, as in flax.
    """

    features: int
    forget_bias: float = 1.0  # added to the forget chunk of input_bias at init (Jozefowicz et al. 2015)
    # > 0: chrono initialisation for dependencies up to this many steps: forget bias log(U[1, chrono_max - 1]),
    # input bias its negative (replaces forget_bias). For long-range tasks such as the copy task.
    chrono_max: int = 0
    peephole: bool = False
    layer_norm: bool = False
    gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
    activation_fn: Callable[[Array], Array] = jnp.tanh
    kernel_init: Initializer = _default_kernel_init
    recurrent_kernel_init: Initializer = initializers.orthogonal()  # applied to each [H, H] gate block
    bias_init: Initializer = initializers.zeros_init()
    peephole_init: Initializer = initializers.zeros_init()  # zeros: starts as the plain LSTM
    dtype: Any = None  # compute dtype of the matmuls; None infers it from inputs and params
    param_dtype: Any = jnp.float32

    num_gates: ClassVar[int] = 4

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: Sequence[int]) -> tuple[Array, Array]:
        """Zero `(c, h)`, each `[*batch, features]`, for inputs `[*batch, in]`."""
        del rng
        zeros = jnp.zeros(tuple(input_shape[:-1]) + (self.features,), self.carry_dtype)
        return zeros, zeros

    def _input_bias_init(self) -> Initializer:
        _check_chrono("LSTMCell", self.chrono_max)

        def init_fn(key, shape, dtype=jnp.float32):
            init_key, chrono_key = jax.random.split(key)
            bias = self.bias_init(init_key, shape, dtype)
            h = self.features
            if self.chrono_max:
                forget = _chrono_bias(chrono_key, h, self.chrono_max, dtype)
                return bias.at[:h].add(-forget).at[h:2 * h].add(forget)
            return bias.at[h:2 * h].add(jnp.asarray(self.forget_bias, dtype))

        return init_fn

    def _declare_extra(self) -> None:
        h, width = self.features, 4 * self.features
        if self.peephole:
            for name in ("peephole_input", "peephole_forget", "peephole_output"):
                self.param(name, self.peephole_init, (h,), self.param_dtype)
        if self.layer_norm:
            self.param("input_norm_scale", initializers.ones_init(), (width,), self.param_dtype)
            self.param("recurrent_norm_scale", initializers.ones_init(), (width,), self.param_dtype)
            self.param("cell_norm_scale", initializers.ones_init(), (h,), self.param_dtype)
            self.param("cell_norm_bias", initializers.zeros_init(), (h,), self.param_dtype)

    def _scaled_norm(self, projected: Array, scale_name: str) -> Array:
        if not self.layer_norm:
            return projected
        (scale,) = self._params(scale_name)
        return _layer_norm(projected, 4) * _expand_to(scale.astype(projected.dtype), projected.ndim)

    def _normalize_projection(self, projected: Array) -> Array:
        return self._scaled_norm(projected, "input_norm_scale")

    def _normalize_recurrent(self, projected: Array) -> Array:
        return self._scaled_norm(projected, "recurrent_norm_scale")

    def step_projected(self, carry: tuple[Array, Array], projected: Array) -> tuple[tuple[Array, Array], Array]:
        """`carry (c, h)`, each `[*batch, H]`; `projected: [*batch, 4H]` from `project_inputs`."""
        c, h = carry
        dtype = _compute_dtype(self.dtype, projected, self.param_dtype)
        gate_dtype = _gate_dtype(c.dtype)
        c_state = c.astype(gate_dtype)
        gates = projected.astype(gate_dtype) + self._recurrent_projection(h, dtype).astype(gate_dtype)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        if self.peephole:
            w_ci, w_cf, w_co = (_expand_to(w.astype(gate_dtype), c.ndim) for w in
                                self._params("peephole_input", "peephole_forget", "peephole_output"))
            i = i + w_ci * c_state
            f = f + w_cf * c_state
        new_c = self.gate_fn(f) * c_state + self.gate_fn(i) * self.activation_fn(g)
        if self.peephole:
            o = o + w_co * new_c
        cell_out = new_c
        if self.layer_norm:
            scale, bias = (_expand_to(p.astype(gate_dtype), c.ndim) for p in
                           self._params("cell_norm_scale", "cell_norm_bias"))
            cell_out = _layer_norm(new_c, 1) * scale + bias
        new_h = (self.gate_fn(o) * self.activation_fn(cell_out)).astype(h.dtype)
        return (new_c.astype(c.dtype), new_h), new_h


class GRUCell(_FusedGateCell):
    """GRU (Cho et al. 2014), gates in PyTorch's order (r, z, n):

        r = sigmoid(x W_ir + b_ir + h W_hr + b_hr);  z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
        reset_after=True  (cuDNN/PyTorch):  n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        reset_after=False (Cho et al.):     n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)
        h' = (1 - z) * n + z * h

    The reset-after form needs one recurrent matmul per step, the reset-before form two (the second waits on r).
    Carry: `h: [*batch, features]`.
    """

    features: int
    reset_after: bool = True  # cuDNN/PyTorch form; False is the original Cho et al. form
    # > 0: chrono initialisation: update-gate (z, the "keep h" gate) bias log(U[1, chrono_max - 1]).
    chrono_max: int = 0
    gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
    activation_fn: Callable[[Array], Array] = jnp.tanh
    kernel_init: Initializer = _default_kernel_init
    recurrent_kernel_init: Initializer = initializers.orthogonal()  # applied to each [H, H] gate block
    bias_init: Initializer = initializers.zeros_init()
    dtype: Any = None  # compute dtype of the matmuls; None infers it from inputs and params
    param_dtype: Any = jnp.float32

    num_gates: ClassVar[int] = 3

    def _input_bias_init(self) -> Initializer:
        _check_chrono("GRUCell", self.chrono_max)
        if not self.chrono_max:
            return self.bias_init

        def init_fn(key, shape, dtype=jnp.float32):
            init_key, chrono_key = jax.random.split(key)
            h = self.features
            return self.bias_init(init_key, shape, dtype).at[h:2 * h].add(
                _chrono_bias(chrono_key, h, self.chrono_max, dtype))

        return init_fn

    def step_projected(self, carry: Array, projected: Array) -> tuple[Array, Array]:
        """`carry h: [*batch, H]`; `projected: [*batch, 3H]` from `project_inputs`."""
        h = carry
        dtype = _compute_dtype(self.dtype, projected, self.param_dtype)
        gate_dtype = _gate_dtype(h.dtype)
        h_state = h.astype(gate_dtype)
        x_r, x_z, x_n = jnp.split(projected.astype(gate_dtype), 3, axis=-1)
        if self.reset_after:
            h_r, h_z, h_n = jnp.split(self._recurrent_projection(h, dtype).astype(gate_dtype), 3, axis=-1)
            r = self.gate_fn(x_r + h_r)
            n = self.activation_fn(x_n + r * h_n)
        else:
            kernel, bias = self._params("recurrent_kernel", "recurrent_bias")
            width = 2 * self.features
            rz = jnp.dot(h.astype(dtype), kernel[:, :width].astype(dtype))
            h_r, h_z = jnp.split((rz + _expand_to(bias[:width].astype(dtype), rz.ndim)).astype(gate_dtype), 2, -1)
            r = self.gate_fn(x_r + h_r)
            h_n = jnp.dot((r * h_state).astype(dtype), kernel[:, width:].astype(dtype))
            h_n = h_n + _expand_to(bias[width:].astype(dtype), h_n.ndim)
            n = self.activation_fn(x_n + h_n.astype(gate_dtype))
        z = self.gate_fn(x_z + h_z)
        new_h = ((1.0 - z) * n + z * h_state).astype(h.dtype)
        return new_h, new_h


# --- Whole-sequence kernels with a hand-derived tangent (the fast path of `RNN` for plain LSTM and tanh RNN cells) --
#
# Differentiating `lax.scan(step)` directly makes JAX save every intermediate of the step (13 `[T, B, H]` arrays
# for the LSTM) and accumulate `h_{t-1}^T @ dgates_t` for the recurrent kernel and `x_t^T @ dgates_t` for the input
# kernel inside the backward loop, as 2 x 128 small matmuls. `_lstm_sequence` and `_rnn_sequence` are
# `jax.custom_jvp`s whose tangent is written as a recurrence that is linear in the tangents with precomputed
# coefficients (6 `[B, H]`-sized arrays a step for the LSTM, 1 for the RNN), and whose weight and input tangents
# enter through single `[T*B, ...]` matmuls outside the loop. Reverse mode transposes that tangent, so the backward
# loop holds only `dgates_t @ W_h^T` and the weight gradients become two large matmuls after it. Forward mode
# (`jax.jvp`, `jax.jacfwd`) keeps working. The forward values are those of `step_projected` up to float rounding:
# its input and recurrent matmuls run as one, over `[x_t, h]`.
# Measured (batch 64, time 128, in 64, hidden 256, jitted train step on a 2-core CPU, interleaved runs): the LSTM
# about 1.1-1.25x the steps/s of differentiating the plain scan; the tanh RNN 1.28x, and 1.43x at batch 16, time
# 32, hidden 64 and 1.12x at batch 64, time 256, hidden 512. The same construction for the reset-after GRU measured
# no faster than the plain scan (0.93-0.98x), so GRUs keep the scan.


def _masked(mask_t: Array | None, new: Array, old: Array) -> Array:
    """`new` where the step is valid (`mask_t: [B]`), else `old` (the carry passes through padding)."""
    return new if mask_t is None else jnp.where(mask_t[:, None], new, old)


def _zero_masked(mask_t: Array | None, y: Array) -> Array:
    return y if mask_t is None else jnp.where(mask_t[:, None], y, jnp.zeros((), y.dtype))


def _flat(x: Array) -> Array:
    """`[T, B, n] -> [T*B, n]`: the per-step operands of a whole-sequence matmul."""
    return x.reshape((-1, x.shape[-1]))


def _step_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias) -> tuple[Array, Array]:
    """`([W_i; W_h]: [in + H, G*H], b_i + b_h)`: one `[B, in + H] @ [in + H, G*H]` matmul a step instead of two.
    The input part alone was a poorly used `[B, in]` matmul (about 6% of the LSTM's train step on a 2-core CPU)."""
    return jnp.concatenate([input_kernel, recurrent_kernel], axis=0), input_bias + recurrent_bias


def _sequence_scan(body, carry, xs, reverse: bool, residuals: bool):
    """`lax.scan`, or with `residuals` (the tangent's forward pass) `_scan_into_own_buffers`."""
    scan = _scan_into_own_buffers if residuals else jax.lax.scan
    return scan(body, carry, xs, reverse=reverse)


def _carry_independent_tangent(primals, tangents, h_prev: Array, shape) -> Array:
    """Every carry-independent tangent term of the pre-activations at once: `[T*B, G*H] -> shape` `[T, B, G*H]`.

    `primals` and `tangents` are a sequence kernel's `(x, mask, carry, input_kernel, input_bias, recurrent_kernel,
    recurrent_bias)`; `h_prev: [T, B, H]` is the `h` each step read."""
    x, _, _, input_kernel, _, _, _ = primals
    dx, _, _, d_input_kernel, d_input_bias, d_recurrent_kernel, d_recurrent_bias = tangents
    return (_flat(dx) @ input_kernel + _flat(x) @ d_input_kernel + d_input_bias
            + _flat(h_prev) @ d_recurrent_kernel + d_recurrent_bias).reshape(shape)


def _lstm_scan(x, mask, carry, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse, residuals):
    """LSTM over `x: [T, B, in]` from `carry (c, h)`; with `residuals`, also the tangent's coefficients for every
    step."""
    kernel, bias = _step_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias)

    def body(carry, scanned):
        c, h = carry
        x_t, mask_t = scanned
        gates = jnp.concatenate([x_t, h], axis=-1) @ kernel + bias  # [B, 4H]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        new_c = f * c + i * g
        tanh_c = jnp.tanh(new_c)
        new_h = o * tanh_c
        y = _zero_masked(mask_t, new_h)
        new_carry = (_masked(mask_t, new_c, c), _masked(mask_t, new_h, h))
        if not residuals:
            return new_carry, y
        # d gates_pre -> (dc' contributions of i, f, g; dh' contribution of o): [B, 4H]
        gate_coef = jnp.concatenate([g * i * (1 - i), c * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], -1)
        return new_carry, (y, (gate_coef, f, o * (1 - tanh_c * tanh_c), h))

    return _sequence_scan(body, carry, (x, mask), reverse, residuals)


def _scan_into_own_buffers(body, carry, xs, reverse=False):
    """`lax.scan(body, carry, xs, reverse=reverse)`, each stacked output written into a buffer of its own.

    `lax.scan` starts every stacked output from zeros, and XLA merges equal initial values, here those of this
    kernel's residuals and of the backward loop's outputs, into one broadcast that each loop then copies: 56 MB of
    copies a training step at batch 64, time 128, hidden 256, and 3-4% of its time on a 2-core CPU. Distinct fill
    values keep the buffers apart; every position is overwritten.
    """
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    _, step_out = jax.eval_shape(body, carry, jax.tree.map(lambda a: a[0], xs))
    leaves, treedef = jax.tree.flatten(step_out)
    buffers = [jnp.full((num_steps,) + leaf.shape, k + 1, leaf.dtype) for k, leaf in enumerate(leaves)]

    def loop_body(t, state):
        carry, buffers = state
        index = num_steps - 1 - t if reverse else t
        carry, out = body(carry, jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), xs))
        buffers = [jax.lax.dynamic_update_index_in_dim(b, o, index, 0)
                   for b, o in zip(buffers, jax.tree.leaves(out))]
        return carry, buffers

    carry, buffers = jax.lax.fori_loop(0, num_steps, loop_body, (carry, buffers))
    return carry, jax.tree.unflatten(treedef, buffers)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7,))
def _lstm_sequence(x, mask, carry, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse):
    """`x: [T, B, in]`, `mask: [T, B]` bool or None, `carry: (c0, h0)`, each `[B, H]` ->
    `((c_T, h_T), ys: [T, B, H])`."""
    return _lstm_scan(x, mask, carry, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse,
                      residuals=False)


@_lstm_sequence.defjvp
def _lstm_sequence_jvp(reverse, primals, tangents):
    _, mask, _, _, _, recurrent_kernel, _ = primals
    dc0, dh0 = tangents[2]
    carry, (ys, (gate_coef, forget, out_coef, h_prev)) = _lstm_scan(*primals, reverse, residuals=True)
    d_gates_in = _carry_independent_tangent(primals, tangents, h_prev, gate_coef.shape)

    def body(carry, scanned):
        dc, dh = carry
        d_gates_t, coef_t, forget_t, out_coef_t, mask_t = scanned
        scaled = (d_gates_t + dh @ recurrent_kernel) * coef_t
        d_i, d_f, d_g, d_o = jnp.split(scaled, 4, axis=-1)
        new_dc = d_i + d_f + d_g + forget_t * dc
        new_dh = d_o + out_coef_t * new_dc
        return (_masked(mask_t, new_dc, dc), _masked(mask_t, new_dh, dh)), _zero_masked(mask_t, new_dh)

    (dc, dh), dys = jax.lax.scan(body, (dc0, dh0), (d_gates_in, gate_coef, forget, out_coef, mask), reverse=reverse)
    return (carry, ys), ((dc, dh), dys)


def _rnn_scan(x, mask, h0, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse, residuals):
    """Elman RNN with tanh over `x: [T, B, in]` from `h0: [B, H]`; with `residuals`, also the `h` each step read."""
    kernel, bias = _step_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias)

    def body(h, scanned):
        x_t, mask_t = scanned
        new_h = jnp.tanh(jnp.concatenate([x_t, h], axis=-1) @ kernel + bias)  # [B, H]
        new_carry, y = _masked(mask_t, new_h, h), _zero_masked(mask_t, new_h)
        return (new_carry, (y, h)) if residuals else (new_carry, y)

    return _sequence_scan(body, h0, (x, mask), reverse, residuals)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7,))
def _rnn_sequence(x, mask, h0, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse):
    """`x: [T, B, in]`, `mask: [T, B]` bool or None, `h0: [B, H]` -> `(h_T, ys: [T, B, H])`."""
    return _rnn_scan(x, mask, h0, input_kernel, input_bias, recurrent_kernel, recurrent_bias, reverse,
                     residuals=False)


@_rnn_sequence.defjvp
def _rnn_sequence_jvp(reverse, primals, tangents):
    _, mask, _, _, _, recurrent_kernel, _ = primals
    dh0 = tangents[2]
    h, (ys, h_prev) = _rnn_scan(*primals, reverse, residuals=True)
    tanh_slope = 1 - ys * ys  # tanh' at each valid step; padded steps (ys = 0) are masked in the loop
    d_pre_in = _carry_independent_tangent(primals, tangents, h_prev, ys.shape)

    def body(dh, scanned):
        d_pre_t, slope_t, mask_t = scanned
        new_dh = (d_pre_t + dh @ recurrent_kernel) * slope_t
        return _masked(mask_t, new_dh, dh), _zero_masked(mask_t, new_dh)

    dh, dys = jax.lax.scan(body, dh0, (d_pre_in, tanh_slope, mask), reverse=reverse)
    return (h, ys), (dh, dys)


def _hidden(carry: Carry) -> Array:
    """The `h` of a carry: the carry itself, or the last entry of an `(c, h)` pair (flax's LSTM convention)."""
    return carry[-1] if isinstance(carry, tuple) else carry


def _with_hidden(carry: Carry, h: Array) -> Carry:
    return carry[:-1] + (h,) if isinstance(carry, tuple) else h


def _flip_within_lengths(x: Array, seq_lengths: Array) -> Array:
    """Reverses each sequence's valid part, `x: [time, batch, ...]`; padding stays at the end."""
    num_steps = x.shape[0]
    steps = jnp.arange(num_steps)[:, None]  # [T, 1]
    lengths = jnp.clip(seq_lengths, 0, num_steps)[None, :]  # [1, B]; traced lengths escape the range check
    source = jnp.where(steps < lengths, lengths - 1 - steps, steps)  # [T, B]
    return jnp.take_along_axis(x, _expand_to(source, x.ndim, leading=False), axis=0)


class RNN(nn.Module):
    """Runs a cell over time with one `jax.lax.scan`.

    `inputs: [batch, time, in]` (`[time, batch, in]` if `time_major`) -> `outputs: [batch, time, features]`
    (same layout), or `(final_carry, outputs)` with `return_carry`.

    Cells with `project_inputs`/`step_projected` (all jaxarch cells) have their input projection hoisted out of
    the scan into one matmul when `project_first` (default: on GPU/TPU, not on CPU, see the module docstring).
    Other `flax.linen.RNNCellBase` cells are stepped whole. Plain LSTM and tanh simple-RNN cells projected inside
    the scan run as a whole-sequence kernel with a hand-derived gradient (`fused_sequence`, see the module
    docstring): the same values to float rounding, forward and reverse mode, faster training.

    `seq_lengths: [batch]` ints: outputs at `t >= seq_lengths[b]` are zero, the final carry is the carry after the
    last valid step (the initial carry for length 0), and padding is never read (it is zeroed first, so even NaN
    padding cannot reach a gradient). `reverse=True` scans from the end; with `seq_lengths` a sequence's padded
    steps pass the carry through unchanged, so each sequence starts from its own last valid step. With
    `keep_order` (the default here, unlike flax) reversed outputs come back in input order, aligned with a forward
    RNN's; otherwise in processing order with padding kept at the end.

    Diagnostics: if the variable collection `HIDDEN_STATE_PERTURBATIONS` is passed to `apply` (or is mutable
    outside `init`), a zeros term `[time, batch, features]` (time-major, indexed by input position) is added to
    every `h_t` inside the recurrence; its gradient is dLoss/dh_t through the recurrence (see
    `jaxarch.diagnostics`). Without that collection nothing is added.
    """

    cell: nn.RNNCellBase
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = True  # reversed outputs in input order, ready to merge with a forward RNN
    unroll: int = 1  # scan steps per loop iteration (jax.lax.scan's unroll)
    time_major: bool = False  # inputs [time, batch, in] instead of [batch, time, in]
    project_first: bool | None = None  # input projection as one matmul before the scan; None: not on CPU
    # Plain LSTM and tanh simple-RNN cells run as one whole-sequence kernel with a hand-derived gradient (see
    # `_sequence_kernel`); the same values to float rounding, faster training. False differentiates the scan of
    # `step_projected`.
    fused_sequence: bool = True

    @nn.compact
    def __call__(self, inputs: Array, *, seq_lengths: Array | None = None, initial_carry: Carry | None = None,
                 return_carry: bool | None = None, reverse: bool | None = None,
                 keep_order: bool | None = None) -> Array | tuple[Carry, Array]:
        """`reverse` and `keep_order` override the fields for this call (as `Bidirectional` does)."""
        name = "RNN"
        return_carry = self.return_carry if return_carry is None else return_carry
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order
        layout = "[time, batch, features]" if self.time_major else "[batch, time, features]"
        check_rank(name, "inputs", inputs, 3, layout)
        check_floating(name, "inputs", inputs)
        x = inputs if self.time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, in]
        num_steps, batch, in_features = x.shape
        if num_steps == 0:
            fail(name, "inputs time size", f"0 (shape {inputs.shape})", f"at least one step {layout}")
        check_size_as_at_init(name, "inputs features (axis -1)", in_features, inputs.shape, self,
                              ("cell", "input_kernel"))

        mask = None
        if seq_lengths is not None:
            _check_seq_lengths(name, seq_lengths, batch, num_steps)
            mask = jnp.arange(num_steps)[:, None] < seq_lengths[None, :]  # [T, B]
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))

        cell = self.cell
        expected_carry = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), (batch, in_features)))
        if initial_carry is None:
            carry = cell.initialize_carry(jax.random.key(0), (batch, in_features))
        else:
            _check_carry(name, "initial_carry", initial_carry, expected_carry, "the cell's initialize_carry for "
                         f"inputs {(batch, in_features)}")
            carry = initial_carry

        fused = hasattr(cell, "project_inputs") and hasattr(cell, "step_projected")
        project_first = self.project_first if self.project_first is not None else jax.default_backend() != "cpu"
        hidden = _hidden(expected_carry)
        perturbation = self._hidden_state_perturbation((num_steps,) + hidden.shape, hidden.dtype)
        sequence_kernel = None
        if self.fused_sequence and not project_first and perturbation is None and self.unroll == 1:
            sequence_kernel = _sequence_kernel(cell, x, carry)
        if sequence_kernel is not None:
            if self.is_initializing():
                cell.project_inputs(x[0])  # declares the params
            carry, outputs = sequence_kernel(x, mask, carry, *cell.fused_weights(x), reverse)
            return self._finish(carry, outputs, seq_lengths, return_carry, reverse, keep_order)
        if fused and project_first:
            xs = cell.project_inputs(x)  # [T, B, G*H]: one matmul for every step
            step = cell.step_projected
        elif fused:
            if self.is_initializing():
                cell.project_inputs(x[0])  # declares the params outside the scan, where flax can create them
            xs = x

            def step(carry, x_t):
                return cell.step_projected(carry, cell.project_inputs(x_t))
        else:
            if self.is_initializing():
                cell(carry, x[0])  # declares the params outside the scan, where flax can create them
            xs, step = x, cell

        def body(carry, scanned):
            x_t, mask_t, perturbation_t = scanned
            new_carry, y = step(carry, x_t)
            if perturbation_t is not None:
                new_carry = _with_hidden(new_carry, _hidden(new_carry) + perturbation_t)
                y = y + perturbation_t
            if mask_t is not None:
                new_carry = jax.tree.map(
                    lambda new, old: jnp.where(_expand_to(mask_t, new.ndim, leading=False), new, old),
                    new_carry, carry)
                y = jnp.where(_expand_to(mask_t, y.ndim, leading=False), y, jnp.zeros((), y.dtype))
            return new_carry, y

        carry, outputs = jax.lax.scan(body, carry, (xs, mask, perturbation), reverse=reverse,
                                      unroll=self.unroll)  # outputs [T, B, H] in input order
        return self._finish(carry, outputs, seq_lengths, return_carry, reverse, keep_order)

    @nn.nowrap
    def _finish(self, carry: Carry, outputs: Array, seq_lengths: Array | None, return_carry: bool, reverse: bool,
                keep_order: bool) -> Array | tuple[Carry, Array]:
        """`outputs: [T, B, H]` in input order -> the requested order and layout."""
        if reverse and not keep_order:
            outputs = jnp.flip(outputs, 0) if seq_lengths is None else _flip_within_lengths(outputs, seq_lengths)
        if not self.time_major:
            outputs = jnp.swapaxes(outputs, 0, 1)
        return (carry, outputs) if return_carry else outputs

    def _hidden_state_perturbation(self, shape: tuple[int, ...], dtype) -> Array | None:
        """Zeros `[T, B, H]` to add to each h_t when diagnostics ask for them, else None (nothing is added)."""
        collection, var_name = HIDDEN_STATE_PERTURBATIONS, HIDDEN_STATE_PERTURBATION_NAME
        if self.has_variable(collection, var_name):
            value = self.get_variable(collection, var_name)
            if tuple(np.shape(value)) != shape:
                fail("RNN", f"{collection}/{var_name} shape", tuple(np.shape(value)), f"{shape} [time, batch, "
                     "features]")
            return value
        if self.is_mutable_collection(collection) and not self.is_initializing():
            return self.variable(collection, var_name, jnp.zeros, shape, dtype).value
        return None


def _sequence_kernel(cell, x: Array, carry: Carry) -> Callable | None:
    """The whole-sequence kernel that computes exactly what `cell` computes, or None. Kernels exist for a plain
    LSTM (exact class, default nonlinearities, no peepholes or layer norm: `_lstm_sequence`) and a tanh
    `SimpleRNNCell` (`_rnn_sequence`), whose inputs, parameters, carry and compute all share one dtype of at least
    float32 (the kernels have no casts)."""
    if type(cell) is LSTMCell:
        plain = (not cell.peephole and not cell.layer_norm and cell.gate_fn is jax.nn.sigmoid
                 and cell.activation_fn is jnp.tanh)
        kernel = _lstm_sequence if plain else None
    elif type(cell) is SimpleRNNCell:
        kernel = _rnn_sequence if cell.activation_fn is jnp.tanh else None
    else:
        kernel = None
    if kernel is None:
        return None
    dtype = jnp.dtype(cell.param_dtype)
    dtypes = {jnp.dtype(x.dtype), dtype} | {jnp.dtype(c.dtype) for c in jax.tree.leaves(carry)}
    if cell.dtype is not None:
        dtypes.add(jnp.dtype(cell.dtype))
    return kernel if dtypes == {dtype} and dtype in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)) else None


def _check_seq_lengths(name: str, seq_lengths, batch: int, num_steps: int) -> None:
    check_rank(name, "seq_lengths", seq_lengths, 1, "[batch]")
    check_axis_size(name, "seq_lengths", seq_lengths, 0, batch, meaning="batch")
    check_integer(name, "seq_lengths", seq_lengths)
    if not isinstance(seq_lengths, jax.core.Tracer):
        lengths = np.asarray(seq_lengths)
        if lengths.size and (lengths.min() < 0 or lengths.max() > num_steps):
            fail(name, "seq_lengths range", f"[{lengths.min()}, {lengths.max()}]", f"within [0, {num_steps}] "
                 "(the time size)")


def _check_carry(name: str, what: str, carry: Carry, expected: Carry, source: str) -> None:
    """Checks a carry's structure and shapes against `expected` (ShapeDtypeStructs from `source`)."""
    got = jax.tree.map(np.shape, carry)
    want = jax.tree.map(lambda s: s.shape, expected)
    if jax.tree.structure(carry) != jax.tree.structure(expected) or got != want:
        fail(name, f"{what} shapes", got, f"{want} (from {source})")


def concat_features(forward: Array, backward: Array) -> Array:
    """Default `Bidirectional.merge_fn`: `[..., H_f], [..., H_b] -> [..., H_f + H_b]`."""
    return jnp.concatenate([forward, backward], axis=-1)


class Bidirectional(nn.Module):
    """Runs `forward_rnn` left to right and `backward_rnn` right to left, and merges their outputs.

    `inputs: [batch, time, in]` -> `merge_fn(forward_outputs, backward_outputs)` (by default `[batch, time,
    H_f + H_b]`), or `((forward_carry, backward_carry), outputs)` with `return_carry`. The backward RNN is
    called with `reverse=True, keep_order=True`, so both outputs are in input order; with `seq_lengths` each
    direction sees only the valid part. `initial_carry` is a `(forward, backward)` pair.
    """

    forward_rnn: nn.Module
    backward_rnn: nn.Module
    merge_fn: Callable[[Array, Array], Array] = concat_features
    return_carry: bool = False

    @nn.compact
    def __call__(self, inputs: Array, *, seq_lengths: Array | None = None, initial_carry: Carry | None = None,
                 return_carry: bool | None = None) -> Array | tuple[Carry, Array]:
        name = "Bidirectional"
        return_carry = self.return_carry if return_carry is None else return_carry
        check_rank(name, "inputs", inputs, 3, "[batch, time, features]")
        check_floating(name, "inputs", inputs)
        check_size_as_at_init(name, "inputs features (axis -1)", inputs.shape[-1], inputs.shape, self,
                              ("forward_rnn", "cell", "input_kernel"))
        if seq_lengths is not None:
            _check_seq_lengths(name, seq_lengths, inputs.shape[0], inputs.shape[1])
        if initial_carry is None:
            forward_carry = backward_carry = None
        elif isinstance(initial_carry, tuple) and len(initial_carry) == 2:
            forward_carry, backward_carry = initial_carry
        else:
            fail(name, "initial_carry", type(initial_carry).__name__, "a (forward, backward) pair")
        forward_carry, forward_out = self.forward_rnn(inputs, seq_lengths=seq_lengths, initial_carry=forward_carry,
                                                      return_carry=True)
        backward_carry, backward_out = self.backward_rnn(inputs, seq_lengths=seq_lengths,
                                                         initial_carry=backward_carry, return_carry=True,
                                                         reverse=True, keep_order=True)
        outputs = self.merge_fn(forward_out, backward_out)
        return ((forward_carry, backward_carry), outputs) if return_carry else outputs


# Cells by name, for `StackedRNN(cell_type=...)`.
CELLS: dict[str, Callable[[int], nn.RNNCellBase]] = {"lstm": LSTMCell, "gru": GRUCell, "rnn": SimpleRNNCell}


class StackedRNN(nn.Module):
    """Layers of `RNN` (or `Bidirectional`), like `torch.nn.LSTM(num_layers=..., bidirectional=...)`.

    `torch.nn.LSTM(in, 128, num_layers=3, bidirectional=True, dropout=0.1, batch_first=True)` is
    `StackedRNN("lstm", (128,) * 3, bidirectional=True, dropout_rate=0.1)`.

    `inputs: [batch, time, in]` -> `[batch, time, hidden_sizes[-1] * (2 if bidirectional else 1)]`, or
    `(carries, outputs)` with `return_carry`, `carries` a tuple with one carry per layer (a `(forward, backward)`
    pair per layer when bidirectional).

    Parameter names (what `jaxarch.torch_weights` produces): `layer_{k}/cell/...`, or, bidirectional,
    `layer_{k}/forward_rnn/cell/...` and `layer_{k}/backward_rnn/cell/...`.

    Dropout (needs a `dropout` rng when `deterministic=False`) is applied to every layer's outputs except the last
    one's, as in PyTorch. `residual=True` adds a layer's input to its (dropped-out) output wherever their feature
    sizes match, and skips layers where they do not (typically the first).
    """

    # A CELLS name, or a cell class / functools.partial of one, called as `cell_type(features, parent=None)`.
    cell_type: str | Callable[..., nn.RNNCellBase] = "lstm"
    hidden_sizes: Sequence[int] = (128,)  # features per layer
    bidirectional: bool = False
    dropout_rate: float = 0.0  # between layers
    residual: bool = False
    return_carry: bool = False
    unroll: int = 1

    @nn.compact
    def __call__(self, inputs: Array, *, seq_lengths: Array | None = None,
                 initial_carry: Sequence[Carry] | None = None, deterministic: bool = True,
                 return_carry: bool | None = None) -> Array | tuple[tuple[Carry, ...], Array]:
        name = "StackedRNN"
        return_carry = self.return_carry if return_carry is None else return_carry
        sizes = check_positive_ints(name, "hidden_sizes", self.hidden_sizes)
        if not 0.0 <= self.dropout_rate < 1.0:
            fail(name, "dropout_rate", self.dropout_rate, "in [0, 1)")
        if isinstance(self.cell_type, str):
            if self.cell_type not in CELLS:
                fail(name, "cell_type", repr(self.cell_type), f"one of {sorted(CELLS)} or a features -> cell callable")
            make_cell = CELLS[self.cell_type]
        else:
            make_cell = self.cell_type
        check_rank(name, "inputs", inputs, 3, "[batch, time, features]")
        check_floating(name, "inputs", inputs)
        first_cell = ("layer_0", "forward_rnn", "cell") if self.bidirectional else ("layer_0", "cell")
        check_size_as_at_init(name, "inputs features (axis -1)", inputs.shape[-1], inputs.shape, self,
                              (*first_cell, "input_kernel"))
        if initial_carry is not None and len(initial_carry) != len(sizes):
            fail(name, "initial_carry length", len(initial_carry), f"{len(sizes)} (one carry per layer)")
        mask = None
        if seq_lengths is not None:
            _check_seq_lengths(name, seq_lengths, inputs.shape[0], inputs.shape[1])
            mask = (jnp.arange(inputs.shape[1])[None, :] < seq_lengths[:, None])[..., None]  # [B, T, 1]

        # Modules built here would be adopted by this module under automatic names; `parent=None` leaves them
        # unbound until the enclosing RNN/Bidirectional takes them, giving the names `cell`, `forward_rnn`, ...
        def make_rnn(features, **kwargs):
            return RNN(make_cell(features, parent=None), unroll=self.unroll, **kwargs)

        x, carries = inputs, []
        for index, features in enumerate(sizes):
            layer_name = f"layer_{index}"
            if self.bidirectional:
                layer = Bidirectional(make_rnn(features, parent=None), make_rnn(features, parent=None),
                                      name=layer_name)
            else:
                layer = make_rnn(features, name=layer_name)
            carry, y = layer(x, seq_lengths=seq_lengths, return_carry=True,
                             initial_carry=None if initial_carry is None else initial_carry[index])
            carries.append(carry)
            if index < len(sizes) - 1 and self.dropout_rate > 0.0:
                y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
            if self.residual and y.shape[-1] == x.shape[-1]:
                y = y + x
                if mask is not None:
                    y = jnp.where(mask, y, jnp.zeros((), y.dtype))
            x = y
        return (tuple(carries), x) if return_carry else x
