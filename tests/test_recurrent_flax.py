"""The recurrent layers as Flax citizens: user cells that `sow` or draw rngs work inside `RNN`, `Bidirectional`
and `StackedRNN` (through Flax's lifted scan, like `flax.linen.RNN`), boxed parameters apply as unboxed ones, and
every name `jaxarch.layers.recurrent` defined before it was split into modules still imports from it.

Sizes differ on every axis (batch 3, time 7, in 5, hidden 4) so a swapped axis fails.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import initializers

from jaxarch.layers import partitioning
from jaxarch.layers.recurrent import RNN, Bidirectional, GRUCell, LSTMCell, SimpleRNNCell, StackedRNN

BATCH, TIME, IN, HIDDEN = 3, 7, 5, 4
SEQ_LENGTHS = np.array([7, 4, 0], np.int32)


def _inputs(key=0, shape=(BATCH, TIME, IN)):
    return jax.random.normal(jax.random.key(key), shape)


class _UserCell(nn.RNNCellBase):
    """What a user's cell needs besides its step: a zero `[batch, features]` carry."""

    features: int

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        del rng
        return jnp.zeros(tuple(input_shape[:-1]) + (self.features,))

    @property
    def num_feature_axes(self):
        return 1


class SowingCell(_UserCell):
    """A user's tanh RNN cell built from `nn.Dense`, which sows its new hidden state at every step."""

    @nn.compact
    def __call__(self, carry, x):
        h = jnp.tanh(nn.Dense(self.features, name="input")(x) + nn.Dense(self.features, name="recurrent")(carry))
        self.sow("intermediates", "h", h)
        return h, h


class DropoutCell(_UserCell):
    """Outputs a fresh dropout mask of ones at every step (the carry passes through), so `y[t]` shows step t's
    key."""

    @nn.compact
    def __call__(self, carry, x):
        mask = nn.Dropout(0.5, deterministic=False)(jnp.ones(x.shape[:-1] + (self.features,)))
        return carry, mask


def _apply_with_intermediates(model, x, **kwargs):
    """init, then apply under jit with the intermediates collection mutable: `(outputs, intermediates)`."""
    params = jax.jit(model.init)(jax.random.key(1), x, **kwargs)["params"]
    run = jax.jit(lambda params, x: model.apply({"params": params}, x, mutable=["intermediates"], **kwargs))
    outputs, state = run(params, x)
    return params, outputs, state["intermediates"]


def test_sowing_cell_in_rnn_stacks_values_along_time_like_flax():
    x = _inputs()
    params, outputs, sown = _apply_with_intermediates(RNN(SowingCell(HIDDEN)), x)
    (h,) = sown["cell"]["h"]
    chex.assert_shape(h, (TIME, BATCH, HIDDEN))  # time-major, one entry per step
    np.testing.assert_allclose(h, jnp.swapaxes(outputs, 0, 1), atol=1e-6)
    flax_rnn = nn.RNN(SowingCell(HIDDEN), variable_axes={"intermediates": 0})
    _, flax_state = jax.jit(lambda p, x: flax_rnn.apply({"params": p}, x, mutable=["intermediates"]))(params, x)
    chex.assert_trees_all_close(sown, flax_state["intermediates"], atol=1e-6)


def test_sowing_cell_reversed_with_lengths_indexes_sown_values_by_input_position():
    x = _inputs()
    lengths = jnp.asarray(SEQ_LENGTHS)
    _, outputs, sown = _apply_with_intermediates(RNN(SowingCell(HIDDEN), reverse=True), x, seq_lengths=lengths)
    (h,) = sown["cell"]["h"]
    chex.assert_shape(h, (TIME, BATCH, HIDDEN))
    for b, length in enumerate(SEQ_LENGTHS):  # padded steps sow what the cell computed there; outputs are zero
        np.testing.assert_allclose(h[:length, b], outputs[b, :length], atol=1e-6)


