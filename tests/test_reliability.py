"""Cluster life: config changes on resume, full disks, unreadable inputs, damaged records, and checkpoints that
fail to read for a passing reason. (Locks are in tests/test_lock.py, signals in tests/test_signals.py.)"""

import errno
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxarch import experiments
from jaxarch.cli import main
from jaxarch.train import train_and_evaluate
from jaxarch.train.checkpoint import (CHECKPOINTS, QUARANTINE, Checkpointer, legacy_state_digest, shard_digests,
                                      verify_shards)
from jaxarch.train.configure import override_config
from jaxarch.train.loop import build_dataset_and_model, init_state
from jaxarch.train.records import plot_learning_curve
from jaxarch.train.resume import EXEMPT_ON_RESUME

TIMING = {"train/steps_per_second", "train/data_wait_fraction"}
TINY = ["mnist1d-logreg", "train.steps=40", "train.checkpoint_every=10", "train.log_every=10", "train.eval_every=20",
        "train.keep_checkpoints=3", "optim.schedule=cosine", "optim.warmup_steps=5"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(workdir, *extra, flags=()):
    return main(["run", *TINY, *extra, "--workdir", str(workdir), "--no-progress", *flags])


def tiny(*extra):
    return override_config(experiments.get_config(TINY[0]), [*TINY[1:], *extra])


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def leftovers(workdir):
    """Temporary files and directories of unfinished writes anywhere in the work directory."""
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*")
                  if ".tmp" in p.name or "orbax-checkpoint-tmp" in p.name)


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / CHECKPOINTS).iterdir() if p.name.isdigit())


# ---- config changes on resume ----------------------------------------------------------------------------------


def test_train_steps_below_the_checkpoint_is_an_error_that_changes_nothing(tmp_path, capsys):
    assert run(tmp_path) == 0
    before = (tmp_path / "metrics.jsonl").read_text()
    for flags in ((), ("--allow-config-change",)):
        assert run(tmp_path, "train.steps=30", flags=flags) == 2
        err = capsys.readouterr().err
        assert "train.steps is 30, but the checkpoint" in err and "at step 40" in err, err
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert checkpoint_steps(tmp_path) == [20, 30, 40]


@pytest.mark.parametrize("changed", [["train.batch_size=64"], ["optim.learning_rate=0.05"], ["seed=3"],
                                     ["train.batch_size=64", "seed=3"]])
def test_a_changed_config_on_resume_is_an_error_listing_each_key(changed, tmp_path, capsys):
    assert run(tmp_path, "train.steps=20") == 0
    saved = (tmp_path / "config.json").read_text()
    capsys.readouterr()
    assert run(tmp_path, *changed) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxarch: error: config: resuming") and "Traceback" not in err
    base = json.loads(saved)
    for override in changed:
        key, value = override.split("=")
        section, _, leaf = key.rpartition(".")
        old = base[section][leaf] if section else base[leaf]
        assert f"{key}: saved {old!r}, now {type(old)(value)!r}" in err, err
    assert "train.steps: saved 20, now 40" in err  # train.steps differs too, and is listed
    assert "--allow-config-change" in err
    assert (tmp_path / "config.json").read_text() == saved  # The record still says what the run used.
    assert not (tmp_path / "config_history.jsonl").exists()


def test_keys_that_cannot_change_the_result_may_change_on_resume(tmp_path, capsys):
    assert {"train.log_every", "train.checkpoint_every", "train.eval_every", "mesh"} <= EXEMPT_ON_RESUME
    assert run(tmp_path, "train.steps=40") == 0
    assert run(tmp_path, "train.log_every=5", "train.checkpoint_every=20", "train.eval_every=0") == 0
    assert "config changes" not in capsys.readouterr().err


