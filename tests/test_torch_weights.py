"""PyTorch recurrent weights load into jaxarch and give PyTorch's outputs and final states.

The equivalence tests need torch (`pytest.importorskip`); the validation tests run without it.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.layers.recurrent import RNN, LSTMCell, SimpleRNNCell, StackedRNN
from jaxarch.torch_weights import (gru_params_from_torch, lstm_params_from_torch, rnn_params_from_torch,
                                   simple_rnn_params_from_torch)

BATCH, TIME, IN, HIDDEN = 3, 7, 5, 4
LENGTHS = np.array([7, 4, 2])  # torch's packed sequences need lengths >= 1

CONVERTERS = {"lstm": lstm_params_from_torch, "gru": gru_params_from_torch, "rnn": simple_rnn_params_from_torch}


def _torch_module(torch, cell_type, num_layers, bidirectional, nonlinearity="tanh"):
    torch.manual_seed(0)
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
    if cell_type == "rnn":
        return torch.nn.RNN(IN, HIDDEN, nonlinearity=nonlinearity, **kwargs)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell_type](IN, HIDDEN, **kwargs)


def _run_torch(torch, module, x, lengths=None):
    """Outputs `[B, T, D*H]` and final states as numpy; h (and c) `[layers * directions, B, H]`."""
    inputs = torch.from_numpy(np.asarray(x))
    with torch.no_grad():
        if lengths is None:
            outputs, state = module(inputs)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(inputs, torch.from_numpy(lengths), batch_first=True,
                                                             enforce_sorted=False)
            outputs, state = module(packed)
            outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=TIME)
    state = tuple(s.numpy() for s in state) if isinstance(state, tuple) else (state.numpy(),)
    return outputs.numpy(), state


def _jax_final_states(carries, cell_type, bidirectional):
    """jaxarch per-layer carries -> torch's stacked `h_n` (and `c_n`), layer-major then direction."""
    per_direction = [d for layer in carries for d in (layer if bidirectional else (layer,))]
    if cell_type == "lstm":
        return np.stack([h for _, h in per_direction]), np.stack([c for c, _ in per_direction])
    return (np.stack(per_direction),)


CASES = [
    ("lstm", 1, False, False),
    ("lstm", 2, True, False),
    ("lstm", 2, True, True),  # packed (variable-length) sequences
    ("gru", 1, False, False),
    ("gru", 2, True, True),
    ("rnn", 2, False, True),
]


@pytest.mark.parametrize(("cell_type", "num_layers", "bidirectional", "packed"), CASES,
                         ids=[f"{c}-layers{n}-bi{int(b)}-packed{int(p)}" for c, n, b, p in CASES])
