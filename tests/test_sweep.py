"""`jaxarch sweep`: every member is its single run (bit-identical sequentially, within rounding stacked with
vmap, also split over 8 simulated devices), a bad grid value fails before training, a killed sweep resumes to
the same summary, and the statistics are the textbook ones."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxarch import experiments
from jaxarch.cli import main
from jaxarch.train import sweep
from jaxarch.train.configure import override_config
from jaxarch.train.loop import train_and_evaluate
from jaxarch.train.stats import describe, format_interval, format_spread
from jaxarch.train.sweep import parse_grid, split_values, summary_markdown

REPO = Path(__file__).resolve().parents[1]
# A small CNN with dropout (the dropout keys matter), a warm-up and cosine decay, an evaluation and checkpoints.
TINY = ["train.steps=24", "train.batch_size=16", "train.log_every=6", "train.eval_every=12",
        "train.checkpoint_every=6", "train.eval_batch_size=250", "model.features=(4,8)", "model.dropout_rate=0.3",
        "optim.warmup_steps=4", "optim.learning_rate=0.01"]
SEEDS = [0, 1, 2]
# Stacked steps batch the members' matmuls and convolutions, which may sum in another order.
TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_config():
    return override_config(experiments.get_config("mnist1d-cnn"), TINY)


def per_seed(summary):
    return [[{k: v for k, v in row.items() if k != "workdir"} for row in point["seeds"]]
            for point in summary["points"]]


def curve(workdir: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in records if key in r]


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    """`jaxarch run mnist1d-cnn seed=S <TINY>` for each seed."""
    root = tmp_path_factory.mktemp("single")
    return {seed: train_and_evaluate(override_config(tiny_config(), [f"seed={seed}"]), root / str(seed),
                                     progress=False) for seed in SEEDS}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sequential")
    return workdir, sweep(tiny_config(), {}, SEEDS, workdir, strategy="sequential", progress=False)


def test_sequential_members_are_their_single_runs_bit_for_bit(sequential, single_runs):
    workdir, summary = sequential
    [point] = summary["points"]
    assert [row["seed"] for row in point["seeds"]] == SEEDS
    for row in point["seeds"]:
        single = single_runs[row["seed"]]
        assert row["test_accuracy"] == single["test_accuracy"] and row["test_loss"] == single["test_loss"]
        assert curve(workdir / row["workdir"]) == curve(Path(single["workdir"]))
    # The seeds differ (their own parameters, batches and dropout keys), so the spread is real.
    assert len({row["test_loss"] for row in point["seeds"]}) == 3
    losses = [single_runs[seed]["test_loss"] for seed in SEEDS]
    assert point["metrics"]["test_loss"] == describe(losses)
    assert point["metrics"]["test_loss"]["n"] == 3
    for name in ("summary.json", "summary.md", "learning_curves.png"):
        assert (workdir / name).exists()
    assert json.loads((workdir / "summary.json").read_text()) == summary
    for seed in SEEDS:
        assert {"config.json", "metrics.jsonl", "checkpoints", "result.json"} <= {
            p.name for p in (workdir / f"seed={seed}").iterdir()}


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stacked")
    return workdir, sweep(tiny_config(), {}, SEEDS, workdir, strategy="vmap", progress=False)


def test_vmap_members_equal_their_single_runs_within_rounding(stacked, single_runs):
    tmp_path, summary = stacked
    [point] = summary["points"]
    for row in point["seeds"]:
        single = single_runs[row["seed"]]
        assert row["test_loss"] == pytest.approx(single["test_loss"], abs=TOLERANCE)
        assert abs(row["test_accuracy"] - single["test_accuracy"]) <= 0.002  # one of 500 examples may flip
        stacked_curve, single_curve = curve(tmp_path / row["workdir"]), curve(Path(single["workdir"]))
        assert [s for s, _ in stacked_curve] == [s for s, _ in single_curve]
        np.testing.assert_allclose([v for _, v in stacked_curve], [v for _, v in single_curve], atol=TOLERANCE)
        result = json.loads((tmp_path / row["workdir"] / "result.json").read_text())
        assert result["stacked_members"] == 3
        # The member's checkpoint is the single run's: `jaxarch run` resumes it (here: finds it finished).
        rerun = train_and_evaluate(override_config(tiny_config(), [f"seed={row['seed']}"]),
                                   tmp_path / row["workdir"], progress=False)
        assert rerun["resumed_from"] == 24 and rerun["test_loss"] == row["test_loss"]


@pytest.mark.parametrize("strategy", ["sequential", "vmap"])
def test_a_second_stage_starts_each_seed_from_the_same_seed_of_the_first(tmp_path, sequential, strategy):
    """`train.init_from=DIR/seed={seed}`: a curriculum's second stage swept over seeds, each warm-started from
    its own seed's first stage, as `jaxarch run NAME seed=S train.init_from=DIR/seed=S` would be."""
    first, _ = sequential
    second = override_config(tiny_config(), ["train.steps=6", "train.eval_every=0",
                                             f"train.init_from={first}/seed={{seed}}"])
    summary = sweep(second, {}, [0, 1], tmp_path / "sweep", strategy=strategy, progress=False)
    for row in summary["points"][0]["seeds"]:
        seed = row["seed"]
        own = train_and_evaluate(override_config(second, [f"seed={seed}", f"train.init_from={first}/seed={seed}"]),
                                 tmp_path / f"own{seed}", progress=False)
        other = train_and_evaluate(override_config(second, [f"seed={seed}",
                                                            f"train.init_from={first}/seed={1 - seed}"]),
                                   tmp_path / f"other{seed}", progress=False)
        assert row["test_loss"] == pytest.approx(own["test_loss"], abs=TOLERANCE if strategy == "vmap" else 0)
        assert abs(own["test_loss"] - other["test_loss"]) > 10 * TOLERANCE
    with pytest.raises(ValueError, match=r"sweep: seed 5 starts from train.init_from=.*seed=5.*no checkpoints/"):
        sweep(second, {}, [0, 5], tmp_path / "missing", strategy=strategy, progress=False)
    assert not (tmp_path / "missing" / "seed=0" / "result.json").exists()


