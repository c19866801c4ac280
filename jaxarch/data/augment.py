"""Image augmentations for `ArrayDataset(augment=...)`: each returns an `Augmentation` (see jaxarch.data.base).

The randomness of a batch is drawn from that batch's generator for every row up to the last row loaded, and a row's
draws depend only on its position, so rows a to b come out the same whether the whole batch or only that slice is
loaded (each process of a multi-host run loads only its own rows).
"""

from __future__ import annotations

import numpy as np

from jaxarch.data.base import Augmentation


def crop_flip(pad: int = 4) -> Augmentation:
    """Random crop after zero padding, then a random horizontal flip, per example: the CIFAR augmentation of
    He et al. (2016), "Deep Residual Learning for Image Recognition", section 4.2 (pad 4, crop 32x32, flip).

    The augmentation takes inputs [batch, height, width, channels] of any dtype and returns the same shape and
    dtype: each example is padded with `pad` zeros on every side of its height and width, a window of the original
    size is cut at an offset drawn uniformly from [0, 2 * pad] on each axis, and the window is mirrored left to right
    with probability 1/2.
    """
    if not isinstance(pad, int) or pad < 0:
        raise ValueError(f"crop_flip: pad is {pad!r}, expected an integer >= 0")

    def augment(rng: np.random.Generator, inputs: np.ndarray, rows: slice | None = None) -> np.ndarray:
        if inputs.ndim != 4:
            raise ValueError(f"crop_flip: inputs have shape {inputs.shape}, expected [batch, height, width, "
                             "channels]")
        rows = slice(0, len(inputs)) if rows is None else rows
        if rows.stop - rows.start != len(inputs):
            raise ValueError(f"crop_flip: rows {rows.start}:{rows.stop} do not match the {len(inputs)} inputs")
        batch, height, width, _ = inputs.shape
        # One uniform double per (row, draw), drawn for rows 0..stop-1 and then sliced: each double is one draw of
        # the generator, so a row's values depend on its position only, whichever slice is loaded.
        uniform = rng.random(size=(rows.stop, 3))[rows]  # [batch, (row offset, column offset, flip)]
        row_offset = np.minimum((uniform[:, 0] * (2 * pad + 1)).astype(np.int64), 2 * pad)
        column_offset = np.minimum((uniform[:, 1] * (2 * pad + 1)).astype(np.int64), 2 * pad)
        flip = uniform[:, 2] < 0.5
        padded = np.pad(inputs, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        source_rows = row_offset[:, None] + np.arange(height)[None, :]  # [batch, height]
        columns = np.where(flip[:, None], np.arange(width)[::-1][None, :], np.arange(width)[None, :])
        source_columns = column_offset[:, None] + columns  # [batch, width]
        # Output (i, r, c) reads padded (i, source_rows[i, r], source_columns[i, c]): one gather for the batch.
        return padded[np.arange(batch)[:, None, None], source_rows[:, :, None], source_columns[:, None, :]]

    return augment


AUGMENTATIONS = {"none": None, "crop_flip": crop_flip}


def named(augment: str, dataset: str) -> Augmentation | None:
    """The augmentation a dataset option names, with its default settings ("none": None)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"dataset {dataset!r}: augment is {augment!r}, expected one of {list(AUGMENTATIONS)}")
    factory = AUGMENTATIONS[augment]
    return factory() if factory is not None else None
