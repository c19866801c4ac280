"""`jaxarch tour --seeds N`: each model trained over N seeds and shown as mean +- std."""

import json

import pytest

from jaxarch import experiments
from jaxarch.train.configure import override_config
from jaxarch.train.stats import describe
from jaxarch.tour import ROWS, format_table, run_tour


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_table_shows_mean_and_std_over_seeds():
    spread = describe([0.979, 0.975, 0.983])
    results = [(row, {"params": 10, "test_accuracy": spread["mean"], "train_seconds": 2.0,
                      "test_accuracy_spread": spread}) for row in ROWS]
    table = format_table(results)
    cnn = next(line for line in table.splitlines() if "mnist1d-cnn" in line)
    assert "97.9 +- 0.4% (n=3)" in cnn and "94%" in cnn
    header, rule = table.splitlines()[:2]
    assert len(rule) == len(header) and all(len(line) <= len(header) for line in table.splitlines())


def test_tour_with_two_seeds_averages_the_seeds_runs(tmp_path, monkeypatch):
    real = experiments.get_config
    monkeypatch.setattr(experiments, "get_config", lambda name: override_config(
        real(name), ["train.steps=6", "train.eval_every=0", "train.log_every=3"]))
    [(row, result)] = run_tour(tmp_path, models="mnist1d-logreg", seeds=2, progress=False)
    assert row.experiment == "mnist1d-logreg"
    runs = [json.loads((tmp_path / "mnist1d-logreg" / f"seed={s}" / "result.json").read_text()) for s in (0, 1)]
    accuracies = [run["test_accuracy"] for run in runs]
    assert result["test_accuracy_spread"] == describe(accuracies)
    assert result["test_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert result["params"] == runs[0]["params"] == 410
    assert "(n=2)" in format_table([(row, result)])
    with pytest.raises(ValueError, match="--seeds is 0"):
        run_tour(tmp_path, models="mnist1d-logreg", seeds=0)
