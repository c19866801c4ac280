"""The adding problem at T = 600 (seq_len= overridable) with a one-layer GRU, hidden 128.

Command: jaxarch run adding-gru [data.seq_len=100]
Wall time: 3000 steps; 856-1495 s a seed on a 2-core CPU shared with another run (docs/experiments.md).
Expected: target test MSE <= 1e-3 (predicting 1 scores 0.167), met on the mean and by every seed: 1.8e-4 +- 0.8e-4
mean +- std over n=5 seeds (95% interval [8.1e-5, 2.7e-4]; `jaxarch sweep adding-gru`, docs/results.md); per seed
1.4e-4, 1.1e-4, 1.5e-4, 1.7e-4, 3.1e-4.
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.adding("gru")
