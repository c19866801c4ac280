"""PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` state_dicts -> jaxarch recurrent parameter trees.

The jaxarch cells store their weights in PyTorch's layout, transposed (see `jaxarch.layers.recurrent`), so a
conversion is a transposition and a renaming; torch itself is never imported. Pass the state_dict as numpy
arrays, e.g. `{k: v.numpy() for k, v in torch_module.state_dict().items()}`.

Usage, a 3-layer bidirectional LSTM:

    torch_lstm = torch.nn.LSTM(16, 128, num_layers=3, bidirectional=True, batch_first=True)
    state = {k: v.numpy() for k, v in torch_lstm.state_dict().items()}
    params = lstm_params_from_torch(state, num_layers=3, bidirectional=True)
    model = StackedRNN("lstm", (128,) * 3, bidirectional=True)
    outputs = model.apply({"params": params}, x)  # == torch_lstm(x)[0], x: [batch, time, 16]

and a single-layer `RNN(LSTMCell(128))`: `model.apply({"params": rnn_params_from_torch(state, "lstm")}, x)`.

Inside one's own module the converted parameters go where `init` put that layer's: `place_params` copies a
parameter tree with a converted subtree at a path, checking every name and shape against what is there. For a
cell created in the user's module (Flax names it `LSTMCell_0`) convert the cell alone:

    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(RNN(LSTMCell(128))(x))

    params = Tagger().init(rng, x)["params"]  # {"LSTMCell_0": {...}, "Dense_0": {...}}
    params = place_params(params, "LSTMCell_0", cell_params_from_torch(state, "lstm"))

and a `StackedRNN` inside it with `place_params(params, "StackedRNN_0", lstm_params_from_torch(state, 2))`.

Carries differ in layout only: a torch LSTM returns `(h_n, c_n)` stacked `[layers * directions, batch, H]`, a
jaxarch one `(c, h)` per layer (per direction). A torch `nn.RNN(nonlinearity="relu")` maps to
`SimpleRNNCell(activation_fn=jax.nn.relu)`: the nonlinearity is not in the state_dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax.core import meta

from jaxarch.checks import fail

# Gate chunks per cell type, in the order torch and jaxarch share: LSTM (i, f, g, o), GRU (r, z, n).
NUM_GATES = {"lstm": 4, "gru": 3, "rnn": 1}

_MODULE = "torch_weights"


def _num_gates(cell_type: str) -> int:
    if cell_type not in NUM_GATES:
        fail(_MODULE, "cell_type", repr(cell_type), f"one of {sorted(NUM_GATES)}")
    return NUM_GATES[cell_type]


def _get(state_dict: Mapping[str, Any], key: str) -> np.ndarray:
    if key not in state_dict:
        present = sorted(state_dict)
        fail(_MODULE, f"key {key!r}", "missing", f"present (state_dict has {present[:12]}"
             f"{' ...' if len(present) > 12 else ''})")
    return np.asarray(state_dict[key])


def _check_shape(key: str, value: np.ndarray, expected: tuple[int, ...]) -> None:
    if value.shape != expected:
        fail(_MODULE, f"{key} shape", value.shape, expected)


def cell_params_from_torch(state_dict: Mapping[str, Any], cell_type: str, *, layer: int = 0,
                           reverse: bool = False, prefix: str = "", input_size: int | None = None,
                           dtype: Any = jnp.float32) -> dict[str, Any]:
    """The parameters of one jaxarch cell from torch's `*_l{layer}` (`*_l{layer}_reverse`) entries.

    Returns `{"input_kernel": [in, G*H], "recurrent_kernel": [H, G*H], "input_bias": [G*H],
    "recurrent_bias": [G*H]}`. `prefix` is prepended to every key (e.g. `"encoder.lstm."` for a submodule of a
    larger model); `input_size`, when given, is checked against `weight_ih`.
    """
    num_gates = _num_gates(cell_type)
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")

    def key(name: str) -> str:
        return f"{prefix}{name}{suffix}"

    weight_ih, weight_hh = _get(state_dict, key("weight_ih")), _get(state_dict, key("weight_hh"))
    if f"{prefix}weight_hr{suffix}" in state_dict:
        fail(_MODULE, f"key {key('weight_hr')!r}", "present (an LSTM with proj_size > 0)", "absent: jaxarch's "
             "LSTMCell has no output projection")
    if weight_hh.ndim != 2 or weight_hh.shape[0] % num_gates:
        fail(_MODULE, f"{key('weight_hh')} shape", weight_hh.shape, f"[{num_gates} * hidden, hidden] for "
             f"cell_type {cell_type!r}")
    hidden = weight_hh.shape[0] // num_gates
    _check_shape(key("weight_hh"), weight_hh, (num_gates * hidden, hidden))
    if weight_ih.ndim != 2:
        fail(_MODULE, f"{key('weight_ih')} shape", weight_ih.shape, f"[{num_gates * hidden}, input_size]")
    _check_shape(key("weight_ih"), weight_ih, (num_gates * hidden, weight_ih.shape[1] if input_size is None
                                               else input_size))
    bias_ih, bias_hh = _get(state_dict, key("bias_ih")), _get(state_dict, key("bias_hh"))
    _check_shape(key("bias_ih"), bias_ih, (num_gates * hidden,))
    _check_shape(key("bias_hh"), bias_hh, (num_gates * hidden,))
    return {
        "input_kernel": jnp.asarray(weight_ih.T, dtype),
        "recurrent_kernel": jnp.asarray(weight_hh.T, dtype),
        "input_bias": jnp.asarray(bias_ih, dtype),
        "recurrent_bias": jnp.asarray(bias_hh, dtype),
    }


def rnn_params_from_torch(state_dict: Mapping[str, Any], cell_type: str, *, layer: int = 0,
                          reverse: bool = False, prefix: str = "", dtype: Any = jnp.float32) -> dict[str, Any]:
    """Params of a single `RNN(cell)` (`{"cell": {...}}`) from one layer/direction of a torch module.

    `cell_type`: "lstm", "gru" or "rnn". For the reverse direction of a bidirectional torch layer pass
    `reverse=True` and run the `RNN` with `reverse=True`.
    """
    return {"cell": cell_params_from_torch(state_dict, cell_type, layer=layer, reverse=reverse, prefix=prefix,
                                           dtype=dtype)}


def stacked_params_from_torch(state_dict: Mapping[str, Any], cell_type: str, num_layers: int,
                              bidirectional: bool = False, *, prefix: str = "",
                              dtype: Any = jnp.float32) -> dict[str, Any]:
    """Params of `StackedRNN(cell_type, (H,) * num_layers, bidirectional=...)` from a torch module's state_dict.

    Layout: `layer_{k}/cell/...`, or `layer_{k}/forward_rnn/cell/...` and `layer_{k}/backward_rnn/cell/...` when
    bidirectional. Raises ValueError on a missing key, a shape mismatch, layers or directions beyond those
    requested, or layer sizes that do not chain.
    """
    if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        fail(_MODULE, "num_layers", repr(num_layers), "a positive int")
    _num_gates(cell_type)
    extra = f"{prefix}weight_ih_l{num_layers}"
    if extra in state_dict:
        fail(_MODULE, f"key {extra!r}", "present", f"absent for num_layers={num_layers} (the state_dict has more "
             "layers)")
    reverse_key = f"{prefix}weight_ih_l0_reverse"
    if not bidirectional and reverse_key in state_dict:
        fail(_MODULE, f"key {reverse_key!r}", "present", "absent for bidirectional=False (the state_dict is "
             "bidirectional)")
    params: dict[str, Any] = {}
    input_size = None
    for layer in range(num_layers):
        def convert(reverse: bool) -> dict[str, Any]:
            return cell_params_from_torch(state_dict, cell_type, layer=layer, reverse=reverse, prefix=prefix,
                                          input_size=input_size, dtype=dtype)

        if bidirectional:
            forward, backward = convert(False), convert(True)
            params[f"layer_{layer}"] = {"forward_rnn": {"cell": forward}, "backward_rnn": {"cell": backward}}
            input_size = forward["recurrent_kernel"].shape[0] + backward["recurrent_kernel"].shape[0]
        else:
            forward = convert(False)
            params[f"layer_{layer}"] = {"cell": forward}
            input_size = forward["recurrent_kernel"].shape[0]
    return params


def lstm_params_from_torch(state_dict: Mapping[str, Any], num_layers: int = 1, bidirectional: bool = False, *,
                           prefix: str = "", dtype: Any = jnp.float32) -> dict[str, Any]:
    """`torch.nn.LSTM` state_dict -> params of `StackedRNN("lstm", (H,) * num_layers, bidirectional=...)`.

    Example:

        lstm = torch.nn.LSTM(16, 128, num_layers=2, batch_first=True)
        params = lstm_params_from_torch({k: v.numpy() for k, v in lstm.state_dict().items()}, num_layers=2)
        StackedRNN("lstm", (128, 128)).apply({"params": params}, x)  # == lstm(x)[0]
    """
    return stacked_params_from_torch(state_dict, "lstm", num_layers, bidirectional, prefix=prefix, dtype=dtype)


def gru_params_from_torch(state_dict: Mapping[str, Any], num_layers: int = 1, bidirectional: bool = False, *,
                          prefix: str = "", dtype: Any = jnp.float32) -> dict[str, Any]:
    """`torch.nn.GRU` state_dict -> params of `StackedRNN("gru", (H,) * num_layers, bidirectional=...)`.

    The default `GRUCell(reset_after=True)` is torch's GRU. Example:

        gru = torch.nn.GRU(16, 64, bidirectional=True, batch_first=True)
        params = gru_params_from_torch({k: v.numpy() for k, v in gru.state_dict().items()}, bidirectional=True)
        StackedRNN("gru", (64,), bidirectional=True).apply({"params": params}, x)  # == gru(x)[0]
    """
    return stacked_params_from_torch(state_dict, "gru", num_layers, bidirectional, prefix=prefix, dtype=dtype)


def simple_rnn_params_from_torch(state_dict: Mapping[str, Any], num_layers: int = 1, bidirectional: bool = False,
                                 *, prefix: str = "", dtype: Any = jnp.float32) -> dict[str, Any]:
    """`torch.nn.RNN` state_dict -> params of `StackedRNN("rnn", (H,) * num_layers, bidirectional=...)`.

    torch's default `nonlinearity="tanh"` is `SimpleRNNCell`'s default; for `"relu"` build the stack with
    `cell_type=functools.partial(SimpleRNNCell, activation_fn=jax.nn.relu)`. Example:

        rnn = torch.nn.RNN(16, 32, num_layers=2, batch_first=True)
        params = simple_rnn_params_from_torch({k: v.numpy() for k, v in rnn.state_dict().items()}, 2)
        StackedRNN("rnn", (32, 32)).apply({"params": params}, x)  # == rnn(x)[0]
    """
    return stacked_params_from_torch(state_dict, "rnn", num_layers, bidirectional, prefix=prefix, dtype=dtype)


def _keys_at(node) -> str:
    return str(sorted(node)) if isinstance(node, Mapping) else f"a {type(node).__name__}"


def place_params(params: Mapping[str, Any], path: str | tuple[str, ...], converted: Mapping[str, Any]) -> dict:
    """A copy of the parameter tree `params` with `converted` at `path`, e.g. "Encoder_0/LSTMCell_0".

    `params` is the "params" collection of one's own module as `init` created it; `path` names the layer to
    fill ("/"-separated, or a tuple of keys); `converted` is what a `*_from_torch` function returned for that
    layer. The entry at `path` must hold exactly the names of `converted`, with the same shapes, so a tree
    meant for another level (`{"cell": ...}` for a cell, a stack's `layer_0` for one layer) is an error naming
    the path and what is there instead. Values take the dtype the tree holds there; boxed parameters
    (`nn.LogicallyPartitioned`) keep their boxes.
    """
    keys = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
    if not keys or not all(isinstance(key, str) and key for key in keys):
        fail(_MODULE, "path", repr(path), "a '/'-separated path of the parameter tree, e.g. 'Encoder_0/LSTMCell_0'")
    node = params
    for depth, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            where = "/".join(keys[:depth]) or "the top level"
            fail(_MODULE, f"path {'/'.join(keys)!r}", f"missing ({where} holds {_keys_at(node)})",
                 "a path of the parameter tree, as init named the layer")
        node = node[key]
    _check_same_tree("/".join(keys), node, converted)
    return _replaced(params, keys, converted)


def _check_same_tree(where: str, existing, converted) -> None:
    if isinstance(existing, Mapping) != isinstance(converted, Mapping):
        fail(_MODULE, f"converted parameters for {where!r}", _keys_at(converted),
             f"{_keys_at(existing)}, what the parameter tree holds there")
    if not isinstance(existing, Mapping):
        old_shape, new_shape = np.shape(meta.unbox(existing)), np.shape(converted)
        if old_shape != new_shape:
            fail(_MODULE, f"converted {where!r} shape", new_shape, f"{old_shape}, the shape the parameter tree holds "
                 "there")
        return
    if set(existing) != set(converted):
        hint = ""
        if set(converted) == {"cell"} and "input_kernel" in existing:
            hint = "; a cell takes cell_params_from_torch(...), not rnn_params_from_torch's {'cell': ...}"
        elif "cell" in existing and "input_kernel" in converted:
            hint = f"; this is an RNN: place the cell's parameters at '{where}/cell'"
        fail(_MODULE, f"converted parameters for {where!r}", _keys_at(converted),
             f"{_keys_at(existing)}, what the parameter tree holds there{hint}")
    for key in existing:
        _check_same_tree(f"{where}/{key}", existing[key], converted[key])


def _replaced(node, keys: tuple[str, ...], converted):
    """`node` with `converted` at `keys` (a new dict along the path; every other branch shared)."""
    if not keys:
        return _reboxed(node, converted)
    head, *rest = keys
    return {**node, head: _replaced(node[head], tuple(rest), converted)}


def _reboxed(existing, converted):
    if isinstance(existing, Mapping):
        return {key: _reboxed(existing[key], converted[key]) for key in existing}
    if isinstance(existing, meta.AxisMetadata):
        return existing.replace_boxed(jnp.asarray(converted, jnp.result_type(existing.unbox())))
    return jnp.asarray(converted, jnp.result_type(existing))
