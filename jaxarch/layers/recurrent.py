"""Recurrent layers: the `RNN` wrapper that runs a cell over time, `Bidirectional` and `StackedRNN`.

The cells (`SimpleRNNCell`, `LSTMCell`, `GRUCell`, one step each) live in `jaxarch.layers.recurrent_cells`, the
whole-sequence kernels for plain LSTM and tanh RNN cells in `jaxarch.layers.recurrent_kernels`; both are imported
here too, so `from jaxarch.layers.recurrent import LSTMCell` keeps working.

`RNN` owns the time axis, `seq_lengths` and `reverse`; `Bidirectional` and `StackedRNN` compose `RNN`s. A cell
crosses the time loop through Flax's lifted scan (`nn.scan`, as `flax.linen.RNN` does), so any
`flax.linen.RNNCellBase` cell works inside it, including one that calls `self.sow(...)` or draws rngs: parameters are
broadcast to every step, sown `intermediates` come back stacked along a leading time axis, and rng streams are split
per step as `RNN.split_rngs` says. jaxarch's plain LSTM and tanh RNN cells instead run as one whole-sequence kernel
with a hand-derived gradient, which reads the parameters as plain arrays and calls no module inside its loop. On
CUDA GPUs a plain float32 LSTM runs on cuDNN's fused kernel instead, as PyTorch's does (`RNN.cudnn`,
`jaxarch.layers.recurrent_cudnn`).

Where the input projection runs (`RNN.project_first`): every jaxarch cell splits its step into `project_inputs`
(the carry-independent input matmul) and `step_projected`; `project_first=True` runs `project_inputs` once on the
whole `[time, batch, in]` sequence (one large matmul, as cuDNN does) and scans only `step_projected`. The default
projects first on accelerators and inside the loop on CPU, where projecting first measured slower (the
measurements are in docs/performance/recurrent.md). Either way each step computes the same
`step_projected(carry, project_inputs(x_t))`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from jaxarch.checks import (check_axis_size, check_floating, check_integer, check_positive_ints, check_rank,
                            check_size_as_at_init, fail)
from jaxarch.compat import concrete_or_none
# The cells and kernels are re-exported: every name this module defined before they moved out stays importable.
from jaxarch.layers.recurrent_cells import (CELLS, Array, Carry, GRUCell, Initializer, LSTMCell,  # noqa: F401
                                            SimpleRNNCell, _check_carry, _check_chrono, _check_has_features,
                                            _chrono_bias, _compute_dtype, _default_kernel_init, _expand_to,
                                            _FusedGateCell, _gate_dtype, _identity_init, _layer_norm, _per_gate)
from jaxarch.layers import recurrent_cudnn
from jaxarch.layers.recurrent_kernels import (_carry_independent_tangent, _flat, _flip_within_lengths,  # noqa: F401
                                              _lstm_scan, _lstm_sequence, _lstm_sequence_jvp, _masked, _rnn_scan,
                                              _rnn_sequence, _rnn_sequence_jvp, _scan_into_own_buffers,
                                              _sequence_kernel, _sequence_scan, _step_weights, _zero_masked)

# Collection and variable name of the additive zeros on every h_t that `jaxarch.diagnostics` differentiates.
HIDDEN_STATE_PERTURBATIONS = "hidden_state_perturbations"
HIDDEN_STATE_PERTURBATION_NAME = "hidden_states"


def _hidden(carry: Carry) -> Array:
    """The `h` of a carry: the carry itself, or the last entry of an `(c, h)` pair (flax's LSTM convention)."""
    return carry[-1] if isinstance(carry, tuple) else carry


def _with_hidden(carry: Carry, h: Array) -> Carry:
    return carry[:-1] + (h,) if isinstance(carry, tuple) else h


class RNN(nn.Module):
    """Runs a cell over time with Flax's lifted scan (`nn.scan`).

    `inputs: [batch, time, in]` (`[time, batch, in]` if `time_major`) -> `outputs: [batch, time, features]`
    (same layout), or `(final_carry, outputs)` with `return_carry`.

    Cells with `project_inputs`/`step_projected` (all jaxarch cells) have their input projection hoisted out of
    the scan into one matmul when `project_first` (default: on GPU/TPU, not on CPU, see the module docstring).
    Other `flax.linen.RNNCellBase` cells are stepped whole. Plain LSTM and tanh simple-RNN cells projected inside
    the scan run as a whole-sequence kernel with a hand-derived gradient (`fused_sequence`, see
    `jaxarch.layers.recurrent_kernels`): the same values to float rounding, forward and reverse mode, faster
    training. On CUDA GPUs a plain float32 LSTM runs on cuDNN's fused kernel instead (`cudnn`, see
    `jaxarch.layers.recurrent_cudnn`), the same function with the same parameters.

    Any cell may `sow`: the sown values come back in their collection with a leading time axis (`[time, *shape]`,
    indexed by input position, also when `reverse`). That holds for the collections named in `variable_axes`
    ("intermediates", where `sow` writes by default); the lifted scan drops a step's writes to collections named
    nowhere, as in `flax.linen.RNN`. A cell that draws rngs gets the streams
    named in `split_rngs`: by default a new `dropout` key every step (split from the caller's, as flax's `nn.scan`
    splits them), so a dropout cell drops different units at each step.

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
    # Plain float32 LSTM cells through cuDNN's fused kernel, one call per layer and direction (see
    # `jaxarch.layers.recurrent_cudnn`). None: on CUDA GPUs, for a cell that qualifies, with `fused_sequence` and
    # `unroll=1`; True: always, an error for a cell it cannot run, and off CUDA JAX's reference of the kernel
    # (`jax.experimental.rnn.lstm_ref`, slow: it is how the path is tested on CPU); False: never.
    cudnn: bool | None = None
    # Rng streams passed into the loop (flax `nn.scan`'s `split_rngs`): True, a new key each step; False, the same
    # key at every step (e.g. one dropout mask for the whole sequence). Streams not named do not reach the cell.
    # "params" is False: parameters are created once and broadcast to every step.
    split_rngs: Mapping[str, bool] = FrozenDict({"params": False, "dropout": True})
    # Collections the cell writes at each step, stacked along this axis of the result (flax `nn.scan`'s
    # `variable_axes`); "intermediates" is what `sow` writes by default.
    variable_axes: Mapping[str, int] = FrozenDict({"intermediates": 0})
    # Collections carried from step to step (flax `nn.scan`'s `variable_carry`), e.g. a cell's running statistics.
    variable_carry: str | Sequence[str] | bool = False

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
        if self._use_cudnn(cell, x, carry, perturbation is not None):
            if self.is_initializing():
                cell.project_inputs(x[0])  # declares the params
            carry, outputs = recurrent_cudnn.lstm_sequence(x, seq_lengths, carry, *cell.fused_weights(x), reverse,
                                                           use_cuda=recurrent_cudnn.cuda_available())
            return self._finish(carry, outputs, seq_lengths, return_carry, reverse, keep_order)
        sequence_kernel = None
        if self.fused_sequence and not project_first and perturbation is None and self.unroll == 1:
            sequence_kernel = _sequence_kernel(cell, x, carry)
        if sequence_kernel is not None:
            if self.is_initializing():
                cell.project_inputs(x[0])  # declares the params
            carry, outputs = sequence_kernel(x, mask, carry, *cell.fused_weights(x), reverse)
            return self._finish(carry, outputs, seq_lengths, return_carry, reverse, keep_order)
        # `step` gets the cell as the lifted scan binds it inside the loop, never `self.cell`: a bound module
        # closed over by a loop would leak the loop's tracers into its scope (flax's UnexpectedTracerError). At
        # init the lifted scan creates the parameters once and broadcasts them to every step ("params" in
        # `variable_broadcast`), as `flax.linen.RNN` does.
        if fused and project_first:
            xs = cell.project_inputs(x)  # [T, B, G*H]: one matmul for every step

            def step(cell, carry, x_t):
                return cell.step_projected(carry, x_t)
        else:
            xs = x

            def step(cell, carry, x_t):
                return cell.step_projected(carry, cell.project_inputs(x_t)) if fused else cell(carry, x_t)

        def body(cell, carry, scanned):
            x_t, mask_t, perturbation_t = scanned
            new_carry, y = step(cell, carry, x_t)
            if perturbation_t is not None:
                new_carry = _with_hidden(new_carry, _hidden(new_carry) + perturbation_t)
                y = y + perturbation_t
            if mask_t is not None:
                new_carry = jax.tree.map(
                    lambda new, old: jnp.where(_expand_to(mask_t, new.ndim, leading=False), new, old),
                    new_carry, carry)
                y = jnp.where(_expand_to(mask_t, y.ndim, leading=False), y, jnp.zeros((), y.dtype))
            return new_carry, y

        scan = nn.scan(body, variable_broadcast="params", variable_axes=self.variable_axes,
                       variable_carry=self.variable_carry, split_rngs=self.split_rngs, in_axes=0, out_axes=0,
                       reverse=reverse, unroll=self.unroll)
        carry, outputs = scan(cell, carry, (xs, mask, perturbation))  # outputs [T, B, H] in input order
        return self._finish(carry, outputs, seq_lengths, return_carry, reverse, keep_order)

    @nn.nowrap
    def _use_cudnn(self, cell: nn.RNNCellBase, x: Array, carry: Carry, diagnostics: bool) -> bool:
        """Whether this call runs on cuDNN's LSTM kernel (the `cudnn` field); an error if asked for one it cannot
        run."""
        if self.cudnn is False:
            return False
        fits = not diagnostics and recurrent_cudnn.eligible(_sequence_kernel(cell, x, carry), x)
        if self.cudnn is None:
            return fits and self.fused_sequence and self.unroll == 1 and recurrent_cudnn.cuda_available()
        if not fits:
            fail("RNN", "cudnn=True with the cell", f"{type(cell).__name__} on {jnp.dtype(x.dtype).name} inputs"
                 f"{' with hidden-state diagnostics' if diagnostics else ''}", "a plain LSTMCell (sigmoid gates, "
                 "tanh, no peepholes or layer norm) with float32 inputs, parameters, carry and compute, and no "
                 "hidden-state diagnostics")
        return True

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


def _check_seq_lengths(name: str, seq_lengths, batch: int, num_steps: int) -> None:
    check_rank(name, "seq_lengths", seq_lengths, 1, "[batch]")
    check_axis_size(name, "seq_lengths", seq_lengths, 0, batch, meaning="batch")
    check_integer(name, "seq_lengths", seq_lengths)
    lengths = concrete_or_none(seq_lengths)  # None under jit: the range can only be checked on known values
    if lengths is not None and lengths.size and (lengths.min() < 0 or lengths.max() > num_steps):
        fail(name, "seq_lengths range", f"[{lengths.min()}, {lengths.max()}]", f"within [0, {num_steps}] "
             "(the time size)")


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
        """`inputs: [batch, time, in]` -> `merge_fn(forward, backward)` (default `[batch, time, H_f + H_b]`).

        Args:
          inputs: `[batch, time, in]` floats.
          seq_lengths: int `[batch]`: each direction reads only the first `seq_lengths[b]` steps.
          initial_carry: a `(forward, backward)` pair of carries (default: each cell's `initialize_carry`).
          return_carry: also return `(forward_carry, backward_carry)` (default: the field).

        Returns: the merged outputs, or `((forward_carry, backward_carry), outputs)` with `return_carry`.
        """
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
    cudnn: bool | None = None  # each layer's `RNN.cudnn`: None, cuDNN's LSTM kernel on CUDA GPUs

    @nn.compact
    def __call__(self, inputs: Array, *, seq_lengths: Array | None = None,
                 initial_carry: Sequence[Carry] | None = None, deterministic: bool = True,
                 return_carry: bool | None = None) -> Array | tuple[tuple[Carry, ...], Array]:
        """`inputs: [batch, time, in]` -> `[batch, time, hidden_sizes[-1] * (2 if bidirectional else 1)]`.

        Args:
          inputs: `[batch, time, in]` floats.
          seq_lengths: int `[batch]`: outputs at `t >= seq_lengths[b]` are zero and never read.
          initial_carry: one carry per layer (a `(forward, backward)` pair per layer when bidirectional).
          deterministic: no dropout between layers (False needs a "dropout" rng).
          return_carry: also return the final carries, one per layer (default: the field).

        Returns: the last layer's outputs, or `(carries, outputs)` with `return_carry`.
        """
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
            return RNN(make_cell(features, parent=None), unroll=self.unroll, cudnn=self.cudnn, **kwargs)

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
