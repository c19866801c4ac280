"""Timing that can be trusted: compile time apart, warm-up, `block_until_ready`, medians of many repetitions."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Timing:
    compile_seconds: float
    median_seconds: float
    repetitions: int

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.median_seconds


def time_jax_step(step: Callable, state, *args, repetitions: int = 20, warmup: int = 2) -> Timing:
    """Times `state = step(state, *args)[0]` (a jitted train step that may donate `state`)."""
    start = time.perf_counter()
    state = jax.block_until_ready(step(state, *args))[0]
    compile_seconds = time.perf_counter() - start
    for _ in range(warmup):
        state = jax.block_until_ready(step(state, *args))[0]
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state, *args))[0]
        times.append(time.perf_counter() - start)
    return Timing(compile_seconds, statistics.median(times), repetitions)


def time_callable(fn: Callable[[], None], *, repetitions: int = 20, warmup: int = 2) -> Timing:
    """Times a self-synchronising callable (e.g. a PyTorch step on the CPU)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing(first, statistics.median(times), repetitions)


def time_interleaved(steps: dict[str, Callable[[], None]], *, rounds: int = 5, repetitions: int = 4,
                     warmup: int = 2) -> dict[str, Timing]:
    """Times several self-synchronising step callables side by side: `rounds` passes over all of them, each
    running `repetitions` timed calls, so that load from other jobs on a shared machine hits every variant alike.

    The first call of each (compilation, for jitted steps) is timed apart, then `warmup` untimed calls; the result
    holds the median over `rounds * repetitions` calls.
    """
    compile_seconds = {}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        compile_seconds[name] = time.perf_counter() - start
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            for _ in range(repetitions):
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    return {name: Timing(compile_seconds[name], statistics.median(times[name]), len(times[name])) for name in steps}


def matmul_ceiling_flops(dtype=jnp.float32, size: int = 2048, repetitions: int = 10) -> float:
    """The device's achievable matmul FLOP/s in `dtype`: a [size, size] @ [size, size] product, 2 n^3 FLOPs."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def environment() -> dict:
    """What a result was measured on: the device, the machine and the JAX version."""
    import platform

    return {"device": jax.devices()[0].device_kind, "machine": platform.machine(), "jax": jax.__version__}


def write_json(result: dict, path: str) -> None:
    """Prints `result` and writes it to `path` (parents created)."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2)
    print(text)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
