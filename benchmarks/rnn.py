"""Training-step speed of the recurrent layers: jaxarch LSTM/GRU beside flax's `nn.RNN` and PyTorch eager.

Each model is one recurrent layer on `inputs: [batch, time, in]` with hidden size `hidden`, trained on the mean
squared error of its outputs `[batch, time, hidden]` against a fixed random target with Adam (lr 1e-3), float32:

- `jaxarch_lstm`, `jaxarch_gru`: `jaxarch.layers.recurrent.RNN(LSTMCell / GRUCell)` with its defaults;
- `jaxarch_lstm_scan`, `jaxarch_gru_scan`: the same with `fused_sequence=False`, the plain differentiated scan
  (shows what the whole-sequence LSTM kernel buys; the GRU always uses the scan, so its pair is a noise check);
- `flax_lstm`, `flax_gru`: `flax.linen.RNN(nn.OptimizedLSTMCell / nn.GRUCell)`;
- `torch_lstm`, `torch_gru`: PyTorch eager `nn.LSTM / nn.GRU(batch_first=True)` with `torch.optim.Adam`, on all
  the threads PyTorch picks by default (reported) and glibc's default allocator, when torch is importable; on a
  CUDA GPU, when JAX runs there too, on the GPU (cuDNN's fused kernels).
- on a CUDA GPU, where `jaxarch_lstm` runs on cuDNN's fused kernel (`RNN.cudnn`), also `jaxarch_lstm_cudnn_off`:
  `cudnn=False`, jaxarch's own LSTM there, so the pair shows what cuDNN's kernel buys.

A JAX step is `jax.jit` of value_and_grad + optax update, run to `block_until_ready`; a torch step is zero_grad,
forward, backward, `optimizer.step()`. The JAX steps are timed interleaved (`benchmarks.timing.time_interleaved`),
so load from other jobs on a shared machine hits every model alike: compare the same-run ratios, not absolute
numbers across runs. The torch steps run in a child process right after (interleaved with each other): in the same
process PyTorch's spinning OpenMP threads and XLA's thread pool starved each other (torch measured 20-30x
slower), so torch-vs-JAX ratios are from the same run but not from interleaved steps. The matmul ceiling is a large
float32 `[n, n] @ [n, n]` measured in the same run (before and after the models; the larger is kept).

FLOPs counted (matmuls only, gate arithmetic ignored): forward = 2 * B * T * (in + H) * G * H with G = 4 gates
(LSTM) or 3 (GRU); a training step = 3 x forward (the backward pass does twice the forward's matmul work).

Command: python benchmarks/rnn.py [--quick] [--out benchmarks/results/rnn.json]
(about 4 minutes on a 2-core laptop-class CPU; --quick, a small shape only, well under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxarch import tune_cpu
from jaxarch.benchmarks.timing import (Timing, environment, matmul_ceiling_flops, time_interleaved,
                                       torch_available, write_json)
from jaxarch.layers import recurrent_cudnn
from jaxarch.layers.recurrent import RNN, GRUCell, LSTMCell

REFERENCE_SHAPE = dict(batch=64, time=128, features_in=64, hidden=256)
QUICK_SHAPE = dict(batch=16, time=32, features_in=16, hidden=64)
NUM_GATES = {"lstm": 4, "gru": 3}
LEARNING_RATE = 1e-3


def jax_models(hidden: int) -> dict[str, tuple[str, nn.Module]]:
    """Name -> (cell kind, module)."""
    models = {
        "jaxarch_lstm": ("lstm", RNN(LSTMCell(hidden))),
        "jaxarch_gru": ("gru", RNN(GRUCell(hidden))),
        "jaxarch_lstm_scan": ("lstm", RNN(LSTMCell(hidden), fused_sequence=False)),
        "jaxarch_gru_scan": ("gru", RNN(GRUCell(hidden), fused_sequence=False)),
        "flax_lstm": ("lstm", nn.RNN(nn.OptimizedLSTMCell(hidden))),
        "flax_gru": ("gru", nn.RNN(nn.GRUCell(hidden))),
    }
    if recurrent_cudnn.cuda_available():
        models["jaxarch_lstm_cudnn_off"] = ("lstm", RNN(LSTMCell(hidden), cudnn=False))
    return models


def jax_train_step(model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> Callable[[], None]:
    """A self-synchronising callable running one jitted train step (value_and_grad + Adam) on its own state."""
    inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
    params = model.init(jax.random.key(0), inputs)["params"]
    optimizer = optax.adam(LEARNING_RATE)

    def loss_fn(params):
        outputs = model.apply({"params": params}, inputs)  # [B, T, H]
        return jnp.mean(jnp.square(outputs - targets))

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    state = [params, optimizer.init(params)]

    def run() -> None:
        state[0], state[1], loss = jax.block_until_ready(step(state[0], state[1]))

    return run


def torch_train_step(kind: str, inputs: np.ndarray, targets: np.ndarray, hidden: int,
                     device: str = "cpu") -> Callable[[], None]:
    import torch

    torch.manual_seed(0)
    layer_type = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    layer = layer_type(inputs.shape[-1], hidden, batch_first=True).to(device)
    optimizer = torch.optim.Adam(layer.parameters(), lr=LEARNING_RATE)
    x, y = torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        outputs, _ = layer(x)
        loss = torch.mean(torch.square(outputs - y))
        loss.backward()
        optimizer.step()
        if device == "cuda":  # kernels run asynchronously: the step ends when the GPU is done
            torch.cuda.synchronize()

    return run


def torch_device() -> str:
    """Where PyTorch's models run: on the GPU when JAX runs on a CUDA GPU and torch sees one, else the CPU."""
    if not recurrent_cudnn.cuda_available():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def train_flops(kind: str, batch: int, time: int, features_in: int, hidden: int) -> float:
    forward = 2 * batch * time * (features_in + hidden) * NUM_GATES[kind] * hidden
    return 3.0 * forward


