"""Train-step timing for the report: compilation apart, a warm-up step, and the steps of several models
interleaved so that load from other jobs on a shared machine slows each of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import jax

from jaxarch.checks import check_positive_ints


class StepRunner:
    """Calls a jitted `step(state, batch) -> (state, metrics)` that donates `state`, keeping the new state and
    waiting for the result, so that the time of a call is the time of one training step."""

    def __init__(self, step: Callable, state, batch):
        self.step, self.state, self.batch = step, state, batch

    def __call__(self) -> None:
        self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))


def median_step_seconds(runners: Mapping[str, Callable[[], None]], repetitions: int) -> dict[str, float]:
    """Median seconds per call of each runner over `repetitions` calls, after a compiling call and a warm-up
    call; the timed calls go round the runners in turn."""
    check_positive_ints("median_step_seconds", "repetitions", repetitions)
    for runner in runners.values():
        runner()
        runner()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
