"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer LSTM, hidden 128.

Command: jaxarch run copy-lstm [data.seq_len=200 model.chrono_max=220]
Wall time: 8000 steps; 25-31 min a seed on a 2-core CPU shared with another run.
Expected: test cross-entropy below the memoryless baseline 10 ln 8 / (T + 20) = 0.173 at T = 100 with every seed:
0.064 +- 0.033 mean +- std over n=5 seeds (95% interval [0.023, 0.104]; `jaxarch sweep copy-lstm`,
docs/results.md), 97.39 +- 1.36% of positions right; per seed 0.042, 0.095, 0.049, 0.102, 0.030. One earlier
seed on another CPU gave 0.0229 (99.2%).
At T = 200 with an eighth of the examples (2000 steps of batch 64, chrono_max=220):
0.0902 (baseline 0.0945), barely below it; at T = 500 (chrono_max=520) 0.0402, on the baseline (0.0400).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("lstm")
