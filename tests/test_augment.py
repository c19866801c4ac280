"""crop_flip against a per-example reference, row slices, the range of its draws, and its errors."""

import numpy as np
import pytest

from jaxarch.data.augment import crop_flip
from jaxarch.data.base import ArrayDataset


def _reference(image: np.ndarray, pad: int, row_offset: int, column_offset: int, flip: bool) -> np.ndarray:
    """Pad one [H, W, C] image with zeros, cut the window at the offsets, mirror it if `flip`."""
    height, width, _ = image.shape
    padded = np.zeros((height + 2 * pad, width + 2 * pad, image.shape[2]), image.dtype)
    padded[pad:pad + height, pad:pad + width] = image
    window = padded[row_offset:row_offset + height, column_offset:column_offset + width]
    return window[:, ::-1] if flip else window


def _images(batch=6, height=5, width=7, channels=3, dtype=np.float32):
    return (np.arange(batch * height * width * channels) % 251 + 1).reshape(batch, height, width, channels).astype(
        dtype)


@pytest.mark.parametrize("pad", [0, 1, 3])
def test_matches_per_example_reference(pad):
    images = _images()
    out = crop_flip(pad)(np.random.default_rng(3), images, slice(0, len(images)))
    assert out.shape == images.shape and out.dtype == images.dtype
    # Recover each example's draws by searching every (offset, offset, flip): exactly one must match.
    for image, augmented in zip(images, out):
        matches = [(r, c, f) for r in range(2 * pad + 1) for c in range(2 * pad + 1) for f in (False, True)
                   if np.array_equal(_reference(image, pad, r, c, f), augmented)]
        assert len(matches) == 1, matches


def test_draws_cover_every_offset_and_both_flips():
    pad = 2
    marker = np.zeros((400, 3, 3, 1), np.int32)
    marker[:, 0, 0, 0] = 1  # The top-left pixel; where it lands tells the draws.
    out = crop_flip(pad)(np.random.default_rng(0), marker, None)
    seen = set()
    for example in out[..., 0]:
        position = tuple(int(p) for p in np.argwhere(example == 1).ravel())
        seen.add(position)
    # Row offset r in 0..4 puts the pixel at row 2 - r, column offset c at column 2 - c (mirrored: column c); it is
    # visible for r, c <= 2 and cropped out otherwise. Every visible position and the cropped-out case appear.
    visible = {(r, c) for r in range(3) for c in range(3)}
    assert visible <= seen
    assert () in seen  # cropped out of the window at least once
    flips = [crop_flip(0)(np.random.default_rng(seed), marker[:1], None)[0, 0, 2, 0] == 1 for seed in range(200)]
    assert 60 < sum(flips) < 140


def test_row_slices_equal_the_whole_batch():
    images = _images(batch=8, dtype=np.uint8)
    augment = crop_flip(2)
    whole = augment(np.random.default_rng(11), images, slice(0, 8))
    for start, stop in [(0, 3), (3, 8), (5, 6)]:
        part = augment(np.random.default_rng(11), images[start:stop], slice(start, stop))
        np.testing.assert_array_equal(part, whole[start:stop])


def test_array_dataset_rows_are_augmented_alike():
    images = _images(batch=10)
    dataset = ArrayDataset("toy", "classification", 3, images, np.arange(10) % 3, {}, augment=crop_flip(1))
    whole = dataset.train_batch(seed=1, step=4, batch_size=6)
    half = dataset.train_batch(seed=1, step=4, batch_size=6, rows=slice(3, 6))
    np.testing.assert_array_equal(half["inputs"], whole["inputs"][3:])
    other_step = dataset.train_batch(seed=1, step=5, batch_size=6)
    assert not np.array_equal(other_step["inputs"], whole["inputs"])


def test_errors():
    with pytest.raises(ValueError, match="crop_flip: pad is -1"):
        crop_flip(-1)
    with pytest.raises(ValueError, match=r"crop_flip: inputs have shape \(2, 5, 7\)"):
        crop_flip()(np.random.default_rng(0), np.zeros((2, 5, 7)), None)
