"""Figures for the report, drawn on matplotlib's Agg canvas directly (no display, pyplot's state untouched)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxarch.checks import fail


def new_figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save(figure, path: str | Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def line_plot(path: str | Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str, log_x: bool = False, log_y: bool = False,
              reference: tuple[float, str] | None = None) -> None:
    """One line per `{label: (xs, ys)}`; `reference` = (y, label) draws a dashed horizontal line."""
    if not curves:
        fail("line_plot", "curves", "empty", "at least one {label: (xs, ys)} entry")
    figure = new_figure()
    axes = figure.add_subplot()
    for label, (xs, ys) in curves.items():
        ys = np.asarray(ys, dtype=np.float64)
        if log_y:
            ys = np.where(ys > 0, ys, np.nan)  # a log axis cannot show zeros
        axes.plot(np.asarray(xs, dtype=np.float64), ys, marker="o", label=str(label))
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
    axes.set_xscale("log" if log_x else "linear")
    axes.set_yscale("log" if log_y else "linear")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save(figure, path)
