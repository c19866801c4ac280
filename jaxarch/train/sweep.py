"""`sweep(config, grid, seeds, workdir)`: an experiment over a grid of overrides, each grid point over several
seeds, summarised as means with their spread.

A member is one (grid point, seed): exactly the single run `jaxarch run NAME seed=S key=V ...`, in its own run
directory `workdir/<point>/seed=S` (config.json, metrics.jsonl, checkpoints/, and result.json once finished).
Started again with the same arguments, a sweep skips the members that have a result.json and resumes the others
from their checkpoints, so its summary is the one an uninterrupted sweep writes.

Strategies: "sequential" trains the members one after another with `train_and_evaluate` (bit-identical to the
single runs); "vmap" stacks the train states of members that differ only in seed, learning rate and weight
decay and trains them with one jitted step (`jaxarch.train.stacked`; equal to the single runs within float
rounding); "auto" picks vmap on an accelerator and sequential on the CPU, where a stacked step saves little.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxarch.train.records import write_atomically
from jaxarch.train.stats import CONFIDENCE, describe, format_interval

STRATEGIES = ("auto", "sequential", "vmap")
DEFAULT_SEEDS = 5
RESULT = "result.json"
# Fields of a run's result that describe the run rather than measure the model.
_RUN_FIELDS = ("params", "steps", "train_seconds", "steps_per_second", "wall_seconds", "resumed_from",
               "best_checkpoint_step", "skipped_steps", "stacked_members")
_TIMING_FIELDS = ("train_seconds", "wall_seconds")


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the sweep: the grid point's overrides (key -> value text), its seed, config and directory."""

    point: tuple[tuple[str, str], ...]
    seed: int
    config: ml_collections.ConfigDict
    workdir: Path

    @property
    def overrides(self) -> list[str]:
        """The command line of the equivalent single run: `jaxarch run NAME seed=S key=V ...`."""
        return [f"seed={self.seed}", *(f"{key}={value}" for key, value in self.point)]

    def finished(self) -> dict | None:
        """The member's final metrics if it finished before (its result.json), else None."""
        path = self.workdir / RESULT
        if not path.exists():
            return None
        saved = json.loads((self.workdir / "config.json").read_text())
        if saved != json.loads(_config_json(self.config)):
            raise ValueError(f"sweep: {self.workdir} holds a finished run of another config than the member "
                             f"{' '.join(self.overrides)}, expected the same sweep; choose another --workdir")
        return json.loads(path.read_text())


def _config_json(config: ml_collections.ConfigDict) -> str:
    # As jaxarch.train.records.write_config writes it.
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def split_values(text: str) -> list[str]:
    """"1e-3,3e-3" -> ["1e-3", "3e-3"]; commas inside brackets belong to the value: "(32,64),(64,)" is two."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    values = [value.strip() for value in values]
    if any(not value for value in values):
        raise ValueError(f"sweep: grid values {text!r} hold an empty value, expected comma-separated values")
    return values


def parse_grid(items: Sequence[str]) -> tuple[dict[str, list[str]], list[int] | None]:
    """Command-line `key=v1,v2` items -> (grid: key -> value texts, seeds from a `seed=...` item or None)."""
    grid: dict[str, list[str]] = {}
    seeds = None
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"sweep: grid item {item!r} is not of the form key=v1,v2,...")
        if key in grid or (key == "seed" and seeds is not None):
            raise ValueError(f"sweep: key {key!r} is listed twice, expected each key once with all its values")
        values = split_values(text)
        if key == "seed":
            seeds = [_seed(value) for value in values]
        else:
            grid[key] = values
    return grid, seeds


def _seed(text: Any) -> int:
    try:
        seed = int(text)
    except (TypeError, ValueError):
        seed = None
    if seed is None or isinstance(text, bool) or str(seed) != str(text).strip():
        raise ValueError(f"sweep: seed value {text!r} is not an integer, expected seeds like seed=0,1,2")
    return seed


def _value_text(value: Any) -> str:
    """A grid value as an override's text: strings as they are, other values as Python literals."""
    return value if isinstance(value, str) else repr(value)


