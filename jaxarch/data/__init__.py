"""Datasets that work offline: MNIST-1D (procedural), scikit-learn's digits, synthetic tasks, text.

Every module in this package is imported here, so a new dataset file registers itself by being added.
"""

import importlib
import pkgutil

from jaxarch.data.base import ArrayDataset, Batch, Dataset, padded_batches, random_shift
from jaxarch.data.registry import DATASETS

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


def load_dataset(name: str, **kwargs) -> Dataset:
    """Builds the dataset registered as `name` with keyword options (its factory's arguments)."""
    from jaxarch.config import call_with_options

    return call_with_options(f"dataset {name!r}", DATASETS.get(name), kwargs)


__all__ = ["ArrayDataset", "Batch", "DATASETS", "Dataset", "load_dataset", "padded_batches", "random_shift"]
