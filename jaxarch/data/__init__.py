"""Datasets that work offline: MNIST-1D (procedural), scikit-learn's digits, synthetic tasks, text."""

from jaxarch.data import digits as _digits  # noqa: F401  (registers "digits")
from jaxarch.data import mnist1d as _mnist1d  # noqa: F401  (registers "mnist1d")
from jaxarch.data.base import ArrayDataset, Batch, Dataset, padded_batches, random_shift
from jaxarch.data.registry import DATASETS


def load_dataset(name: str, **kwargs) -> Dataset:
    """Builds the dataset registered as `name` with keyword options (its factory's arguments)."""
    from jaxarch.config import call_with_options

    return call_with_options(f"dataset {name!r}", DATASETS.get(name), kwargs)


__all__ = ["ArrayDataset", "Batch", "DATASETS", "Dataset", "load_dataset", "padded_batches", "random_shift"]
