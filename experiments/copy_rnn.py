"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer RNN, hidden 128.

Command: jaxarch run copy-rnn [data.seq_len=200]
Wall time: see README (measured on a 2-core CPU).
Expected: near the memoryless baseline 10 ln 8 / (T + 20) = 0.173 at T = 100: the tanh RNN's gradients
vanish over the T blanks (not yet measured with this budget).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("rnn")
