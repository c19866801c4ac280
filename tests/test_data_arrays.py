"""The `arrays` dataset: .npz files and memory-mapped .npy directories, the task read from the targets, the
statistics of the training split, and the errors for wrong keys and shapes."""

from __future__ import annotations

import numpy as np
import pytest

from jaxarch.data import load_dataset
from jaxarch.data.arrays import StandardizedArrayDataset, feature_statistics


def _classification(rng, n_train=13, n_test=5, features=3):
    x_train = rng.normal(5.0, 3.0, (n_train, features)).astype(np.float64)
    return dict(x_train=x_train, y_train=np.arange(n_train) % 4, x_test=rng.normal(size=(n_test, features)),
                y_test=np.arange(n_test) % 4)


def test_npz_classification_standardised_with_training_statistics(tmp_path):
    arrays = _classification(np.random.default_rng(0))
    np.savez(tmp_path / "mine.npz", **arrays)
    dataset = load_dataset("arrays", path=str(tmp_path / "mine.npz"))
    assert (dataset.name, dataset.task, dataset.num_outputs, dataset.input_shape) == ("mine", "classification", 4,
                                                                                      (3,))
    batch = dataset.train_batch(seed=0, step=0, batch_size=13)
    assert batch["inputs"].dtype == np.float32 and batch["targets"].dtype == arrays["y_train"].dtype
    mean, std = arrays["x_train"].mean(axis=0), arrays["x_train"].std(axis=0)
    expected = (arrays["x_train"] - mean) / std  # the batch holds every row once, in some order
    np.testing.assert_allclose(np.sort(batch["inputs"], axis=0), np.sort(expected, axis=0), rtol=1e-5, atol=1e-5)
    test = next(dataset.eval_batches("test", 8))
    np.testing.assert_allclose(test["inputs"][:5], (arrays["x_test"] - mean) / std, rtol=1e-5, atol=1e-5)
    assert test["mask"].sum() == 5


def test_feature_statistics_in_chunks_match_numpy(monkeypatch):
    import jaxarch.data.arrays as arrays_module

    monkeypatch.setattr(arrays_module, "_STATISTICS_ROWS", 3)
    x = np.random.default_rng(1).normal(2.0, 4.0, (11, 5, 7)).astype(np.float32)
    x[..., 6] = 3.0  # a constant feature standardises to zero, not to a division by zero
    mean, std = feature_statistics(x)
    np.testing.assert_allclose(mean, x.reshape(-1, 7).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std[:6], x.reshape(-1, 7)[:, :6].std(axis=0), rtol=1e-4)
    assert std[6] == 1.0


def test_npy_directory_is_memory_mapped_with_validation_hold_out(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "big"
    folder.mkdir()
    inputs = rng.normal(size=(20, 4, 3)).astype(np.float32)
    targets = rng.normal(size=(20, 2)).astype(np.float32)
    for key, value in dict(x_train=inputs, y_train=targets, x_test=inputs[:3], y_test=targets[:3]).items():
        np.save(folder / f"{key}.npy", value)
    dataset = load_dataset("arrays", path=str(folder), validation_size=0.25)
    assert isinstance(dataset, StandardizedArrayDataset)
    assert isinstance(dataset.train_inputs, np.memmap)  # rows are read when a batch indexes them
    assert dataset.task == "regression" and dataset.num_outputs == 2 and dataset.num_train == 15
    assert dataset.split_names() == ("validation", "test")
    np.testing.assert_array_equal(dataset.splits["validation"][1], targets[15:])
    mean, _ = feature_statistics(inputs[:15])  # the training rows only, never the validation rows
    np.testing.assert_allclose(dataset.input_mean, mean, rtol=1e-6)
    part = dataset.train_batch(seed=4, step=2, batch_size=6, rows=slice(2, 5))
    whole = dataset.train_batch(seed=4, step=2, batch_size=6)
    np.testing.assert_array_equal(part["inputs"], whole["inputs"][2:5])


def test_token_sequences_are_next_token_tasks_with_a_vocabulary(tmp_path):
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 9, (10, 7)).astype(np.int32)
    np.savez(tmp_path / "tokens.npz", x_train=tokens[:, :-1], y_train=tokens[:, 1:], x_test=tokens[:2, :-1],
             y_test=tokens[:2, 1:], x_validation=tokens[2:4, :-1], y_validation=tokens[2:4, 1:])
    dataset = load_dataset("arrays", path=str(tmp_path / "tokens.npz"))
    assert dataset.task == "sequence_classification" and dataset.split_names() == ("validation", "test")
    assert dataset.vocab_size == dataset.num_outputs == int(tokens.max()) + 1
    batch = dataset.train_batch(seed=0, step=0, batch_size=4)
    assert batch["inputs"].dtype == np.int32  # ids are never standardised


def test_validation_size_from_a_config_override(tmp_path):
    """A count arrives as a float through the config (the option's default is 0.0): 3.0 holds out 3 examples."""
    from jaxarch import experiments
    from jaxarch.train.configure import override_config

    np.savez(tmp_path / "mine.npz", **_classification(np.random.default_rng(7)))
    config = override_config(experiments.get_config("mnist1d-mlp"),
                             ["data.name=arrays", f"data.path={tmp_path}/mine.npz", "data.validation_size=3"])
    options = {k: v for k, v in config.data.items() if k != "name"}
    assert options["validation_size"] == 3.0
    assert load_dataset("arrays", **options).num_train == 10
    assert load_dataset("arrays", **{**options, "validation_size": 0.25}).num_train == 10


def test_set_task_and_num_outputs(tmp_path):
    arrays = _classification(np.random.default_rng(4))
    np.savez(tmp_path / "mine.npz", **arrays)
    dataset = load_dataset("arrays", path=str(tmp_path / "mine.npz"), num_outputs=6, normalize=False)
    assert dataset.num_outputs == 6 and dataset.input_mean is None
    regression = load_dataset("arrays", path=str(tmp_path / "mine.npz"), task="regression")
    assert regression.task == "regression" and regression.train_targets.dtype == np.float32


@pytest.mark.parametrize("change,message", [
    (dict(y_train="labels"), r"has no array 'labels' \(option y_train\); it holds \['x_test', 'x_train', "
                             r"'y_test', 'y_train'\]"),
    (dict(task="ranking"), "unknown task 'ranking'"),
    (dict(num_outputs=2), "a target is 3, expected < num_outputs"),
    (dict(validation_size=13), "holds out 13 of the 13 training examples"),
    (dict(validation_size=2.5), r"validation_size is 2.5, expected a fraction in \[0, 1\) or a whole count"),
    (dict(shuffle=True), "unknown option 'shuffle'"),
])
def test_errors(tmp_path, change, message):
    np.savez(tmp_path / "mine.npz", **_classification(np.random.default_rng(5)))
    with pytest.raises(ValueError, match=message):
        load_dataset("arrays", path=str(tmp_path / "mine.npz"), **change)


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset("arrays", path=str(tmp_path / "missing.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read as an .npz file"):
        load_dataset("arrays", path=str(tmp_path / "junk.npz"))
    arrays = _classification(np.random.default_rng(6))
    arrays["x_test"] = arrays["x_test"][:, :2]
    np.savez(tmp_path / "shapes.npz", **arrays)
    with pytest.raises(ValueError, match=r"the test split has inputs \(5, 2\).*expected examples shaped as the "
                                         r"training split's \(3,\)"):
        load_dataset("arrays", path=str(tmp_path / "shapes.npz"))
