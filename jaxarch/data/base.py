"""The dataset protocol every task implements, and the in-memory array dataset used by the fixed benchmarks.

Batches are a pure function of `(seed, step)`: the data order is deterministic from the seed, and the
iterator position is just the step number, so a resumed run sees exactly the batches it would have seen.
`train_batch(..., rows=slice(a, b))` returns rows a to b of that batch and reads only those examples: each
process of a multi-host run loads only the rows its own devices hold, and the rows are the same however the batch
is split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

Batch = dict[str, np.ndarray]
# An augmentation maps (rng, inputs, rows) -> inputs of the same shape, where `inputs` holds rows `rows` (default
# all) of a batch and `rng` is that whole batch's generator: the randomness is drawn for the whole batch, so a row is
# augmented the same way whichever slice it is loaded in.
Augmentation = Callable[[np.random.Generator, np.ndarray, slice], np.ndarray]


class Dataset(Protocol):
    """What the training loop needs from a data source."""

    name: str
    task: str  # key into jaxarch.train.tasks.TASKS: "classification", "regression", ...
    num_outputs: int  # classes for classification, output units for regression
    input_shape: tuple[int, ...]  # one example, without the batch axis

    def train_batch(self, seed: int, step: int, batch_size: int, rows: slice | None = None) -> Batch:
        """Rows `rows` (default all) of the training batch for `step`: {"inputs", "targets"}."""

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Fixed evaluation batches, padded to `batch_size`, with a boolean "mask" marking real examples."""

    def split_names(self) -> tuple[str, ...]:
        """The evaluation splits, e.g. ("test",)."""


def batch_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    """An independent NumPy generator for (seed, step, stream): streams separate order from augmentation."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, step]))


_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A fixed train/test split held in memory; epochs are fresh permutations drawn from the seed.

    Attributes:
      train_inputs: [num_train, *input_shape] float32.
      train_targets: [num_train] int32 class labels (or [num_train, ...] for regression).
      splits: evaluation splits by name, each a pair (inputs, targets).
    """

    name: str
    task: str
    num_outputs: int
    train_inputs: np.ndarray
    train_targets: np.ndarray
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    augment: Augmentation | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_inputs.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.train_inputs)

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return batch_rng(seed, epoch, _ORDER_STREAM).permutation(self.num_train)

    def train_indices(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """Indices of batch `step`: position p of the infinite stream is epoch p // n, slot p % n."""
        positions = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs, slots = np.divmod(positions, self.num_train)
        indices = np.empty(batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            indices[here] = self.epoch_order(seed, int(epoch))[slots[here]]
        return indices

    def train_batch(self, seed: int, step: int, batch_size: int, rows: slice | None = None) -> Batch:
        rows = batch_rows(rows, batch_size, self.name)
        idx = self.train_indices(seed, step, batch_size)[rows]
        inputs = self.train_inputs[idx]
        if self.augment is not None:
            inputs = self.augment(batch_rng(seed, step, _AUGMENT_STREAM), inputs, rows)
        return {"inputs": inputs, "targets": self.train_targets[idx]}

    def split_names(self) -> tuple[str, ...]:
        return tuple(self.splits)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in self.splits:
            raise ValueError(f"{self.name}: split {split!r} is unknown, expected one of {list(self.splits)}")
        inputs, targets = self.splits[split]
        yield from padded_batches(inputs, targets, batch_size)


def batch_rows(rows: slice | None, batch_size: int, name: str) -> slice:
    """`rows` as a slice `start:stop` within `[0, batch_size)` (None: every row)."""
    if rows is None:
        return slice(0, batch_size)
    if isinstance(rows, slice) and rows.step in (None, 1):
        start = 0 if rows.start is None else rows.start
        stop = batch_size if rows.stop is None else rows.stop
        if isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= batch_size:
            return slice(start, stop)
    raise ValueError(f"{name}: rows is {rows!r}, expected a slice start:stop with 0 <= start < stop <= batch_size "
                     f"({batch_size})")


def padded_batches(inputs: np.ndarray, targets: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Fixed-size batches (so eval compiles once); the last is padded and "mask" marks real rows."""
    for start in range(0, len(inputs), batch_size):
        x, y = inputs[start:start + batch_size], targets[start:start + batch_size]
        real = len(x)
        pad = batch_size - real
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
        yield {"inputs": x, "targets": y, "mask": np.arange(batch_size) < real}


def random_shift(max_shift: int, axes: tuple[int, ...]) -> Augmentation:
    """Shifts each example by an independent integer offset in [-max_shift, max_shift] along each of `axes`
    (axes of one example, 0-based, excluding the batch axis), filling the vacated border with zeros."""

    def augment(rng: np.random.Generator, inputs: np.ndarray, rows: slice | None = None) -> np.ndarray:
        rows = slice(0, len(inputs)) if rows is None else rows
        offsets = rng.integers(-max_shift, max_shift + 1, size=(rows.stop, len(axes)))[rows]
        out = inputs
        for column, axis in enumerate(axes):
            axis += 1  # Past the batch axis.
            size = inputs.shape[axis]
            # Output position p reads input position p - shift; positions read from outside are zero.
            source = np.arange(size)[None, :] - offsets[:, column:column + 1]  # [batch, size]
            shape = [len(inputs)] + [1] * (inputs.ndim - 1)
            shape[axis] = size
            source = source.reshape(shape)
            inside = (source >= 0) & (source < size)
            gathered = np.take_along_axis(out, np.clip(source, 0, size - 1), axis=axis)
            out = np.where(inside, gathered, np.zeros((), inputs.dtype))
        return out

    return augment


def cache_dir() -> Path:
    """Where generated datasets are cached: $JAXARCH_CACHE, else $XDG_CACHE_HOME/jaxarch, else ~/.cache/jaxarch."""
    if "JAXARCH_CACHE" in os.environ:
        return Path(os.environ["JAXARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxarch"


def cached_arrays(name: str, key: dict, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Returns `build()`'s arrays, cached in an .npz named by a hash of `key`; written atomically."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path) as stored:
                return {k: stored[k] for k in stored.files}
        except (OSError, ValueError):
            pass  # A damaged cache file is rebuilt below.
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # A read-only cache location costs a regeneration next time, nothing more.
    return arrays
