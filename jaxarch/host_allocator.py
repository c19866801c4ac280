"""The glibc allocator settings of `jaxarch.tune_cpu`: large blocks stay in the heap between training steps.

XLA:CPU allocates each execution's temporaries as one large block on the thread that runs the program. glibc
serves a block that large with a fresh `mmap` and gives it back with `munmap` when it is freed, so every step the
kernel faults in and zero-fills each of its pages again (docs/performance/cpu.md has the counts). The settings,
through glibc's `mallopt`, change where memory comes from, never what is computed:

- `M_ARENA_MAX=1`: every thread allocates from the main heap. A per-thread arena's heap is at most 64 MB, so a
  larger block there is always a fresh mapping, whatever the other settings say.
- `M_MMAP_MAX=0`: large blocks come from the heap instead of fresh mappings.
- `M_TRIM_THRESHOLD=2 GiB`: freed memory stays in the heap for the next step instead of going back to the
  kernel. The cost: the process's resident memory stays near its peak (below this bound) after a large step.

They are process-wide, so only the process's owner makes them (the `jaxarch` command, or a script through
`tune_cpu`). The arena setting governs only threads that have not allocated yet: it must come before JAX starts
its thread pools. Where the C library is not glibc nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))  # mallopt takes a C int: 2 GiB at most


def glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc, else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it (musl and macOS's libc do not)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def configure_host_allocator() -> bool:
    """Makes the `SETTINGS` for the whole process; returns whether glibc took all of them."""
    libc = glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([libc.mallopt(param, value) == 1 for param, value in SETTINGS])
