"""Timing that can be trusted: compile time apart, warm-up, `block_until_ready`, medians of many repetitions."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


# A workload whose rounds differ by more than this fraction of its median is flagged: its figure depends on when
# it was measured (other jobs, the host's own speed), so one run of it is not a figure to quote.
SPREAD_WARNING = 0.10


@dataclasses.dataclass(frozen=True)
class Timing:
    """compile_seconds: the first call; median_seconds: over every timed call; round_seconds: each round's median,
    in order (empty where the calls were not timed in rounds)."""

    compile_seconds: float
    median_seconds: float
    repetitions: int
    round_seconds: tuple[float, ...] = ()

    @property
    def steps_per_second(self) -> float:
        return 1.0 / self.median_seconds

    @property
    def spread(self) -> float | None:
        """(slowest round - fastest round) / the median: how far the figure moved within one run; None with fewer
        than two rounds."""
        if len(self.round_seconds) < 2:
            return None
        return (max(self.round_seconds) - min(self.round_seconds)) / self.median_seconds


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
    return time_runs_interleaved({"fn": timed_calls(fn)}, rounds=1, repetitions=repetitions, warmup=warmup)["fn"]


def timed_calls(step: Callable[[], None]) -> Callable[[int], list[float]]:
    """`step` as a run for `time_runs_interleaved`: `run(count)` calls it `count` times, returning each's seconds."""

    def run(count: int) -> list[float]:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times

    return run


def time_interleaved(steps: dict[str, Callable[[], None]], *, rounds: int = 5, repetitions: int = 4,
                     warmup: int = 2) -> dict[str, Timing]:
    """Times several self-synchronising step callables side by side: `rounds` passes over all of them, each
    running `repetitions` timed calls, so that load from other jobs on a shared machine hits every variant alike.

    The first call of each (compilation, for jitted steps) is timed apart, then `warmup` untimed calls; the result
    holds the median over `rounds * repetitions` calls.
    """
    runs = {name: timed_calls(step) for name, step in steps.items()}
    return time_runs_interleaved(runs, rounds=rounds, repetitions=repetitions, warmup=warmup)


def time_runs_interleaved(runs: dict[str, Callable[[int], list[float]]], *, rounds: int = 5, repetitions: int = 4,
                          warmup: int = 2, target_seconds: float | None = None,
                          before_run: Callable[[str], None] | None = None) -> dict[str, Timing]:
    """`time_interleaved` for runs that time themselves: `runs[name](count)` runs `count` steps and returns each
    one's seconds (a step in another process, say, timed there). `before_run(name)` is called before each run's
    calls in each timed round (the suite samples the machine's own speed there, `benchmarks/host_probe.py`).

    With `target_seconds`, each run gets about that much timed work in all: `ceil(target / (rounds * warm-up
    median))` calls a round, at least 2 and at most `repetitions`, so slow steps are not repeated for minutes.
    """
    if rounds < 1 or repetitions < 1 or warmup < (1 if target_seconds else 0):
        raise ValueError(f"benchmarks.timing: rounds/repetitions/warmup are {rounds}/{repetitions}/{warmup}, "
                         "expected rounds, repetitions >= 1 and warmup >= 1 when target_seconds is given")
    compile_seconds, per_round = {}, {}
    for name, run in runs.items():
        compile_seconds[name] = run(1)[0]
        warm = run(warmup) if warmup else []
        per_round[name] = repetitions
        if target_seconds:
            wanted = math.ceil(target_seconds / (rounds * statistics.median(warm)))
            per_round[name] = max(min(2, repetitions), min(repetitions, wanted))
    times: dict[str, list[float]] = {name: [] for name in runs}
    round_seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            if before_run is not None:
                before_run(name)
            this_round = run(per_round[name])
            times[name] += this_round
            round_seconds[name].append(statistics.median(this_round))
    return {name: Timing(compile_seconds[name], statistics.median(times[name]), len(times[name]),
                         tuple(round_seconds[name])) for name in runs}


def matmul_step(dtype=jnp.float32, size: int = 2048) -> Callable[[], None]:
    """A self-synchronising `[size, size] @ [size, size]` product in `dtype` (2 size^3 FLOPs), compiled already."""
    a = jnp.ones((size, size), dtype)
    product = jax.jit(lambda x: x @ x)
    jax.block_until_ready(product(a))

    def run() -> None:
        jax.block_until_ready(product(a))

    return run


def matmul_ceiling_flops(dtype=jnp.float32, size: int = 2048, repetitions: int = 10) -> float:
    """The device's achievable matmul FLOP/s in `dtype`: a [size, size] @ [size, size] product, 2 n^3 FLOPs."""
    timing = time_callable(matmul_step(dtype, size), repetitions=repetitions, warmup=0)
    return 2 * size ** 3 / timing.median_seconds


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


def write_json(result: dict, path: str, echo: bool = True) -> None:
    """Writes `result` to `path` (parents created), and prints it when `echo`."""
    import json
    from pathlib import Path

    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
