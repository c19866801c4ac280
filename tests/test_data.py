"""Datasets: the published splits, determinism of the batch stream, augmentation and the cache."""

import numpy as np
import pytest

from jaxarch.data import load_dataset, padded_batches, random_shift
from jaxarch.data.base import cached_arrays


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_mnist1d_standard_split():
    ds = load_dataset("mnist1d")
    assert ds.train_inputs.shape == (4000, 40, 1) and ds.train_inputs.dtype == np.float32
    inputs, targets = ds.splits["test"]
    assert inputs.shape == (1000, 40, 1) and targets.shape == (1000,)
    assert set(np.unique(ds.train_targets)) == set(range(10))
    # make_dataset standardises the whole set to zero mean, unit variance.
    all_x = np.concatenate([ds.train_inputs, inputs])
    assert abs(all_x.mean()) < 1e-3 and abs(all_x.std() - 1) < 1e-3


def test_mnist1d_shuffled_is_a_fixed_permutation_of_time():
    plain, shuffled = load_dataset("mnist1d"), load_dataset("mnist1d", shuffle_seq=True)
    np.testing.assert_array_equal(plain.train_targets, shuffled.train_targets)
    # Same multiset of values per signal, different order (up to the global re-standardisation).
    a = np.sort(plain.train_inputs[:50, :, 0], axis=1)
    b = np.sort(shuffled.train_inputs[:50, :, 0], axis=1)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(plain.train_inputs[:50], shuffled.train_inputs[:50])


def test_digits_split_is_first_half_second_half():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    bunch = load_digits()
    assert ds.train_inputs.shape == (898, 8, 8, 1)
    np.testing.assert_array_equal(ds.train_targets, bunch.target[:898])
    np.testing.assert_array_equal(ds.splits["test"][1], bunch.target[898:])
    np.testing.assert_allclose(ds.splits["test"][0][0, :, :, 0], bunch.images[898] / 16.0)


def test_batches_are_a_pure_function_of_seed_and_step():
    ds = load_dataset("digits", shift_augment=1)
    a, b = ds.train_batch(3, 17, 64), ds.train_batch(3, 17, 64)
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert not np.array_equal(ds.train_batch(4, 17, 64)["targets"], a["targets"])


def test_each_epoch_visits_every_example_once():
    ds = load_dataset("digits")
    batch = 64
    steps = -(-2 * ds.num_train // batch)
    idx = np.concatenate([ds.train_indices(0, s, batch) for s in range(steps)])
    first, second = idx[:ds.num_train], idx[ds.num_train:2 * ds.num_train]
    assert sorted(first) == list(range(ds.num_train)) and sorted(second) == list(range(ds.num_train))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name, options", [("mnist1d", {"shift_augment": 3}), ("digits", {"shift_augment": 1}),
                                           ("adding", {"seq_len": 20}), ("copy", {"seq_len": 10}),
                                           ("text", {"seq_len": 16, "max_chars": 20_000})])
def test_a_slice_of_rows_is_those_rows_of_the_whole_batch(name, options):
    # What each host of a multi-host run loads: its rows only, the same examples as in the whole batch.
    ds = load_dataset(name, **options)
    whole = ds.train_batch(5, 3, 12)
    for rows in (slice(0, 4), slice(4, 8), slice(8, 12), slice(3, 11)):
        part = ds.train_batch(5, 3, 12, rows=rows)
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(part[key], whole[key][rows])
    for bad in (slice(0, 13), slice(4, 4), slice(0, 12, 2), 3):
        with pytest.raises(ValueError, match=f"{ds.name}: rows is"):
            ds.train_batch(5, 3, 12, rows=bad)


def test_random_shift_moves_each_example_within_bounds():
    x = np.zeros((5, 7, 11, 1), np.float32)
    x[:, 3, 5, 0] = 1.0
    out = random_shift(2, axes=(0, 1))(np.random.default_rng(0), x)
    for example in out:
        (r, c, _), = np.argwhere(example)
        assert abs(r - 3) <= 2 and abs(c - 5) <= 2
    assert out.sum() == 5


def test_padded_batches_mask_the_padding():
    x, y = np.arange(7 * 2).reshape(7, 2), np.arange(7)
    batches = list(padded_batches(x, y, 3))
    assert [b["mask"].sum() for b in batches] == [3, 3, 1]
    assert all(b["inputs"].shape == (3, 2) for b in batches)


def test_cache_is_reused_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path))
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(3)}

    cached_arrays("toy", {"k": 1}, build)
    np.testing.assert_array_equal(cached_arrays("toy", {"k": 1}, build)["x"], np.arange(3))
    assert len(calls) == 1
    (path,) = tmp_path.glob("toy-*.npz")
    path.write_bytes(b"not an npz")
    cached_arrays("toy", {"k": 1}, build)
    assert len(calls) == 2


def test_unknown_dataset_and_option_are_value_errors():
    with pytest.raises(ValueError, match="unknown dataset 'mnist1D'.*did you mean 'mnist1d'"):
        load_dataset("mnist1D")
    with pytest.raises(ValueError, match="unknown option 'shift'.*shift_augment"):
        load_dataset("digits", shift=1)


def test_random_shift_matches_a_per_example_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5, 7, 2)).astype(np.float32)
    out = random_shift(2, axes=(0, 1))(np.random.default_rng(9), x)
    offsets = np.random.default_rng(9).integers(-2, 3, size=(6, 2))
    for example, result, (dr, dc) in zip(x, out, offsets):
        expected = np.zeros_like(example)
        for r in range(5):
            for c in range(7):
                if 0 <= r - dr < 5 and 0 <= c - dc < 7:
                    expected[r, c] = example[r - dr, c - dc]
        np.testing.assert_array_equal(result, expected)
