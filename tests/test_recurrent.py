"""Recurrent layers against hand-stepped loops, padding invariance, gradients, dtypes, validation, diagnostics.

Sizes differ on every axis (batch 3, time 7, in 5, hidden 4) so a swapped axis fails.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxarch.compat import enable_x64
from jaxarch.diagnostics import hidden_state_grad_norms, plot_hidden_state_grad_norms
from jaxarch.layers import recurrent
from jaxarch.layers.recurrent import (HIDDEN_STATE_PERTURBATIONS, RNN, Bidirectional, GRUCell, LSTMCell,
                                      SimpleRNNCell, StackedRNN)

BATCH, TIME, IN, HIDDEN = 3, 7, 5, 4
SEQ_LENGTHS = np.array([7, 4, 0], np.int32)  # full, partial, empty

CELLS = {
    "lstm": functools.partial(LSTMCell, HIDDEN),
    "lstm_peephole": functools.partial(LSTMCell, HIDDEN, peephole=True),
    "lstm_layer_norm": functools.partial(LSTMCell, HIDDEN, layer_norm=True),
    "lstm_peephole_layer_norm": functools.partial(LSTMCell, HIDDEN, peephole=True, layer_norm=True),
    "gru": functools.partial(GRUCell, HIDDEN),
    "gru_reset_before": functools.partial(GRUCell, HIDDEN, reset_after=False),
    "rnn": functools.partial(SimpleRNNCell, HIDDEN),
    "rnn_identity_relu": functools.partial(SimpleRNNCell, HIDDEN, identity_init=True, activation_fn=jax.nn.relu),
}


def _inputs(key=0, shape=(BATCH, TIME, IN), dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), shape, dtype)


def _randomize(params, key=1, scale=0.5):
    """Random values everywhere (biases, peepholes, norm scales too) so that every parameter matters."""
    rng = np.random.default_rng(key)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)


def _rnn_params(cell, x, scale=0.5):
    """Random params of `RNN(cell)` for inputs `x: [batch, time, in]`, from shapes alone (nothing compiles)."""
    carry = cell.initialize_carry(jax.random.key(0), x[:, 0].shape)
    shapes = jax.eval_shape(cell.init, jax.random.key(2), carry, x[:, 0])["params"]
    return {"cell": _randomize(shapes, scale=scale)}


@functools.cache
def _jitted_step(cell):
    """One compiled cell step per cell configuration, shared by every test that hand-steps it."""
    return jax.jit(lambda params, carry, x_t: cell.apply({"params": params}, carry, x_t))


def _hand_loop(cell, params, x, seq_lengths, reverse):
    """Reference: each example alone, its valid steps one cell call at a time, in processing order."""
    step = _jitted_step(cell)
    outputs = np.zeros(x.shape[:2] + (HIDDEN,), np.float32)
    carries = []
    for b in range(x.shape[0]):
        length = x.shape[1] if seq_lengths is None else int(seq_lengths[b])
        carry = cell.initialize_carry(jax.random.key(0), (1, x.shape[-1]))
        steps = range(length - 1, -1, -1) if reverse else range(length)
        for t in steps:
            carry, y = step(params, carry, x[b:b + 1, t])
            outputs[b, t] = np.asarray(y[0])
        carries.append(carry)
    carry = jax.tree.map(lambda *per_example: jnp.concatenate(per_example, axis=0), *carries)
    return carry, outputs


def _apply(model, params, x, **kwargs):
    """`model.apply` under jit; array kwargs are traced, others static."""
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
    static = {k: v for k, v in kwargs.items() if k not in arrays}
    run = jax.jit(lambda params, x, arrays: model.apply({"params": params}, x, **arrays, **static))
    return run(params, x, arrays)


# (use seq_lengths, reverse, project_first): every cell runs the first two modes (each flag takes both values);
# LSTM and GRU run all four, so seq_lengths and reverse also appear alone.
MODES = [(False, False, True), (True, True, False), (True, False, True), (False, True, False)]
CASES = [(name, mode) for name in CELLS for mode in (MODES if name in ("lstm", "gru") else MODES[:2])]


@pytest.mark.parametrize(("cell_name", "mode"), CASES,
                         ids=[f"{n}-seq{int(m[0])}-rev{int(m[1])}-proj{int(m[2])}" for n, m in CASES])
def test_rnn_matches_hand_stepped_loop(cell_name, mode):
    use_lengths, reverse, project_first = mode
    cell = CELLS[cell_name]()
    model = RNN(cell, return_carry=True, reverse=reverse, project_first=project_first)
    x = _inputs()
    params = _rnn_params(cell, x)
    seq_lengths = jnp.asarray(SEQ_LENGTHS) if use_lengths else None
    carry, outputs = _apply(model, params, x, seq_lengths=seq_lengths)
    want_carry, want_outputs = _hand_loop(cell, params["cell"], x, SEQ_LENGTHS if use_lengths else None, reverse)
    chex.assert_shape(outputs, (BATCH, TIME, HIDDEN))
    np.testing.assert_allclose(outputs, want_outputs, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(carry, want_carry, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell_name", ["lstm_peephole_layer_norm", "gru_reset_before"])
def test_eager_equals_jit_and_no_retrace(cell_name):
    model = RNN(CELLS[cell_name](), return_carry=True)
    x = _inputs()
    params = _rnn_params(model.cell, x)
    eager = model.apply({"params": params}, x, seq_lengths=SEQ_LENGTHS)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, x, seq_lengths):
        return model.apply({"params": params}, x, seq_lengths=seq_lengths)

    for seed in range(3):
        jitted = run(params, _inputs(seed), jnp.asarray(SEQ_LENGTHS))
    jitted = run(params, x, jnp.asarray(SEQ_LENGTHS))
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)


def test_project_first_equals_in_loop_projection():
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN, peephole=True, layer_norm=True), project_first=True)
    params = _rnn_params(model.cell, x)
    first = _apply(model, params, x, seq_lengths=SEQ_LENGTHS)
    in_loop = _apply(model.clone(project_first=False), params, x, seq_lengths=SEQ_LENGTHS)
    np.testing.assert_allclose(first, in_loop, atol=1e-6)


@pytest.mark.parametrize("cell_type", [LSTMCell, SimpleRNNCell])
@pytest.mark.parametrize(("use_lengths", "reverse"), [(False, False), (True, True)], ids=["plain", "lengths-rev"])
def test_fused_sequence_kernel_equals_differentiated_scan(cell_type, use_lengths, reverse):
    """The whole-sequence LSTM and tanh RNN kernels against `fused_sequence=False` in float64: outputs, final
    carry, the VJP for parameters, inputs and initial carry, and the JVP, to 1e-12."""
    with enable_x64(True):
        fused = RNN(cell_type(HIDDEN, param_dtype=jnp.float64), return_carry=True, reverse=reverse)
        scan = fused.clone(fused_sequence=False)
        x = _inputs(0, dtype=jnp.float64)
        params = _rnn_params(fused.cell, x)
        carry0 = jax.tree.map(lambda c: 0.3 * _inputs(6, c.shape, jnp.float64),
                              fused.cell.initialize_carry(jax.random.key(0), x[:, 0].shape))
        # The kernel is what runs (else this would compare the scan with itself).
        assert recurrent._sequence_kernel(fused.cell, jnp.swapaxes(x, 0, 1), carry0) is not None
        lengths = jnp.asarray(SEQ_LENGTHS) if use_lengths else None
        tangents = tuple(_randomize(tree, key, scale=1.0) for key, tree in enumerate((params, x, carry0), 3))
        cotangent = _randomize(jax.eval_shape(lambda: fused.apply({"params": params}, x, initial_carry=carry0)), 6,
                               scale=1.0)

        def results(model):
            def f(params, x, carry0):
                return model.apply({"params": params}, x, seq_lengths=lengths, initial_carry=carry0)

            out, vjp = jax.vjp(f, params, x, carry0)
            return out, vjp(cotangent), jax.jvp(f, (params, x, carry0), tangents)[1]

        chex.assert_trees_all_close(jax.jit(lambda: results(fused))(), jax.jit(lambda: results(scan))(),
                                    atol=1e-12, rtol=1e-12)


def test_sequence_kernels_only_for_cells_they_compute_exactly():
    x, carry = jnp.zeros((TIME, BATCH, IN)), jnp.zeros((BATCH, HIDDEN))
    lstm_carry = (carry, carry)
    assert recurrent._sequence_kernel(CELLS["rnn"](), x, carry) is recurrent._rnn_sequence
    assert recurrent._sequence_kernel(CELLS["lstm"](), x, lstm_carry) is recurrent._lstm_sequence
    for name in ("rnn_identity_relu", "gru", "lstm_peephole", "lstm_layer_norm"):
        cell = CELLS[name]()
        assert recurrent._sequence_kernel(cell, x, cell.initialize_carry(None, x[0].shape)) is None, name
    assert recurrent._sequence_kernel(SimpleRNNCell(HIDDEN, activation_fn=jax.nn.sigmoid), x, carry) is None
    assert recurrent._sequence_kernel(SimpleRNNCell(HIDDEN, dtype=jnp.bfloat16), x, carry) is None  # casts
    assert recurrent._sequence_kernel(CELLS["rnn"](), x.astype(jnp.bfloat16), carry) is None
    assert recurrent._sequence_kernel(SimpleRNNCell(HIDDEN, param_dtype=jnp.bfloat16), x.astype(jnp.bfloat16),
                                      carry.astype(jnp.bfloat16)) is None  # below float32


def test_time_major_and_keep_order():
    x = _inputs()
    model = RNN(GRUCell(HIDDEN), reverse=True)
    params = _rnn_params(model.cell, x)
    batch_major = _apply(model, params, x, seq_lengths=SEQ_LENGTHS)
    time_major = _apply(model.clone(time_major=True), params, jnp.swapaxes(x, 0, 1), seq_lengths=SEQ_LENGTHS)
    np.testing.assert_allclose(jnp.swapaxes(time_major, 0, 1), batch_major, atol=1e-6)
    # keep_order=False: processing order, each sequence's valid part flipped, padding still at the end.
    processing = _apply(model.clone(keep_order=False), params, x, seq_lengths=SEQ_LENGTHS)
    for b, length in enumerate(SEQ_LENGTHS):
        np.testing.assert_allclose(processing[b, :length], batch_major[b, :length][::-1], atol=1e-6)
        np.testing.assert_array_equal(processing[b, length:], 0.0)


def test_initial_carry_and_return_carry_override():
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN))
    params = _rnn_params(model.cell, x)
    initial = (_inputs(3, (BATCH, HIDDEN)), _inputs(4, (BATCH, HIDDEN)))
    carry, outputs = _apply(model, params, x, initial_carry=initial, return_carry=True)
    step = jax.jit(functools.partial(LSTMCell(HIDDEN).apply, {"params": params["cell"]}))
    want = initial
    for t in range(TIME):
        want, y = step(want, x[:, t])
        np.testing.assert_allclose(outputs[:, t], y, atol=1e-6)
    chex.assert_trees_all_close(carry, want, atol=1e-6)


@pytest.mark.parametrize(("cell_name", "reverse"), [("lstm", False), ("lstm", True), ("gru_reset_before", True)])
def test_padding_invariance(cell_name, reverse):
    """Garbage (even NaN/inf) after each sequence's length changes no output, carry or gradient."""
    model = RNN(CELLS[cell_name](), return_carry=True, reverse=reverse)
    x = _inputs()
    lengths = jnp.asarray([7, 4, 2], jnp.int32)
    params = _rnn_params(model.cell, x)
    garbage = 100.0 * _inputs(5, (BATCH, TIME + 4, IN))
    garbage = garbage.at[1, -1, 0].set(jnp.nan).at[2, 3, 1].set(jnp.inf)
    valid = jnp.arange(TIME + 4)[None, :, None] < lengths[:, None, None]
    zero_padded = jnp.pad(x, ((0, 0), (0, 4), (0, 0)))
    garbage_padded = jnp.where(valid, zero_padded, garbage)

    def loss(params, x):
        carry, outputs = model.apply({"params": params}, x, seq_lengths=lengths)
        return jnp.sum(outputs ** 2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), (carry, outputs)

    run = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, (carry, outputs)), grads = run(params, zero_padded)
    (_, (padded_carry, padded_outputs)), padded_grads = run(params, garbage_padded)
    unpadded_carry, unpadded_outputs = _apply(model, params, x, seq_lengths=lengths)
    np.testing.assert_allclose(padded_outputs[:, :TIME], unpadded_outputs, atol=1e-6)
    np.testing.assert_array_equal(padded_outputs[:, TIME:], 0.0)
    chex.assert_trees_all_close(padded_carry, unpadded_carry, atol=1e-6)
    chex.assert_trees_all_close((padded_carry, padded_outputs, padded_grads), (carry, outputs, grads), atol=1e-6)
    chex.assert_tree_all_finite(padded_grads)


