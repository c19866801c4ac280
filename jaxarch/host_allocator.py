"""The host-allocator settings jaxarch makes when it is imported, before JAX starts its threads.

XLA:CPU allocates each execution's temporaries as one large block (about 180 MB for the Transformer block's
training step at batch 16, T 256, D 256) on the thread that runs the program. glibc serves a request that large
from a non-main thread with a fresh `mmap` and gives it back with `munmap` when freed, so every step the kernel
faults in and zero-fills every page again: about 46,000 minor page faults a step for that block, a fifth of its
time. PyTorch on the CPU pays the same for its larger buffers: oneDNN's RNN kernel maps its workspace afresh every step,
about 40,000 page faults a step at batch 64, T 128, hidden 256, and these settings halved its LSTM's and its
CNN's train steps on a 2-core CPU (`benchmarks/torch_worker.py`).

The settings, through glibc's `mallopt` (process-wide; they change where memory comes from, never what is
computed):

- `M_ARENA_MAX=1`: every thread allocates from the main heap. A per-thread arena's heap is at most 64 MB, so a
  larger block there is always a fresh mapping, whatever the other settings say.
- `M_MMAP_MAX=0`: large blocks come from the heap instead of fresh mappings.
- `M_TRIM_THRESHOLD=2 GiB`: freed memory stays in the heap for the next step instead of going back to the
  kernel. The cost: the process's resident memory stays near its peak (below this bound) after a large step.

`JAXARCH_HOST_ALLOCATOR=0` leaves the allocator alone. Where the C library is not glibc nothing happens. The
arena setting only governs threads that have not allocated yet, so it is made at import, before JAX's thread
pools start (importing jaxarch first, as `jaxarch/__init__.py` does with the XLA flags).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

from jaxarch.checks import env_switch

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))  # mallopt takes a C int: 2 GiB at most


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl and macOS's libc do not)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def configure_host_allocator(environ: Mapping[str, str] = os.environ) -> bool:
    """Makes the `SETTINGS`; returns whether glibc took all of them."""
    on = env_switch("jaxarch.host_allocator", environ, "JAXARCH_HOST_ALLOCATOR", "leave the allocator alone")
    libc = _glibc() if on else None
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([libc.mallopt(param, value) == 1 for param, value in SETTINGS])
