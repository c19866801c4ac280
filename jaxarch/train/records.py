"""A run's files in its work directory: config.json, metrics.jsonl and learning_curve.png."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import ml_collections


def write_atomically(path: Path, text: str) -> None:
    """Replaces `path` with `text` in one rename, so a crash leaves the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    write_atomically(workdir / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str))


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl; on resume, drops records after the resumed step so
    that no step appears twice, and a last line cut short by a crash. `enabled=False` writes nothing (the
    processes of a multi-process run other than the first, which share its work directory)."""

    def __init__(self, path: Path, resume_step: int | None, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        if resume_step is None:
            write_atomically(path, "")
        elif path.exists():
            kept = [line for line, record in self._parsed_lines() if record["step"] <= resume_step]
            write_atomically(path, "".join(line + "\n" for line in kept))

    def _parsed_lines(self) -> list[tuple[str, dict]]:
        parsed = []
        for line in self.path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                parsed.append((line, json.loads(line)))
            except json.JSONDecodeError:
                print(f"[jaxarch] {self.path}: dropping an incomplete line {line[:60]!r}", file=sys.stderr)
        return parsed

    def write(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [record for _, record in self._parsed_lines()]


def plot_learning_curve(records: list[dict], path: Path, title: str) -> None:
    """Training loss (and every evaluation metric) against step, one panel per quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k != "step" and "/" in k
                   and not k.endswith(("steps_per_second", "learning_rate", "grad_norm"))})
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key.endswith("loss") and all(v > 0 for _, v in points):
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
