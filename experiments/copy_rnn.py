"""The copy-memory task at T = 100 (seq_len= overridable) with a one-layer RNN, hidden 128.

Command: jaxarch run copy-rnn [data.seq_len=200]
Wall time: 8000 steps; 557-801 s a seed on a 2-core CPU shared with another run.
Expected: at the memoryless baseline 10 ln 8 / (T + 20) = 0.1733 at T = 100 with every seed, as the tanh RNN's
gradients vanish over the T blanks: 0.17329 +- 0.00001 mean +- std over n=5 seeds (`jaxarch sweep copy-rnn`,
docs/results.md), 92.71 +- 0.03% of positions right (the blanks only).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.copy("rnn")
