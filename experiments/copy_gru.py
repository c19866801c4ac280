"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer GRU, hidden 128.

Command: jaxarch run copy-gru [data.seq_len=200 model.chrono_max=220]
Wall time: 8000 steps; 16-35 min a seed on a shared 2-core Intel Xeon (47-50 min with two runs on a loaded one).
Expected: test cross-entropy far below the memoryless baseline 10 ln 8 / (T + 20) = 0.173 at T = 100 with every
seed: 0.0134 +- 0.0025 mean +- std over n=5 seeds (95% interval [0.0103, 0.0164]; per seed 0.0124, 0.0141, 0.0096,
0.0155, 0.0153; 99.48 +- 0.11% of positions right; `jaxarch sweep copy-gru`, docs/results.md), every seed below
copy-lstm's best (0.030).
At T = 200 with an eighth of the examples (2000 steps of batch 64, chrono_max=220), one seed each:
0.0845 (baseline 0.0945), barely below it; at T = 500 (chrono_max=520) 0.0389 (baseline 0.0400).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("gru")
