"""Converted PyTorch weights placed inside one's own module (`place_params`), and the errors when a tree sits at
the wrong level: they name the path and what is there. No torch needed: the state_dicts are built in torch's
layout, and the standalone conversions are checked against torch itself in test_torch_weights.py."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxarch.layers.recurrent import RNN, LSTMCell, StackedRNN
from jaxarch.torch_weights import (cell_params_from_torch, lstm_params_from_torch, place_params,
                                   rnn_params_from_torch)

BATCH, TIME, IN, HIDDEN, OUT = 3, 7, 5, 4, 2


def _torch_lstm_state(num_layers, seed=0):
    """A `torch.nn.LSTM(IN, HIDDEN, num_layers)` state_dict as numpy arrays (gates i, f, g, o stacked)."""
    rng = np.random.default_rng(seed)
    state = {}
    for layer in range(num_layers):
        inputs = IN if layer == 0 else HIDDEN
        state[f"weight_ih_l{layer}"] = rng.normal(size=(4 * HIDDEN, inputs)).astype(np.float32)
        state[f"weight_hh_l{layer}"] = rng.normal(size=(4 * HIDDEN, HIDDEN)).astype(np.float32)
        state[f"bias_ih_l{layer}"] = rng.normal(size=(4 * HIDDEN,)).astype(np.float32)
        state[f"bias_hh_l{layer}"] = rng.normal(size=(4 * HIDDEN,)).astype(np.float32)
    return state


class Tagger(nn.Module):
    """A user's module: its cell is created in its own scope, so Flax names it `LSTMCell_0`."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(OUT)(RNN(LSTMCell(HIDDEN))(x))


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return StackedRNN("lstm", (HIDDEN, HIDDEN))(nn.Dense(IN)(x))


class Stacked(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(OUT)(Encoder()(x))


@pytest.fixture
def x():
    return jax.random.normal(jax.random.PRNGKey(1), (BATCH, TIME, IN))


def test_a_converted_cell_placed_in_ones_own_module_gives_the_standalone_rnns_outputs(x):
    state = _torch_lstm_state(1)
    params = Tagger().init(jax.random.PRNGKey(0), x)["params"]
    placed = place_params(params, "LSTMCell_0", cell_params_from_torch(state, "lstm"))
    hidden = RNN(LSTMCell(HIDDEN)).apply({"params": rnn_params_from_torch(state, "lstm")}, x)
    expected = nn.Dense(OUT).apply({"params": params["Dense_0"]}, hidden)
    np.testing.assert_allclose(Tagger().apply({"params": placed}, x), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(placed["LSTMCell_0"]["input_kernel"], state["weight_ih_l0"].T)
    assert placed["Dense_0"] is params["Dense_0"]  # only the path is replaced
    assert not np.array_equal(params["LSTMCell_0"]["input_kernel"], placed["LSTMCell_0"]["input_kernel"])


def test_a_converted_stack_placed_at_a_nested_path(x):
    state = _torch_lstm_state(2)
    params = Stacked().init(jax.random.PRNGKey(0), x)["params"]
    placed = place_params(params, ("Encoder_0", "StackedRNN_0"), lstm_params_from_torch(state, 2))
    projected = nn.Dense(IN).apply({"params": params["Encoder_0"]["Dense_0"]}, x)
    hidden = StackedRNN("lstm", (HIDDEN, HIDDEN)).apply({"params": lstm_params_from_torch(state, 2)}, projected)
    expected = nn.Dense(OUT).apply({"params": params["Dense_0"]}, hidden)
    np.testing.assert_allclose(Stacked().apply({"params": placed}, x), expected, rtol=1e-6, atol=1e-6)


def test_placement_errors_name_the_path_and_what_is_there(x):
    state = _torch_lstm_state(1)
    params = Tagger().init(jax.random.PRNGKey(0), x)["params"]
    with pytest.raises(ValueError, match=r"torch_weights: converted parameters for 'LSTMCell_0' is \['cell'\], "
                                         r"expected \['input_bias', 'input_kernel', 'recurrent_bias', "
                                         r"'recurrent_kernel'\], .*a cell takes cell_params_from_torch"):
        place_params(params, "LSTMCell_0", rnn_params_from_torch(state, "lstm"))
    with pytest.raises(ValueError, match=r"torch_weights: path 'RNN_0/cell' is missing \(the top level holds "
                                         r"\['Dense_0', 'LSTMCell_0'\]\)"):
        place_params(params, "RNN_0/cell", cell_params_from_torch(state, "lstm"))
    wider = {key: np.concatenate([value, value]) for key, value in _torch_lstm_state(1).items()}
    wider["weight_hh_l0"] = np.zeros((8 * HIDDEN, 2 * HIDDEN), np.float32)
    with pytest.raises(ValueError, match=r"converted 'LSTMCell_0/input_kernel' shape is \(5, 32\), expected "
                                         r"\(5, 16\), the shape the parameter tree holds there"):
        place_params(params, "LSTMCell_0", cell_params_from_torch(wider, "lstm"))


def test_applying_a_tree_at_the_wrong_level_names_the_cells_path_and_what_was_passed(x):
    params = {"cell": cell_params_from_torch(_torch_lstm_state(1), "lstm")}  # what rnn_params_from_torch gives
    with pytest.raises(ValueError, match=r"LSTMCell: parameters \['input_kernel', .*\] at params/LSTMCell_0 is "
                                         r"missing \(the top level of params holds \['cell'\]\), expected .*"
                                         r"place_params\(params, 'LSTMCell_0'"):
        Tagger().apply({"params": params}, x)
