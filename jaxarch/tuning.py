"""`tune_cpu`: the process-wide CPU settings the `jaxarch` command runs with, for the program that owns the process.

Importing jaxarch changes nothing outside it. `tune_cpu()` makes two kinds of setting, both for the whole process:

- XLA:CPU flags (jaxarch/xla_flags.py), appended to `os.environ["XLA_FLAGS"]`: XLA reads them there once, when
  JAX starts its backends (the first computation, or `jax.devices()`). Child processes inherit them.
- glibc's allocator settings (jaxarch/host_allocator.py): a training step's large temporaries stay in the heap
  instead of being mapped afresh every step.

A third setting, huge pages for the heap, glibc reads only when a process starts: the `jaxarch` command starts
itself again with it (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), and a script gets it by being started under that
environment. `tune_cpu` reports whether the process has it.

Neither changes what is computed beyond float rounding. What they buy, measured, is in docs/performance/cpu.md.
The `jaxarch` command calls `tune_cpu()` before anything starts JAX's backends, so its figures are measured with
them; `JAXARCH_XLA_FLAGS=0` or `JAXARCH_HOST_ALLOCATOR=0` in the environment turns one part off. A script calls it
before its first JAX computation:

    import jaxarch
    jaxarch.tune_cpu()

Called after JAX's backends started, it changes nothing and warns: XLA has read its flags already, and the arena
setting would not reach the threads JAX has started.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings

from jaxarch.host_allocator import configure_host_allocator, huge_pages_in_use
from jaxarch.xla_flags import add_xla_flags, installed_cpu_flags

__all__ = ["CpuTuning", "tune_cpu", "jax_backends_started"]


@dataclasses.dataclass(frozen=True)
class CpuTuning:
    """What one `tune_cpu` call changed."""

    xla_flags: tuple[str, ...]  # the flags it appended to XLA_FLAGS (a flag the user had set is left as set)
    host_allocator: bool  # whether glibc took the allocator settings
    too_late: bool  # JAX's backends had started: nothing was changed
    # Whether the heap asks for huge pages, from glibc's tunable at start-up (`host_allocator.huge_pages_in_use`);
    # reported with the allocator settings, never made here.
    huge_pages: bool = False


def jax_backends_started() -> bool:
    """Whether JAX has started its backends in this process (after which XLA's flags are fixed)."""
    if "jax" not in sys.modules:  # JAX not even imported: nothing started
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        # A JAX without this function: it cannot be told, so the settings are made (harmless if too late).
        return False


def tune_cpu(*, xla_flags: bool | None = None, host_allocator: bool | None = None) -> CpuTuning:
    """Makes jaxarch's process-wide CPU settings; call it before JAX's first computation.

    Args:
      xla_flags: append the installed jaxlib's flags of `jaxarch.xla_flags.cpu_flags` to `os.environ["XLA_FLAGS"]`.
        None: unless `JAXARCH_XLA_FLAGS=0` in the environment.
      host_allocator: make glibc's allocator settings (`jaxarch.host_allocator.SETTINGS`). None: unless
        `JAXARCH_HOST_ALLOCATOR=0` in the environment.

    Returns:
      What was changed. After JAX's backends started nothing is, and a `RuntimeWarning` says so.
    """
    from jaxarch.checks import env_switch  # here, not at the top: `import jaxarch` does not load JAX

    if xla_flags is None:
        xla_flags = env_switch("jaxarch.tune_cpu", os.environ, "JAXARCH_XLA_FLAGS", "leave XLA_FLAGS alone")
    if host_allocator is None:
        host_allocator = env_switch("jaxarch.tune_cpu", os.environ, "JAXARCH_HOST_ALLOCATOR",
                                    "leave the allocator alone")
    if not (xla_flags or host_allocator):
        return CpuTuning(xla_flags=(), host_allocator=False, too_late=False)
    if jax_backends_started():
        warnings.warn("jaxarch.tune_cpu: JAX's backends have started, so it changed nothing (XLA has read its "
                      "flags); call it before the first JAX computation", RuntimeWarning, stacklevel=2)
        return CpuTuning(xla_flags=(), host_allocator=False, too_late=True)
    added = tuple(add_xla_flags(installed_cpu_flags(), os.environ)) if xla_flags else ()
    return CpuTuning(xla_flags=added, host_allocator=host_allocator and configure_host_allocator(), too_late=False,
                     huge_pages=host_allocator and huge_pages_in_use(os.environ))
