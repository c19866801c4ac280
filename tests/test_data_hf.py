"""data.name=hf on datasets the tests save to disk (no Hub access): image/label and text columns."""

from __future__ import annotations

import numpy as np
import pytest

from jaxarch.data import load_dataset

datasets = pytest.importorskip("datasets", reason="the Hugging Face `datasets` package (jaxarch[hf]) is not "
                                                   "installed")


def test_image_and_label_columns(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(count):
        pictures = [Image.fromarray(rng.integers(0, 256, (6, 10, 3)).astype(np.uint8)) for _ in range(count)]
        return datasets.Dataset.from_dict(
            {"img": pictures, "fine": [i % 3 for i in range(count)]},
            features=datasets.Features({"img": datasets.Image(),
                                        "fine": datasets.ClassLabel(names=["a", "b", "c"])}))

    folder = tmp_path / "shapes"
    datasets.DatasetDict({"train": split(9), "test": split(4)}).save_to_disk(str(folder))
    dataset = load_dataset("hf", path=str(folder), augment="crop_flip")
    assert dataset.num_outputs == 3 and dataset.input_shape == (6, 10, 3) and dataset.num_train == 9
    np.testing.assert_array_equal(dataset.train_targets, [i % 3 for i in range(9)])
    saved = datasets.load_from_disk(str(folder))
    np.testing.assert_array_equal(dataset.train_inputs[2], np.asarray(saved["train"][2]["img"]))
    assert dataset.train_batch(seed=0, step=0, batch_size=4)["inputs"].dtype == np.float32
    resized = load_dataset("hf", path=str(folder), image_size=4, grayscale=True)
    assert resized.input_shape == (4, 4, 1)


def test_a_picture_resizes_as_image_folder_resizes_it(tmp_path, monkeypatch):
    """One picture gives one array whichever loader reads it: hf and image_folder share the bilinear resize."""
    from PIL import Image

    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 256, (9, 13, 3)).astype(np.uint8)) for _ in range(4)]
    labels = [0, 0, 1, 1]
    for i, (picture, label) in enumerate(zip(pictures, labels)):
        (tmp_path / "folder" / "ab"[label]).mkdir(parents=True, exist_ok=True)
        picture.save(tmp_path / "folder" / "ab"[label] / f"{i}.png")
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    split = datasets.Dataset.from_dict({"img": pictures, "label": labels}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "saved"))

    from_hf = load_dataset("hf", path=str(tmp_path / "saved"), image_size=6, normalize=False)
    from_folder = load_dataset("image_folder", path=str(tmp_path / "folder"), image_size=6, normalize=False,
                               test_fraction=0.5)
    as_read = {arr.tobytes() for arr in np.asarray(from_hf.train_inputs)}
    assert len(as_read) == 4 and from_hf.input_shape == (6, 6, 3)
    folder_arrays = [*np.asarray(from_folder.train_inputs), *np.asarray(from_folder.splits["test"][0])]
    assert {arr.tobytes() for arr in folder_arrays} == as_read
    bicubic = np.asarray(pictures[0].resize((6, 6), Image.Resampling.BICUBIC))
    assert bicubic.tobytes() not in as_read  # PIL's default would have given other pixels


def test_text_column(tmp_path):
    lines = [f"line {i}: to be, or not to be" for i in range(40)]
    folder = tmp_path / "verse"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": lines[:30]}),
                          "test": datasets.Dataset.from_dict({"text": lines[30:]})}).save_to_disk(str(folder))
    corpus = load_dataset("hf", path=str(folder), seq_len=16)
    assert corpus.task == "sequence_classification" and corpus.input_shape == (16,)
    assert corpus.decode(corpus.train_ids[:6]) == "line 0"


def test_errors(tmp_path, monkeypatch):
    folder = tmp_path / "numbers"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1, 2]}),
                          "test": datasets.Dataset.from_dict({"x": [3]})}).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="neither an image column nor a text column"):
        load_dataset("hf", path=str(folder))
    with pytest.raises(ValueError, match=r"has no split 'dev' \(validation_split\)"):
        load_dataset("hf", path=str(folder), validation_split="dev")
    calls = []

    def no_hub(path, name=None, revision=None):  # never reach the network from a test
        calls.append((path, name, revision))
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(ValueError, match="'user/absent' cannot be loaded .ConnectionError: offline"):
        load_dataset("hf", path="user/absent", config_name="small")
    assert calls == [("user/absent", "small", None)]
