"""Runs every claim's measurement and writes the report: index.md, index.html, report.json and figures/."""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from jaxarch.report import (attention_speed, equivariance, long_range, one_architecture, parameter_sharing,
                            pooling_invariance, receptive_field, vanishing_gradients)
from jaxarch.report.budgets import FULL, Budget
from jaxarch.report.context import Context
from jaxarch.report.device import device_description
from jaxarch.report.render import Report, to_html, to_markdown
from jaxarch.report.runs import Runs

# In the chapter's order; receptive_field and pooling_invariance reuse parameter_sharing's CNN.
CLAIMS = (equivariance, parameter_sharing, receptive_field, pooling_invariance, vanishing_gradients,
          attention_speed, long_range, one_architecture)


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"report.json: cannot write a {type(value).__name__}")


def write_report(report: Report, out_dir: Path) -> None:
    (out_dir / "index.md").write_text(to_markdown(report))
    (out_dir / "index.html").write_text(to_html(report))
    data = {"budget": report.budget, "command": report.command, "device": report.device, "date": report.date,
            "wall_seconds": round(report.wall_seconds, 1), "cpu_seconds": round(report.cpu_seconds, 1),
            "claims": [c.to_json() for c in report.claims]}
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def run_report(out_dir: str | Path, budget: Budget = FULL, *, claims: Sequence[ModuleType] = CLAIMS,
               command: str = "jaxarch report", progress: bool | None = False) -> Report:
    """Measures `claims` (modules of CLAIMS, by default all) with `budget` and writes the report into `out_dir`.
    Training runs (each over `budget.seeds` seeds) go to a temporary directory, removed at the end: the report
    keeps its numbers and figures."""
    if not isinstance(budget, Budget):
        raise ValueError(f"run_report: budget is {type(budget).__name__}, expected a jaxarch.report.Budget")
    unknown = [getattr(module, "__name__", repr(module)) for module in claims if module not in CLAIMS]
    if unknown or not claims:
        raise ValueError(f"run_report: claims are {unknown or 'empty'}, expected modules of "
                         f"{[m.__name__ for m in CLAIMS]}")
    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    results = []
    with tempfile.TemporaryDirectory(prefix="jaxarch-report-") as workdir:
        context = Context(budget, Runs(workdir, progress=progress, seeds=budget.seeds), out_dir)
        for module in claims:
            claim_start = time.perf_counter()
            result = module.run(context)
            results.append(result)
            print(f"[jaxarch report] claim {result.number} ({result.title}): {result.verdict.value} "
                  f"[{time.perf_counter() - claim_start:.0f} s]", file=sys.stderr, flush=True)
    report = Report(tuple(results), budget.name, command, device_description(), date, time.perf_counter() - start,
                    time.process_time() - cpu_start)
    write_report(report, out_dir)
    return report
