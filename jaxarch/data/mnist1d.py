"""MNIST-1D (Greydanus 2020): 40-sample 1-D signals of the ten digits, generated procedurally and offline."""

from __future__ import annotations

import numpy as np

from jaxarch.data.base import ArrayDataset, cached_arrays, random_shift
from jaxarch.data.registry import DATASETS

NUM_TRAIN = 4000  # The standard split: 5000 samples, the first 80% for training.


def _generate(shuffle_seq: bool, seed: int) -> dict[str, np.ndarray]:
    # Imported here: mnist1d pulls in matplotlib at import time, which only data generation needs.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.shuffle_seq = shuffle_seq
    args.seed = seed
    # make_dataset builds the benchmark procedurally; get_dataset would try to download a pickle instead.
    data = make_dataset(args)
    return {"x": data["x"], "y": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


@DATASETS.register("mnist1d")
def mnist1d(shuffle_seq: bool = False, seed: int = 42, shift_augment: int = 0) -> ArrayDataset:
    """MNIST-1D with the standard 4000/1000 split; inputs are [40, 1] (length, channels).

    Args:
      shuffle_seq: apply one fixed random permutation to the time axis of every signal, destroying spatial
        order (the variant where the published CNN falls from 94% to 56%).
      seed: the generator's seed; 42 is the published benchmark.
      shift_augment: if > 0, shift each training signal by up to this many samples (zero fill).
    """
    arrays = cached_arrays("mnist1d", {"shuffle_seq": shuffle_seq, "seed": seed, "version": 1},
                           lambda: _generate(shuffle_seq, seed))
    as_signal = lambda x: x.astype(np.float32)[..., None]  # [N, 40] -> [N, 40, 1]
    return ArrayDataset(
        name="mnist1d-shuffled" if shuffle_seq else "mnist1d",
        task="classification",
        num_outputs=10,
        train_inputs=as_signal(arrays["x"]),
        train_targets=arrays["y"].astype(np.int32),
        splits={"test": (as_signal(arrays["x_test"]), arrays["y_test"].astype(np.int32))},
        augment=random_shift(shift_augment, axes=(0,)) if shift_augment else None,
    )