class Killed(Exception):
    pass


def test_a_killed_vmap_sweep_resumes_its_stack_to_the_same_summary(tmp_path, stacked, monkeypatch):
    from jaxarch.train.checkpoint import Checkpointer

    save = Checkpointer.save
    saved_at_12 = []

    def save_then_stop(self, state, step, metrics=None):
        written = save(self, state, step, metrics)
        saved_at_12.extend([step] if step == 12 else [])
        if len(saved_at_12) == len(SEEDS):  # every member's checkpoint at step 12 is written: stop there
            raise Killed
        return written

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    with pytest.raises(Killed):
        sweep(tiny_config(), {}, SEEDS, tmp_path, strategy="vmap", progress=False)
    monkeypatch.setattr(Checkpointer, "save", save)
    assert not list(tmp_path.glob("seed=*/result.json"))
    resumed = sweep(tiny_config(), {}, SEEDS, tmp_path, strategy="vmap", progress=False)
    assert [json.loads(p.read_text())["resumed_from"] for p in sorted(tmp_path.glob("seed=*/result.json"))] == [12] * 3
    whole_dir, whole = stacked
    assert per_seed(resumed) == per_seed(whole)  # the same stacked steps from the same states: bit for bit
    for seed in SEEDS:
        assert curve(tmp_path / f"seed={seed}") == curve(whole_dir / f"seed={seed}")


