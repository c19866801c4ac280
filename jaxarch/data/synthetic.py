"""Synthetic long-range tasks, freshly sampled for every batch from (seed, step), with a fixed test set.

- The adding problem (Hochreiter & Schmidhuber 1997; the TCN paper's setup, Bai et al. 2018).
- The copy-memory task (Arjovsky et al. 2016).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

from jaxarch.data.base import Batch, batch_rng, batch_rows, padded_batches
from jaxarch.data.registry import DATASETS

_TRAIN_STREAM, _TEST_STREAM = 2, 3  # Seed streams distinct from the array datasets' order/augment streams.
# (rng, count) -> (inputs, targets)
Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratedDataset:
    """A task defined by a sampler: training batches are new samples at every step, evaluation uses one
    fixed test set drawn from `test_seed` (independent of the training seed, so every run is scored on the
    same examples)."""

    name: str
    task: str
    num_outputs: int
    sample: Sampler
    test_size: int
    test_seed: int
    vocab_size: int | None = None  # For token inputs: how many distinct input ids.

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.sample(np.random.default_rng(0), 1)[0].shape[1:])

    def train_batch(self, seed: int, step: int, batch_size: int, rows: slice | None = None) -> Batch:
        # The examples are drawn, not read: the whole batch is sampled (microseconds) and the rows kept, so a
        # row is the same example whichever slice it is asked for in.
        rows = batch_rows(rows, batch_size, self.name)
        inputs, targets = self.sample(batch_rng(seed, step, _TRAIN_STREAM), batch_size)
        return {"inputs": inputs[rows], "targets": targets[rows]}

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(batch_rng(self.test_seed, 0, _TEST_STREAM), self.test_size)

    def split_names(self) -> tuple[str, ...]:
        return ("test",)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split != "test":
            raise ValueError(f"{self.name}: split {split!r} is unknown, expected 'test'")
        yield from padded_batches(*self.test_set(), batch_size)


def sample_adding(rng: np.random.Generator, count: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """inputs [count, seq_len, 2]: channel 0 values ~ U(0, 1), channel 1 a marker with exactly one 1 in each
    half; targets [count, 1]: the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, size=(count, seq_len)).astype(np.float32)
    half = seq_len // 2
    first = rng.integers(0, half, size=count)
    second = rng.integers(half, seq_len, size=count)
    markers = np.zeros((count, seq_len), np.float32)
    rows = np.arange(count)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (values[rows, first] + values[rows, second])[:, None]
    return np.stack([values, markers], axis=-1), targets.astype(np.float32)


ADDING_BASELINE_MSE = 1.0 / 6.0  # Always predicting 1: the variance of a sum of two U(0, 1) values.


@DATASETS.register("adding")
def adding(seq_len: int = 100, test_size: int = 1000, test_seed: int = 1234) -> GeneratedDataset:
    """The adding problem at sequence length `seq_len` (>= 2). Predicting 1 scores MSE 1/6 ~ 0.167."""
    if seq_len < 2:
        raise ValueError(f"dataset 'adding': seq_len is {seq_len}, expected at least 2 (one marker per half)")
    return GeneratedDataset(f"adding-{seq_len}", "regression", 1,
                            lambda rng, n: sample_adding(rng, n, seq_len), test_size, test_seed)


COPY_SYMBOLS, COPY_CATEGORIES = 10, 8
COPY_BLANK, COPY_DELIMITER = 0, 9  # Symbols are 1..8.
COPY_VOCAB = 10


def sample_copy(rng: np.random.Generator, count: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Arjovsky et al.'s copy-memory task; total length seq_len + 20.

    inputs [count, seq_len + 20] int32: 10 symbols from 1..8, seq_len - 1 blanks, the delimiter, 10 blanks.
    targets [count, seq_len + 20] int32: blanks everywhere except the last 10 positions, which repeat the
    10 symbols. Every position is scored.
    """
    total = seq_len + 2 * COPY_SYMBOLS
    symbols = rng.integers(1, COPY_CATEGORIES + 1, size=(count, COPY_SYMBOLS)).astype(np.int32)
    inputs = np.full((count, total), COPY_BLANK, np.int32)
    inputs[:, :COPY_SYMBOLS] = symbols
    inputs[:, seq_len + COPY_SYMBOLS - 1] = COPY_DELIMITER
    targets = np.full((count, total), COPY_BLANK, np.int32)
    targets[:, -COPY_SYMBOLS:] = symbols
    return inputs, targets


def copy_baseline_loss(seq_len: int) -> float:
    """Cross-entropy per position of the memoryless strategy: blanks right, the last 10 guessed uniformly."""
    return COPY_SYMBOLS * math.log(COPY_CATEGORIES) / (seq_len + 2 * COPY_SYMBOLS)


@DATASETS.register("copy")
def copy_memory(seq_len: int = 100, test_size: int = 1000, test_seed: int = 1234) -> GeneratedDataset:
    """The copy-memory task with `seq_len` (>= 1) blanks to bridge; tokens in 0..9."""
    if seq_len < 1:
        raise ValueError(f"dataset 'copy': seq_len is {seq_len}, expected at least 1")
    return GeneratedDataset(f"copy-{seq_len}", "sequence_classification", COPY_VOCAB,
                            lambda rng, n: sample_copy(rng, n, seq_len), test_size, test_seed,
                            vocab_size=COPY_VOCAB)
