"""Turning an experiment's config and a user's `key=value` overrides into the config that runs."""

from __future__ import annotations

from collections.abc import Iterable

import ml_collections

from jaxarch.config import accepted_options, apply_overrides
from jaxarch.data import DATASETS
from jaxarch.models import MODELS

# Sections whose `name` picks a registered factory; their other keys are that factory's options.
_FACTORY_SECTIONS = {"model": MODELS, "data": DATASETS}
_SUPPLIED_BY_LOOP = ("num_outputs", "vocab_size")  # Taken from the dataset.


def override_config(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Applies overrides; `model.X` / `data.X` may name any option of the chosen model or dataset factory.

    Section names (`model.name=...`) are applied first, so the options that follow are checked against the
    newly chosen factory.
    """
    overrides = list(overrides)
    chooses = {f"{section}.name" for section in _FACTORY_SECTIONS}
    config = apply_overrides(config, [o for o in overrides if o.partition("=")[0].strip() in chooses])
    optional = {}
    for section, registry in _FACTORY_SECTIONS.items():
        options = accepted_options(registry.get(config[section].name)) or {}
        optional.update({f"{section}.{key}": default for key, default in options.items()
                         if key not in _SUPPLIED_BY_LOOP})
    rest = [o for o in overrides if o.partition("=")[0].strip() not in chooses]
    return apply_overrides(config, rest, optional)
