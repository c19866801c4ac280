"""`jaxarch run NAME --profile START:COUNT`: a jax.profiler trace of those steps lands in RUN_DIR/profile and
names the jitted train step; a window outside the run is a ValueError naming the option."""

import gzip
import json

import pytest

from jaxarch import experiments
from jaxarch.cli import EXIT_BAD_INPUT, main
from jaxarch.train import train_and_evaluate
from jaxarch.train.configure import override_config
from jaxarch.train.profile import parse_profile

RUN = ["mnist1d-logreg", "train.steps=8", "train.log_every=4", "train.eval_every=0", "train.checkpoint_every=0",
       "train.batch_size=16"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_the_trace_of_the_window_names_the_train_step(tmp_path, capsys):
    assert main(["run", *RUN, "--workdir", str(tmp_path), "--no-progress", "--profile", "3:2"]) == 0
    assert "profiler trace of steps 4-5 written to" in capsys.readouterr().err
    [session] = (tmp_path / "profile" / "plugins" / "profile").iterdir()
    xspace = list(session.glob("*.xplane.pb"))
    assert len(xspace) == 1 and b"train_step" in xspace[0].read_bytes()  # what TensorBoard's plugin reads
    trace = json.loads(gzip.decompress((session / "perfetto_trace.json.gz").read_bytes()))  # for Perfetto
    names = {event.get("name", "") for event in trace["traceEvents"]}
    assert any("train_step" in name for name in names), sorted(names)[:20]
    # The step annotations: steps 4 and 5, nothing outside the window.
    steps = {event["args"]["step_num"] for event in trace["traceEvents"]
             if event.get("name") == "train" and "step_num" in event.get("args", {})}
    assert steps == {"4", "5"}


@pytest.mark.parametrize("window, message", [
    ("3:0", "--profile 3:0: COUNT is 0, expected a positive number of steps"),
    ("2:-1", "--profile 2:-1: COUNT is -1"),
    ("8:1", r"--profile 8:1: START is 8, expected a step in \[0, 7\] \(train.steps is 8\)"),
    ("20:2", "--profile 20:2: START is 20"),
    ("-1:2", "--profile -1:2: START is -1"),
    ("5", "--profile is '5', expected START:COUNT"),
    ("a:b", "--profile is 'a:b', expected START:COUNT"),
])
def test_a_window_outside_the_run_is_an_error_naming_the_option(window, message, tmp_path, capsys):
    config = override_config(experiments.get_config(RUN[0]), RUN[1:])
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(config, tmp_path, progress=False, profile=parse_profile(window))
    assert not (tmp_path / "profile").exists()
    assert main(["run", *RUN, "--workdir", str(tmp_path), "--no-progress", f"--profile={window}"]) == EXIT_BAD_INPUT
    assert "--profile" in capsys.readouterr().err
