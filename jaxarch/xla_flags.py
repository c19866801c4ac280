"""The XLA:CPU flags of `jaxarch.tune_cpu`, and which installed jaxlib gets which of them.

Each flag changes how XLA:CPU runs a program, never what it computes beyond float rounding
(tests/test_import_settings.py); why each is set, and the flags considered and not set, with the measurements, are
in docs/performance/cpu.md.

- `SCHEDULER_FLAG`: XLA:CPU's memory-minimising scheduler instead of the concurrency-optimised one. Scheduling
  orders the same operations, so the parameters of a training run are bitwise the same.
- `CONVOLUTION_FLAG`: convolutions run on Eigen instead of YNNPACK (the dots stay with YNNPACK), which decides
  `Conv`'s `"auto"` lowering (jaxarch/layers/conv_lowering.py). Values differ by float rounding.

XLA stops the process at its first computation when `XLA_FLAGS` names a flag it does not know, so a flag is set
only for the jaxlib versions in `CHECKED`; the version comes from the package's metadata.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import MutableMapping

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"

# The jaxlib releases with which each flag was checked: XLA accepted it and ran a program (it aborts on a flag it
# does not know). A jaxlib between the oldest and newest checked gets the flag (XLA does not drop a flag and bring
# it back), an older one does not. A newer one gets it only if it is not experimental: XLA's experimental flags
# are renamed and dropped between releases, its long-standing ones are kept.
CHECKED = {
    SCHEDULER_FLAG: ("0.4.35", "0.6.2", "0.8.2", "0.8.3", "0.9.0", "0.9.2", "0.10.0", "0.10.1", "0.10.2"),
    CONVOLUTION_FLAG: ("0.8.2", "0.8.3", "0.9.0", "0.9.2", "0.10.0", "0.10.1", "0.10.2"),
}
EXPERIMENTAL = frozenset({CONVOLUTION_FLAG})


def flag_name(flag: str) -> str:
    """`"--name=value"` -> `"name"`."""
    return flag.removeprefix("--").split("=")[0]


def release(version: str) -> tuple[int, int, int]:
    """`"0.10.2"` -> `(0, 10, 2)`; a pre-release or a fourth part counts as its release (`"0.9.0.1"`,
    `"1.0.0rc1"` -> `(0, 9, 0)`, `(1, 0, 0)`)."""
    parts = [int(part) for part in re.findall(r"\d+", version.split("rc")[0].split(".dev")[0])[:3]]
    if not parts:
        raise ValueError(f"jaxarch.xla_flags: jaxlib version is {version!r}, expected numbers like '0.10.2'")
    return tuple(parts + [0] * (3 - len(parts)))


def cpu_flags(jaxlib_version: str) -> tuple[str, ...]:
    """The flags of `CHECKED` that a jaxlib of version `jaxlib_version` ("0.10.2") gets."""
    version = release(jaxlib_version)
    flags = []
    for flag, versions in CHECKED.items():
        oldest, newest = min(map(release, versions)), max(map(release, versions))
        if oldest <= version <= newest or (version > newest and flag not in EXPERIMENTAL):
            flags.append(flag)
    return tuple(flags)


def installed_cpu_flags() -> tuple[str, ...]:
    """`cpu_flags` of the installed jaxlib; none without one."""
    try:
        return cpu_flags(importlib.metadata.version("jaxlib"))
    except importlib.metadata.PackageNotFoundError:
        return ()


def add_xla_flags(flags: tuple[str, ...], environ: MutableMapping[str, str]) -> list[str]:
    """Appends to `environ["XLA_FLAGS"]` each of `flags` whose name it does not have yet (a flag the user set is
    left as they set it); returns those added."""
    current = environ.get("XLA_FLAGS", "")
    named = set(re.findall(r"--([A-Za-z0-9_]+)", current))
    added = [flag for flag in flags if flag_name(flag) not in named]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
