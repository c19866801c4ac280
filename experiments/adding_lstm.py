"""The adding problem at T = 600 (seq_len= overridable) with a one-layer LSTM, hidden 128, chrono-initialised gates.

Command: jaxarch run adding-lstm [data.seq_len=100]
Wall time: 3000 steps; 916 s on a quiet 2-core CPU (docs/experiments.md).
Expected: target test MSE <= 1e-3 (predicting 1 scores 0.167), met on the mean: 6.3e-4 +- 7.2e-4 mean +- std over
n=5 seeds (`jaxarch sweep adding-lstm`, docs/results.md); per seed 4.0e-4, 2.9e-4, 2.4e-4, 1.9e-3, 3.2e-4, so four
of five below the target, and the 95% interval of the mean [-2.6e-4, 1.5e-3] reaches past it.
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.adding("lstm")
