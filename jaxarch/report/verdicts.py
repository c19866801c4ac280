"""Verdicts computed from measurements: each check compares one measured number with stated thresholds.

A check has three outcomes. It *holds* when the number is on the claim's side of the `holds` threshold, it
*does not hold* when it is past the `fails` threshold, and between the two it is *inconclusive at this
budget*: the measurement cannot decide (too little training, timing noise). A *precondition* is a check whose
failure cannot refute the claim, only leave it undecided (e.g. "some model learned the task at all").

A number measured over several seeds is given as its per-seed values (`samples`): then the check judges the 95%
Student-t interval of their mean, not the mean alone. It holds only when the whole interval is on the claim's
side of `holds`, does not hold only when the whole interval is past `fails`, and is inconclusive otherwise: the
seeds disagree too much to decide. A number measured once is judged as a point, as before.

Nothing here stores an outcome: it is recomputed from `value` every time it is read, so a changed number
changes the verdict.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Sequence

from jaxarch.checks import fail
from jaxarch.train.stats import describe


class Outcome(enum.Enum):
    HOLDS = "holds"
    FAILS = "does not hold"
    INCONCLUSIVE = "inconclusive at this budget"


_DIRECTIONS = (">=", "<=")


@dataclasses.dataclass(frozen=True)
class Check:
    """`what` is measured as `value`; with direction ">=" the check holds when `value >= holds` and does not
    hold when `value < fails` (mirror image for "<="). `fails` defaults to `holds`: a two-valued check."""

    what: str
    value: float
    direction: str
    holds: float
    fails: float | None = None
    precondition: bool = False  # a failed precondition makes the claim inconclusive, never refuted
    unit: str = ""
    samples: tuple[float, ...] = ()  # per-seed values (value is their mean); empty: measured once

    def __post_init__(self):
        if self.direction not in _DIRECTIONS:
            fail("Check", "direction", repr(self.direction), f"one of {_DIRECTIONS}")
        fails = self.fail_threshold
        wrong_side = fails > self.holds if self.direction == ">=" else fails < self.holds
        if wrong_side:
            fail("Check", f"thresholds of {self.what!r}", f"holds {self.holds}, fails {fails}",
                 f"fails {'<=' if self.direction == '>=' else '>='} holds for direction {self.direction}")

    @property
    def fail_threshold(self) -> float:
        return self.holds if self.fails is None else self.fails

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the mean of `samples`; None for a number measured once (or one sample)."""
        if len(self.samples) < 2 or any(math.isnan(v) for v in self.samples):
            return None
        if all(v == self.samples[0] for v in self.samples):  # no spread: the interval is the value itself
            return self.samples[0], self.samples[0]
        stats = describe(self.samples)
        return stats["ci_low"], stats["ci_high"]

    @property
    def outcome(self) -> Outcome:
        value = float(self.value)
        if math.isnan(value) or any(math.isnan(v) for v in self.samples):
            return Outcome.INCONCLUSIVE
        low, high = self.interval or (value, value)
        if self.direction == ">=":
            held, failed = low >= self.holds, high < self.fail_threshold
        else:
            held, failed = high <= self.holds, low > self.fail_threshold
        if held:
            return Outcome.HOLDS
        if failed and not self.precondition:
            return Outcome.FAILS
        return Outcome.INCONCLUSIVE

    def value_text(self) -> str:
        """"0.93", or over seeds "0.93 [0.91, 0.95] (n=3)": the mean and its 95% interval."""
        if not self.samples:
            return format_number(self.value)
        interval = self.interval
        spread = f" [{format_number(interval[0])}, {format_number(interval[1])}]" if interval else ""
        return f"{format_number(self.value)}{spread} (n={len(self.samples)})"

    def holds_text(self) -> str:
        return f"{self.direction} {format_number(self.holds)}{self.unit}"

    def fails_text(self) -> str:
        if self.precondition:
            return "never (a precondition: unmet means inconclusive)"
        opposite = "<" if self.direction == ">=" else ">"
        return f"{opposite} {format_number(self.fail_threshold)}{self.unit}"


def _measured(value: float | Sequence[float]) -> tuple[float, tuple[float, ...]]:
    """A number or per-seed values -> (the value or their mean, the samples)."""
    if isinstance(value, Sequence):
        samples = tuple(float(v) for v in value)
        if not samples:
            fail("Check", "per-seed values", "empty", "at least one value")
        return math.fsum(samples) / len(samples), samples
    return float(value), ()


def at_least(what: str, value: float | Sequence[float], holds: float, fails: float | None = None, *,
             unit: str = "", precondition: bool = False) -> Check:
    """Holds when `value >= holds`; does not hold when `value < fails` (default: `holds`). Per-seed values are
    judged by their mean's 95% interval (see the module docstring)."""
    mean, samples = _measured(value)
    return Check(what, mean, ">=", holds, fails, precondition, unit, samples)


def at_most(what: str, value: float | Sequence[float], holds: float, fails: float | None = None, *,
            unit: str = "", precondition: bool = False) -> Check:
    """Holds when `value <= holds`; does not hold when `value > fails` (default: `holds`). Per-seed values are
    judged by their mean's 95% interval (see the module docstring)."""
    mean, samples = _measured(value)
    return Check(what, mean, "<=", holds, fails, precondition, unit, samples)


def per_seed(function: Callable[..., float], *values: float | Sequence[float]) -> float | list[float]:
    """`function` of numbers measured once, or seed by seed of per-seed values (seed i of every argument: the
    runs of one seed share their data order, so differences are paired). Numbers measured once are broadcast."""
    lengths = {len(v) for v in values if isinstance(v, Sequence)}
    if not lengths:
        return function(*values)
    if len(lengths) > 1:
        fail("per_seed", "per-seed value counts", sorted(lengths), "the same number of seeds for every argument")
    count = lengths.pop()
    return [function(*(v[i] if isinstance(v, Sequence) else v for v in values)) for i in range(count)]


def combine(checks: Sequence[Check]) -> Outcome:
    """A claim's verdict: inconclusive if a precondition is unmet; else does not hold if any check fails;
    else inconclusive if any check is undecided; else holds."""
    if not checks:
        fail("combine", "checks", "empty", "at least one check")
    outcomes = [check.outcome for check in checks]
    if any(c.precondition and c.outcome is not Outcome.HOLDS for c in checks):
        return Outcome.INCONCLUSIVE
    if Outcome.FAILS in outcomes:
        return Outcome.FAILS
    if Outcome.INCONCLUSIVE in outcomes:
        return Outcome.INCONCLUSIVE
    return Outcome.HOLDS


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, with x / 0 = inf for x > 0 and 0 / 0 = nan (a gradient that underflowed to 0)."""
    numerator, denominator = float(numerator), float(denominator)
    if denominator == 0:
        return float("nan") if numerator == 0 else math.copysign(float("inf"), numerator)
    return numerator / denominator


def format_number(value: float) -> str:
    """Four significant figures; scientific notation for very small or large magnitudes."""
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.4g}"
