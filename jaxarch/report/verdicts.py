"""Verdicts computed from measurements: each check compares one measured number with stated thresholds.

A check has three outcomes. It *holds* when the number is on the claim's side of the `holds` threshold, it
*does not hold* when it is past the `fails` threshold, and between the two it is *inconclusive at this
budget*: the measurement cannot decide (too little training, timing noise). A *precondition* is a check whose
failure cannot refute the claim, only leave it undecided (e.g. "some model learned the task at all").

Nothing here stores an outcome: it is recomputed from `value` every time it is read, so a changed number
changes the verdict.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

from jaxarch.checks import fail


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
    def outcome(self) -> Outcome:
        value = float(self.value)
        if math.isnan(value):
            return Outcome.INCONCLUSIVE
        if self.direction == ">=":
            held, failed = value >= self.holds, value < self.fail_threshold
        else:
            held, failed = value <= self.holds, value > self.fail_threshold
        if held:
            return Outcome.HOLDS
        if failed and not self.precondition:
            return Outcome.FAILS
        return Outcome.INCONCLUSIVE

    def holds_text(self) -> str:
        return f"{self.direction} {format_number(self.holds)}{self.unit}"

    def fails_text(self) -> str:
        if self.precondition:
            return "never (a precondition: unmet means inconclusive)"
        opposite = "<" if self.direction == ">=" else ">"
        return f"{opposite} {format_number(self.fail_threshold)}{self.unit}"


def at_least(what: str, value: float, holds: float, fails: float | None = None, *, unit: str = "",
             precondition: bool = False) -> Check:
    """Holds when `value >= holds`; does not hold when `value < fails` (default: `holds`)."""
    return Check(what, float(value), ">=", holds, fails, precondition, unit)


def at_most(what: str, value: float, holds: float, fails: float | None = None, *, unit: str = "",
            precondition: bool = False) -> Check:
    """Holds when `value <= holds`; does not hold when `value > fails` (default: `holds`)."""
    return Check(what, float(value), "<=", holds, fails, precondition, unit)


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
