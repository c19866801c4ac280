"""A bidirectional GRU (hidden 128 each way, two samples per step) on MNIST-1D.

Command: jaxarch run mnist1d-gru
Wall time: 2000 steps; 52.8 s of training in `jaxarch tour` on a quiet 2-core CPU, 2.3x the CNN's 23.4 s
(the published GRU needed about 10x the CNN's time).
Expected: test accuracy 97.5 +- 0.1% mean +- std over n=5 seeds on an Intel Xeon (`jaxarch sweep mnist1d-gru`,
docs/results.md); target >= 97% (published GRU: 91%, Greydanus 2020). One seed: 97.4% on an AMD EPYC (97.9%
with one sample per step, at twice the sequential steps).
"""

from jaxarch.experiments import _recurrent


def get_config():
    return _recurrent.mnist1d("gru")
