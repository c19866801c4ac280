"""Experiment configs: `key=value` overrides checked against the config, and options checked against the
factory they configure. Every mistake becomes a `ValueError` that names the key and the allowed values."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections

# Config sections whose extra keys are factory options, checked by `call_with_options` when they are used.
_NAME_KEY = "name"


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf of `config` by dotted path."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.update(flat_keys(value, path + "."))
        else:
            out[path] = value
    return out


def nearest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _parse_value(text: str, current: Any) -> Any:
    """Parses an override's text into the type of the value it replaces."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise TypeError(f"a bool (true/false), got {text!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, tuple) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str],
                    optional: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with `key=value` overrides applied.

    Keys are dotted paths that must already exist in the config, or appear in `optional` (path -> default
    value: options a section's factory accepts that the config leaves at their defaults). Values are parsed
    as Python literals and must keep the type of the value they replace (an int may become a float).
    """
    config = ml_collections.ConfigDict(config.to_dict(), type_safe=True)
    leaves = {**(optional or {}), **flat_keys(config)}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"config: override {item!r} is not of the form key=value")
        if key not in leaves:
            raise ValueError(
                f"config: unknown key {key!r}{nearest(key, leaves)}; valid keys are: {', '.join(sorted(leaves))}")
        current = leaves[key]
        try:
            value = _parse_value(text, current)
            if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, bool):
                raise TypeError("a number, got a bool")
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            if leaf not in node:
                # A factory option the config left at its default: its type is the default's type.
                node[leaf] = current if current is not None and value is not None else value
            node[leaf] = value
        except TypeError as err:
            raise ValueError(
                f"config: key {key!r} got {text!r}, expected a value of type {type(current).__name__} "
                f"(current value {current!r}): {err}") from None
        leaves[key] = node[leaf]
    return config


def accepted_options(factory: Callable) -> dict[str, Any] | None:
    """Option names the factory accepts (with defaults), or None if it takes **kwargs."""
    if dataclasses.is_dataclass(factory):
        # Flax modules are dataclasses; `parent` and `name` are Flax's own plumbing, not options.
        return {f.name: None if f.default is dataclasses.MISSING else f.default
                for f in dataclasses.fields(factory) if f.init and f.name not in ("parent", "name")}
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: None if p.default is inspect.Parameter.empty else p.default for n, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def call_with_options(what: str, factory: Callable, options: Mapping[str, Any], **fixed: Any):
    """Calls `factory(**options, **fixed)` after checking every option is one it accepts."""
    options = dict(options.to_dict() if isinstance(options, ml_collections.ConfigDict) else options)
    options.pop(_NAME_KEY, None)
    accepted = accepted_options(factory)
    if accepted is not None:
        for key in options:
            if key in fixed:
                raise ValueError(f"{what}: option {key!r} is set by the dataset ({fixed[key]!r}), expected it "
                                 "to be left out of the config")
            if key not in accepted:
                valid = sorted(k for k in accepted if k not in fixed)
                raise ValueError(f"{what}: unknown option {key!r}{nearest(key, valid)}; valid options are: "
                                 f"{', '.join(valid)}")
    # Configs store sequences as lists or tuples; modules expect tuples so their fields stay hashable.
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return factory(**options, **fixed)
