"""A bidirectional GRU (hidden 128 each way) on MNIST-1D.

Command: jaxarch run mnist1d-gru
Wall time: see README (measured on a 2-core CPU).
Expected: test accuracy >= 97% for LSTM and GRU (published GRU: 91%, Greydanus 2020).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.mnist1d("gru")