def _label(point: Sequence[tuple[str, str]]) -> str:
    """A directory name for a grid point: "optim.learning_rate=0.001_model.features=(32,64)"."""
    parts = [f"{key}={value.replace(' ', '')}" for key, value in point]
    return re.sub(r"[^A-Za-z0-9._=,+()\-]", "-", "_".join(parts))


def plan(config: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]], seeds: Sequence[int],
         workdir: str | Path) -> list[Member]:
    """Every member of the sweep, grid points in the product order of `grid`, seeds within each point.

    Each grid point's config is built and checked here (override_config, validate_config, and the model
    against the dataset's inputs), so that a value that does not fit its key fails before anything trains.
    """
    from jaxarch.train.configure import override_config
    from jaxarch.train.loop import build_dataset_and_model
    from jaxarch.train.preflight import check_model_accepts_data, validate_config

    seeds = [_seed(seed) for seed in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"sweep: seeds are {seeds}, expected at least one seed and no seed twice")
    if "seed" in grid:
        raise ValueError("sweep: the grid lists 'seed', expected the seeds in `seeds` (seed=0,1,2 or --seeds N)")
    grid = {key: [_value_text(value) for value in values] for key, values in grid.items()}
    for key, values in grid.items():
        if not values or len(set(values)) != len(values):
            raise ValueError(f"sweep: key {key!r} has values {values}, expected at least one and no value twice")
    workdir = Path(workdir)
    # A key with one value is an override shared by every member; only the keys that vary name a point's directory.
    varying = [key for key, values in grid.items() if len(values) > 1]
    members = []
    for values in itertools.product(*grid.values()):
        point = tuple(zip(grid, values))
        overrides = [f"{key}={value}" for key, value in point]
        try:
            point_config = override_config(config, overrides)
            validate_config(point_config)
            dataset, model = build_dataset_and_model(point_config)
            check_model_accepts_data(point_config, dataset, model)
        except ValueError as err:
            raise ValueError(f"sweep: the grid point {' '.join(overrides) or '(no overrides)'} is not a valid "
                             f"config: {err}") from None
        label = [(key, value) for key, value in point if key in varying]
        point_dir = workdir / _label(label) if label else workdir
        for seed in seeds:
            member_config = override_config(point_config, [f"seed={seed}"])
            _check_init_from(member_config)
            members.append(Member(point, seed, member_config, point_dir / f"seed={seed}"))
    return members


def _check_init_from(config: ml_collections.ConfigDict) -> None:
    """A member's warm start must exist before any member trains (a curriculum's stage 2 over seeds whose
    stage 1 lacks one of them would otherwise fail only when that member's turn comes)."""
    from jaxarch.train.checkpoint import check_warm_start_source, init_from_dir

    if config.train.init_from:
        source = init_from_dir(config.train.init_from, config.seed)
        try:
            check_warm_start_source(source)
        except ValueError as err:
            raise ValueError(f"sweep: seed {config.seed} starts from train.init_from={str(source)!r}; {err}") from None


