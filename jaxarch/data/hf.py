"""Hugging Face datasets (`pip install "jaxarch[hf]"`): a Hub id or a folder written by `save_to_disk`, as an image
classification dataset (an image column and a label column) or a character corpus (a text column).

The columns are found from the dataset's features unless named: the first `Image` feature, the first `ClassLabel`
feature (else a column called "label"), a column called "text".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxarch.data.arrays import StandardizedArrayDataset, standardized
from jaxarch.data.augment import named
from jaxarch.data.image_folder import picture_array
from jaxarch.data.registry import DATASETS
from jaxarch.data.text import CharCorpus


def _load(path: str, config_name: str, revision: str):
    try:
        import datasets
    except ImportError:
        raise ValueError("dataset 'hf': the Hugging Face `datasets` package is not installed; expected "
                         "`pip install \"jaxarch[hf]\"`") from None
    try:
        if Path(path).expanduser().is_dir():
            loaded = datasets.load_from_disk(str(Path(path).expanduser()))
        else:
            loaded = datasets.load_dataset(path, config_name or None, revision=revision or None)
    except Exception as err:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError)
        raise ValueError(f"dataset 'hf': {path!r} cannot be loaded ({type(err).__name__}: {err}); expected a Hub "
                         "dataset id or a folder written by save_to_disk") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"dataset 'hf': {path!r} holds a single split, expected a DatasetDict with named splits")
    return datasets, loaded


def _column(features, wanted: str, kind, fallback: str, option: str, path: str) -> str:
    if wanted:
        if wanted not in features:
            raise ValueError(f"dataset 'hf': {path!r} has no column {wanted!r} ({option}); it has {list(features)}")
        return wanted
    found = [name for name, feature in features.items() if kind is not None and isinstance(feature, kind)]
    return found[0] if found else (fallback if fallback in features else "")


@DATASETS.register("hf")
def hf(path: str = "", config_name: str = "", revision: str = "", train_split: str = "train",
       test_split: str = "test", validation_split: str = "", image_column: str = "", label_column: str = "",
       text_column: str = "", image_size: int = 0, grayscale: bool = False, augment: str = "none",
       normalize: bool = True, seq_len: int = 256, max_eval_windows: int = 256
       ) -> StandardizedArrayDataset | CharCorpus:
    """A Hugging Face dataset as jaxarch data.

    Args:
      path: a Hub dataset id, or a local folder written by `DatasetDict.save_to_disk`.
      config_name, revision: the Hub configuration and revision (Hub ids only).
      train_split, test_split, validation_split: split names ("" for no validation split).
      image_column, label_column, text_column: the columns; empty: found from the features.
      image_size: resize images to this square size (0: keep their size, which must then be the same for all).
      grayscale: one channel instead of RGB.
      augment, normalize: as for the image datasets ("crop_flip"; per-channel standardisation).
      seq_len, max_eval_windows: for text, as for the `text` dataset (validation: the test split's text).
    """
    if not path:
        raise ValueError("dataset 'hf': path is empty, expected a Hub dataset id or a save_to_disk folder")
    augmenter = named(augment, "hf")
    datasets, loaded = _load(path, config_name, revision)
    split_names = {"train": train_split, "test": test_split, **({"validation": validation_split}
                                                               if validation_split else {})}
    for role, split in split_names.items():
        if split not in loaded:
            raise ValueError(f"dataset 'hf': {path!r} has no split {split!r} ({role}_split); it has {list(loaded)}")
    features = loaded[train_split].features
    image = _column(features, image_column, datasets.Image, "image", "image_column", path)
    text = _column(features, text_column, None, "text", "text_column", path)
    if image:
        label = _column(features, label_column, datasets.ClassLabel, "label", "label_column", path)
        if not label:
            raise ValueError(f"dataset 'hf': {path!r} has an image column {image!r} but no label column; set "
                             f"label_column to one of {list(features)}")
        mode = "L" if grayscale else "RGB"

        def arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
            size = (image_size, image_size) if image_size else None
            images = [picture_array(picture, mode, size) for picture in loaded[split][image]]
            if len({i.shape for i in images}) > 1:
                raise ValueError(f"dataset 'hf': the {split} images have several sizes "
                                 f"{sorted({i.shape for i in images})[:3]}, expected one; set image_size")
            return np.stack(images), np.asarray(loaded[split][label], np.int32)

        parts = {role: arrays(split) for role, split in split_names.items()}
        feature = features[label]
        classes = (feature.num_classes if isinstance(feature, datasets.ClassLabel)
                   else int(max(part[1].max() for part in parts.values())) + 1)
        splits = {role: parts[role] for role in ("validation", "test") if role in parts}
        return standardized(Path(path).name or "hf", "classification", classes, parts["train"], splits,
                            normalize=normalize, augment=augmenter)
    if text:
        def joined(split: str) -> str:
            return "\n\n".join(loaded[split][text])

        train_text, validation_text = joined(train_split), joined(validation_split or test_split)
        if min(len(train_text), len(validation_text)) < seq_len + 2:
            raise ValueError(f"dataset 'hf': the text of {path!r} is too short for seq_len={seq_len}; expected "
                             f"each split to hold at least seq_len + 2 = {seq_len + 2} characters")
        alphabet = "".join(sorted(set(train_text)))
        corpus = CharCorpus(name=Path(path).name or "hf", train_ids=np.zeros(0, np.int32),
                            validation_ids=np.zeros(0, np.int32), alphabet=alphabet, seq_len=seq_len,
                            max_eval_windows=max_eval_windows)
        return dataclasses.replace(corpus, train_ids=corpus.encode(train_text),
                                   validation_ids=corpus.encode(validation_text))
    raise ValueError(f"dataset 'hf': {path!r} has neither an image column nor a text column among "
                     f"{list(features)}; set image_column and label_column, or text_column")