def test_vmap_stacks_learning_rates_and_weight_decays_as_arrays(tmp_path):
    grid = {"optim.learning_rate": [0.003, 0.02], "optim.weight_decay": [0.0, 0.1]}
    stacked = sweep(tiny_config(), grid, [0], tmp_path / "vmap", strategy="vmap", progress=False)
    plain = sweep(tiny_config(), grid, [0], tmp_path / "seq", strategy="sequential", progress=False)
    assert [p["overrides"] for p in stacked["points"]] == [p["overrides"] for p in plain["points"]]
    losses = [p["metrics"]["test_loss"]["mean"] for p in plain["points"]]
    assert len(set(losses)) == 4  # every hyperparameter reached its member
    np.testing.assert_allclose([p["metrics"]["test_loss"]["mean"] for p in stacked["points"]], losses,
                               atol=TOLERANCE)
    results = [json.loads(path.read_text()) for path in sorted((tmp_path / "vmap").glob("*/seed=0/result.json"))]
    assert [r["stacked_members"] for r in results] == [4] * 4  # one group: the shapes are the same


def test_members_per_group_and_shape_changes_make_separate_groups(tmp_path):
    from jaxarch.train.sweep import groups, plan

    members = plan(tiny_config(), {"model.features": ["(4,8)", "(4,)"], "optim.learning_rate": [0.01, 0.02]},
                   [0, 1], tmp_path)
    assert [len(g) for g in groups(members)] == [4, 4]
    assert [len(g) for g in groups(members, 3)] == [3, 1, 3, 1]
    for group in groups(members):
        assert len({m.config.model.features for m in group}) == 1


def test_only_the_keys_that_vary_name_the_grid_points_directories(tmp_path):
    from jaxarch.train.sweep import plan

    members = plan(tiny_config(), {"optim.weight_decay": [0.1], "optim.learning_rate": [0.01, 0.02]}, [0], tmp_path)
    assert [m.workdir.relative_to(tmp_path).as_posix() for m in members] == [
        "optim.learning_rate=0.01/seed=0", "optim.learning_rate=0.02/seed=0"]
    assert [m.point for m in members][0] == (("optim.weight_decay", "0.1"), ("optim.learning_rate", "0.01"))
    assert {m.config.optim.weight_decay for m in members} == {0.1}
    [alone] = plan(tiny_config(), {"optim.weight_decay": [0.1]}, [3], tmp_path)
    assert alone.workdir == tmp_path / "seed=3" and alone.config.optim.weight_decay == 0.1


def test_killed_sweep_resumes_to_the_uninterrupted_summary(tmp_path, sequential):
    _, whole = sequential
    workdir = tmp_path / "cut"
    # The tiny config as one-valued grid items; model.features=(4,8) is one value (its comma is in brackets).
    command = [sys.executable, "-m", "jaxarch.cli", "sweep", "mnist1d-cnn", *TINY, "--seeds", "3", "--strategy",
               "sequential", "--workdir", str(workdir), "--no-progress"]
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MPLBACKEND": "Agg"})
    deadline = time.monotonic() + 600
    # Killed once the second member has a checkpoint: one member finished, one mid-run, one not started.
    # One-valued grid items vary nothing, so the members' directories are the sweep's own seed=S.
    point_dir = workdir
    while killed.poll() is None and time.monotonic() < deadline:
        if (point_dir / "seed=1" / "checkpoints" / "6").exists():
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert (point_dir / "seed=0" / "result.json").exists() and not (point_dir / "seed=1" / "result.json").exists()
    finished_before = (point_dir / "seed=0" / "result.json").stat().st_mtime_ns

    assert main(["sweep", "mnist1d-cnn", *TINY, "--seeds", "3", "--strategy", "sequential", "--workdir",
                 str(workdir), "--no-progress"]) == 0
    resumed = json.loads((workdir / "summary.json").read_text())
    assert (point_dir / "seed=0" / "result.json").stat().st_mtime_ns == finished_before  # not trained again
    assert json.loads((point_dir / "seed=1" / "result.json").read_text())["resumed_from"] is not None
    assert per_seed(resumed) == per_seed(whole)
    assert [p["metrics"] for p in resumed["points"]] == [p["metrics"] for p in whole["points"]]


