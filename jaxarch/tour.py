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
    TourRow("mnist1d-rnn", "RNN (tanh)", None),
    TourRow("mnist1d-lstm", "LSTM", None),
    TourRow("mnist1d-gru", "GRU", 91.0),
    TourRow("mnist1d-transformer", "Transformer", None),
)
HUMAN_ACCURACY = 96.0  # The paper's human baseline.
REFERENCE = "mnist1d-cnn"  # the `x CNN` column: each row's training time over the CNN's, measured in the same tour


def format_table(results: list[tuple[TourRow, dict]]) -> str:
    header = (f"{'model':<22} {'experiment':<22} {'params':>9} {'test acc':>9} {'published':>9} {'train s':>8} "
              f"{'x CNN':>6}")
    reference = next((result["train_seconds"] for row, result in results if row.experiment == REFERENCE), None)
    lines = [header, "-" * len(header)]
    for row, result in results:
        published = f"{row.published_accuracy:.0f}%" if row.published_accuracy is not None else "-"
        ratio = f"{result['train_seconds'] / reference:.1f}" if reference else "-"
        lines.append(f"{row.model:<22} {row.experiment:<22} {result['params']:>9,} "
                     f"{100 * result['test_accuracy']:>8.1f}% {published:>9} {result['train_seconds']:>8.1f} "
                     f"{ratio:>6}")
    lines.append(f"{'human':<22} {'':<22} {'':>9} {'':>9} {HUMAN_ACCURACY:>8.0f}% {'':>8} {'':>6}")
    return "\n".join(lines)


def select_rows(models: str | None) -> tuple[TourRow, ...]:
    """The rows named in `models` (comma-separated experiment names, in table order); None: every row."""
    if models is None:
        return ROWS
    names = [name.strip() for name in models.split(",") if name.strip()]
    known = [row.experiment for row in ROWS]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"jaxarch tour: --models is {models!r}, expected a comma-separated subset of {known}")
    return tuple(row for row in ROWS if row.experiment in names)


def run_tour(workdir: Path, *, models: str | None = None,
             progress: bool | None = None) -> list[tuple[TourRow, dict]]:
    """Trains each row's experiment from scratch in `workdir/<experiment>` and returns the final metrics."""
    from jaxarch import experiments
    from jaxarch.train import train_and_evaluate

    results = []
    for row in select_rows(models):
        run_dir = workdir / row.experiment
        shutil.rmtree(run_dir, ignore_errors=True)  # The tour measures fresh runs, never a resumed one.
        print(f"[jaxarch tour] training {row.experiment} ...", file=sys.stderr, flush=True)
        results.append((row, train_and_evaluate(experiments.get_config(row.experiment), run_dir,
                                                progress=progress)))
    return results