def test_sowing_cell_in_bidirectional_and_stacked_rnn():
    x = _inputs()
    model = Bidirectional(RNN(SowingCell(HIDDEN)), RNN(SowingCell(HIDDEN + 1)))
    _, outputs, sown = _apply_with_intermediates(model, x)
    (forward,), (backward,) = sown["forward_rnn"]["cell"]["h"], sown["backward_rnn"]["cell"]["h"]
    chex.assert_shape([forward, backward], [(TIME, BATCH, HIDDEN), (TIME, BATCH, HIDDEN + 1)])
    np.testing.assert_allclose(jnp.concatenate([forward, backward], -1), jnp.swapaxes(outputs, 0, 1), atol=1e-6)

    stacked = StackedRNN(SowingCell, (HIDDEN, HIDDEN + 2), bidirectional=True)
    _, outputs, sown = _apply_with_intermediates(stacked, x)
    assert set(sown) == {"layer_0", "layer_1"}
    (last_forward,) = sown["layer_1"]["forward_rnn"]["cell"]["h"]
    (last_backward,) = sown["layer_1"]["backward_rnn"]["cell"]["h"]
    chex.assert_shape(sown["layer_0"]["backward_rnn"]["cell"]["h"][0], (TIME, BATCH, HIDDEN))
    np.testing.assert_allclose(jnp.concatenate([last_forward, last_backward], -1), jnp.swapaxes(outputs, 0, 1),
                               atol=1e-6)


def _dropout_masks(model, key=3):
    x = _inputs()
    variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)
    return jax.jit(lambda x, key: model.apply(variables, x, rngs={"dropout": key}))(x, jax.random.key(key))


def test_dropout_cell_gets_a_new_key_each_step_as_in_flax_rnn():
    split = {"params": False, "dropout": True}
    masks = _dropout_masks(RNN(DropoutCell(HIDDEN)))  # [B, T, H]; dropout keys split per step by default
    chex.assert_shape(masks, (BATCH, TIME, HIDDEN))
    assert len({np.asarray(masks[:, t]).tobytes() for t in range(TIME)}) == TIME  # every step its own mask
    # The keys are flax's: nn.RNN with the same split_rngs draws the same masks.
    np.testing.assert_array_equal(masks, _dropout_masks(nn.RNN(DropoutCell(HIDDEN), split_rngs=split)))
    assert not np.array_equal(masks, _dropout_masks(RNN(DropoutCell(HIDDEN)), key=4))  # they follow the caller's key

    same = _dropout_masks(RNN(DropoutCell(HIDDEN), split_rngs={"params": False, "dropout": False}))
    for t in range(TIME):  # not split: one key, one mask for the whole sequence
        np.testing.assert_array_equal(same[:, t], same[:, 0])
    assert 0 < float(jnp.mean(same == 0)) < 1


def test_dropout_cell_in_stacked_rnn():
    stacked = StackedRNN(DropoutCell, (HIDDEN, HIDDEN))
    masks = _dropout_masks(stacked)
    assert len({np.asarray(masks[:, t]).tobytes() for t in range(TIME)}) == TIME


# Logical axis names on every initialiser a jaxarch cell takes. `with_axes` boxes the parameters only while logical
# axis rules are active, as at a sharded model's init.
def _boxed_cell(cell_type, features, **kwargs):
    kernel_axes = (None, partitioning.MLP)
    return cell_type(features,
                     kernel_init=partitioning.with_axes(initializers.lecun_normal(), kernel_axes),
                     recurrent_kernel_init=partitioning.with_axes(initializers.orthogonal(), kernel_axes),
                     bias_init=partitioning.with_axes(initializers.normal(0.5), (partitioning.MLP,)), **kwargs)


BOXED_CELLS = {
    "lstm": functools.partial(_boxed_cell, LSTMCell, forget_bias=1.0),
    "lstm_chrono": functools.partial(_boxed_cell, LSTMCell, chrono_max=20),
    "lstm_peephole_layer_norm": functools.partial(_boxed_cell, LSTMCell, peephole=True, layer_norm=True),
    "gru": functools.partial(_boxed_cell, GRUCell, chrono_max=20),
    "gru_reset_before": functools.partial(_boxed_cell, GRUCell, reset_after=False),
    "rnn": functools.partial(_boxed_cell, SimpleRNNCell),
}


def _init_boxed(model, *args):
    with nn.logical_axis_rules([(partitioning.MLP, None)]):
        return jax.jit(model.init)(jax.random.key(1), *args)


