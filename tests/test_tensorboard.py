"""TensorBoard event files: every number metrics.jsonl holds is an event at the same step, with the learning
curve as an image; a resumed run keeps the events up to its checkpoint once and drops the later ones (also after a
crash between writing the new file and deleting the old); a vmap sweep writes each member's events; a process
other than the first writes none."""

import json
import math

import numpy as np
import pytest

from jaxarch import experiments
from jaxarch.train import sweep, train_and_evaluate
from jaxarch.train.configure import override_config
from jaxarch.train.tensorboard import EventLog, event_files, read_events, read_records, read_scalars

TINY = ["train.steps=20", "train.batch_size=16", "train.log_every=5", "train.eval_every=10",
        "train.checkpoint_every=10", "train.eval_batch_size=500", "optim.warmup_steps=2"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def jsonl_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """`key -> [(step, value)]` of every finite number in metrics.jsonl, in file order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                scalars.setdefault(key, []).append((record["step"], value))
    return scalars


def assert_events_match_metrics(workdir):
    events, metrics = read_scalars(workdir), jsonl_scalars(workdir)
    assert events.keys() == metrics.keys()
    for key in metrics:
        assert [step for step, _ in events[key]] == [step for step, _ in metrics[key]], key
        # Events hold float32 values.
        np.testing.assert_allclose([v for _, v in events[key]], [v for _, v in metrics[key]], rtol=1e-6,
                                   err_msg=key)


def test_a_run_writes_every_metric_and_the_learning_curve(tmp_path):
    config = override_config(experiments.get_config("mnist1d-logreg"), TINY)
    train_and_evaluate(config, tmp_path, progress=False)
    assert len(event_files(tmp_path)) == 1
    assert_events_match_metrics(tmp_path)
    scalars = read_scalars(tmp_path)
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "train/steps_per_second", "test/loss",
            "test/accuracy"} <= scalars.keys()
    assert [step for step, _ in scalars["test/accuracy"]] == [10, 20]
    images = [(event.step, value) for event in read_events(tmp_path) for value in event.summary.value
              if value.HasField("image")]
    assert [(step, value.tag) for step, value in images] == [(20, "learning_curve")]
    assert images[0][1].image.encoded_image_string == (tmp_path / "learning_curve.png").read_bytes()
    assert images[0][1].image.width > 0 and images[0][1].image.height > 0


def write(log, steps, tag="train/loss"):
    for step in steps:
        log.write(step, **{tag: float(step), "config_change": {"a": 1}, "test/loss": math.nan})
    log.close()


def test_resume_keeps_the_events_up_to_the_checkpoint_once(tmp_path):
    write(EventLog(tmp_path, None), range(1, 9))
    # Resumed from step 5: steps 6..8 are dropped and trained again.
    write(EventLog(tmp_path, 5), range(6, 11))
    [path] = event_files(tmp_path)
    assert read_scalars(tmp_path) == {"train/loss": [(step, float(step)) for step in range(1, 11)]}
    # The new file starts with TensorBoard's purge marker at the first new step.
    marker = [event for event in read_events(tmp_path) if event.HasField("session_log")]
    assert [event.step for event in marker] == [6]

    # A crash after the new file is written but before the old one is deleted: both are on disk.
    copy = tmp_path / (path.name[:-1] + "x")
    copy.write_bytes(path.read_bytes())
    write(EventLog(tmp_path, 10), [11])
    assert read_scalars(tmp_path) == {"train/loss": [(step, float(step)) for step in range(1, 12)]}

    # A fresh run starts over.
    write(EventLog(tmp_path, None), [1])
    assert read_scalars(tmp_path) == {"train/loss": [(1, 1.0)]}


def test_a_record_cut_short_ends_the_file_and_is_dropped_on_resume(tmp_path):
    write(EventLog(tmp_path, None), range(1, 4))
    [path] = event_files(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-3])  # the last record cut mid-write
    assert len(read_records(path)) == 3  # file header, steps 1 and 2
    write(EventLog(tmp_path, 3), [4])
    assert read_scalars(tmp_path) == {"train/loss": [(1, 1.0), (2, 2.0), (4, 4.0)]}


def test_a_process_other_than_the_first_writes_nothing(tmp_path):
    write(EventLog(tmp_path, None), [1])
    before = {path: path.read_bytes() for path in event_files(tmp_path)}
    write(EventLog(tmp_path, None, enabled=False), [1, 2])
    assert {path: path.read_bytes() for path in event_files(tmp_path)} == before


def test_a_vmap_sweep_writes_each_members_events(tmp_path):
    config = override_config(experiments.get_config("mnist1d-logreg"), TINY)
    summary = sweep(config, {"optim.learning_rate": [0.01, 0.03]}, [0], tmp_path, strategy="vmap", progress=False)
    members = [tmp_path / row["workdir"] for point in summary["points"] for row in point["seeds"]]
    assert len(members) == 2
    for workdir in members:
        assert len(event_files(workdir)) == 1
        assert_events_match_metrics(workdir)
    rates = [read_scalars(workdir)["train/learning_rate"][0][1] for workdir in members]  # at step 5
    assert rates[0] != rates[1]
