"""`--profile START:COUNT`: a `jax.profiler` trace of a window of training steps, written into the run directory.

The trace of steps START+1 .. START+COUNT (the steps that take the state from step START to START+COUNT, as
metrics.jsonl numbers them) goes to RUN_DIR/profile/plugins/profile/<time>/: an XSpace (`*.xplane.pb`) that
TensorBoard's profile plugin reads (`tensorboard --logdir RUN_DIR/profile`) and a Perfetto trace
(`*.trace.json.gz`, for https://ui.perfetto.dev). Each step is marked with a `StepTraceAnnotation`, so the
profile plugin's step-time views split the trace by step. A window reaching past `train.steps` ends at the last
step; on resume, the part of the window already trained is not traced again.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import jax

PROFILE_DIR = "profile"


def parse_profile(text: str) -> tuple[int, int]:
    """`"START:COUNT"` -> `(START, COUNT)`, START >= 0 and COUNT >= 1; anything else is a ValueError naming the
    option."""
    start, sep, count = str(text).partition(":")
    try:
        window = (int(start), int(count)) if sep else None
    except ValueError:
        window = None
    if window is None:
        raise ValueError(f"--profile is {text!r}, expected START:COUNT, two integers such as 10:5 (trace the 5 "
                         "steps after step 10)")
    return window


def check_profile(window: tuple[int, int], steps: int) -> None:
    """A window that traces at least one of the run's `steps`, or a ValueError naming the option."""
    start, count = window
    if count <= 0:
        raise ValueError(f"--profile {start}:{count}: COUNT is {count}, expected a positive number of steps to trace")
    if not 0 <= start < steps:
        raise ValueError(f"--profile {start}:{count}: START is {start}, expected a step in [0, {steps - 1}] "
                         f"(train.steps is {steps}): the trace begins after step START")


class StepProfiler:
    """Starts the trace before the window's first step and stops it after its last one; `None` window: off.

    `step` below is the number of steps trained so far. The trace stops only once the window's last step has
    finished on the device, so the trace holds its execution, not just its dispatch.
    """

    def __init__(self, window: tuple[int, int] | None, run_dir: Path, steps: int, first_step: int):
        self.directory = Path(run_dir) / PROFILE_DIR
        if jax.process_count() > 1:  # Each process traces its own devices; one directory each.
            self.directory = self.directory / f"process_{jax.process_index()}"
        self.start, self.stop = (None, None) if window is None else (window[0], min(window[0] + window[1], steps))
        self.active = False
        if self.start is not None and self.stop <= first_step:
            print(f"[jaxarch] --profile {window[0]}:{window[1]}: those steps were trained before the checkpoint "
                  f"at step {first_step}; nothing to trace", file=sys.stderr)
            self.start = None
        elif self.start is not None and self.start < first_step:
            self.start = first_step

    def annotation(self, step: int):
        """A context for the step after `step`: it starts the trace at the window's start and names the step."""
        if self.start is not None and step == self.start and not self.active:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.active = True
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step + 1)

    def after(self, step: int, state) -> None:
        """Stops the trace once `step` steps are trained and the window ends there."""
        if self.active and step >= self.stop:
            jax.block_until_ready(state)
            self.close()
            print(f"[jaxarch] profiler trace of steps {self.start + 1}-{self.stop} written to {self.directory}",
                  file=sys.stderr)

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
