"""`jaxarch tour`: every MNIST-1D model trained with its real config, beside the published numbers."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class TourRow:
    experiment: str
    model: str
    published_accuracy: float | None  # Greydanus 2020, "Scaling down deep learning" (MNIST-1D), test %.


ROWS = (
    TourRow("mnist1d-logreg", "logistic regression", 32.0),
    TourRow("mnist1d-mlp", "MLP", 68.0),
    TourRow("mnist1d-cnn", "CNN", 94.0),
)
HUMAN_ACCURACY = 96.0  # The paper's human baseline.


def format_table(results: list[tuple[TourRow, dict]]) -> str:
    header = f"{'model':<22} {'experiment':<22} {'params':>9} {'test acc':>9} {'published':>9} {'train s':>8}"
    lines = [header, "-" * len(header)]
    for row, result in results:
        published = f"{row.published_accuracy:.0f}%" if row.published_accuracy is not None else "-"
        lines.append(f"{row.model:<22} {row.experiment:<22} {result['params']:>9,} "
                     f"{100 * result['test_accuracy']:>8.1f}% {published:>9} {result['train_seconds']:>8.1f}")
    lines.append(f"{'human':<22} {'':<22} {'':>9} {'':>9} {HUMAN_ACCURACY:>8.0f}% {'':>8}")
    return "\n".join(lines)


def run_tour(workdir: Path, *, progress: bool | None = None) -> list[tuple[TourRow, dict]]:
    """Trains each row's experiment from scratch in `workdir/<experiment>` and returns the final metrics."""
    from jaxarch import experiments
    from jaxarch.train import train_and_evaluate

    results = []
    for row in ROWS:
        run_dir = workdir / row.experiment
        shutil.rmtree(run_dir, ignore_errors=True)  # The tour measures fresh runs, never a resumed one.
        print(f"[jaxarch tour] training {row.experiment} ...", file=sys.stderr, flush=True)
        results.append((row, train_and_evaluate(experiments.get_config(row.experiment), run_dir,
                                                progress=progress)))
    return results