def test_a_bad_grid_value_fails_before_anything_trains(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"optim\.learning_rate=-0\.1 .*optim\.learning_rate is -0\.1, expected a "
                                         r"number > 0"):
        sweep(tiny_config(), {"optim.learning_rate": [0.01, -0.1]}, 2, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"model\.features=oops .*'model\.features' got 'oops'"):
        sweep(tiny_config(), {"model.features": ["(4,)", "oops"]}, 2, tmp_path, progress=False)
    # A value of the right type that the model cannot take: a 2-D kernel on 1-D signals.
    with pytest.raises(ValueError, match=r"model\.kernel_size=\(3,3\) .*model 'cnn' cannot take"):
        sweep(tiny_config(), {"model.kernel_size": ["(3,)", "(3,3)"]}, 2, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())
    assert main(["sweep", "mnist1d-cnn", "train.stepz=3,4", "--workdir", str(tmp_path / "cli")]) == 2
    assert "unknown key 'train.stepz'" in capsys.readouterr().err
    assert main(["sweep", "mnist1d-cnn", "seed=0,1", "--seeds", "2", "--workdir", str(tmp_path / "cli")]) == 2
    assert "both --seeds and seed=" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_cli_prints_the_summary_as_its_last_line(tmp_path, capsys):
    assert main(["sweep", "mnist1d-logreg", "train.steps=5", "train.eval_every=0", "optim.learning_rate=0.01,0.02",
                 "seed=3,4", "--workdir", str(tmp_path), "--strategy", "sequential", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["overrides"]["optim.learning_rate"] for p in summary["points"]] == ["0.01", "0.02"]
    assert [[row["seed"] for row in p["seeds"]] for p in summary["points"]] == [[3, 4], [3, 4]]
    text = (tmp_path / "summary.md").read_text()
    assert "| metric | mean | std | 95% CI | min | max | n |" in text and "| 3 |" in text


def test_eight_simulated_devices_split_the_member_axis(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import jax
        from jaxarch import experiments
        from jaxarch.train import sweep
        from jaxarch.train.configure import override_config
        from jaxarch.train.loop import train_and_evaluate
        config = override_config(experiments.get_config("mnist1d-cnn"), {TINY!r})
        summary = sweep(config, {{}}, [0, 1, 2, 3], sys.argv[1] + "/vmap", strategy="vmap", progress=False)
        single = [train_and_evaluate(override_config(config, [f"seed={{s}}"]), sys.argv[1] + f"/single{{s}}",
                                     progress=False) for s in (0, 3)]
        rows = summary["points"][0]["seeds"]
        meshes = [json.load(open(sys.argv[1] + "/vmap/" + row["workdir"] + "/result.json"))["mesh"] for row in rows]
        print(json.dumps({{"devices": jax.device_count(), "meshes": meshes, "stacked": [rows[0], rows[3]],
                          "single": [{{k: r[k] for k in ("test_loss", "test_accuracy", "mesh")}} for r in single]}}))
    """)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "XLA_FLAGS": flags, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert report["meshes"] == ["members:4"] * 4  # 4 members over 4 of the 8 devices
    assert [r["mesh"] for r in report["single"]] == ["data:8", "data:8"]  # the single runs split their batches
    for stacked, single in zip(report["stacked"], report["single"]):
        assert stacked["test_loss"] == pytest.approx(single["test_loss"], abs=TOLERANCE)


def test_describe_is_the_student_t_interval():
    stats = describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats["mean"] == 3.0 and stats["n"] == 5 and (stats["min"], stats["max"]) == (1.0, 5.0)
    assert stats["std"] == pytest.approx(math.sqrt(2.5))
    # t_{0.975, 4} = 2.7764451 (tables); half width = t * s / sqrt(n).
    assert stats["ci_high"] - 3.0 == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert stats["ci_low"] == pytest.approx(6.0 - stats["ci_high"])
    one = describe([0.5])
    assert (one["std"], one["ci_low"], one["ci_high"], one["n"]) == (None, None, None, 1)
    assert format_spread(describe([0.979, 0.981]), 100) == "98.0 +- 0.1 (n=2)"
    assert format_interval(one) == format_interval(one, spec=".4g") == "-"
    assert format_interval(stats, 10, spec=".3g") == f"[{10 * stats['ci_low']:.3g}, {10 * stats['ci_high']:.3g}]"
    with pytest.raises(ValueError, match="no values"):
        describe([])


def test_grid_parsing():
    assert split_values("1e-3, 3e-3") == ["1e-3", "3e-3"]
    assert split_values("(32,64),(64,)") == ["(32,64)", "(64,)"]
    grid, seeds = parse_grid(["optim.learning_rate=1e-3,3e-3", "seed=0,2", "model.features=(8,16)"])
    assert grid == {"optim.learning_rate": ["1e-3", "3e-3"], "model.features": ["(8,16)"]} and seeds == [0, 2]
    assert parse_grid(["train.steps=5"])[1] is None
    for bad, message in [(["seed=a"], "not an integer"), (["x=1", "x=2"], "listed twice"), (["x"], "key=v1"),
                         (["x=1,,2"], "empty value")]:
        with pytest.raises(ValueError, match=message):
            parse_grid(bad)


def test_summary_markdown_shows_interval_and_per_seed_rows():
    summary = {"experiment": "e", "members": 2, "strategy": "sequential", "confidence": 0.95, "points": [{
        "overrides": {}, "params": 10, "metrics": {"test_accuracy": describe([0.9, 0.92])},
        "seeds": [{"seed": 0, "workdir": "seed=0", "test_accuracy": 0.9},
                  {"seed": 1, "workdir": "seed=1", "test_accuracy": 0.92}], "timing": {}}]}
    text = summary_markdown(summary)
    assert "| test_accuracy (%) | 91.00 | 1.41 | [78.29, 103.71] | 90.00 | 92.00 | 2 |" in text
    assert "| 1 | 92.00 | seed=1 |" in text


def test_summary_markdown_gives_small_losses_their_significant_digits():
    losses = [1.4e-4, 1.13e-4, 3.07e-4]
    summary = {"experiment": "e", "members": 3, "strategy": "sequential", "confidence": 0.95, "points": [{
        "overrides": {}, "params": 10, "metrics": {"test_loss": describe(losses)},
        "seeds": [{"seed": k, "workdir": f"seed={k}", "test_loss": v} for k, v in enumerate(losses)],
        "timing": {"train_seconds": describe([10.0, 12.0, 11.0])}}]}
    stats = summary["points"][0]["metrics"]["test_loss"]
    text = summary_markdown(summary)
    assert (f"| test_loss | 0.0001867 | {stats['std']:.4g} | [{stats['ci_low']:.4g}, {stats['ci_high']:.4g}] | "
            "0.000113 | 0.000307 | 3 |") in text
    assert "| 1 | 0.000113 | seed=1 |" in text
    assert "| train_seconds (machine-dependent) | 11.0 | 1.0 | [8.5, 13.5] | 10.0 | 12.0 | 3 |" in text


def test_bench_row_times_both_strategies():
    from jaxarch.benchmarks.sweep import markdown_lines, measure

    row = measure("mnist1d-logreg", ["train.batch_size=8"], members=2, rounds=1, repetitions=2)
    assert row["members"] == 2 and row["devices"] == 1
    assert set(row["member_steps_per_second"]) == {"sequential", "vmap"}
    assert all(rate > 0 for rate in row["member_steps_per_second"].values())
    rates = row["member_steps_per_second"]
    assert row["vmap_over_sequential"] == pytest.approx(rates["vmap"] / rates["sequential"])
    assert "| sequential | vmap | vmap / sequential |" in markdown_lines(row)
    with pytest.raises(ValueError, match="members is 0"):
        measure("mnist1d-logreg", members=0)
