"""Input validation shared by every public module.

Each helper raises `ValueError` whose message names the module, what arrived and what was expected, so a
user never meets an XLA broadcasting trace for a wrong input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax.core import meta


def fail(module: str, what: str, got, expected) -> None:
    """Raises the project's standard error: `<module>: <what> is <got>, expected <expected>`."""
    raise ValueError(f"{module}: {what} is {got}, expected {expected}")


def env_switch(module: str, environ: Mapping[str, str], name: str, off: str) -> bool:
    """The on/off environment variable `name`: "1" (the default) is on, "0" is `off`, anything else an error."""
    value = environ.get(name, "1")
    if value not in ("0", "1"):
        fail(module, name, repr(value), f"'0' ({off}) or '1' (the default)")
    return value == "1"


def check_rank(module: str, name: str, x, ranks: int | Iterable[int], layout: str = "") -> None:
    """Checks `x.ndim` is one of `ranks`; `layout` (e.g. "[batch, *spatial, features]") goes in the message."""
    allowed = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    ndim = np.ndim(x)
    if ndim not in allowed:
        shape = tuple(np.shape(x))
        want = " or ".join(str(r) for r in allowed)
        suffix = f" {layout}" if layout else ""
        fail(module, f"{name} rank", f"{ndim} (shape {shape})", f"rank {want}{suffix}")


def check_axis_size(module: str, name: str, x, axis: int, size: int, meaning: str = "features") -> None:
    """Checks `x.shape[axis] == size`."""
    shape = tuple(np.shape(x))
    if shape[axis] != size:
        fail(module, f"{name} {meaning} (axis {axis})", f"{shape[axis]} (shape {shape})", str(size))


def check_floating(module: str, name: str, x) -> None:
    """Checks that `x` has a floating dtype (float16, bfloat16, float32, float64)."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        fail(module, f"{name} dtype", str(dtype), "a floating dtype (float32, bfloat16, float16, float64)")


def check_integer(module: str, name: str, x) -> None:
    """Checks that `x` has an integer dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        fail(module, f"{name} dtype", str(dtype), "an integer dtype")


def check_positive_ints(module: str, name: str, values: Sequence[int] | int) -> tuple[int, ...]:
    """Normalises an int or a sequence of ints to a tuple and checks every entry is >= 1."""
    seq = (values,) if isinstance(values, (int, np.integer)) else tuple(values)
    if not seq or any((not isinstance(v, (int, np.integer))) or v < 1 for v in seq):
        fail(module, name, repr(values), "a positive int or a non-empty sequence of positive ints")
    return tuple(int(v) for v in seq)


def check_broadcastable(module: str, name: str, shape: Sequence[int], target: Sequence[int],
                                                target_desc: str) -> None:
    """Checks that `shape` broadcasts to `target` (numpy rules, no rank promotion beyond the target's rank)."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
            s in (1, t) for s, t in zip(shape[::-1], target[::-1]))
    if not ok:
        fail(module, f"{name} shape", str(shape), f"broadcastable to {target} {target_desc}")


def check_size_as_at_init(module: str, what: str, size: int, shape: Sequence[int], owner, path: Sequence[str],
                          axis: int = 0) -> None:
    """Checks, when a Linen module is applied, that an input's `size` (e.g. its feature count) still equals the
    size along `axis` of the parameter at `path` in `owner`'s "params", which was created for it at init.

    Without this, a changed input size surfaces as flax's parameter-shape error about initialisers, deep inside
    whichever sub-module happens to see it first. Before init (or for a path that does not exist) nothing is
    compared. Parameters initialised under `nn.logical_axis_rules` arrive boxed (`nn.LogicallyPartitioned`), and
    are unboxed before their shape is read.
    """
    node = owner.variables.get("params", {})
    for key in path:
        if not hasattr(node, "get") or key not in node:
            return
        node = node[key]
    expected = np.shape(meta.unbox(node))[axis]
    if size != expected:
        fail(module, what, f"{size} (shape {tuple(shape)})", f"{expected}, the size the parameters were "
             "initialised for")


def resolve_deterministic(module: str, field: bool | None, argument: bool | None,
                          dropout_rates: Mapping[str, float]) -> bool:
    """Whether a module with dropout runs deterministically, given as its `deterministic` field or as the call's
    argument (as `flax.linen.Dropout` with `nn.merge_param`: exactly one of them, not both).

    With every rate in `dropout_rates` (name -> rate) at 0 it may be given neither (there is nothing to switch);
    with any rate above 0 that is an error, so that a dropout rate is never silently ignored or applied.
    """
    if field is not None and argument is not None:
        fail(module, "deterministic", f"given both as a field ({field}) and as a call argument ({argument})",
             "exactly one of them")
    if field is None and argument is None:
        active = {name: rate for name, rate in dropout_rates.items() if rate > 0.0}
        if active:
            fail(module, "deterministic", f"None with {', '.join(f'{n}={r}' for n, r in active.items())}",
                 "deterministic=True (evaluation) or False (training, with a 'dropout' rng), as the module's "
                 "field or the call's argument")
        return True
    return bool(field if argument is None else argument)
