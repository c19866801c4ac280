"""jaxarch: convolutional, recurrent and attention architectures as pure-function Flax Linen modules.

Importing jaxarch changes nothing outside it. `tune_cpu()` makes the process-wide CPU settings (XLA flags, glibc's
allocator) that the `jaxarch` command runs with; see jaxarch/tuning.py.
"""

from jaxarch.tuning import CpuTuning, tune_cpu

__version__ = "0.1.0"
