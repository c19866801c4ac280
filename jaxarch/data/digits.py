"""scikit-learn's bundled 8x8 digits (1797 images), split as the scikit-learn classification example does."""

from __future__ import annotations

import numpy as np

from jaxarch.data.base import ArrayDataset, random_shift
from jaxarch.data.registry import DATASETS


@DATASETS.register("digits")
def digits(shift_augment: int = 0) -> ArrayDataset:
    """Inputs are [8, 8, 1] with pixel values scaled from 0..16 to 0..1; first half train, second half test,
    no shuffle (898 / 899), as in scikit-learn's "Recognizing hand-written digits" example.

    Args:
      shift_augment: if > 0, shift each training image by up to this many pixels on each axis (zero fill).
    """
    from sklearn.datasets import load_digits  # Bundled with scikit-learn: no download.

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
    labels = bunch.target.astype(np.int32)
    half = len(images) // 2
    return ArrayDataset(
        name="digits",
        task="classification",
        num_outputs=10,
        train_inputs=images[:half],
        train_targets=labels[:half],
        splits={"test": (images[half:], labels[half:])},
        augment=random_shift(shift_augment, axes=(0, 1)) if shift_augment else None,
    )
