"""`jaxarch tour`: every MNIST-1D model trained with its real config, beside the published numbers."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from jaxarch.train.stats import format_spread


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


def _accuracy(result: dict) -> str:
    """"97.9%", or over several seeds "97.9 +- 0.4% (n=5)"."""
    spread = result.get("test_accuracy_spread")
    if spread is None:
        return f"{100 * result['test_accuracy']:.1f}%"
    return format_spread(spread, 100, unit="%")


def format_table(results: list[tuple[TourRow, dict]]) -> str:
    """One row per model; with several seeds the test accuracy is their mean +- standard deviation and the
    training time their mean."""
    width = max([9, *(len(_accuracy(result)) for _, result in results)])
    header = (f"{'model':<22} {'experiment':<22} {'params':>9} {'test acc':>{width}} {'published':>9} "
              f"{'train s':>8} {'x CNN':>6}")
    reference = next((result["train_seconds"] for row, result in results if row.experiment == REFERENCE), None)
    lines = [header, "-" * len(header)]
    for row, result in results:
        published = f"{row.published_accuracy:.0f}%" if row.published_accuracy is not None else "-"
        ratio = f"{result['train_seconds'] / reference:.1f}" if reference else "-"
        lines.append(f"{row.model:<22} {row.experiment:<22} {result['params']:>9,} "
                     f"{_accuracy(result):>{width}} {published:>9} {result['train_seconds']:>8.1f} {ratio:>6}")
    lines.append(f"{'human':<22} {'':<22} {'':>9} {'':>{width}} {f'{HUMAN_ACCURACY:.0f}%':>9} {'':>8} {'':>6}")
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


def run_tour(workdir: Path, *, models: str | None = None, progress: bool | None = None,
             seeds: int = 1) -> list[tuple[TourRow, dict]]:
    """Trains each row's experiment from scratch in `workdir/<experiment>` and returns the final metrics.

    With `seeds` > 1 each experiment is a sweep over seeds 0..seeds-1 (`jaxarch.train.sweep`, one after another):
    its result holds the means (test accuracy, test loss, train seconds), the params, and
    "test_accuracy_spread", the accuracy's `jaxarch.train.stats.describe`.
    """
    from jaxarch import experiments
    from jaxarch.train import train_and_evaluate
    from jaxarch.train.sweep import sweep

    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"jaxarch tour: --seeds is {seeds!r}, expected a positive integer")
    results = []
    for row in select_rows(models):
        run_dir = workdir / row.experiment
        shutil.rmtree(run_dir, ignore_errors=True)  # The tour measures fresh runs, never a resumed one.
        print(f"[jaxarch tour] training {row.experiment}{f' with {seeds} seeds' if seeds > 1 else ''} ...",
              file=sys.stderr, flush=True)
        config = experiments.get_config(row.experiment)
        if seeds == 1:
            results.append((row, train_and_evaluate(config, run_dir, progress=progress)))
            continue
        [point] = sweep(config, {}, seeds, run_dir, strategy="sequential", progress=progress)["points"]
        metrics = point["metrics"]
        results.append((row, {"experiment": row.experiment, "params": point["params"],
                              "test_accuracy": metrics["test_accuracy"]["mean"],
                              "test_loss": metrics["test_loss"]["mean"],
                              "train_seconds": point["timing"]["train_seconds"]["mean"],
                              "test_accuracy_spread": metrics["test_accuracy"], "workdir": str(run_dir)}))
    return results