def test_flax_rnn_runs_jaxarch_cells_and_jaxarch_rnn_runs_flax_cells():
    x = _inputs()
    ours = RNN(LSTMCell(HIDDEN, peephole=True))
    params = _rnn_params(ours.cell, x)
    np.testing.assert_allclose(_apply(nn.RNN(LSTMCell(HIDDEN, peephole=True)), params, x),
                               _apply(ours, params, x), atol=1e-6)

    flax_cell_rnn = RNN(nn.GRUCell(HIDDEN), return_carry=True)
    flax_params = jax.jit(flax_cell_rnn.init)(jax.random.key(2), x)["params"]
    carry, outputs = _apply(flax_cell_rnn, flax_params, x, seq_lengths=SEQ_LENGTHS)
    want_carry, want_outputs = _apply(nn.RNN(nn.GRUCell(HIDDEN), return_carry=True), flax_params, x,
                                      seq_lengths=jnp.asarray([7, 4, 1]))  # flax cannot express length 0
    np.testing.assert_allclose(outputs[:2, :4], want_outputs[:2, :4], atol=1e-6)
    np.testing.assert_allclose(carry[:2], want_carry[:2], atol=1e-6)
    np.testing.assert_array_equal(carry[2], 0.0)


@pytest.mark.parametrize("cell_name", list(CELLS))
def test_cell_gradients_match_finite_differences(cell_name):
    with enable_x64(True):
        cell = CELLS[cell_name](param_dtype=jnp.float64)
        x = _inputs(0, (BATCH, IN), jnp.float64)
        carry = jax.tree.map(lambda c: 0.3 * _inputs(6, c.shape, jnp.float64),
                             cell.initialize_carry(jax.random.key(0), x.shape))
        params = _randomize(jax.jit(cell.init)(jax.random.key(2), carry, x)["params"], scale=0.3)

        step = jax.jit(lambda params, carry, x: cell.apply({"params": params}, carry, x))
        check_grads(step, (params, carry, x), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


def test_rnn_gradients_with_lengths_match_finite_differences():
    with enable_x64(True):
        model = RNN(LSTMCell(HIDDEN, param_dtype=jnp.float64), reverse=True)
        x = _inputs(0, (BATCH, 4, IN), jnp.float64)
        params = _rnn_params(model.cell, x, scale=0.3)
        lengths = jnp.asarray([4, 2, 1])
        check_grads(jax.jit(lambda p, x: model.apply({"params": p}, x, seq_lengths=lengths)), (params, x), order=1,
                    modes=["rev"], atol=1e-5, rtol=1e-5)


def test_cell_shapes_and_init():
    x = _inputs(0, (BATCH, IN))
    lstm = LSTMCell(HIDDEN, forget_bias=1.0)
    carry = lstm.initialize_carry(jax.random.key(0), x.shape)
    chex.assert_shape(carry, ((BATCH, HIDDEN), (BATCH, HIDDEN)))
    params = jax.jit(lstm.init)(jax.random.key(1), carry, x)["params"]
    chex.assert_shape([params["input_kernel"], params["recurrent_kernel"], params["input_bias"]],
                      [(IN, 4 * HIDDEN), (HIDDEN, 4 * HIDDEN), (4 * HIDDEN,)])
    np.testing.assert_array_equal(params["input_bias"], np.repeat([0.0, 1.0, 0.0, 0.0], HIDDEN))
    gate = params["recurrent_kernel"][:, HIDDEN:2 * HIDDEN]  # the forget block is orthogonal on its own
    np.testing.assert_allclose(gate.T @ gate, np.eye(HIDDEN), atol=1e-5)
    (new_carry, y) = jax.jit(lstm.apply)({"params": params}, carry, x)
    chex.assert_shape([y, *new_carry], (BATCH, HIDDEN))

    irnn = SimpleRNNCell(HIDDEN, identity_init=True)
    params = jax.jit(irnn.init)(jax.random.key(1), irnn.initialize_carry(None, x.shape), x)["params"]
    np.testing.assert_array_equal(params["recurrent_kernel"], np.eye(HIDDEN))
    gru = GRUCell(HIDDEN)
    params = jax.jit(gru.init)(jax.random.key(1), gru.initialize_carry(None, x.shape), x)["params"]
    chex.assert_shape(params["recurrent_kernel"], (HIDDEN, 3 * HIDDEN))



def test_chrono_initialisation():
    x = _inputs(0, (BATCH, IN))
    h = 64  # enough units for the spread of log(U[1, T - 1]) to show
    chrono_max = 100
    lstm = LSTMCell(h, chrono_max=chrono_max)
    bias = jax.jit(lstm.init)(jax.random.key(1), lstm.initialize_carry(None, x.shape), x)["params"]["input_bias"]
    input_gate, forget_gate, rest = bias[:h], bias[h:2 * h], bias[2 * h:]
    np.testing.assert_array_equal(input_gate, -forget_gate)
    np.testing.assert_array_equal(rest, 0.0)
    assert 0.0 <= float(forget_gate.min()) and float(forget_gate.max()) <= np.log(chrono_max - 1) + 1e-6
    assert float(forget_gate.max()) > np.log(chrono_max / 4)  # some units remember for tens of steps

    gru = GRUCell(h, chrono_max=chrono_max)
    bias = jax.jit(gru.init)(jax.random.key(1), gru.initialize_carry(None, x.shape), x)["params"]["input_bias"]
    np.testing.assert_array_equal(bias[:h], 0.0)
    np.testing.assert_array_equal(bias[2 * h:], 0.0)
    update_gate = bias[h:2 * h]
    assert 0.0 <= float(update_gate.min()) and float(update_gate.max()) <= np.log(chrono_max - 1) + 1e-6
    assert float(update_gate.max()) > np.log(chrono_max / 4)

    with pytest.raises(ValueError, match="LSTMCell.*chrono_max"):
        lstm = LSTMCell(h, chrono_max=1)
        lstm.init(jax.random.key(1), lstm.initialize_carry(None, x.shape), x)

@pytest.mark.parametrize(("cell_name", "project_first"), [("lstm_peephole_layer_norm", False), ("gru", True),
                                                          ("gru_reset_before", False), ("rnn", True)])
def test_bfloat16_compute(cell_name, project_first):
    x = _inputs()
    model32 = RNN(CELLS[cell_name](), return_carry=True)
    model16 = RNN(CELLS[cell_name](dtype=jnp.bfloat16), return_carry=True, project_first=project_first)
    params = _rnn_params(model32.cell, x, scale=0.3)
    carry32, out32 = _apply(model32, params, x, seq_lengths=SEQ_LENGTHS)
    carry16, out16 = _apply(model16, params, x.astype(jnp.bfloat16), seq_lengths=SEQ_LENGTHS)
    for leaf in jax.tree.leaves(carry16):
        assert leaf.dtype == jnp.float32  # the state stays float32; only the matmuls run in bfloat16
    chex.assert_tree_all_finite((carry16, out16))
    np.testing.assert_allclose(out16, out32, atol=5e-2)
    chex.assert_trees_all_close(carry16, carry32, atol=5e-2)


def test_debug_nans_clean_on_10000_steps():
    cell = LSTMCell(3, layer_norm=True, peephole=True)
    x = _inputs(0, (2, 10_000, 2))
    model = RNN(cell)
    params = _rnn_params(cell, x)

    def loss(params):
        return jnp.mean(model.apply({"params": params}, x, seq_lengths=jnp.asarray([10_000, 9_000])) ** 2)

    with jax.debug_nans(True):
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
    chex.assert_tree_all_finite((value, grads))


def test_bidirectional_equals_forward_and_reversed_rnns():
    x = _inputs()
    model = Bidirectional(RNN(LSTMCell(HIDDEN)), RNN(LSTMCell(HIDDEN + 2)), return_carry=True)
    params = {"forward_rnn": _rnn_params(LSTMCell(HIDDEN), x), "backward_rnn": _rnn_params(LSTMCell(HIDDEN + 2), x)}
    (forward_carry, backward_carry), outputs = _apply(model, params, x, seq_lengths=SEQ_LENGTHS)
    chex.assert_shape(outputs, (BATCH, TIME, 2 * HIDDEN + 2))
    want_fc, want_f = _apply(RNN(LSTMCell(HIDDEN), return_carry=True), params["forward_rnn"], x,
                             seq_lengths=SEQ_LENGTHS)
    want_bc, want_b = _apply(RNN(LSTMCell(HIDDEN + 2), return_carry=True, reverse=True), params["backward_rnn"], x,
                             seq_lengths=SEQ_LENGTHS)
    np.testing.assert_allclose(outputs, jnp.concatenate([want_f, want_b], -1), atol=1e-6)
    chex.assert_trees_all_close((forward_carry, backward_carry), (want_fc, want_bc), atol=1e-6)


def test_stacked_rnn_shapes_names_dropout_residual():
    x = _inputs()
    model = StackedRNN("lstm", (HIDDEN, HIDDEN), bidirectional=True, dropout_rate=0.5, residual=True,
                       return_carry=True)
    shapes = jax.eval_shape(model.init, jax.random.key(2), x)
    assert set(shapes) == {"params"}
    assert set(shapes["params"]) == {"layer_0", "layer_1"}
    chex.assert_shape(shapes["params"]["layer_0"]["forward_rnn"]["cell"]["input_kernel"], (IN, 4 * HIDDEN))
    chex.assert_shape(shapes["params"]["layer_1"]["backward_rnn"]["cell"]["input_kernel"], (2 * HIDDEN, 4 * HIDDEN))
    params = _randomize(shapes["params"], scale=0.3)

    @jax.jit
    def run(x, seq_lengths):
        kept = model.apply({"params": params}, x, seq_lengths=seq_lengths)
        dropped = model.apply({"params": params}, x, seq_lengths=seq_lengths, deterministic=False,
                              rngs={"dropout": jax.random.key(3)})[1]
        # By hand: layer 0 (5 -> 8 features, no residual), dropout, layer 1 (8 -> 8, residual).
        layer = Bidirectional(RNN(LSTMCell(HIDDEN)), RNN(LSTMCell(HIDDEN)))
        hidden = layer.apply({"params": params["layer_0"]}, x, seq_lengths=seq_lengths)
        by_hand = layer.apply({"params": params["layer_1"]}, hidden, seq_lengths=seq_lengths) + hidden
        return kept, dropped, by_hand

    (carries, outputs), dropped, by_hand = run(x, jnp.asarray(SEQ_LENGTHS))
    chex.assert_shape(outputs, (BATCH, TIME, 2 * HIDDEN))
    assert len(carries) == 2 and len(carries[1]) == 2
    chex.assert_shape(carries[1][1], ((BATCH, HIDDEN), (BATCH, HIDDEN)))
    valid = jnp.asarray(SEQ_LENGTHS)[:, None, None] > jnp.arange(TIME)[None, :, None]  # [B, T, 1]
    np.testing.assert_allclose(outputs, jnp.where(valid, by_hand, 0.0), atol=1e-6)
    np.testing.assert_array_equal(outputs[1, 4:], 0.0)
    assert not np.allclose(dropped[:2, :4], outputs[:2, :4])


def test_stacked_rnn_cell_factory():
    x = _inputs()
    model = StackedRNN(functools.partial(SimpleRNNCell, activation_fn=jax.nn.relu), (HIDDEN, 6))
    params = jax.jit(model.init)(jax.random.key(2), x)["params"]
    chex.assert_shape(params["layer_1"]["cell"]["recurrent_kernel"], (6, 6))
    chex.assert_shape(_apply(model, params, x), (BATCH, TIME, 6))


def test_validation_errors():
    x = _inputs()
    model = RNN(LSTMCell(HIDDEN))
    params = {"params": _rnn_params(model.cell, x)}
    with pytest.raises(ValueError, match=r"RNN: inputs rank is 2 .*expected rank 3"):
        model.apply(params, x[0])
    with pytest.raises(ValueError, match="RNN: inputs dtype is int32"):
        model.apply(params, jnp.ones((BATCH, TIME, IN), jnp.int32))
    with pytest.raises(ValueError, match=r"RNN: seq_lengths batch \(axis 0\) is 2"):
        model.apply(params, x, seq_lengths=jnp.asarray([1, 2]))
    with pytest.raises(ValueError, match="RNN: seq_lengths dtype is float32"):
        model.apply(params, x, seq_lengths=jnp.asarray([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"RNN: seq_lengths range is \[1, 9\]"):
        model.apply(params, x, seq_lengths=np.asarray([1, 2, 9]))
    with pytest.raises(ValueError, match="RNN: initial_carry shapes"):
        model.apply(params, x, initial_carry=jnp.zeros((BATCH, HIDDEN)))
    with pytest.raises(ValueError, match="RNN: inputs time size is 0"):
        model.apply(params, x[:, :0])
    with pytest.raises(ValueError, match=rf"RNN: inputs features \(axis -1\) is {IN + 1} .*expected {IN}, the size"):
        model.apply(params, _inputs(0, (BATCH, TIME, IN + 1)))
    cell = GRUCell(HIDDEN)
    with pytest.raises(ValueError, match="GRUCell: carry shapes"):
        cell.init(jax.random.key(0), jnp.zeros((BATCH, HIDDEN + 1)), x[:, 0])
    with pytest.raises(ValueError, match="Bidirectional: initial_carry"):
        Bidirectional(RNN(GRUCell(HIDDEN)), RNN(GRUCell(HIDDEN))).init(
            jax.random.key(0), x, initial_carry=jnp.zeros((BATCH, HIDDEN)))
    with pytest.raises(ValueError, match="StackedRNN: cell_type is 'transformer'"):
        StackedRNN("transformer", (HIDDEN,)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="StackedRNN: hidden_sizes"):
        StackedRNN("gru", (HIDDEN, 0)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="StackedRNN: initial_carry length is 1"):
        StackedRNN("gru", (HIDDEN, HIDDEN)).init(jax.random.key(0), x, initial_carry=[None])


def _final_step_loss(outputs):
    return jnp.sum(jnp.mean(outputs[:, -1] ** 2, axis=0))


def test_hidden_state_grad_norms_vanish_for_tanh_rnn_less_for_lstm(tmp_path):
    x = _inputs(0, (8, 30, IN))
    small = nn.initializers.normal(0.1)
    tanh_rnn = RNN(SimpleRNNCell(16, kernel_init=small, recurrent_kernel_init=small))
    lstm = RNN(LSTMCell(16))
    norms = {}
    for label, model in [("tanh RNN", tanh_rnn), ("LSTM", lstm)]:
        variables = jax.jit(model.init)(jax.random.key(1), x)
        assert HIDDEN_STATE_PERTURBATIONS not in variables  # nothing is added unless diagnostics ask
        (norms[label],) = hidden_state_grad_norms(model, variables, _final_step_loss, x).values()
        chex.assert_shape(norms[label], (30,))
    assert np.all(np.diff(np.asarray(norms["tanh RNN"])) > 0)  # decays at every step going back in time
    decay = {label: float(n[0] / n[-1]) for label, n in norms.items()}
    assert decay["tanh RNN"] < 1e-6
    assert decay["LSTM"] > 1e3 * decay["tanh RNN"]
    plot_hidden_state_grad_norms(norms, tmp_path / "norms.png")
    assert (tmp_path / "norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hidden_state_grad_norms_match_gradient_through_recurrence():
    """At the last step a sequence processes, only the output path is left: the norm is the output gradient's."""
    x = _inputs()
    model = StackedRNN("gru", (HIDDEN,), bidirectional=True)
    variables = {"params": _randomize(jax.eval_shape(model.init, jax.random.key(1), x)["params"])}
    norms = hidden_state_grad_norms(model, variables, lambda y: jnp.sum(y ** 2), x, seq_lengths=SEQ_LENGTHS,
                                    reduction="batch")
    assert set(norms) == {"layer_0/forward_rnn", "layer_0/backward_rnn"}
    outputs = _apply(model, variables["params"], x, seq_lengths=SEQ_LENGTHS)
    forward, backward = outputs[..., :HIDDEN], outputs[..., HIDDEN:]
    # Forward: step 6 is the last only for example 0. Backward: input position 0 is processed last by all.
    np.testing.assert_allclose(norms["layer_0/forward_rnn"][-1], jnp.linalg.norm(2 * forward[0, -1]), rtol=1e-5)
    np.testing.assert_allclose(norms["layer_0/backward_rnn"][0], jnp.linalg.norm(2 * backward[:, 0]), rtol=1e-5)
    assert np.all(np.asarray(norms["layer_0/forward_rnn"]) > 0)
    with pytest.raises(ValueError, match="hidden_state_grad_norms: model is Dense"):
        dense = nn.Dense(3)
        hidden_state_grad_norms(dense, jax.eval_shape(dense.init, jax.random.key(0), x), jnp.sum, x)
    with pytest.raises(ValueError, match="hidden_state_grad_norms: reduction"):
        hidden_state_grad_norms(model, variables, jnp.sum, x, reduction="max")
