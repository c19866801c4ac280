"""jaxarch: convolutional, recurrent and attention architectures as pure-function Flax Linen modules.

Importing jaxarch changes nothing outside it. `tune_cpu()` makes the process-wide CPU settings (XLA flags, glibc's
allocator) that the `jaxarch` command runs with; see jaxarch/tuning.py. `load_run(run_dir)` reads a trained run
(jaxarch/runs.py); it is imported on first use, so `import jaxarch` does not load JAX.
"""

from jaxarch.tuning import CpuTuning, tune_cpu

__version__ = "0.1.0"

_LAZY = {"load_run": "jaxarch.runs", "Run": "jaxarch.runs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxarch' has no attribute {name!r}")
