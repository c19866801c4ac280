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
