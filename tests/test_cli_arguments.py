"""Every `jaxarch` command takes its options and its `key=value` pairs in any order."""

import json

import pytest

from jaxarch.cli import build_parser, main


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_run_overrides_after_options_are_overrides():
    args = build_parser().parse_args(["run", "mnist1d-cnn", "a.b=1", "--workdir", "W", "train.steps=200",
                                      "--restart", "c=2"])
    assert args.name == "mnist1d-cnn" and args.workdir == "W" and args.restart
    assert args.overrides == ["a.b=1", "train.steps=200", "c=2"]
    # Options first, as before.
    args = build_parser().parse_args(["run", "--workdir", "W", "mnist1d-cnn", "train.steps=200"])
    assert args.name == "mnist1d-cnn" and args.overrides == ["train.steps=200"]


def test_sweep_grid_after_options_is_the_grid():
    args = build_parser().parse_args(["sweep", "mnist1d-cnn", "--seeds", "3", "optim.learning_rate=1e-3,3e-3",
                                      "--strategy", "sequential", "train.steps=5"])
    assert args.name == "mnist1d-cnn" and args.seeds == 3 and args.strategy == "sequential"
    assert args.grid == ["optim.learning_rate=1e-3,3e-3", "train.steps=5"]


def test_unknown_options_are_still_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "mnist1d-cnn", "--wokdir", "W", "train.steps=200"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --wokdir" in capsys.readouterr().err


def test_help_still_lists_the_positionals(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    assert "usage: jaxarch run [-h]" in out and "name" in out and "key=value" in out


def test_run_with_an_override_after_workdir_trains_with_it(tmp_path, capsys):
    # The command that failed with "unrecognized arguments: train.steps=..." (argparse stopped at --workdir).
    assert main(["run", "mnist1d-logreg", "--workdir", str(tmp_path), "train.steps=7", "--no-progress",
                 "train.eval_every=0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 7
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 7


def test_sweep_with_the_grid_after_options_sweeps_it(tmp_path, capsys):
    assert main(["sweep", "mnist1d-logreg", "--seeds", "1", "train.steps=3", "--workdir", str(tmp_path),
                 "optim.learning_rate=0.01,0.02", "--strategy", "sequential", "--no-progress",
                 "train.eval_every=0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["points"]) == 2
    assert {point["overrides"]["optim.learning_rate"] for point in summary["points"]} == {"0.01", "0.02"}
