"""Multi-process runs: one process per host (or per accelerator), joined into one JAX runtime.

After `initialize`, `jax.devices()` lists every process's devices, the mesh of `jaxarch.train.mesh` spans them
all, and each process feeds only the batch rows of its own devices. Every process runs the same program
(`jaxarch run ...`) on a shared work directory: checkpoints are written by all of them together (each its
own shards), the other records by process 0, which also holds the directory's lock for all of them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax
import numpy as np

from jaxarch.checks import fail
from jaxarch.train.lock import WorkdirBusyError, WorkdirLock

_MODULE = "distributed"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to a multi-process run through `jax.distributed.initialize`.

    Arguments left as None are found by JAX from the environment: SLURM (`srun`), Open MPI (`mpirun`), Cloud
    TPU pod slices and Kubernetes are detected automatically, and `JAX_COORDINATOR_ADDRESS` gives the
    address. Elsewhere pass all three: `coordinator_address` (`host:port` of process 0), `num_processes`, and
    this process's `process_id` in `[0, num_processes)`. Call it before anything else touches JAX's devices.
    """
    if num_processes is not None and (not isinstance(num_processes, int) or num_processes < 1):
        fail(_MODULE, "num_processes", repr(num_processes), "a positive int or None (found from the environment)")
    if process_id is not None:
        upper = "num_processes" if num_processes is None else num_processes
        if not isinstance(process_id, int) or process_id < 0 or (num_processes is not None
                                                                  and process_id >= num_processes):
            fail(_MODULE, "process_id", repr(process_id), f"an int in [0, {upper}) or None")
    if coordinator_address is not None and ":" not in coordinator_address:
        fail(_MODULE, "coordinator_address", repr(coordinator_address), "'host:port' of process 0")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Holds the work directory's lock (`jaxarch.train.lock`) for the block. In a multi-process run process 0
    takes it for all of them, since they share the directory; the others learn from it whether it succeeded,
    so that every process stops together when another run holds the directory."""
    lock = WorkdirLock(workdir)
    if jax.process_count() == 1:
        with lock:
            yield lock
        return
    from jax.experimental import multihost_utils

    refusal = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirBusyError as err:
            refusal = err
    held = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
    if not held:
        raise refusal or WorkdirBusyError(f"workdir: {str(workdir)!r} is in use by another run (process 0 could "
                                          "not lock it), expected a work directory no other run is using")
    try:
        yield lock
    finally:
        lock.release()
