"""The adding problem at T = 600 (seq_len= overridable) with a one-layer GRU, hidden 128.

Command: jaxarch run adding-gru [data.seq_len=100]
Wall time: 3000 steps; 1403 s on a 2-core CPU (docs/experiments.md).
Expected: target test MSE <= 1e-3 (predicting 1 scores 0.167); one seed so far, not a mean: 1.4e-4 (seed 0, run
again on an Intel Xeon with the same figure; docs/results.md lists the experiments not yet over seeds).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.adding("gru")
