"""What every claim's measurement receives: the budget, the shared training runs and where figures go."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxarch.report.budgets import Budget
from jaxarch.report.results import Figure
from jaxarch.report.runs import Runs

FIGURE_DIR = "figures"


@dataclasses.dataclass(frozen=True)
class Context:
    budget: Budget
    runs: Runs
    out_dir: Path  # the report directory

    def figure(self, name: str, caption: str) -> tuple[Path, Figure]:
        """The path to write figure `name` (a .png) to, and its entry for the report."""
        path = self.out_dir / FIGURE_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, Figure(f"{FIGURE_DIR}/{name}", caption)
