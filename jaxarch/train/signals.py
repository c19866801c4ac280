"""Stopping a run cleanly on SIGTERM (what SLURM and preemptible VMs send) and SIGINT (Ctrl-C).

The first signal only sets a flag: the training loop finishes the step it is on, writes a checkpoint, closes
its records and raises `Interrupted`; `jaxarch run` then exits with status 128 + the signal's number (143 for
SIGTERM, 130 for SIGINT, the shell's convention). A second signal exits at once (`os._exit`, same status)
without a checkpoint; the next run cleans up any half-written one and resumes from the last complete one.

Handlers are installed only while a run is inside `StopRequests` and the previous handlers are restored on the
way out, so `train_and_evaluate` called from Python leaves the process's signal handling as it found it. From a
thread other than the main one (where Python refuses to install handlers) nothing is installed.

In a multi-process run every process must stop after the same step, or the ones still training wait forever
on the others' collectives. Signals reach processes at different moments, so the processes exchange their
flags every `sync_every` steps and stop when any of them has one: all of them see the same answer at the same
step (`agreed`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Steps between flag exchanges in a multi-process run: each exchange is a blocking collective, so not every
# step; a stop then comes at most this many steps after the signal.
SYNC_EVERY = 10


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by `signum`: 128 + its number, as a shell reports a signal's death."""
    return 128 + int(signum)


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint at `step` (None if no step had been trained)."""

    def __init__(self, signum: int, step: int | None, checkpoint_dir: str):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        super().__init__(signum, step)

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.step is None:
            return f"stopped by {name} before any step was trained; nothing new to save"
        return (f"stopped by {name} after step {self.step}; its checkpoint is in {self.checkpoint_dir}, and the same "
                "command resumes from it")


def _say(line: str) -> None:
    """Writes a line to stderr with one system call: the handler may interrupt a `print` in progress on
    sys.stderr, and a second buffered write into the same stream would fail as reentrant."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (captured, redirected)
        fd = 2
    os.write(fd, (line + "\n").encode())


def agreed(flags: Sequence[bool] | np.ndarray) -> bool:
    """Whether a run stops: every process's flag (one per process, in process order), reduced identically on
    every process, so that all reach the same answer from the same exchanged values."""
    return bool(np.any(np.asarray(flags, bool)))


def _exchange(flag: bool) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(flag, np.int32)))


class StopRequests:
    """A context that turns SIGTERM/SIGINT into a request to stop at a step boundary.

    `should_stop(step)` is called by the loop after each step; with several processes (`num_processes` > 1) it
    exchanges flags on steps that are multiples of `sync_every` and answers False in between. `exchange` is
    the collective (injectable for tests): it takes this process's flag and returns every process's.
    """

    def __init__(self, *, num_processes: int = 1, sync_every: int = SYNC_EVERY,
                 exchange: Callable[[bool], np.ndarray] = _exchange):
        self.num_processes, self.sync_every, self.exchange = num_processes, sync_every, exchange
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _say(f"[jaxarch] second {name}: exiting at once without a checkpoint")
            os._exit(exit_status(signum))
        self.signum = signum
        _say(f"[jaxarch] {name} received: finishing the current step and writing a checkpoint (send it again to "
             "exit at once)")

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            # None: a handler installed outside Python (C code), which cannot be reinstalled from here.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """Whether this process has received a stop signal."""
        return self.signum is not None

    def should_stop(self, step: int) -> bool:
        if self.num_processes == 1:
            return self.requested
        if step % self.sync_every:
            return False
        flags = self.exchange(self.requested)
        stop = agreed(flags)
        if stop and self.signum is None:
            self.signum = signal.SIGTERM  # Another process's signal; this one stops the same way.
        return stop
