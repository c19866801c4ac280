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

Huge pages for the heap (`HUGE_PAGES_TUNABLE`): glibc 2.35 and later, started with `glibc.malloc.hugetlb=1` in
`GLIBC_TUNABLES`, asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on every stretch of heap
it takes. A step's temporaries then sit on 2 MiB pages instead of 4 KiB ones: fewer TLB misses, and memory that is
contiguous whatever state the host's memory is in. glibc reads the tunable once, when the process starts, so no
call can turn it on in a running process: the `jaxarch` command starts itself again with it (`with_huge_pages`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from collections.abc import Mapping
from pathlib import Path

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))  # mallopt takes a C int: 2 GiB at most

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
HUGE_PAGES_MIN_GLIBC = (2, 35)  # the first glibc with the tunable (older ones ignore it)
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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


def glibc_version(libc: ctypes.CDLL | None) -> tuple[int, ...] | None:
    """glibc's version as integers, e.g. (2, 36); None for another C library or a version it cannot read."""
    if libc is None:
        return None
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    # A distribution's build may append to the numbers ("2.35.9000", "2.36-devel"): only the leading two count.
    match = re.match(r"(\d+)\.(\d+)", libc.gnu_get_libc_version().decode(errors="replace"))
    return (int(match[1]), int(match[2])) if match else None


def transparent_huge_pages() -> bool:
    """Whether the kernel gives transparent huge pages to memory that asks for them (mode `always` or `madvise`)."""
    try:
        return "[never]" not in THP_MODE.read_text()
    except OSError:  # not Linux, or a kernel without transparent huge pages
        return False


def _tunables(environ: Mapping[str, str]) -> list[str]:
    return [item for item in environ.get("GLIBC_TUNABLES", "").split(":") if item]


def _is_huge_pages_tunable(item: str) -> bool:
    return item.partition("=")[0] == HUGE_PAGES_TUNABLE.partition("=")[0]


def huge_pages_tunable_set(environ: Mapping[str, str]) -> bool:
    """Whether `environ`'s `GLIBC_TUNABLES` names glibc's heap huge-page tunable (whatever its value)."""
    return any(_is_huge_pages_tunable(item) for item in _tunables(environ))


def with_huge_pages(environ: Mapping[str, str], version: tuple[int, ...] | None,
                    thp: bool) -> dict[str, str] | None:
    """`environ` with `HUGE_PAGES_TUNABLE` added to `GLIBC_TUNABLES`, or None where it would change nothing.

    None when the tunable is there already (set by the user, whose value stands, or by an earlier start), when
    the C library is not glibc `HUGE_PAGES_MIN_GLIBC` or newer (`version`, from `glibc_version`), or when the
    kernel gives no transparent huge pages (`thp`, from `transparent_huge_pages`).
    """
    if huge_pages_tunable_set(environ) or version is None or version < HUGE_PAGES_MIN_GLIBC or not thp:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join([*_tunables(environ), HUGE_PAGES_TUNABLE])}


def without_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without glibc's heap huge-page tunable: a child process that is to run on glibc's defaults."""
    tunables = [item for item in _tunables(environ) if not _is_huge_pages_tunable(item)]
    environ = {key: value for key, value in environ.items() if key != "GLIBC_TUNABLES"}
    return {**environ, "GLIBC_TUNABLES": ":".join(tunables)} if tunables else environ


def huge_pages_in_use(environ: Mapping[str, str]) -> bool:
    """Whether this process's heap asks for huge pages: glibc 2.35+ started with the tunable (1: transparent huge
    pages, where the kernel gives them; 2: the kernel's reserved huge pages). `environ`: the environment the process
    started with (`os.environ`)."""
    version = glibc_version(glibc())
    if version is None or version < HUGE_PAGES_MIN_GLIBC:
        return False
    values = {item.partition("=")[2] for item in _tunables(environ) if _is_huge_pages_tunable(item)}
    return "2" in values or ("1" in values and transparent_huge_pages())
