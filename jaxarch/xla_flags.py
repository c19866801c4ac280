"""XLA flags that jaxarch sets when it is imported, before JAX starts its backends.

Flags that change how XLA:CPU runs a program, not what it computes beyond float rounding:

- `--xla_cpu_enable_concurrency_optimized_scheduler=false`. XLA:CPU's default scheduler orders a program so that
  independent operations can run at once, holding more buffers live; the memory-minimising order it falls back to
  ran the reference CNN's training step (batch 128, 28x28x1, two conv-pool blocks) about 25% faster on a 2-core
  CPU shared with other jobs (wall 212-294 vs 266-540 ms a step, CPU time 58-68 vs 74-85 ms, separate processes
  alternating), and the LSTM, GRU and Transformer steps the same within noise. Scheduling does not change the
  arithmetic: a training run gives bitwise the same parameters with and without it (tests/test_import_settings.py).
- `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` (jaxlib 0.9 and later, which know the flag:
  XLA stops a process whose `XLA_FLAGS` name one it does not know). It takes convolutions off the default list of
  operations XLA:CPU gives to YNNPACK, so that they run on Eigen; the dots stay with YNNPACK. On a 2-core AMD
  EPYC (family 25, model 17) YNNPACK ran each convolution on one core, Eigen on both:
  the reference CNN's second layer, `[128, 14, 14, 32]` by `[3, 3, 32, 64]`, took 10 ms forward and 10 ms for
  its input gradient against Eigen's 5.2 and 5.3 ms. `Conv`'s `"auto"` lowering then takes XLA's convolutions for
  most 2-D layers (jaxarch/layers/conv_lowering.py), and the reference CNN's step ran 1.20x faster. Values differ
  from YNNPACK's by float rounding only.

Considered and not set: giving XLA:CPU's dots to oneDNN (`--xla_cpu_use_onednn=true` with
`--xla_cpu_experimental_onednn_fusion_type=individual_dot`). On a 2-core Intel Xeon it ran the attention block's
batched `[16, 4, 256, 64]` products about 2.4x faster than the default YNNPACK path (197 against 81 GFLOP/s;
YNNPACK's batched products ran as fast on one core as on two), but the weight-gradient products, whose left
operand is transposed (`[4096, 1024]^T @ [4096, 256]`), 3-5x slower, and XLA picks one library for every dot of a
program. Train steps, interleaved in one process: attention block 1.13x, GPT 1.07x, but the reference CNN 0.75x
and the LSTM and GRU 0.92-0.93x. It would also change the arithmetic (another library's rounding).

A flag already named in `XLA_FLAGS` is left as the user set it; `JAXARCH_XLA_FLAGS=0` turns this off. Nothing
changes when JAX's backends started before jaxarch was imported (XLA reads the flags once).

A flag is set only where the installed jaxlib knows it: XLA aborts the process at its first computation when
`XLA_FLAGS` names a flag it lacks, and these are experimental flags that a later XLA may rename or drop. The
version rule in `cpu_flags` covers the jaxlibs checked by hand; on top of it, each flag's name must appear in the
bytes of jaxlib's shared libraries, where XLA registers its flags (about 10 ms at import; a name that is missing
costs one read of the libraries, 0.1-0.3 s). Where no library can be read, the version rule alone decides.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import mmap
import os
import re
from collections.abc import Collection, Iterable, MutableMapping

from jaxarch.checks import env_switch

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
CONVOLUTION_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def flag_name(flag: str) -> str:
    """`"--name=value"` -> `"name"`."""
    return flag.removeprefix("--").split("=")[0]


def jaxlib_libraries() -> list[str]:
    """The shared libraries at the top of the installed jaxlib package, largest (XLA's) first; found without
    importing jaxlib."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = next(iter(spec.submodule_search_locations))
    paths = {path for pattern in ("*.so", "*.so.*", "*.dylib", "*.pyd", "*.dll")
             for path in glob.glob(os.path.join(folder, pattern))}
    return sorted(paths, key=os.path.getsize, reverse=True)


def names_in_libraries(names: Iterable[str], libraries: Iterable[str]) -> set[str] | None:
    """Those of `names` whose bytes appear in one of `libraries`; None when none of the libraries can be read."""
    missing, found, read_any = set(names), set(), False
    for path in libraries:
        try:
            with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                read_any = True
                found |= {name for name in missing if data.find(name.encode()) >= 0}
        except (OSError, ValueError):  # unreadable, or empty (mmap refuses a file of length 0)
            continue
        missing -= found
        if not missing:
            break
    return found if read_any else None


def cpu_flags(jaxlib_version: str, known_names: Collection[str] | None = None) -> tuple[str, ...]:
    """The flags for a jaxlib of version `jaxlib_version` ("0.10.2") whose libraries name the flags in
    `known_names` (None: not known, the version alone decides)."""
    major_minor = tuple(int(part) for part in re.findall(r"\d+", jaxlib_version)[:2])
    flags = (SCHEDULER_FLAG,) + ((CONVOLUTION_FLAG,) if major_minor >= (0, 9) else ())
    return flags if known_names is None else tuple(flag for flag in flags if flag_name(flag) in known_names)


_JAXLIB_VERSION = importlib.metadata.version("jaxlib")
# Only the names the version rule keeps are looked for: a missing name costs a read of the whole library.
CPU_FLAGS = cpu_flags(_JAXLIB_VERSION,
                      names_in_libraries(map(flag_name, cpu_flags(_JAXLIB_VERSION)), jaxlib_libraries()))


def apply_xla_flags(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Appends to `environ["XLA_FLAGS"]` each of `CPU_FLAGS` it does not name yet; returns those added."""
    if not env_switch("jaxarch.xla_flags", environ, "JAXARCH_XLA_FLAGS", "leave XLA_FLAGS alone"):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [flag for flag in CPU_FLAGS if flag.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
