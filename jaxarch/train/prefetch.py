"""Training batches loaded and placed on the devices by a background thread, ahead of the steps that use them.

The loop asks for batch `step` with `get(step)`; a producer thread has already called `load(step)`,
`load(step + 1)`, ... and keeps at most `depth` finished batches in a bounded queue (plus the one it is
building). `load` is the function the loop would call itself (`jaxarch.train.mesh.load_batch` on the run's mesh,
dataset, seed and batch size), so the contract of `jaxarch.data.base` is untouched: a batch is a pure function of
`(seed, step)`, a prefetched run trains on exactly the batches of one that loads in the loop, a resumed run's
producer starts at the resume step, and each process of a multi-host run still reads only its own rows.
`load` also places the batch on the mesh (an asynchronous host-to-device copy), so that copy is off the step's
path too. A thread suffices: the loaders' NumPy gathers, crops and flips release the GIL for their array work,
and XLA computes the step outside it.

`wait_seconds` counts the time the loop spent blocked in `get` (with `depth=0`, the whole synchronous load):
the loop dispatches steps asynchronously and runs ahead of the device only until XLA's queue of computations in
flight is full, so a wait is time in which the loop had no batch to dispatch. Its share of the wall time is
what `metrics.jsonl` records as `train/data_wait_fraction`.

Shutdown: `close()` (also on leaving the `with` block, and called by the loop in its `finally`, so on the end of
training, on an exception and on a stop signal's `Interrupted` alike) tells the producer to stop, empties the
queue so that a producer blocked on a full queue wakes, and joins it. The thread is a daemon besides: a `load`
stuck forever (a hung network file system) cannot keep the process alive. An exception raised by `load` is
raised again by the `get` of that step, with its traceback, as a synchronous load would raise it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_MODULE = "Prefetcher"
_POLL_SECONDS = 0.05  # How often a blocked producer or consumer looks for a close or a dead producer.
JOIN_TIMEOUT_SECONDS = 30.0  # close() waits this long for a `load` in progress to return.


class Prefetcher:
    """Batches `load(start)`, `load(start + 1)`, ..., `load(stop - 1)`, at most `depth` ahead (0: loaded by
    `get` itself, in the caller's thread). `get` must be called with consecutive steps from `start`."""

    def __init__(self, load: Callable[[int], Any], *, start: int, stop: int, depth: int = 2):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"{_MODULE}: depth is {depth!r}, expected an integer >= 0 (0 loads in the caller's "
                             "thread)")
        self._load, self._next, self._stop, self.depth = load, start, stop, depth
        self.wait_seconds = 0.0
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0 and start < stop:
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._produce, args=(start,), name="jaxarch-prefetch",
                                            daemon=True)
            self._thread.start()

    def _produce(self, step: int) -> None:
        while step < self._stop and not self._closing.is_set():
            try:
                item = (step, self._load(step), None)
            except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
                item = (step, None, err)
            while not self._closing.is_set():
                try:
                    self._queue.put(item, timeout=_POLL_SECONDS)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return
            step += 1

    def get(self, step: int) -> Any:
        """Batch `step`, waiting for it if the producer has not finished it yet."""
        if self._closing.is_set():
            raise ValueError(f"{_MODULE}: get({step}) after close(), expected no use after close")
        if step != self._next or step >= self._stop:
            raise ValueError(f"{_MODULE}: step is {step}, expected {self._next} (steps are taken in order, below "
                             f"stop={self._stop})")
        start = time.perf_counter()
        try:
            if self._thread is None:
                return self._load(step)
            while True:
                try:
                    produced, batch, err = self._queue.get(timeout=_POLL_SECONDS)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._queue.empty():
                        raise RuntimeError(f"{_MODULE}: the producer thread ended before step {step}") from None
            if err is not None:
                raise err
            assert produced == step, (produced, step)  # One producer, in order: a mismatch is a bug here.
            return batch
        finally:
            self.wait_seconds += time.perf_counter() - start
            self._next = step + 1

    def take_wait_seconds(self) -> float:
        """The seconds spent waiting since the last call (or the start), and resets the count."""
        waited, self.wait_seconds = self.wait_seconds, 0.0
        return waited

    @property
    def running(self) -> bool:
        """Whether the producer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stops the producer and waits for it (a `load` in progress finishes first); safe to call again."""
        self._closing.set()
        if self._thread is None:
            return
        deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:  # Frees a slot for a producer blocked on a full queue; it then sees the close.
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(_POLL_SECONDS)
        while not self._queue.empty():  # Drops the placed batches left, so their buffers are freed now.
            self._queue.get_nowait()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