@pytest.mark.parametrize("cell_name", list(BOXED_CELLS))
def test_cells_initialised_boxed_equal_unboxed(cell_name):
    """Initialisers that edit another initialiser's output (per-gate blocks, forget and chrono biases) keep the
    box and its axis names; the boxed parameters apply as their unboxed values."""
    cell = BOXED_CELLS[cell_name](HIDDEN)
    x = _inputs(0, (BATCH, IN))
    carry = cell.initialize_carry(jax.random.key(0), x.shape)
    boxed = _init_boxed(cell, carry, x)
    plain = jax.jit(cell.init)(jax.random.key(1), carry, x)  # no rules: the same initialisers, unboxed
    for name in ("input_kernel", "recurrent_kernel", "input_bias"):
        assert isinstance(boxed["params"][name], nn.LogicallyPartitioned), name
    assert boxed["params"]["recurrent_kernel"].names == (None, partitioning.MLP)
    chex.assert_trees_all_equal(nn.unbox(boxed), plain)
    run = jax.jit(cell.apply)
    chex.assert_trees_all_equal(run(boxed, carry, x), run(plain, carry, x))


@pytest.mark.parametrize(("cell_name", "project_first"), [("lstm", False), ("lstm", True), ("rnn", False),
                                                          ("gru_reset_before", False)])
def test_rnn_with_boxed_params_equals_unboxed(cell_name, project_first):
    """Covers the whole-sequence kernels (`fused_weights`), the lifted scan and the projected-first path."""
    x = _inputs()
    model = RNN(BOXED_CELLS[cell_name](HIDDEN), return_carry=True, project_first=project_first)
    boxed = _init_boxed(model, x)
    assert isinstance(boxed["params"]["cell"]["input_kernel"], nn.LogicallyPartitioned)
    run = jax.jit(lambda variables, x: model.apply(variables, x, seq_lengths=jnp.asarray(SEQ_LENGTHS)))
    chex.assert_trees_all_equal(run(boxed, x), run(nn.unbox(boxed), x))


@pytest.mark.parametrize("cell_name", ["lstm", "gru", "rnn"])
def test_stacked_rnn_initialised_under_logical_axis_rules_equals_unboxed(cell_name):
    x = _inputs()
    model = StackedRNN(BOXED_CELLS[cell_name], (HIDDEN, HIDDEN + 1), bidirectional=True, residual=True)
    boxed = _init_boxed(model, x)
    assert isinstance(boxed["params"]["layer_1"]["backward_rnn"]["cell"]["input_kernel"], nn.LogicallyPartitioned)
    run = jax.jit(lambda variables, x: model.apply(variables, x, seq_lengths=jnp.asarray(SEQ_LENGTHS)))
    chex.assert_trees_all_equal(run(boxed, x), run(nn.unbox(boxed), x))


# Every name `jaxarch.layers.recurrent` defined when it held the cells and kernels too.
_NAMES_BEFORE_THE_SPLIT = [
    "Array", "Carry", "Initializer", "HIDDEN_STATE_PERTURBATIONS", "HIDDEN_STATE_PERTURBATION_NAME",
    "_default_kernel_init", "_expand_to", "_compute_dtype", "_gate_dtype", "_layer_norm", "_per_gate",
    "_identity_init", "_check_has_features", "_chrono_bias", "_check_chrono", "_FusedGateCell", "SimpleRNNCell",
    "LSTMCell", "GRUCell", "_masked", "_zero_masked", "_flat", "_step_weights", "_sequence_scan",
    "_carry_independent_tangent", "_lstm_scan", "_scan_into_own_buffers", "_lstm_sequence", "_lstm_sequence_jvp",
    "_rnn_scan", "_rnn_sequence", "_rnn_sequence_jvp", "_hidden", "_with_hidden", "_flip_within_lengths", "RNN",
    "_sequence_kernel", "_check_seq_lengths", "_check_carry", "concat_features", "Bidirectional", "CELLS",
    "StackedRNN",
]


def test_names_stay_importable_from_recurrent_and_layers():
    from jaxarch import layers
    from jaxarch.layers import recurrent, recurrent_cells, recurrent_kernels

    missing = [name for name in _NAMES_BEFORE_THE_SPLIT if not hasattr(recurrent, name)]
    assert not missing
    # One object each, wherever it is imported from.
    assert recurrent.LSTMCell is recurrent_cells.LSTMCell is layers.LSTMCell
    assert recurrent._sequence_kernel is recurrent_kernels._sequence_kernel
    assert recurrent.CELLS is recurrent_cells.CELLS is layers.CELLS
    for name in ("CELLS", "RNN", "Bidirectional", "GRUCell", "LSTMCell", "SimpleRNNCell", "StackedRNN"):
        assert getattr(layers, name) is getattr(recurrent, name)
