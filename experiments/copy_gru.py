"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer GRU, hidden 128.

Command: jaxarch run copy-gru [data.seq_len=200 model.chrono_max=220]
Wall time: 8000 steps; 47-50 min measured with two runs sharing a loaded 2-core CPU.
Expected: test cross-entropy far below the memoryless baseline 10 ln 8 / (T + 20) = 0.173 at T = 100;
one seed so far, not a mean: 0.0124 (99.5% of positions right; docs/results.md lists the experiments not yet over
seeds, and copy-lstm's five seeds spread from 0.030 to 0.102).
At T = 200 with an eighth of the examples (2000 steps of batch 64, chrono_max=220):
0.0845 (baseline 0.0945), barely below it; at T = 500 (chrono_max=520) 0.0389 (baseline 0.0400).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("gru")
