"""A bidirectional tanh RNN (hidden 128 each way, two samples per step) on MNIST-1D.

Command: jaxarch run mnist1d-rnn
Wall time: 2000 steps; 24.4 s of training in `jaxarch tour` on a quiet 2-core CPU (1.0x the CNN).
Expected: below the gated cells (no target; published GRU: 91%, Greydanus 2020): test accuracy 94.3 +- 0.8%
mean +- std over n=5 seeds on an Intel Xeon (`jaxarch sweep mnist1d-rnn`, docs/results.md), against the GRU's
97.5 +- 0.1%.
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.mnist1d("rnn")