def test_stacked_rnn_matches_torch(cell_type, num_layers, bidirectional, packed):
    torch = pytest.importorskip("torch")
    module = _torch_module(torch, cell_type, num_layers, bidirectional)
    x = np.random.default_rng(1).standard_normal((BATCH, TIME, IN)).astype(np.float32)
    lengths = LENGTHS if packed else None
    want_outputs, want_state = _run_torch(torch, module, x, lengths)

    state_dict = {k: v.numpy() for k, v in module.state_dict().items()}
    params = CONVERTERS[cell_type](state_dict, num_layers, bidirectional)
    model = StackedRNN(cell_type, (HIDDEN,) * num_layers, bidirectional=bidirectional, return_carry=True)
    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    carries, outputs = jax.jit(lambda p, x, s: model.apply({"params": p}, x, seq_lengths=s))(params, x, seq_lengths)

    np.testing.assert_allclose(outputs, want_outputs, atol=1e-5, rtol=1e-5)
    for got, want in zip(_jax_final_states(carries, cell_type, bidirectional), want_state, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_single_rnn_helper_and_relu_rnn():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((BATCH, TIME, IN)).astype(np.float32)

    lstm = _torch_module(torch, "lstm", 1, True)
    want_outputs, (want_h, want_c) = _run_torch(torch, lstm, x)
    state_dict = {k: v.numpy() for k, v in lstm.state_dict().items()}
    backward = RNN(LSTMCell(HIDDEN), reverse=True, return_carry=True)
    (c, h), outputs = backward.apply({"params": rnn_params_from_torch(state_dict, "lstm", reverse=True)}, x)
    np.testing.assert_allclose(outputs, want_outputs[..., HIDDEN:], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, want_h[1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(c, want_c[1], atol=1e-5, rtol=1e-5)

    relu_rnn = _torch_module(torch, "rnn", 1, False, nonlinearity="relu")
    want_outputs, _ = _run_torch(torch, relu_rnn, x)
    params = simple_rnn_params_from_torch({k: v.numpy() for k, v in relu_rnn.state_dict().items()})
    model = StackedRNN(functools.partial(SimpleRNNCell, activation_fn=jax.nn.relu), (HIDDEN,))
    np.testing.assert_allclose(model.apply({"params": params}, x), want_outputs, atol=1e-5, rtol=1e-5)


def _fake_state_dict(num_gates, num_layers=1, bidirectional=False, prefix=""):
    """A state_dict with torch's key names and shapes, built without torch."""
    rng = np.random.default_rng(0)
    state = {}
    for layer in range(num_layers):
        in_size = IN if layer == 0 else HIDDEN * (2 if bidirectional else 1)
        for suffix in ("", "_reverse") if bidirectional else ("",):
            state[f"{prefix}weight_ih_l{layer}{suffix}"] = rng.standard_normal((num_gates * HIDDEN, in_size))
            state[f"{prefix}weight_hh_l{layer}{suffix}"] = rng.standard_normal((num_gates * HIDDEN, HIDDEN))
            state[f"{prefix}bias_ih_l{layer}{suffix}"] = rng.standard_normal(num_gates * HIDDEN)
            state[f"{prefix}bias_hh_l{layer}{suffix}"] = rng.standard_normal(num_gates * HIDDEN)
    return state


def test_conversion_layout_without_torch():
    state = _fake_state_dict(3, num_layers=2, bidirectional=True, prefix="encoder.gru.")
    params = gru_params_from_torch(state, 2, bidirectional=True, prefix="encoder.gru.")
    cell = params["layer_1"]["backward_rnn"]["cell"]
    np.testing.assert_allclose(cell["input_kernel"], state["encoder.gru.weight_ih_l1_reverse"].T.astype(np.float32))
    assert cell["input_kernel"].shape == (2 * HIDDEN, 3 * HIDDEN) and cell["input_kernel"].dtype == jnp.float32
    shapes = jax.eval_shape(StackedRNN("gru", (HIDDEN, HIDDEN), bidirectional=True).init, jax.random.key(0),
                            jnp.zeros((BATCH, TIME, IN)))["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(lambda s: s.shape, shapes)


def test_conversion_errors():
    state = _fake_state_dict(4, num_layers=2)
    with pytest.raises(ValueError, match=r"torch_weights: key 'weight_ih_l2' is missing"):
        lstm_params_from_torch(state, num_layers=3)
    with pytest.raises(ValueError, match=r"torch_weights: key 'weight_ih_l2' is present"):
        lstm_params_from_torch(_fake_state_dict(4, num_layers=3), num_layers=2)
    with pytest.raises(ValueError, match=r"torch_weights: key 'weight_ih_l0_reverse' is present"):
        lstm_params_from_torch(_fake_state_dict(4, bidirectional=True), num_layers=1)
    with pytest.raises(ValueError, match=r"torch_weights: weight_hh_l0 shape is \(16, 4\), expected \[3 \* hidden"):
        gru_params_from_torch(_fake_state_dict(4, num_layers=1))
    broken = dict(state, bias_hh_l1=np.zeros(3))
    with pytest.raises(ValueError, match=r"torch_weights: bias_hh_l1 shape is \(3,\), expected \(16,\)"):
        lstm_params_from_torch(broken, num_layers=2)
    chained = dict(state, weight_ih_l1=np.zeros((16, 6)))
    with pytest.raises(ValueError, match=r"torch_weights: weight_ih_l1 shape is \(16, 6\), expected \(16, 4\)"):
        lstm_params_from_torch(chained, num_layers=2)
    with pytest.raises(ValueError, match="torch_weights: key 'weight_hr_l0' is present"):
        lstm_params_from_torch(dict(state, weight_hr_l0=np.zeros((HIDDEN, 2))), num_layers=2)
    with pytest.raises(ValueError, match="torch_weights: cell_type is 'transformer'"):
        rnn_params_from_torch(state, "transformer")
    with pytest.raises(ValueError, match="torch_weights: num_layers is 0"):
        lstm_params_from_torch(state, num_layers=0)