def test_an_allowed_change_is_recorded_with_its_step_and_the_learning_rate_jump_is_reported(tmp_path, capsys):
    assert run(tmp_path, "train.steps=20") == 0  # A finished cosine run: the rate has decayed to 0.
    capsys.readouterr()
    assert run(tmp_path, "optim.learning_rate=0.05", flags=("--allow-config-change",)) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["resumed_from"] == 20 and result["steps"] == 40
    assert result["config_changes"]["train.steps"] == {"saved": 20, "new": 40}
    assert "resuming" in captured.err and "train.steps: saved 20, now 40" in captured.err
    assert "the learning-rate schedule is recomputed" in captured.err and "from 0 (saved schedule)" in captured.err

    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["step"] == 20
    assert history[0]["changes"] == {"optim.learning_rate": {"saved": 0.01, "new": 0.05},
                                     "train.steps": {"saved": 20, "new": 40}}
    markers = [r for r in records(tmp_path) if "config_change" in r]
    assert len(markers) == 1 and markers[0]["step"] == 20
    assert markers[0]["train/learning_rate_before"] == 0.0
    assert markers[0]["train/learning_rate_after"] > 0.0
    # The records after the change follow the new schedule; config.json now holds the new values.
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["learning_rate"] == 0.05
    steps = [r["step"] for r in records(tmp_path) if "train/loss" in r]
    assert steps == [10, 20, 30, 40]
    # Resuming again with the new config is no change at all.
    assert run(tmp_path, "optim.learning_rate=0.05") == 0
    assert len((tmp_path / "config_history.jsonl").read_text().splitlines()) == 1


def test_train_and_evaluate_takes_the_same_choice_as_a_keyword(tmp_path):
    train_and_evaluate(tiny("train.steps=20"), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"seed: saved 0, now 1"):
        train_and_evaluate(tiny("train.steps=20", "seed=1"), tmp_path, progress=False)
    result = train_and_evaluate(tiny("train.steps=20", "seed=1"), tmp_path, progress=False, allow_config_change=True)
    assert result["config_changes"] == {"seed": {"saved": 0, "new": 1}}


def test_rerunning_a_finished_workdir_adds_no_records(tmp_path, capsys):
    assert run(tmp_path) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    before = (tmp_path / "metrics.jsonl").read_text()
    assert run(tmp_path) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert "already complete at step 40" in captured.err
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert again["test_accuracy"] == first["test_accuracy"] and again["resumed_from"] == 40
    assert again["steps_per_second"] is None


# ---- full disks and unwritable files ------------------------------------------------------------------------


def no_space_when(monkeypatch, matches, after=0):
    """Makes opening a file for writing whose name `matches` fail with ENOSPC after `after` successful opens,
    leaving an empty file behind as a full disk does (the directory entry fits, the data does not)."""
    real_open = pathlib.Path.open
    count = {"n": 0}

    def open_(self, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax") and matches(self.name):
            count["n"] += 1
            if count["n"] > after:
                real_open(self, mode, *args, **kwargs).close()
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", open_)


def assert_clean_error(code, err, text):
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("jaxarch: error:")]
    assert len(lines) == 1 and text in lines[0], err


def test_a_full_disk_at_start_is_a_clean_error_leaving_no_temporary_file(tmp_path, monkeypatch, capsys):
    no_space_when(monkeypatch, lambda name: "config.json" in name)
    code = run(tmp_path)
    assert_clean_error(code, capsys.readouterr().err, f"could not write '{tmp_path / 'config.json'}' (No space left")
    assert leftovers(tmp_path) == []


def test_a_disk_filling_mid_run_is_a_clean_error_and_the_run_resumes_after(tmp_path, monkeypatch, capsys):
    no_space_when(monkeypatch, lambda name: name == "metrics.jsonl", after=3)
    code = run(tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "metrics.jsonl' (No space left on device)")
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path / "cache"))
    assert run(tmp_path) == 0
    whole = tmp_path / "whole"
    assert run(whole) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(records(tmp_path)) == strip(records(whole))


def test_a_learning_curve_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    import matplotlib.figure

    def savefig(self, path, **kwargs):
        pathlib.Path(path).write_bytes(b"")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    code = run(tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "learning_curve.png' (No space left on device)")
    assert leftovers(tmp_path) == [] and not (tmp_path / "learning_curve.png").exists()


