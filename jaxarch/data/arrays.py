"""The user's own arrays: an `.npz` file, or a directory of `.npy` files memory-mapped so that a dataset larger than
memory trains (a batch reads only its own rows from disk).

The arrays are `x_train`, `y_train`, `x_test`, `y_test` (names can be changed), with an optional validation split
(its own arrays, or held out from the end of the training arrays). The task follows from the targets unless set:
integer targets [N] are classes (classification), integer targets [N, T] are tokens (sequence_classification: a
next-token language model when the inputs are tokens too), float targets are regression. Float and uint8 (image)
inputs are standardised per feature (the last axis: an image's channels) with the mean and standard deviation of
the training split; other integer inputs are token ids and stay as they are.
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxarch.data.base import ArrayDataset, Batch
from jaxarch.data.registry import DATASETS

_STATISTICS_ROWS = 4096  # Rows per chunk when computing statistics, so a memory-mapped array is never read whole.


def feature_statistics(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation of `inputs` [N, ..., features] over every axis but the last, both float32
    [features], read in chunks of rows (accumulated in float64). A constant feature gets standard deviation 1, so
    it standardises to zero rather than to a division by zero."""
    features = inputs.shape[-1] if inputs.ndim > 1 else 1
    total = np.zeros(features, np.float64)
    total_squares = np.zeros(features, np.float64)
    for start in range(0, len(inputs), _STATISTICS_ROWS):
        chunk = np.asarray(inputs[start:start + _STATISTICS_ROWS], np.float64).reshape(-1, features)
        total += chunk.sum(axis=0)
        total_squares += np.square(chunk).sum(axis=0)
    count = max(1, math.prod(inputs.shape) // features)
    mean = total / count
    std = np.sqrt(np.maximum(total_squares / count - np.square(mean), 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class StandardizedArrayDataset(ArrayDataset):
    """An `ArrayDataset` whose inputs are stored as they come (uint8 images, memory-mapped arrays) and are
    standardised batch by batch: `(x - input_mean) / input_std` in float32, after any augmentation (so a crop's zero
    padding is black, as in the usual image pipelines). Without statistics the inputs are returned as stored.

    Attributes:
      input_mean, input_std: [features] float32 (broadcast against the last axis of the inputs), or None.
    """

    input_mean: np.ndarray | None = None
    input_std: np.ndarray | None = None
    vocab_size: int | None = None  # Token inputs: the embedding's size (read by the model builder).

    def standardize(self, inputs: np.ndarray) -> np.ndarray:
        if self.input_mean is None:
            # Float inputs reach the model as float32 whatever their stored precision; token ids stay integers.
            return np.asarray(inputs, np.float32 if np.issubdtype(inputs.dtype, np.floating) else inputs.dtype)
        return ((np.asarray(inputs, np.float32) - self.input_mean) / self.input_std).astype(np.float32)

    def train_batch(self, seed: int, step: int, batch_size: int, rows: slice | None = None) -> Batch:
        batch = super().train_batch(seed, step, batch_size, rows)
        return {**batch, "inputs": self.standardize(batch["inputs"])}

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        for batch in super().eval_batches(split, batch_size):
            yield {**batch, "inputs": self.standardize(batch["inputs"])}


def standardized(name: str, task: str, num_outputs: int, train: tuple[np.ndarray, np.ndarray],
                 splits: dict[str, tuple[np.ndarray, np.ndarray]], *, normalize: bool = True, augment=None,
                 vocab_size: int | None = None) -> StandardizedArrayDataset:
    """A `StandardizedArrayDataset` with statistics from the training inputs when `normalize`."""
    mean, std = feature_statistics(train[0]) if normalize else (None, None)
    return StandardizedArrayDataset(name, task, num_outputs, train[0], train[1], splits, augment=augment,
                                    input_mean=mean, input_std=std, vocab_size=vocab_size)


def hold_out(train: tuple[np.ndarray, np.ndarray], validation_size: float, name: str
             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Splits the last `validation_size` training examples off as validation: a fraction of them if it is below 1,
    else a count (a whole number, so that `5000` and `5000.0` from a config mean the same)."""
    inputs, targets = train
    valid = isinstance(validation_size, (int, float)) and not isinstance(validation_size, bool) and (
        0 <= validation_size < 1 or float(validation_size).is_integer())
    if not valid:
        raise ValueError(f"dataset {name!r}: validation_size is {validation_size!r}, expected a fraction in [0, 1) "
                         "or a whole count of examples")
    count = int(round(len(inputs) * validation_size)) if validation_size < 1 else int(validation_size)
    if count == 0:
        return train, None
    if count >= len(inputs):
        raise ValueError(f"dataset {name!r}: validation_size {validation_size!r} holds out {count} of the "
                         f"{len(inputs)} training examples, expected fewer")
    keep = len(inputs) - count
    return (inputs[:keep], targets[:keep]), (inputs[keep:], targets[keep:])


def infer_task(targets: np.ndarray, name: str) -> str:
    """classification for integer targets [N], sequence_classification for integer targets [N, T], regression for
    float targets."""
    if np.issubdtype(targets.dtype, np.integer) or targets.dtype == np.bool_:
        if targets.ndim == 1:
            return "classification"
        if targets.ndim == 2:
            return "sequence_classification"
        raise ValueError(f"dataset {name!r}: integer targets of shape {targets.shape} fit no task, expected [N] "
                         "(classes) or [N, T] (tokens); set task=regression to regress on them")
    if np.issubdtype(targets.dtype, np.floating):
        return "regression"
    raise ValueError(f"dataset {name!r}: targets have dtype {targets.dtype}, expected integers or floats")


class _ArrayFile:
    """The named arrays of an `.npz` file or of a directory of `<name>.npy` files (memory-mapped)."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        if path.is_dir():
            self.available = sorted(p.stem for p in path.glob("*.npy"))
            self._npz = None
        elif path.is_file():
            try:
                self._npz = np.load(path, allow_pickle=False)
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise ValueError(f"dataset {name!r}: {path} cannot be read as an .npz file ({err}), expected an "
                                 "archive written by numpy.savez") from None
            if not isinstance(self._npz, np.lib.npyio.NpzFile):
                raise ValueError(f"dataset {name!r}: {path} holds a single array, expected an .npz archive of "
                                 "named arrays (numpy.savez) or a directory of .npy files")
            self.available = sorted(self._npz.files)
        else:
            raise ValueError(f"dataset {name!r}: path {str(path)!r} does not exist, expected an .npz file or a "
                             "directory of .npy files")

    def __contains__(self, key: str) -> bool:
        return key in self.available

    def get(self, key: str, option: str) -> np.ndarray:
        if key not in self.available:
            raise ValueError(f"dataset {self.name!r}: {self.path} has no array {key!r} (option {option}); it holds "
                             f"{self.available}")
        try:
            if self._npz is None:
                # Memory-mapped: rows are read from disk when a batch indexes them.
                return np.load(self.path / f"{key}.npy", mmap_mode="r", allow_pickle=False)
            return self._npz[key]
        except (OSError, ValueError) as err:
            raise ValueError(f"dataset {self.name!r}: array {key!r} of {self.path} cannot be read ({err})") from None


@DATASETS.register("arrays")
def arrays(path: str = "", x_train: str = "x_train", y_train: str = "y_train", x_test: str = "x_test",
           y_test: str = "y_test", x_validation: str = "x_validation", y_validation: str = "y_validation",
           validation_size: float = 0.0, task: str = "", num_outputs: int = 0, normalize: bool = True
           ) -> StandardizedArrayDataset:
    """The arrays of an `.npz` file or a directory of `.npy` files as a dataset.

    Args:
      path: the `.npz` file, or the directory holding `<key>.npy` files (memory-mapped).
      x_train, y_train, x_test, y_test: the keys of the training and test inputs and targets.
      x_validation, y_validation: the keys of a validation split, used when both are present.
      validation_size: else, hold this many training examples (or this fraction) out from the end as validation.
      task: "classification", "regression" or "sequence_classification"; empty: from the targets' dtype and shape.
      num_outputs: classes (or output units); 0: the largest target + 1 for classes, the target size for regression.
      normalize: standardise float and uint8 inputs with the training split's per-feature mean and standard deviation.
    """
    from jaxarch.train.tasks import TASKS

    name = "arrays"
    if not path:
        raise ValueError(f"dataset {name!r}: path is empty, expected an .npz file or a directory of .npy files")
    store = _ArrayFile(Path(path).expanduser(), name)
    train = (store.get(x_train, "x_train"), store.get(y_train, "y_train"))
    splits = {"test": (store.get(x_test, "x_test"), store.get(y_test, "y_test"))}
    if x_validation in store and y_validation in store:
        if validation_size:
            raise ValueError(f"dataset {name!r}: validation_size is {validation_size!r} but {path} has its own "
                             f"validation arrays {x_validation!r} and {y_validation!r}; expected only one of them")
        splits = {"validation": (store.get(x_validation, "x_validation"),
                                 store.get(y_validation, "y_validation")), **splits}
    else:
        train, validation = hold_out(train, validation_size, name)
        if validation is not None:
            splits = {"validation": validation, **splits}
    for split, (inputs, targets) in {"train": train, **splits}.items():
        if len(inputs) != len(targets) or len(inputs) == 0:
            raise ValueError(f"dataset {name!r}: the {split} split has {len(inputs)} inputs and {len(targets)} "
                             "targets, expected the same number, at least 1")
        if inputs.shape[1:] != train[0].shape[1:] or targets.shape[1:] != train[1].shape[1:]:
            raise ValueError(f"dataset {name!r}: the {split} split has inputs {inputs.shape} and targets "
                             f"{targets.shape}, expected examples shaped as the training split's "
                             f"{train[0].shape[1:]} and {train[1].shape[1:]}")
    task = task or infer_task(train[1], name)
    TASKS.get(task)  # An unknown task name is an error naming the valid ones.
    integer_inputs = np.issubdtype(train[0].dtype, np.integer)
    if task in ("classification", "sequence_classification"):
        if not np.issubdtype(train[1].dtype, np.integer):
            raise ValueError(f"dataset {name!r}: task {task} needs integer targets, got dtype {train[1].dtype}")
        largest = max(int(np.max(targets)) for _, targets in [train, *splits.values()])
        num_outputs = num_outputs or largest + 1
        if largest >= num_outputs:
            raise ValueError(f"dataset {name!r}: a target is {largest}, expected < num_outputs ({num_outputs})")
    else:
        num_outputs = num_outputs or math.prod(train[1].shape[1:])
        splits = {split: (inputs, targets.astype(np.float32)) for split, (inputs, targets) in splits.items()}
        train = (train[0], train[1].astype(np.float32))
    vocab_size = None
    if integer_inputs and task == "sequence_classification":
        # Token inputs: the embedding must hold every input id as well as every target id.
        vocab_size = max(num_outputs, max(int(np.max(inputs)) for inputs, _ in [train, *splits.values()]) + 1)
        num_outputs = vocab_size
    # Floats and bytes (uint8: images) are quantities and are standardised; other integers are ids and kept.
    quantities = np.issubdtype(train[0].dtype, np.floating) or train[0].dtype == np.uint8
    return standardized(Path(path).stem or name, task, num_outputs, train, splits,
                        normalize=normalize and quantities, vocab_size=vocab_size)