def choose_strategy(strategy: str) -> str:
    """"auto": vmap on an accelerator, sequential on the CPU (where a stacked step is not faster)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"sweep: strategy is {strategy!r}, expected one of {list(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    import jax

    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def sweep(config: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]] | None = None,
          seeds: Sequence[int] | int = DEFAULT_SEEDS, workdir: str | Path = "runs/sweep", *,
          strategy: str = "auto", members_per_group: int | None = None, progress: bool | None = None,
          command: str | None = None) -> dict:
    """Trains every member of the grid (see `plan`) and returns the summary, also written to
    workdir/summary.json and summary.md beside workdir/learning_curves.png.

    `seeds` is a list of seeds or a count (0..N-1). `members_per_group` bounds how many members the vmap
    strategy stacks into one step (default: a whole group). A member that finished before is not trained again.
    """
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    members = plan(config, grid or {}, seeds, workdir)
    strategy = choose_strategy(strategy)
    if members_per_group is not None and members_per_group < 1:
        raise ValueError(f"sweep: members_per_group is {members_per_group}, expected a positive integer")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[Path, dict] = {}
    for member in members:
        done = member.finished()
        if done is not None:
            results[member.workdir] = done
    todo = [member for member in members if member.workdir not in results]
    if results:
        print(f"[jaxarch sweep] {len(results)} of {len(members)} members finished before; training the other "
              f"{len(todo)}", file=sys.stderr)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(members), initial=len(results), disable=(not progress) if progress is not None else None,
               file=sys.stderr, unit="member", dynamic_ncols=True)

    def finish(member: Member, result: dict) -> None:
        write_atomically(member.workdir / RESULT, json.dumps(result, indent=2))
        results[member.workdir] = result
        bar.update(1)

    try:
        if strategy == "sequential":
            from jaxarch.train.loop import train_and_evaluate

            for member in todo:
                bar.set_postfix_str(" ".join(member.overrides))
                finish(member, train_and_evaluate(member.config, member.workdir, progress=False))
        else:
            from jaxarch.train.stacked import train_stacked

            for group in groups(todo, members_per_group):
                bar.set_postfix_str(f"{len(group)} stacked: " + ", ".join(" ".join(m.overrides) for m in group))
                for member, result in zip(group, train_stacked(group)):
                    finish(member, result)
    finally:
        bar.close()
    summary = summarize(config.name, members, results, strategy=strategy, workdir=workdir)
    write_atomically(workdir / "summary.json", json.dumps(summary, indent=2))
    write_atomically(workdir / "summary.md", summary_markdown(summary, command))
    plot_learning_curves(members, workdir / "learning_curves.png", config.name)
    return summary


# Keys a stacked step can take as per-member arrays; members differing in anything else are separate groups.
STACKABLE = ("seed", "optim.learning_rate", "optim.weight_decay")


def group_key(config: ml_collections.ConfigDict) -> str:
    """The config without the stackable keys: members with equal keys share shapes and can be stacked."""
    flat = json.loads(_config_json(config))
    flat.pop("seed")
    for key in STACKABLE[1:]:
        section, name = key.split(".")
        flat[section].pop(name, None)
    return json.dumps(flat, sort_keys=True)


def groups(members: Sequence[Member], members_per_group: int | None = None) -> list[list[Member]]:
    """Members that can share one stacked step, in plan order, split into chunks of `members_per_group`."""
    by_key: dict[str, list[Member]] = {}
    for member in members:
        by_key.setdefault(group_key(member.config), []).append(member)
    chunked = []
    for group in by_key.values():
        size = members_per_group or len(group)
        chunked.extend(group[start:start + size] for start in range(0, len(group), size))
    return chunked


def metric_names(result: dict) -> list[str]:
    """The evaluation metrics of a run's result (e.g. test_accuracy, test_loss), not its bookkeeping."""
    return sorted(key for key, value in result.items()
                  if key not in _RUN_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool))


def summarize(name: str, members: Sequence[Member], results: Mapping[Path, dict], *, strategy: str,
              workdir: Path) -> dict:
    """Per grid point: each metric's `describe` over the seeds, the per-seed values, and (apart, since they
    depend on the machine and on interruptions) the training times."""
    points: dict[tuple, list[Member]] = {}
    for member in members:
        points.setdefault(member.point, []).append(member)
    summary_points = []
    for point, point_members in points.items():
        rows = [results[member.workdir] for member in point_members]
        metrics = metric_names(rows[0])
        summary_points.append({
            "overrides": dict(point),
            "params": rows[0].get("params"),
            "metrics": {metric: describe([row[metric] for row in rows]) for metric in metrics},
            "seeds": [{"seed": member.seed, "workdir": str(member.workdir.relative_to(workdir)),
                       **{metric: row[metric] for metric in metrics}}
                      for member, row in zip(point_members, rows)],
            "timing": {field: describe([row[field] for row in rows]) for field in _TIMING_FIELDS
                       if all(row.get(field) is not None for row in rows)},
        })
    return {"experiment": name, "workdir": str(workdir), "strategy": strategy, "confidence": CONFIDENCE,
            "members": len(members), "points": summary_points}


