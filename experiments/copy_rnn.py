"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer RNN, hidden 128.

Command: jaxarch run copy-rnn [data.seq_len=200]
Wall time: 8000 steps; 732 s measured on a 2-core CPU shared with another run (10.9 steps/s).
Expected: at the memoryless baseline 10 ln 8 / (T + 20) = 0.1733 at T = 100, as the tanh RNN's gradients
vanish over the T blanks; measured 0.1733 (92.7% of positions: the blanks only).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("rnn")
