"""Recurrent cells: `SimpleRNNCell`, `LSTMCell` and `GRUCell`, one step each.

Cells are one step and nothing else, in flax's argument order: `cell(carry, x) -> (carry, y)` with
`x: [batch, in]`, `y: [batch, features]` and `cell.initialize_carry(rng, input_shape=[batch, in])`. They subclass
`flax.linen.RNNCellBase`, so they also run inside `flax.linen.RNN`; `jaxarch.layers.recurrent.RNN` runs them (and
any other flax cell) over time.

Parameter layout (that of PyTorch's `nn.LSTM`/`nn.GRU`/`nn.RNN`, see `jaxarch.torch_weights`), with G gates of
H = `features` units each:

    input_kernel       [in, G*H]   torch `weight_ih_l{k}`, transposed
    recurrent_kernel   [H, G*H]    torch `weight_hh_l{k}`, transposed
    input_bias         [G*H]       torch `bias_ih_l{k}`
    recurrent_bias     [G*H]       torch `bias_hh_l{k}`

with the gate chunks in torch's order: LSTM (i, f, g, o), GRU (r, z, n), simple RNN a single chunk. Two biases are
redundant for most cells, but GRU's reset-after form needs `b_hn` inside the `r *` term, and keeping both everywhere
makes PyTorch weights load by transposition alone.

Every cell splits its step into `project_inputs(x)`, the input matmul `x @ input_kernel + input_bias` that does not
depend on the carry, and `step_projected(carry, projected_x_t)`, the recurrent matmul and gate arithmetic;
`cell(carry, x)` is `step_projected(carry, project_inputs(x))`, so `RNN` may run the projection for every step at
once (`project_first`) or inside its loop and get the same step.

Parameters may arrive boxed (`nn.LogicallyPartitioned`, from initialisers wrapped with logical axis names): the
cells read them through `self.param` (which unboxes) or `nn.unbox`, and the initialisers that combine other
initialisers' outputs (`_per_gate`, the forget and chrono biases) compute on the unboxed values and box the
result as the wrapped initialiser did.

Precision: matmuls run in `dtype` (e.g. bfloat16); gate pre-activations, nonlinearities, the cell update and
layer-norm statistics run in at least float32, and the carry keeps the dtype it was initialised with (float32 by
default), so long sequences do not accumulate bfloat16 rounding in the state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import initializers

from jaxarch.checks import check_axis_size, check_floating, fail

Array = jax.Array
Carry = Any
Initializer = Callable[..., Array]

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


def _boxed_like(template: Any, value: Array) -> Any:
    """`value` in the box `template` came in (e.g. `nn.LogicallyPartitioned`, same axis names), or bare if it was
    bare: an initialiser that edits another initialiser's output returns what that one would have."""
    return template.replace_boxed(value) if isinstance(template, nn.meta.AxisMetadata) else value


def _per_gate(init: Initializer, num_gates: int) -> Initializer:
    """Applies `init` to each `[H, H]` gate block of a fused `[H, G*H]` kernel (an orthogonal matrix per gate)."""

    def init_fn(key, shape, dtype=jnp.float32):
        rows, cols = shape
        keys = jax.random.split(key, num_gates)
        blocks = [init(k, (rows, cols // num_gates), dtype) for k in keys]
        # A block's axis names are the whole kernel's: concatenating along the gate axis keeps the axes' meaning.
        return _boxed_like(blocks[0], jnp.concatenate([nn.unbox(b) for b in blocks], axis=-1))

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
            expected = nn.unbox(self.get_variable("params", "input_kernel")).shape[0]
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
        """The named parameters' values, unboxed (`get_variable`, unlike `param`, returns them as stored)."""
        values = [nn.unbox(self.get_variable("params", n)) for n in names]
        if any(v is None for v in values):
            missing = [n for n, v in zip(names, values) if v is None]
            path = "/".join(self.scope.path) if self.scope is not None else ""
            fail(type(self).__name__, f"parameters {missing} at params/{path}",
                 f"missing ({_found_along(self, path)})",
                 "the parameters init created there: a converted tree goes at the cell's own path, e.g. "
                 f"jaxarch.torch_weights.place_params(params, {path!r}, cell_params_from_torch(...)); at init, "
                 "project_inputs (or __call__) runs first and declares them")
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


def _found_along(module: nn.Module, path: str) -> str:
    """What the "params" passed to `apply` hold along `path`: the deepest entry that exists and its keys, so that a
    tree placed one level off (`{"cell": ...}` where the cell is `LSTMCell_0`) is visible in the message."""
    try:
        node = module.scope.root.variables().get("params", {})
    except Exception:  # noqa: BLE001 - inside a lifted transform the root may not be readable: say less
        return "the params passed to apply could not be listed here"
    reached = []
    for key in path.split("/") if path else []:
        if not hasattr(node, "keys") or key not in node:
            break
        node = node[key]
        reached.append(key)
    where = "params/" + "/".join(reached) if reached else "the top level of params"
    keys = sorted(node.keys()) if hasattr(node, "keys") else type(node).__name__
    return f"{where} holds {keys}"


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
            boxed = self.bias_init(init_key, shape, dtype)
            bias = nn.unbox(boxed)
            h = self.features
            if self.chrono_max:
                forget = _chrono_bias(chrono_key, h, self.chrono_max, dtype)
                return _boxed_like(boxed, bias.at[:h].add(-forget).at[h:2 * h].add(forget))
            return _boxed_like(boxed, bias.at[h:2 * h].add(jnp.asarray(self.forget_bias, dtype)))

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
            boxed = self.bias_init(init_key, shape, dtype)
            return _boxed_like(boxed, nn.unbox(boxed).at[h:2 * h].add(_chrono_bias(chrono_key, h, self.chrono_max,
                                                                                    dtype)))

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



def _check_carry(name: str, what: str, carry: Carry, expected: Carry, source: str) -> None:
    """Checks a carry's structure and shapes against `expected` (ShapeDtypeStructs from `source`)."""
    got = jax.tree.map(np.shape, carry)
    want = jax.tree.map(lambda s: s.shape, expected)
    if jax.tree.structure(carry) != jax.tree.structure(expected) or got != want:
        fail(name, f"{what} shapes", got, f"{want} (from {source})")



# Cells by name, for `StackedRNN(cell_type=...)`.
CELLS: dict[str, Callable[[int], nn.RNNCellBase]] = {"lstm": LSTMCell, "gru": GRUCell, "rnn": SimpleRNNCell}
