"""The dataset registry: `DATASETS.get(name)(**kwargs)` builds a dataset."""

from jaxarch.registry import Registry

DATASETS = Registry("dataset")
