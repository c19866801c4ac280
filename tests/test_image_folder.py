"""image_folder on folders of PNG and JPEG files the tests write: layout, decoding, the cache, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxarch.data import load_dataset


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("JAXARCH_CACHE", str(folder))
    return folder


def write_image(path, color, size=(7, 5), suffix=".png"):
    """A [height 5, width 7] image of one colour with a marked top-left pixel."""
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:] = color
    array[0, 0] = (255, 255, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path.with_suffix(suffix))


def make_split_folder(root):
    colors = {"cat": (200, 10, 10), "dog": (10, 200, 10), "emu": (10, 10, 200)}
    for split, count in (("train", 3), ("test", 2)):
        for name, color in colors.items():
            for i in range(count):
                write_image(root / split / name / f"{i}", color)
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    return colors


def test_train_test_folders(tmp_path, cache):
    root = tmp_path / "pets"
    colors = make_split_folder(root)
    dataset = load_dataset("image_folder", path=str(root), image_size=(5, 7), normalize=False)
    assert dataset.num_outputs == 3 and dataset.input_shape == (5, 7, 3) and dataset.num_train == 9
    assert dataset.split_names() == ("test",)
    np.testing.assert_array_equal(dataset.train_targets, [0, 0, 0, 1, 1, 1, 2, 2, 2])  # classes sorted by name
    for image, label in zip(dataset.train_inputs, dataset.train_targets):
        np.testing.assert_array_equal(image[2, 3], colors[list(colors)[label]])
        np.testing.assert_array_equal(image[0, 0], (255, 255, 255))
    assert len(list(cache.glob("image_folder-*.npz"))) == 1
    # A second load reads the cache: an image broken without changing its size or time would not be read again.
    again = load_dataset("image_folder", path=str(root), image_size=(5, 7), normalize=False)
    np.testing.assert_array_equal(again.train_inputs, dataset.train_inputs)
    # Adding a file changes the key and decodes the folder again.
    write_image(root / "train" / "dog" / "9", (10, 200, 10))
    assert load_dataset("image_folder", path=str(root), image_size=(5, 7)).num_train == 10
    assert len(list(cache.glob("image_folder-*.npz"))) == 2


def test_class_folders_with_a_test_fraction_resized_grayscale_jpeg(tmp_path):
    root = tmp_path / "shapes"
    for name in ("a", "b"):
        for i in range(5):
            write_image(root / name / f"{i}", (90, 90, 90) if name == "a" else (30, 30, 30), size=(12, 9),
                        suffix=".jpg" if i % 2 else ".png")
    dataset = load_dataset("image_folder", path=str(root), image_size=4, grayscale=True, test_fraction=0.4)
    assert dataset.input_shape == (4, 4, 1) and dataset.num_train == 6
    np.testing.assert_array_equal(np.sort(dataset.splits["test"][1]), [0, 0, 1, 1])  # stratified
    held = load_dataset("image_folder", path=str(root), image_size=4, grayscale=True, test_fraction=0.4,
                        validation_size=2)
    assert held.num_train == 4 and held.split_names() == ("validation", "test")
    batch = dataset.train_batch(seed=0, step=0, batch_size=6)
    assert batch["inputs"].dtype == np.float32
    np.testing.assert_allclose(batch["inputs"].mean(), 0.0, atol=1e-5)


def test_unreadable_image_names_the_file_and_caches_nothing(tmp_path, cache):
    root = tmp_path / "pets"
    make_split_folder(root)
    broken = root / "test" / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    with pytest.raises(ValueError, match=f"{broken} cannot be decoded as an image"):
        load_dataset("image_folder", path=str(root))
    assert not cache.exists() or list(cache.iterdir()) == []


def test_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="path '' is not a folder"):
        load_dataset("image_folder")
    root = tmp_path / "one"
    write_image(root / "only" / "0", (1, 2, 3))
    with pytest.raises(ValueError, match="1 class folder"):
        load_dataset("image_folder", path=str(root))
    with pytest.raises(ValueError, match="unknown option 'size'.*image_size"):
        load_dataset("image_folder", path=str(root), size=8)
    split = tmp_path / "split"
    make_split_folder(split)
    write_image(split / "test" / "yak" / "0", (5, 5, 5))
    with pytest.raises(ValueError, match=r"class folders \['yak'\] with no training images"):
        load_dataset("image_folder", path=str(split))
