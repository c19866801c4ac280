"""Whole-sequence kernels with a hand-derived tangent: `RNN`'s path for plain LSTM and tanh simple-RNN cells.

Differentiating `lax.scan(step)` directly makes JAX save every intermediate of the step (13 `[T, B, H]` arrays for
the LSTM) and accumulate `h_{t-1}^T @ dgates_t` for the recurrent kernel and `x_t^T @ dgates_t` for the input kernel
inside the backward loop, as many small matmuls. `_lstm_sequence` and `_rnn_sequence` are `jax.custom_jvp`s whose
tangent is written as a recurrence that is linear in the tangents with precomputed coefficients (6 `[B, H]`-sized
arrays a step for the LSTM, 1 for the RNN), and whose weight and input tangents enter through single `[T*B, ...]`
matmuls outside the loop. Reverse mode transposes that tangent, so the backward loop holds only `dgates_t @ W_h^T`
and the weight gradients become two large matmuls after it. Forward mode (`jax.jvp`, `jax.jacfwd`) keeps working,
since the rule is a JVP.

Why the results are the cell's: the forward loop performs the operations of the cell's `step_projected` in the same
order, except that the input and recurrent matmuls run as one, over `[x_t, h]`, so values agree to float rounding;
the tangent is the exact derivative of that loop (tests compare both modes with differentiating the scan to 1e-12
in float64). `_sequence_kernel` hands a cell to a kernel only when the kernel computes exactly what the cell does:
the exact class with its default nonlinearities and no peepholes or layer norm, and one dtype of at least float32
for inputs, parameters, carry and compute, since the kernels have no casts. The kernels take the parameters as
plain arrays (`_FusedGateCell.fused_weights`), so no bound module crosses their loops.

Speed measurements, and the variants tried and dropped, are in docs/performance/recurrent.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxarch.layers.recurrent_cells import Array, Carry, LSTMCell, SimpleRNNCell, _expand_to


def _masked(mask_t: Array | None, new: Array, old: Array) -> Array:
    """`new` where the step is valid (`mask_t: [B]`), else `old` (the carry passes through padding)."""
    return new if mask_t is None else jnp.where(mask_t[:, None], new, old)


def _zero_masked(mask_t: Array | None, y: Array) -> Array:
    return y if mask_t is None else jnp.where(mask_t[:, None], y, jnp.zeros((), y.dtype))


def _flip_within_lengths(x: Array, seq_lengths: Array) -> Array:
    """Reverses each sequence's valid part, `x: [time, batch, ...]`; padding stays at the end."""
    num_steps = x.shape[0]
    steps = jnp.arange(num_steps)[:, None]  # [T, 1]
    lengths = jnp.clip(seq_lengths, 0, num_steps)[None, :]  # [1, B]; traced lengths escape the range check
    source = jnp.where(steps < lengths, lengths - 1 - steps, steps)  # [T, B]
    return jnp.take_along_axis(x, _expand_to(source, x.ndim, leading=False), axis=0)


def _flat(x: Array) -> Array:
    """`[T, B, n] -> [T*B, n]`: the per-step operands of a whole-sequence matmul."""
    return x.reshape((-1, x.shape[-1]))


def _step_weights(input_kernel, input_bias, recurrent_kernel, recurrent_bias) -> tuple[Array, Array]:
    """`([W_i; W_h]: [in + H, G*H], b_i + b_h)`: one `[B, in + H] @ [in + H, G*H]` matmul a step instead of two.
    `[x_t, h] @ [W_i; W_h]` is `x_t @ W_i + h @ W_h` (block matrix product), the cell's two projections summed."""
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
    kernel's residuals and of the backward loop's outputs, into one broadcast that each loop then copies (the cost
    is in docs/performance/recurrent.md). Distinct fill values keep the buffers apart. The result is `lax.scan`'s:
    the loop visits every index once, in `lax.scan`'s order, and overwrites each buffer's row there, so no fill
    value survives.
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


def _tangent_scan(body, tangent_carry, tangent_xs, coefficient_xs, reverse: bool):
    """`lax.scan(body, tangent_carry, (tangent_xs, coefficient_xs), reverse=reverse)` for a `body` linear in the
    carry and in `tangent_xs` (the JVP loops below), run as the JVP of that same scan at zero.

    Reverse mode transposes this loop, and JAX's scan transpose needs the scan's `linear` flags to say which inputs
    are tangents. A `lax.scan` written inside a `custom_jvp` rule has none set: JAX releases up to at least 0.8
    then fail under `grad` with a bare AssertionError in `_scan_transpose` (newer ones read linearity from the
    arguments). A scan reached through `jax.jvp` carries the flags in every release. As `body` is linear in the
    carry and `tangent_xs`, the JVP at zero is the loop itself; its primal half, on zeros, is unused.
    """
    def loop(carry, xs):
        return jax.lax.scan(body, carry, (xs, coefficient_xs), reverse=reverse)

    zeros = jax.tree.map(jnp.zeros_like, (tangent_carry, tangent_xs))
    return jax.jvp(loop, zeros, (tangent_carry, tangent_xs))[1]


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
        d_gates_t, (coef_t, forget_t, out_coef_t, mask_t) = scanned
        scaled = (d_gates_t + dh @ recurrent_kernel) * coef_t
        d_i, d_f, d_g, d_o = jnp.split(scaled, 4, axis=-1)
        new_dc = d_i + d_f + d_g + forget_t * dc
        new_dh = d_o + out_coef_t * new_dc
        return (_masked(mask_t, new_dc, dc), _masked(mask_t, new_dh, dh)), _zero_masked(mask_t, new_dh)

    (dc, dh), dys = _tangent_scan(body, (dc0, dh0), d_gates_in, (gate_coef, forget, out_coef, mask), reverse)
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
        d_pre_t, (slope_t, mask_t) = scanned
        new_dh = (d_pre_t + dh @ recurrent_kernel) * slope_t
        return _masked(mask_t, new_dh, dh), _zero_masked(mask_t, new_dh)

    dh, dys = _tangent_scan(body, dh0, d_pre_in, (tanh_slope, mask), reverse)
    return (h, ys), (dh, dys)



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