def _data(shape: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((shape["batch"], shape["time"], shape["features_in"])).astype(np.float32)
    targets = rng.standard_normal((shape["batch"], shape["time"], shape["hidden"])).astype(np.float32)
    return inputs, targets


def torch_timings(shape: dict, rounds: int, repetitions: int, device: str = "cpu") -> dict[str, dict]:
    """Times the torch models in this process (the child's side of `--torch-worker`)."""
    inputs, targets = _data(shape)
    steps = {f"torch_{kind}": torch_train_step(kind, inputs, targets, shape["hidden"], device) for kind in NUM_GATES}
    return {name: dataclasses.asdict(timing)
            for name, timing in time_interleaved(steps, rounds=rounds, repetitions=repetitions).items()}


def benchmark_shape(shape: dict, *, rounds: int, repetitions: int, include_torch: bool) -> dict:
    batch, time, features_in, hidden = (shape[k] for k in ("batch", "time", "features_in", "hidden"))
    inputs, targets = _data(shape)
    kinds, steps = {}, {}
    for name, (kind, model) in jax_models(hidden).items():
        kinds[name], steps[name] = kind, jax_train_step(model, inputs, targets)
    timings = time_interleaved(steps, rounds=rounds, repetitions=repetitions)
    if include_torch:
        worker = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--torch-worker", json.dumps(
            dict(shape=shape, rounds=rounds, repetitions=repetitions, device=torch_device()))], check=True,
            capture_output=True, text=True)
        for name, timing in json.loads(worker.stdout.strip().splitlines()[-1]).items():
            kinds[name], timings[name] = name.removeprefix("torch_"), Timing(**timing)
    results = {}
    for name, timing in timings.items():
        flops = train_flops(kinds[name], batch, time, features_in, hidden)
        results[name] = {
            "kind": kinds[name],
            "steps_per_second": timing.steps_per_second,
            "median_seconds": timing.median_seconds,
            "compile_seconds": timing.compile_seconds,
            "repetitions": timing.repetitions,
            "gflops_per_second": flops * timing.steps_per_second / 1e9,
        }
    return {"shape": dict(shape), "train_flops": {k: train_flops(k, batch, time, features_in, hidden)
                                                  for k in NUM_GATES}, "results": results}


