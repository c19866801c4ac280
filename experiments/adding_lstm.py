"""The adding problem at T = 600 (seq_len= overridable) with a one-layer LSTM, hidden 128, chrono-initialised gates.

Command: jaxarch run adding-lstm [data.seq_len=100]
Wall time: see README (measured on a 2-core CPU).
Expected: test MSE <= 1e-3 for LSTM and GRU; predicting 1 scores 0.167.
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.adding("lstm")
