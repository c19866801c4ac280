"""The MNIST-1D CNN on signals whose time axis is permuted by one fixed permutation: no spatial order left.

Command: jaxarch run mnist1d-cnn-shuffled
Wall time: under 60 s of training on a 2-core CPU.
Expected: far below mnist1d-cnn: test accuracy 66.2 +- 1.5% mean +- std over n=5 seeds (`jaxarch sweep
mnist1d-cnn-shuffled`, docs/results.md), against 98.3 +- 0.5% unshuffled and the MLP's 68.5 +- 0.5% (published
CNN: 94% -> 56% when shuffled; the MLP is unchanged at 68%).
"""

from jaxarch.experiments import mnist1d_cnn


def get_config():
    config = mnist1d_cnn.get_config()
    config.data.shuffle_seq = True
    # Shift augmentation assumes neighbouring samples are neighbours; after the shuffle they are not.
    config.data.shift_augment = 0
    return config
