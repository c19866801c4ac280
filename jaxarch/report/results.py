"""What one claim's measurement produces: tables of numbers, figures, checks and the verdict they imply."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxarch.report.verdicts import Check, Outcome, combine


@dataclasses.dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    caption: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    file: str  # relative to the report directory
    caption: str


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """`claim`: the textbook sentence; `method`: how it was measured; `numbers`: every measured quantity the
    checks use (also written to report.json); `notes`: what the reader should know when reading the numbers."""

    number: int
    title: str
    claim: str
    method: str
    checks: tuple[Check, ...]
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    numbers: dict = dataclasses.field(default_factory=dict)
    notes: str = ""
    excerpt: str = ""  # verbatim text shown as it is (e.g. a model's sample)
    excerpt_caption: str = ""

    @property
    def verdict(self) -> Outcome:
        return combine(self.checks)

    def to_json(self) -> dict:
        return {
            "number": self.number, "title": self.title, "claim": self.claim, "verdict": self.verdict.value,
            "checks": [{"what": c.what, "value": c.value, **_spread(c), "holds_if": c.holds_text(),
                        "fails_if": c.fails_text(), "outcome": c.outcome.value} for c in self.checks],
            "numbers": self.numbers,
            "figures": [f.file for f in self.figures],
        }


def _spread(check: Check) -> dict:
    """A check measured over seeds: its per-seed values and the 95% interval of their mean."""
    if not check.samples:
        return {}
    return {"samples": list(check.samples), "interval_95": list(check.interval) if check.interval else None}
