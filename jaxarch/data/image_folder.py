"""A folder of images, one subfolder per class (PNG or JPEG files, decoded with Pillow), as a classification
dataset.

Either `path/train/<class>/*.png` and `path/test/<class>/*.png` (and optionally `path/validation/<class>/`), or
`path/<class>/*.png` with a `test_fraction` of each class held out. Every image is converted to RGB (or grayscale)
and resized to `image_size`, then the whole folder is decoded once into uint8 arrays cached in the jaxarch cache,
keyed by the folder's content (each file's relative path, size and modification time) and the decoding options:
the next run reads the cache; adding, removing or changing a file decodes the folder again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxarch.data.arrays import StandardizedArrayDataset, hold_out, standardized
from jaxarch.data.augment import named
from jaxarch.data.base import cached_arrays
from jaxarch.data.registry import DATASETS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLITS = ("train", "validation", "test")


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for every subfolder of `folder` (sorted); other files are ignored."""
    return {sub.name: sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for sub in sorted(folder.iterdir()) if sub.is_dir()}


def picture_array(picture, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """A PIL image as uint8 `[height, width, channels]` in `mode` ("RGB" or "L"), resized to `size` (height, width)
    unless None. Every loader of pictures (this one, `hf`) resizes here, bilinearly as torchvision's `Resize` and
    `tf.image.resize` do, so one image gives one array whichever loader reads it (PIL's own default is bicubic)."""
    from PIL import Image

    picture = picture.convert(mode)
    if size is not None:
        picture = picture.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(picture, np.uint8).reshape(picture.height, picture.width, -1)


def _decode(path: Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image as uint8 [height, width, channels]; an unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return picture_array(image, mode, size)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"dataset 'image_folder': {path} cannot be decoded as an image ({err}); expected a PNG or "
                         "JPEG file (remove it or replace it)") from None


def _layout(root: Path, test_fraction: float) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The class names and, for each split, its (file, label) pairs."""
    if (root / "train").is_dir():
        per_split = {split: _class_files(root / split) for split in _SPLITS if (root / split).is_dir()}
        if "test" not in per_split:
            raise ValueError(f"dataset 'image_folder': {root} has a train/ folder but no test/ folder, expected "
                             "both (or class folders directly in it, with test_fraction)")
        classes = [name for name, files in per_split["train"].items() if files]
        for split, class_files in per_split.items():
            unknown = [name for name, files in class_files.items() if files and name not in classes]
            if unknown:
                raise ValueError(f"dataset 'image_folder': {root / split} has class folders {unknown} with no "
                                 f"training images in {root / 'train'}; expected the training classes {classes}")
        pairs = {split: [(path, classes.index(name)) for name, files in class_files.items() if name in classes
                         for path in files] for split, class_files in per_split.items()}
    else:
        if not 0 < test_fraction < 1:
            raise ValueError(f"dataset 'image_folder': test_fraction is {test_fraction}, expected in (0, 1) for "
                             f"{root}, which has no train/ and test/ folders")
        class_files = {name: files for name, files in _class_files(root).items() if files}
        classes = list(class_files)
        pairs = {"train": [], "test": []}
        for label, files in enumerate(class_files.values()):
            # Each class is split alike (stratified) in a fixed shuffled order, so every class is in the test set.
            order = np.random.default_rng(label).permutation(len(files))
            held_out = min(len(files) - 1, max(1, round(test_fraction * len(files)))) if len(files) > 1 else 0
            pairs["test"] += [(files[i], label) for i in sorted(order[:held_out])]
            pairs["train"] += [(files[i], label) for i in sorted(order[held_out:])]
    if len(classes) < 2:
        raise ValueError(f"dataset 'image_folder': {root} has {len(classes)} class folder(s) holding "
                         f"{'/'.join(IMAGE_SUFFIXES)} images, expected at least 2 (one subfolder per class)")
    for split in ("train", "test"):
        if not pairs[split]:
            raise ValueError(f"dataset 'image_folder': the {split} split of {root} has no images")
    return classes, {split: split_pairs for split, split_pairs in pairs.items() if split_pairs}


@DATASETS.register("image_folder")
def image_folder(path: str = "", image_size: tuple[int, int] = (32, 32), grayscale: bool = False,
                 test_fraction: float = 0.2, validation_size: float = 0.0, augment: str = "none",
                 normalize: bool = True) -> StandardizedArrayDataset:
    """Class-per-subfolder images as a classification dataset of uint8 [height, width, channels] images.

    Args:
      path: the folder: `train/` and `test/` (optionally `validation/`) folders of class folders, or class folders.
      image_size: (height, width) every image is resized to, ignoring its aspect ratio (an int: square).
      grayscale: one channel ("L") instead of three (RGB).
      test_fraction: without train/ and test/ folders, the share of each class held out as the test split.
      validation_size: without a validation/ folder, training examples (a count, or a fraction) held out as a
        validation split, taken from a fixed shuffle of the training images (they are stored class by class).
      augment: "none" or "crop_flip" (random crop after zero padding of 4, horizontal flip).
      normalize: standardise each channel with the training split's mean and standard deviation.
    """
    augmenter = named(augment, "image_folder")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"dataset 'image_folder': image_size is {image_size!r}, expected a positive int or "
                         "(height, width)")
    root = Path(path).expanduser()
    if not path or not root.is_dir():
        raise ValueError(f"dataset 'image_folder': path {path!r} is not a folder, expected a folder of class "
                         "folders (or of train/ and test/ folders of class folders)")
    classes, pairs = _layout(root, test_fraction)
    mode = "L" if grayscale else "RGB"
    stats = [(p, p.stat()) for split_pairs in pairs.values() for p, _ in split_pairs]
    files = [(str(p.relative_to(root)), stat.st_size, stat.st_mtime_ns) for p, stat in stats]
    key = {"root": str(root.resolve()), "files": files, "size": size, "mode": mode, "test_fraction": test_fraction,
           "classes": classes}

    def decode_all() -> dict[str, np.ndarray]:
        arrays = {}
        for split, split_pairs in pairs.items():
            arrays[f"{split}_images"] = np.stack([_decode(p, size, mode) for p, _ in split_pairs])
            arrays[f"{split}_labels"] = np.array([label for _, label in split_pairs], np.int32)
        return arrays

    arrays = cached_arrays("image_folder", key, decode_all)
    splits = {split: (arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in ("validation", "test")
              if f"{split}_images" in arrays}
    train = (arrays["train_images"], arrays["train_labels"])
    if validation_size:
        if "validation" in splits:
            raise ValueError(f"dataset 'image_folder': validation_size is {validation_size!r} but {root} has a "
                             "validation/ folder; expected only one of them")
        order = np.random.default_rng(0).permutation(len(train[0]))
        train, validation = hold_out((train[0][order], train[1][order]), validation_size, "image_folder")
        splits = {"validation": validation, **splits}
    return standardized(root.name or "image_folder", "classification", len(classes), train, splits,
                        normalize=normalize, augment=augmenter)
