"""Experiment configs: one module per experiment, each with `get_config()` returning an ml_collections
ConfigDict. The module `mnist1d_cnn` is the experiment `mnist1d-cnn`; modules starting with `_` are shared
bases, not experiments."""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections


def _module_name(experiment: str) -> str:
    return experiment.replace("-", "_")


def names() -> list[str]:
    """Every experiment, in alphabetical order."""
    return sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_"))


def get_config(name: str) -> ml_collections.ConfigDict:
    """The config of experiment `name`, with `config.name` set to it."""
    if name not in names():
        import difflib

        close = difflib.get_close_matches(name, names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"experiments: unknown experiment {name!r}{hint}; expected one of {names()}")
    config = importlib.import_module(f"{__name__}.{_module_name(name)}").get_config()
    config.name = name
    return config


def summary(name: str) -> str:
    """The first line of the experiment module's docstring."""
    doc = importlib.import_module(f"{__name__}.{_module_name(name)}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
