"""Checks that run before anything is compiled: the config's keys, types and ranges, the work directory, and
whether the chosen model accepts the chosen dataset's inputs. Every failure is a `ValueError` that names the
config key and what it allows, so a typo costs seconds, not a traceback from inside XLA or orbax."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxarch.config import nearest
from jaxarch.train.mesh import parse_mesh
from jaxarch.train.nonfinite import POLICIES
from jaxarch.train.optim import OPTIMIZERS, SCHEDULES


@dataclasses.dataclass(frozen=True)
class Option:
    """One config value: its accepted types, a range check, and how the allowed values are described."""

    types: tuple[type, ...]
    allowed: Callable[[Any], bool]
    expected: str


def _integer(low: int, expected: str) -> Option:
    return Option((int,), lambda v: v >= low, expected)


def _number(allowed: Callable[[float], bool], expected: str) -> Option:
    return Option((int, float), allowed, expected)


def _choice(values) -> Option:
    values = sorted(values)
    return Option((str,), lambda v: v in values, f"one of {values}")


_POSITIVE = _integer(1, "a positive integer")
_EVERY = _integer(0, "an integer >= 0 (0 turns it off)")
_NON_NEGATIVE = _number(lambda v: v >= 0, "a number >= 0")
_BETA = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
_BOOL = Option((bool,), lambda v: True, "true or false")

# Every key of the sections the training core reads itself; `model` and `data` are checked against the
# options of the factory they name (jaxarch.config.call_with_options).
SCHEMA: dict[str, dict[str, Option]] = {
    "train": {
        "steps": _POSITIVE, "batch_size": _POSITIVE, "eval_batch_size": _POSITIVE, "log_every": _EVERY,
        "eval_every": _EVERY, "checkpoint_every": _EVERY, "keep_checkpoints": _POSITIVE,
        "nonfinite": _choice(POLICIES), "debug_nans": _BOOL, "fsdp": _BOOL,
        "grad_accum_steps": _POSITIVE,
        "prefetch": _integer(0, "an integer >= 0 (0 loads each batch in the loop)"),
        "init_from": Option((str,), lambda v: True,
                            "the work directory of an earlier run ({seed} in it stands for the run's seed), or '' "
                            "for none"),
    },
    "optim": {
        "optimizer": _choice(OPTIMIZERS), "learning_rate": _number(lambda v: v > 0, "a number > 0"),
        "weight_decay": _NON_NEGATIVE, "b1": _BETA, "b2": _BETA, "schedule": _choice(SCHEDULES),
        "warmup_steps": _integer(0, "an integer >= 0"), "end_learning_rate_factor": _NON_NEGATIVE,
        "grad_clip_norm": _NON_NEGATIVE,
    },
    "sample": {
        "prompt": Option((str,), lambda v: True, "a string"), "num_tokens": _POSITIVE,
        "temperature": _number(lambda v: v > 0, "a number > 0"),
    },
}
REQUIRED = ("name", "seed", "mesh", "data", "model", "optim", "train")
OPTIONAL_SECTIONS = ("sample",)


def _check_value(path: str, value, option: Option) -> None:
    # bool is an int to Python; a flag where a count belongs is a mistake, not a 1.
    wrong_type = not isinstance(value, option.types) or (isinstance(value, bool) and bool not in option.types)
    if wrong_type or not option.allowed(value):
        raise ValueError(f"config: {path} is {value!r}, expected {option.expected}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the config's structure, types and ranges before anything is built or compiled: every key
    `train_and_evaluate` would reject, including the dataset's and model's names and options."""
    missing = [key for key in REQUIRED if key not in config]
    if missing:
        raise ValueError(f"config: missing keys {missing}, expected {list(REQUIRED)}")
    known = (*REQUIRED, *OPTIONAL_SECTIONS)
    if not isinstance(config.get("name"), str):
        raise ValueError(f"config: name is {config.get('name')!r}, expected a string (the experiment's name)")
    for key in config:
        if key not in known:
            raise ValueError(f"config: unknown key {key!r}{nearest(key, known)}; valid top-level keys are: "
                             f"{', '.join(known)}")
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise ValueError(f"config: seed is {config.seed!r}, expected an integer")
    try:
        parse_mesh(config.mesh)
    except ValueError as err:
        raise ValueError(f"config: mesh is {config.mesh!r}: {err}") from None
    for section in ("data", "model"):
        if not isinstance(config[section].get("name"), str):
            raise ValueError(f"config: {section}.name is {config[section].get('name')!r}, expected the name of a "
                             f"registered {'dataset' if section == 'data' else 'model'}")
    for section, options in SCHEMA.items():
        if section not in config:
            continue
        for key, value in config[section].items():
            path = f"{section}.{key}"
            if key not in options:
                valid = [f"{section}.{k}" for k in options]
                raise ValueError(f"config: unknown key {path!r}{nearest(path, valid)}; valid keys are: "
                                 f"{', '.join(valid)}")
            _check_value(path, value, options[key])
        absent = [f"{section}.{k}" for k in options if k not in config[section]]
        if absent and section in REQUIRED:
            raise ValueError(f"config: missing keys {absent}, expected every key of the {section!r} section")
    _check_factory_options(config)
    accumulation = config.train.get("grad_accum_steps", 1)
    if config.train.batch_size % accumulation:
        raise ValueError(f"config: train.batch_size is {config.train.batch_size}, expected a multiple of "
                         f"train.grad_accum_steps={accumulation} (the batch is split into that many micro-batches)")


