"""Version shims: the one place where jaxarch adapts to the JAX releases it supports (pyproject.toml's range).

The range is tested at both ends: the newest releases, and the minimum versions pinned in
`.ci/minimum-versions.txt` (docs/compatibility.md says how they were found). Code elsewhere calls these
functions instead of testing versions itself, so dropping an old release means deleting its branch here. Each
shim tests for the feature (an attribute), never for a version number, so a backport takes the right branch too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh


def make_auto_mesh(axis_shapes: Sequence[int], axis_names: Sequence[str], devices: Sequence) -> Mesh:
    """`jax.make_mesh` over `devices` with every axis "auto": GSPMD propagates the shardings of the arguments.

    The axis types are given explicitly because `jax.make_mesh`'s default moved from auto to explicit axes
    (sharding in types; JAX 0.10 creates `Explicit` axes), which would change what every step compiles to.
    """
    return jax.make_mesh(tuple(axis_shapes), tuple(axis_names), axis_types=(AxisType.Auto,) * len(axis_names),
                         devices=list(devices))


def enable_x64(enabled: bool = True) -> contextlib.AbstractContextManager:
    """A context in which 64-bit types are (or are not) enabled: `jax.enable_x64` from JAX 0.8 on, which
    replaced `jax.experimental.enable_x64` (gone by JAX 0.10.2)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(enabled)
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64(enabled)


def concrete_or_none(value) -> np.ndarray | None:
    """`value` as a NumPy array when it is known now; None when it is abstract (inside `jit`, `vmap`, `grad`).

    For checks that can only run on concrete values (a sequence length out of range, a full decode cache). It
    relies on the public `jax.errors` contract rather than `isinstance(value, jax.core.Tracer)`: `jax.core` is
    outside JAX's API compatibility policy and JAX 0.10 began deprecating its names in favour of `jax.extend`.
    """
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
