"""The adding and copy-memory generators checked against their definitions and baseline losses."""

import math

import numpy as np
import pytest

from jaxarch.data import load_dataset
from jaxarch.data.synthetic import (ADDING_BASELINE_MSE, COPY_DELIMITER, copy_baseline_loss, sample_adding,
                                    sample_copy)


def test_adding_markers_values_and_target():
    inputs, targets = sample_adding(np.random.default_rng(0), 257, seq_len=13)
    assert inputs.shape == (257, 13, 2) and targets.shape == (257, 1)
    values, markers = inputs[..., 0], inputs[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert (markers[:, :6].sum(1) == 1).all() and (markers[:, 6:].sum(1) == 1).all()
    np.testing.assert_allclose(targets[:, 0], (values * markers).sum(1), rtol=1e-6)


def test_adding_constant_one_predictor_scores_one_sixth():
    _, targets = sample_adding(np.random.default_rng(1), 200_000, seq_len=20)
    assert np.mean((targets - 1.0) ** 2) == pytest.approx(ADDING_BASELINE_MSE, rel=0.01)
    assert ADDING_BASELINE_MSE == pytest.approx(0.1667, abs=1e-4)


def test_copy_layout_and_targets():
    inputs, targets = sample_copy(np.random.default_rng(0), 5, seq_len=7)
    assert inputs.shape == targets.shape == (5, 27)
    symbols = inputs[:, :10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert (inputs[:, 10:16] == 0).all() and (inputs[:, 16] == COPY_DELIMITER).all() and (inputs[:, 17:] == 0).all()
    np.testing.assert_array_equal(targets[:, -10:], symbols)
    assert (targets[:, :-10] == 0).all()


def test_copy_memoryless_baseline_matches_formula():
    seq_len = 30
    _, targets = sample_copy(np.random.default_rng(0), 4000, seq_len)
    # The memoryless strategy: blanks predicted with certainty, the last 10 uniformly over 8 symbols.
    probs = np.zeros((*targets.shape, 10))
    probs[:, :-10, 0] = 1.0
    probs[:, -10:, 1:9] = 1 / 8
    nll = -np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0])
    assert nll.mean() == pytest.approx(copy_baseline_loss(seq_len), rel=1e-9)
    assert copy_baseline_loss(1000) == pytest.approx(10 * math.log(8) / 1020)


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_fresh_batches_each_step_and_a_fixed_test_set(name):
    ds = load_dataset(name, seq_len=11)
    a, b = ds.train_batch(0, 0, 8), ds.train_batch(0, 1, 8)
    assert not np.array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["inputs"], ds.train_batch(0, 0, 8)["inputs"])
    other_seed = load_dataset(name, seq_len=11)
    np.testing.assert_array_equal(ds.test_set()[0], other_seed.test_set()[0])
    # Training samples never come from the test stream.
    assert not np.array_equal(ds.test_set()[0][:8], a["inputs"])


@pytest.mark.parametrize("name,seq_len", [("adding", 1), ("copy", 0)])
def test_too_short_sequences_are_rejected(name, seq_len):
    with pytest.raises(ValueError, match=f"dataset '{name}': seq_len is {seq_len}"):
        load_dataset(name, seq_len=seq_len)
