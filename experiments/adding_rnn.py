"""The adding problem at T = 600 (seq_len= overridable) with a one-layer RNN, hidden 128.

Command: jaxarch run adding-rnn [data.seq_len=100]
Wall time: 3000 steps; 98 s on a quiet 2-core AMD EPYC (docs/experiments.md).
Expected: the tanh RNN does not learn the task at T = 600: test MSE 0.1722 +- 0.0001 mean +- std over n=5 seeds
(`jaxarch sweep adding-rnn`, docs/results.md), no better than predicting 1 (0.167); the LSTM and GRU reach <= 1e-3.
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.adding("rnn")
