"""A run's files in its work directory: config.json, config_history.jsonl, metrics.jsonl and learning_curve.png.

Every write that fails (a full disk, a file made read-only) becomes a `ValueError` naming the file and the
reason, and leaves no temporary file behind; the file it replaces stays as it was."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import ml_collections


CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"


def write_failed(path: Path, err: OSError) -> ValueError:
    """The error for a record that could not be written: the file, the reason, and what to do."""
    return ValueError(f"workdir: could not write {str(path)!r} ({err.strerror or type(err).__name__}), expected a "
                      "writable file system with free space; free some space or choose another --workdir")


def write_atomically(path: Path, text: str | bytes | None = None, *, writer=None) -> None:
    """Replaces `path` with `text` (or what `writer(temporary_path)` writes) in one rename, so a crash leaves
    the old file or the new one, never half; a failed write removes its temporary file."""
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if writer is not None:
            writer(temporary)
        elif isinstance(text, bytes):
            temporary.write_bytes(text)
        else:
            temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise write_failed(path, err) from None


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as config.json holds it (tuples become lists), so saved and live configs compare equal."""
    return json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))


def write_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    write_atomically(workdir / CONFIG, json.dumps(config_dict(config), indent=2, sort_keys=True))


def read_saved_config(workdir: Path) -> dict | None:
    """The config.json of an earlier run in `workdir`, or None if it has none; a damaged one is an error."""
    path = workdir / CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"workdir: {str(path)!r} cannot be read ({getattr(err, 'strerror', None) or err}), "
                         "expected the config.json of the run being resumed; --restart starts over, deleting this "
                         "run's checkpoints and records") from None
    try:
        saved = json.loads(text)
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"workdir: {str(path)!r} is not a JSON object, expected the config.json of the run being "
                         "resumed; --restart starts over, deleting this run's checkpoints and records")
    return saved


def append_line(path: Path, text: str) -> None:
    """Appends one line; a failure is reported as `write_failed`. A line cut short by a full disk or a crash is
    dropped when the file is next read (`MetricsLog`)."""
    try:
        with path.open("a") as f:
            f.write(text + "\n")
    except OSError as err:
        raise write_failed(path, err) from None


def is_record(value) -> bool:
    """A metrics.jsonl record: a JSON object with an integer `step` >= 0."""
    return (isinstance(value, dict) and isinstance(value.get("step"), int) and not isinstance(value["step"], bool)
            and value["step"] >= 0)


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl; on resume, drops records after the resumed step so
    that no step appears twice. Any line that is not a record (cut short by a crash, random bytes, valid JSON
    of another shape) is skipped with a message naming the file and line. `enabled=False` writes nothing (the
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

    def _parsed_lines(self, report: bool = True) -> list[tuple[str, dict]]:
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise ValueError(f"workdir: {str(self.path)!r} cannot be read ({err.strerror}), expected the run's "
                             "metrics log; --restart starts over, deleting this run's checkpoints and records"
                             ) from None
        parsed = []
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                record = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                line, record = raw.decode("utf-8", errors="replace"), None
            if is_record(record):
                parsed.append((line, record))
            elif report:
                print(f"[jaxarch] {self.path}:{number}: skipping a line that is not a metrics record "
                      f"({line[:60]!r})", file=sys.stderr)
        return parsed

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in values.items()}}
        append_line(self.path, json.dumps(record))

    def records(self) -> list[dict]:
        """The records in the file now (lines that are not records were reported when the log was opened)."""
        return [record for _, record in self._parsed_lines(report=False)]


def plot_learning_curve(records: list[dict], path: Path, title: str) -> None:
    """Training loss (and every evaluation metric) against step, one panel per quantity.

    Drawn on matplotlib's Agg canvas directly: no display needed, and pyplot's backend, which belongs to the
    user's program, stays as it was.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = sorted({k for r in records for k in r if k != "step" and "/" in k
                   and not k.endswith(("steps_per_second", "data_wait_fraction", "learning_rate", "grad_norm"))})
    if not keys:
        return
    fig = Figure(figsize=(4 * len(keys), 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key.endswith("loss") and all(v > 0 for _, v in points):
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    write_atomically(path, writer=lambda temporary: fig.savefig(temporary, dpi=100, format="png"))
