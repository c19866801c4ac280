"""Scaling curves: training-step time against sequence length for an LSTM layer and a causal Transformer block
(jaxarch's `RNN(LSTMCell)` and `DecoderBlock`, the same width), and against image size for the CNN (jaxarch and
Flax's built-ins).

The sequence curve measures the claim that processing every position in parallel is faster than a recurrence:
the LSTM's work grows linearly with length but runs as `time` dependent steps, the block's grows quadratically
but runs as a few large matmuls. A small batch keeps the longest block (T = 4096, where jaxarch switches to its
blockwise attention) within seconds on a CPU. At each point the models are timed side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxarch.benchmarks.jax_models import build_model, train_step
from jaxarch.benchmarks.timing import time_runs_interleaved, timed_calls
from jaxarch.benchmarks.workloads import make_data

SEQUENCE_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)
SEQUENCE_SHAPE = dict(batch=2, features=256, heads=4)
IMAGE_SIZES = (28, 56, 112, 224)
IMAGE_SHAPE = dict(batch=16, channels=1)
QUICK_SEQUENCE_LENGTHS = (32, 64)
QUICK_SEQUENCE_SHAPE = dict(batch=2, features=64, heads=4)
QUICK_IMAGE_SIZES = (16, 32)
QUICK_IMAGE_SHAPE = dict(batch=4, channels=1)


def _sequence_models(length: int, shape: dict) -> dict[str, tuple[str, str, dict]]:
    """label -> (implementation, family, workload shape) at sequence length `length`."""
    recurrent = dict(batch=shape["batch"], time=length, features_in=shape["features"], hidden=shape["features"])
    block = dict(batch=shape["batch"], time=length, features=shape["features"], heads=shape["heads"])
    return {"lstm": ("jaxarch", "lstm", recurrent), "transformer": ("jaxarch", "attention", block)}


def _image_models(size: int, shape: dict, implementations: Sequence[str]) -> dict[str, tuple[str, str, dict]]:
    conv = dict(batch=shape["batch"], image=size, channels=shape["channels"])
    return {name: (name, "conv", conv) for name in implementations}


def _curve(axis: str, values: Sequence[int], models_at, dtype, quick: bool, log) -> list[dict]:
    """Times `models_at(value)` side by side at each value; one point per model and value."""
    points = []
    for value in values:
        runs, items = {}, {}
        for label, (implementation, family, shape) in models_at(value).items():
            inputs, targets = make_data(family, shape)
            model = build_model(implementation, family, shape, dtype)
            runs[label] = timed_calls(train_step(model, family, inputs, targets))
            items[label] = shape["batch"] * shape.get("time", 1)
        timings = time_runs_interleaved(runs, rounds=1 if quick else 2, repetitions=2 if quick else 4, warmup=1,
                                        target_seconds=0.1 if quick else 2.0)
        for label, timing in timings.items():
            points.append({"model": label, axis: value, "median_seconds": timing.median_seconds,
                           "compile_seconds": timing.compile_seconds, "repetitions": timing.repetitions,
                           "items_per_second": items[label] * timing.steps_per_second})
        log(f"scaling {axis} {value}: " + ", ".join(f"{label} {1e3 * t.median_seconds:.1f} ms"
                                                     for label, t in timings.items()))
    return points


def run(*, quick: bool, dtype, log=print) -> dict:
    """Both curves: `{"sequence_length": {...shape, "points"}, "image_size": {...shape, "points"}}`."""
    sequence = QUICK_SEQUENCE_SHAPE if quick else SEQUENCE_SHAPE
    images = QUICK_IMAGE_SHAPE if quick else IMAGE_SHAPE
    implementations = ("jaxarch",) if quick else ("jaxarch", "flax")
    return {
        "sequence_length": {**sequence, "item_unit": "tokens", "points": _curve(
            "time", QUICK_SEQUENCE_LENGTHS if quick else SEQUENCE_LENGTHS,
            lambda length: _sequence_models(length, sequence), dtype, quick, log)},
        "image_size": {**images, "item_unit": "images", "points": _curve(
            "image", QUICK_IMAGE_SIZES if quick else IMAGE_SIZES,
            lambda size: _image_models(size, images, implementations), dtype, quick, log)},
    }