def test_a_checkpoint_write_failing_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    real = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    calls = {"n": 0}

    async def save_fn(self, item, directory):
        calls["n"] += "integrity" in str(directory)
        if calls["n"] > 2:  # The checkpoints at steps 10 and 20 are written; the disk fills at 30.
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await real(self, item, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", save_fn)
    code = run(tmp_path)
    err = capsys.readouterr().err
    assert_clean_error(code, err, "writing a checkpoint")
    assert "No space left on device" in err and "step 20 is the newest complete one" in err, err
    assert len(err.splitlines()) < 10, err
    assert leftovers(tmp_path) == []
    assert checkpoint_steps(tmp_path) == [10, 20]


# ---- inputs that are not what they claim ------------------------------------------------------------------------


def test_a_binary_or_non_utf8_text_file_is_an_error(tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    binary = tmp_path / "program"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    for path, message in ((binary, "holds NUL bytes"), (latin, "is not UTF-8 text (byte 0xe9 at offset 3")):
        code = main(["run", "charlm-gpt", f"data.text_file={path}", "--workdir", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and f"text_file '{path}' {message}" in err, err


def test_lines_of_metrics_jsonl_that_are_not_records_are_skipped_naming_file_and_line(tmp_path, capsys):
    whole = tmp_path / "whole"
    assert run(whole) == 0
    workdir = tmp_path / "cut"
    assert run(workdir, "train.steps=20") == 0
    log = workdir / "metrics.jsonl"
    good = log.read_bytes()
    log.write_bytes(b"42\n" + good + b'{"foo": 1}\n\xff\xfe\x00garbage\n{"step": true}\n[1, 2]\n{"step": 3')
    capsys.readouterr()
    assert run(workdir, flags=("--allow-config-change",)) == 0
    err = capsys.readouterr().err
    bad_lines = [1] + [len(good.splitlines()) + 2 + i for i in range(5)]
    for number in bad_lines:
        assert f"{log}:{number}: skipping a line that is not a metrics record" in err, err
    assert "Traceback" not in err
    steps = [r["step"] for r in records(workdir) if "train/loss" in r]
    assert steps == [10, 20, 30, 40]


# ---- checkpoints: damage versus passing failures ------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), MemoryError("out of memory")])
def test_a_passing_read_failure_stops_the_run_and_leaves_the_checkpoint(error, tmp_path, monkeypatch, capsys):
    assert run(tmp_path, "train.steps=20") == 0
    real = ocp.CheckpointManager.restore

    def restore(self, step, *args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    capsys.readouterr()
    code = run(tmp_path, "train.steps=20")
    err = capsys.readouterr().err
    assert code == 1 and "the checkpoint at step 20" in err and "could not be read" in err, err
    assert type(error).__name__ in err and "left in place" in err
    assert checkpoint_steps(tmp_path) == [10, 20] and not (tmp_path / QUARANTINE).exists()
    monkeypatch.setattr(ocp.CheckpointManager, "restore", real)
    assert run(tmp_path, "train.steps=20") == 0
    assert "resuming mnist1d-logreg from the checkpoint at step 20" in capsys.readouterr().err


def test_shard_digests_check_any_layout_and_name_the_damaged_shard():
    config = tiny()
    dataset, model = build_dataset_and_model(config)
    state = init_state(config, dataset, model)
    digests = shard_digests(state)
    assert verify_shards(state, digests) == ([], 0)
    kernel = ".params['Dense_0']['kernel']"
    whole = np.asarray(state.params["Dense_0"]["kernel"])  # [40, 10]
    # Saved in two row blocks (as on a mesh splitting the rows), checked against the whole array here.
    from jaxarch.train.checkpoint import _piece_digest

    split = dict(digests, **{kernel: {"0:20,0:10": _piece_digest(whole[:20]), "20:40,0:10": _piece_digest(whole[20:])}})
    assert verify_shards(state, split) == ([], 0)
    changed = state.replace(params=jax.tree_util.tree_map(lambda x: x.at[25, 3].add(1e-6) if x.ndim == 2 else x,
                                                          state.params))
    assert verify_shards(changed, split) == ([f"{kernel}[20:40,0:10]"], 0)


def test_a_checkpoint_with_the_old_whole_state_digest_still_restores(tmp_path):
    config = tiny("train.steps=20")
    train_and_evaluate(config, tmp_path / "new", progress=False)
    dataset, model = build_dataset_and_model(config)
    state = init_state(config, dataset, model)
    old = Checkpointer(tmp_path / "old", every=1, keep=2)
    old.manager.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state), integrity=ocp.args.JsonSave(
        {"sha256": legacy_state_digest(state), "step": 5})), force=True)
    old.close()
    reader = Checkpointer(tmp_path / "old", every=1, keep=2)
    restored, step = reader.restore(state)
    reader.close()
    assert step == 5 and legacy_state_digest(restored) == legacy_state_digest(state)


def test_learning_curve_leaves_pyplots_backend_as_the_user_set_it(tmp_path):
    import matplotlib

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_learning_curve([{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5}],
                            tmp_path / "curve.png", "title")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(previous)