def add_ratios(entry: dict, ceiling_flops: float) -> None:
    results = entry["results"]
    for result in results.values():
        result["fraction_of_matmul_ceiling"] = result["gflops_per_second"] * 1e9 / ceiling_flops
    ratios = {}
    for kind in NUM_GATES:
        ours = results[f"jaxarch_{kind}"]["steps_per_second"]
        for peer in (f"jaxarch_{kind}_scan", f"jaxarch_{kind}_cudnn_off", f"flax_{kind}", f"torch_{kind}"):
            if peer in results:
                ratios[f"jaxarch_{kind}/{peer}"] = ours / results[peer]["steps_per_second"]
    entry["ratios"] = ratios


def markdown(entry: dict, ceiling_flops: float) -> str:
    shape = entry["shape"]
    lines = [f"batch {shape['batch']}, time {shape['time']}, in {shape['features_in']}, hidden {shape['hidden']}; "
             f"matmul ceiling {ceiling_flops / 1e9:.0f} GFLOP/s", "",
             "| model | steps/s | ms/step | GFLOP/s | of ceiling |", "|---|---:|---:|---:|---:|"]
    for name, r in entry["results"].items():
        lines.append(f"| {name} | {r['steps_per_second']:.2f} | {1e3 * r['median_seconds']:.1f} | "
                     f"{r['gflops_per_second']:.1f} | {100 * r['fraction_of_matmul_ceiling']:.1f}% |")
    lines += ["", "| ratio (steps/s, same run) | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in entry["ratios"].items()]
    return "\n".join(lines)


def run(quick: bool = False, include_torch: bool | None = None) -> dict:
    include_torch = torch_available() if include_torch is None else include_torch
    shape = QUICK_SHAPE if quick else REFERENCE_SHAPE
    ceiling_size, rounds, repetitions = (512, 2, 2) if quick else (2048, 5, 4)
    ceiling = matmul_ceiling_flops(jnp.float32, size=ceiling_size, repetitions=5 if quick else 10)
    entry = benchmark_shape(shape, rounds=rounds, repetitions=repetitions, include_torch=include_torch)
    ceiling = max(ceiling, matmul_ceiling_flops(jnp.float32, size=ceiling_size, repetitions=5 if quick else 10))
    add_ratios(entry, ceiling)
    result = {
        "benchmark": "rnn_train_step",
        "quick": quick,
        "flop_formula": "train = 3 * 2 * batch * time * (in + hidden) * gates * hidden; gates 4 (LSTM), 3 (GRU)",
        "matmul_ceiling_gflops_per_second": ceiling / 1e9,
        "matmul_ceiling_size": ceiling_size,
        "shapes": [entry],
        **environment(),
    }
    if include_torch:
        import torch

        result["torch"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
        result["torch_device"] = torch_device()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape and few repetitions")
    parser.add_argument("--out", default="benchmarks/results/rnn.json")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch models")
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)  # internal: JSON settings; prints torch timings
    args = parser.parse_args(argv)
    if args.torch_worker:
        settings = json.loads(args.torch_worker)
        print(json.dumps(torch_timings(settings["shape"], settings["rounds"], settings["repetitions"],
                                       settings.get("device", "cpu"))))
        return {}  # untuned: glibc's own allocator settings, as PyTorch's users have them
    tune_cpu()  # the JAX steps run as under the `jaxarch` command
    result = run(quick=args.quick, include_torch=False if args.no_torch else None)
    for entry in result["shapes"]:
        print(markdown(entry, result["matmul_ceiling_gflops_per_second"] * 1e9))
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