def _number(value: float | None, scale: float, spec: str) -> str:
    return "-" if value is None else f"{scale * value:{spec}}"


def _scale(metric: str) -> tuple[float, str, str]:
    """(scale, format spec, unit) of a metric's numbers. Accuracies read as percentages with two decimals; every
    other metric with four significant digits, so that a loss of 1.4e-4 does not print as 0.0001."""
    return (100.0, ".2f", "%") if metric.endswith("accuracy") else (1.0, ".4g", "")


def summary_markdown(summary: dict, command: str | None = None) -> str:
    """Each grid point's metrics (mean, std, 95% interval, min, max, n) and its per-seed table."""
    lines = [f"# Sweep: {summary['experiment']}", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"{summary['members']} members, strategy {summary['strategy']}. Spread: sample standard deviation; "
              f"interval: {100 * summary['confidence']:.0f}% Student-t interval of the mean.", ""]
    for point in summary["points"]:
        title = " ".join(f"{k}={v}" for k, v in point["overrides"].items()) or "the experiment's config"
        lines += [f"## {title}", ""]
        if point["params"] is not None:
            lines += [f"{point['params']:,} parameters.", ""]
        lines += ["| metric | mean | std | 95% CI | min | max | n |", "|---|---|---|---|---|---|---|"]
        for metric, stats in point["metrics"].items():
            scale, spec, unit = _scale(metric)
            lines.append(f"| {metric}{' (%)' if unit else ''} | {_number(stats['mean'], scale, spec)} | "
                         f"{_number(stats['std'], scale, spec)} | {format_interval(stats, scale, spec=spec)} | "
                         f"{_number(stats['min'], scale, spec)} | {_number(stats['max'], scale, spec)} | "
                         f"{stats['n']} |")
        for field, stats in point["timing"].items():
            lines.append(f"| {field} (machine-dependent) | {stats['mean']:.1f} | {_number(stats['std'], 1, '.1f')} | "
                         f"{format_interval(stats, 1, 1)} | {stats['min']:.1f} | {stats['max']:.1f} | {stats['n']} |")
        metrics = list(point["metrics"])
        lines += ["", "| seed | " + " | ".join(metrics) + " | run directory |",
                  "|---" * (len(metrics) + 2) + "|"]
        for row in point["seeds"]:
            values = [_number(row[m], *_scale(m)[:2]) for m in metrics]
            lines.append(f"| {row['seed']} | " + " | ".join(values) + f" | {row['workdir']} |")
        lines.append("")
    return "\n".join(lines)


def _curves(member: Member) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    path = member.workdir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        for key, value in record.items():
            if "/" in key and value is not None and not key.endswith(("steps_per_second", "data_wait_fraction",
                                                                     "learning_rate", "skipped_steps")):
                curves.setdefault(key, {})[record["step"]] = value
    return curves


def plot_learning_curves(members: Sequence[Member], path: Path, title: str) -> None:
    """One panel per logged quantity; per grid point the mean over seeds and a band of one standard deviation,
    at the steps every seed logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    points: dict[tuple, list[dict]] = {}
    for member in members:
        points.setdefault(member.point, []).append(_curves(member))
    keys = sorted({key for runs in points.values() for run in runs for key in run})
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for point, runs in points.items():
            steps = sorted(set.intersection(*(set(run.get(key, {})) for run in runs)))
            if not steps:
                continue
            values = np.array([[run[key][step] for step in steps] for run in runs])
            mean = values.mean(axis=0)
            label = " ".join(f"{k}={v}" for k, v in point) or f"n={len(runs)}"
            line, = ax.plot(steps, mean, label=label, marker="." if len(steps) < 30 else None)
            if len(runs) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xlabel("step")
        ax.set_title(key)
        if key.endswith("loss") and ax.lines and all(min(line.get_ydata()) > 0 for line in ax.lines):
            ax.set_yscale("log")
    if len(points) > 1:
        axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{title}: mean over seeds, band: +-1 std")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
