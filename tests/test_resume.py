"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one; damaged
checkpoints are detected and passed over; retention keeps the latest and the best."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxarch import experiments
from jaxarch.cli import main
from jaxarch.train import train_and_evaluate
from jaxarch.train.checkpoint import CHECKPOINTS, QUARANTINE
from jaxarch.train.configure import override_config

# Timing-dependent metrics differ between any two runs; everything else must match exactly.
TIMING = {"train/steps_per_second", "train/data_wait_fraction"}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def saved_state(workdir, step):
    """The train state saved at `step`, read back without a template, and its integrity record."""
    directory = workdir / CHECKPOINTS / str(step)
    state = ocp.StandardCheckpointer().restore((directory / "state").absolute())
    return state, json.loads((directory / "integrity" / "metadata").read_text())


def assert_bit_identical(a, b):
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _flatten(sub, f"{prefix}{i}/").items()}
    return {prefix: np.asarray(tree)}


# A small CNN with dropout (so the RNG state matters), evaluations (so best-by-metric retention runs) and
# checkpoints every 25 steps; 400 steps leave time to kill it mid-run.
KILLED_RUN = ["mnist1d-cnn", "train.steps=400", "train.checkpoint_every=25", "train.log_every=5",
              "train.eval_every=100", "train.keep_checkpoints=2", "train.batch_size=32", "model.features=(8,16)",
              "model.dropout_rate=0.3", "optim.warmup_steps=10"]


def run_command(workdir):
    return [sys.executable, "-m", "jaxarch.cli", "run", *KILLED_RUN, "--workdir", str(workdir), "--no-progress"]


def last_logged_step(workdir) -> int:
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def test_sigkill_then_resume_is_bit_identical_with_no_missing_or_repeated_steps(tmp_path):
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    # The uninterrupted reference runs at the same time, as a process of its own like the killed one.
    whole = subprocess.Popen(run_command(whole_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed = subprocess.Popen(run_command(cut_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = 170  # Not a checkpoint step: the kill lands between checkpoints, wherever timing puts it.
    deadline = time.monotonic() + 300
    while last_logged_step(cut_dir) < kill_after and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    killed_at = last_logged_step(cut_dir)
    assert kill_after <= killed_at < 400, killed_at
    assert not (cut_dir / CHECKPOINTS / "400").exists()

    resumed = subprocess.run(run_command(cut_dir), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=300) == 0
    resumed_from = json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"]
    assert resumed_from is not None and resumed_from <= killed_at
    assert f"resuming mnist1d-cnn from the checkpoint at step {resumed_from}" in resumed.stderr
    final = json.loads(whole.stdout.read().strip().splitlines()[-1])

    whole_state, whole_integrity = saved_state(whole_dir, 400)
    cut_state, cut_integrity = saved_state(cut_dir, 400)
    assert_bit_identical(cut_state, whole_state)  # Parameters, optimizer state, model state, RNG key, step.
    assert cut_integrity == whole_integrity
    cut_records, whole_records = records(cut_dir), records(whole_dir)
    steps = [(row["step"], tuple(sorted(row))) for row in cut_records]
    assert len(set(steps)) == len(steps)  # No step logged twice.
    assert without_timing(cut_records) == without_timing(whole_records)  # None missing, same values.
    assert final["best_checkpoint_step"] in (100, 200, 300, 400)


def tiny(*extra):
    return override_config(experiments.get_config("mnist1d-logreg"), [
        "train.steps=40", "train.checkpoint_every=10", "train.keep_checkpoints=3", "train.log_every=10",
        "train.eval_every=0", "optim.schedule=constant", "optim.warmup_steps=0", *extra])


def largest_data_file(checkpoint: Path) -> Path:
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [flip_a_byte, truncate])
def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(damage, tmp_path, capsys):
    whole = train_and_evaluate(tiny(), tmp_path / "whole", progress=False)
    workdir = tmp_path / "cut"
    train_and_evaluate(tiny(), workdir, progress=False)
    damage(largest_data_file(workdir / CHECKPOINTS / "40"))
    # A save cut short by a crash leaves only a temporary directory, which is never taken for a checkpoint.
    (workdir / CHECKPOINTS / "50.orbax-checkpoint-tmp-1234").mkdir()
    capsys.readouterr()

    resumed = train_and_evaluate(tiny(), workdir, progress=False)
    err = capsys.readouterr().err
    assert "the checkpoint at step 40 is damaged" in err
    assert resumed["resumed_from"] == 30
    assert (workdir / QUARANTINE / "40").is_dir()  # Kept for a post-mortem, not deleted.
    assert not (workdir / CHECKPOINTS / "50.orbax-checkpoint-tmp-1234").exists()
    assert resumed["test_loss"] == whole["test_loss"]
    assert_bit_identical(saved_state(workdir, 40)[0], saved_state(tmp_path / "whole", 40)[0])
    assert [r["step"] for r in records(workdir)] == [r["step"] for r in records(tmp_path / "whole")]


def test_a_warm_start_skips_a_damaged_checkpoint_and_leaves_the_source_as_it_was(tmp_path, capsys):
    train_and_evaluate(tiny(), tmp_path / "source", progress=False)
    flip_a_byte(largest_data_file(tmp_path / "source" / CHECKPOINTS / "40"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*"))
    capsys.readouterr()

    warm = train_and_evaluate(tiny("train.steps=10", f"train.init_from={tmp_path / 'source'}"),
                              tmp_path / "warm", progress=False)
    err = capsys.readouterr().err
    assert "the checkpoint at step 40 in" in err and "is damaged" in err
    assert "starts from the parameters of" in err and "at step 30" in err
    assert warm["resumed_from"] is None
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "source").rglob("*")) == before


def test_with_every_checkpoint_damaged_the_run_starts_over(tmp_path, capsys):
    train_and_evaluate(tiny("train.keep_checkpoints=1"), tmp_path, progress=False)
    flip_a_byte(largest_data_file(tmp_path / CHECKPOINTS / "40"))
    result = train_and_evaluate(tiny("train.keep_checkpoints=1"), tmp_path, progress=False)
    assert result["resumed_from"] is None
    assert "the checkpoint at step 40 is damaged" in capsys.readouterr().err
    assert records(tmp_path)[0]["step"] == 10


def test_latest_and_best_checkpoints_are_kept(tmp_path):
    config = tiny("train.steps=60", "train.eval_every=10", "train.keep_checkpoints=1", "optim.learning_rate=0.3")
    result = train_and_evaluate(config, tmp_path, progress=False)
    evaluated = [(r["test/accuracy"], r["step"]) for r in records(tmp_path) if "test/accuracy" in r]
    best = max(evaluated)[1]  # Ties go to the later step, as orbax ranks them.
    kept = sorted(int(p.name) for p in (tmp_path / CHECKPOINTS).iterdir() if p.name.isdigit())
    assert result["best_checkpoint_step"] == best
    assert kept == sorted({best, 60})


def test_a_workdir_of_another_model_is_an_error_naming_the_fix(tmp_path, capsys):
    args = ["run", "mnist1d-logreg", "train.steps=5", "train.eval_every=0", "--workdir", str(tmp_path),
            "--no-progress"]
    assert main(args) == 0
    assert main([*args[:2], "model.name=mlp", *args[2:]]) == 2
    err = capsys.readouterr().err
    assert "holds a different train state" in err and "--restart" in err
    assert (tmp_path / CHECKPOINTS / "5").is_dir()  # Nothing was overwritten or moved.
    assert not (tmp_path / QUARANTINE).exists()
    assert main([*args[:2], "model.name=mlp", *args[2:], "--restart"]) == 0