def _check_factory_options(config: ml_collections.ConfigDict) -> None:
    """`data.name` and `model.name` name registered factories, and every other key of those sections is an
    option of the factory (checked as `build_dataset_and_model` checks them, without building anything).
    `num_outputs` comes from the dataset, never from the config; whether `vocab_size` does depends on the
    dataset, which is only known once it is built."""
    from jaxarch.config import accepted_options
    from jaxarch.data import DATASETS
    from jaxarch.models import MODELS

    for section, registry in (("data", DATASETS), ("model", MODELS)):
        name = config[section].name
        try:
            factory = registry.get(name)
        except ValueError as err:
            raise ValueError(f"config: {section}.name is {name!r}: {err}") from None
        options = accepted_options(factory)
        if options is None:  # a factory taking **kwargs accepts anything
            continue
        valid = [f"{section}.{key}" for key in options if key != "num_outputs"]
        for key in config[section]:
            path = f"{section}.{key}"
            if key == "name":
                continue
            if section == "model" and key == "num_outputs":
                raise ValueError(f"config: {path} is {config[section][key]!r}, expected it left out: the dataset "
                                 "sets the number of outputs")
            if key not in options:
                raise ValueError(f"config: unknown key {path!r}{nearest(path, valid)} for {section} {name!r}; valid "
                                 f"keys are: {', '.join(valid)}")


def with_experiment_name(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, or a copy named "<data.name>-<model.name>" when its `name` is empty (a config straight from an
    experiment module's `get_config()`, which `jaxarch.experiments.get_config(name)` would have named), so
    that the run's records and result say what ran."""
    if config.name:
        return config
    named = ml_collections.ConfigDict(config.to_dict())
    named.name = f"{config.data.name}-{config.model.name}"
    return named


def prepare_workdir(workdir: str | Path) -> Path:
    """Creates `workdir` if needed and proves it writable, so that the first checkpoint does not fail deep
    inside orbax after minutes of training."""
    workdir = Path(workdir).expanduser()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"workdir: {str(workdir)!r} is not a writable directory ({reason}), expected a "
                         "directory this process can create and write to") from None
    return workdir


def config_error(section: ml_collections.ConfigDict, prefix: str, err: Exception, context: str = "") -> ValueError:
    """A factory's or module's error restated for the config: the options it names are listed as
    `prefix.key=value`, so the message points at the keys to change."""
    text = str(err)
    involved = [f"{prefix}.{key}={value!r}" for key, value in section.items()
                if key != "name" and re.search(rf"\b{re.escape(key)}\b", text)]
    keys = f" [config keys: {', '.join(involved)}]" if involved else ""
    return ValueError(f"config: {context}{text}{keys}")


def example_inputs(dataset, seed: int) -> np.ndarray:
    """Zeros shaped like one training example with a batch axis of 1, in the dataset's input dtype."""
    return np.zeros((1, *dataset.input_shape), dataset.train_batch(seed, 0, 1)["inputs"].dtype)


def check_model_accepts_data(config: ml_collections.ConfigDict, dataset, model) -> None:
    """Traces the model's init on the dataset's input shape without compiling it: every shape rule the
    layers check (heads dividing the width, kernels fitting VALID inputs, sequences within max_length, ...)
    fires here, restated with the config keys involved."""
    example = example_inputs(dataset, config.seed)

    def init(x):
        rng = jax.random.PRNGKey(0)  # Made inside the trace: nothing here runs on the device.
        return model.init({"params": rng, "dropout": rng}, x, train=False)

    try:
        jax.eval_shape(init, example)
    except (ValueError, TypeError) as err:
        context = (f"model {config.model.name!r} cannot take dataset {config.data.name!r}'s inputs "
                   f"(one example: {tuple(dataset.input_shape)} {example.dtype}): ")
        raise config_error(config.model, "model", err, context) from None
