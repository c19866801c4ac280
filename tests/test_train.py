"""The training core end to end on real (small) data: every experiment learns, runs are reproducible, and a
resumed run equals an uninterrupted one."""

import json
import shutil

import chex
import jax
import numpy as np
import pytest

from jaxarch import experiments
from jaxarch.train import make_schedule, train_and_evaluate
from jaxarch.train.configure import override_config

TINY = ["optim.schedule=constant", "train.log_every=10", "train.eval_every=0", "train.checkpoint_every=0",
        "optim.warmup_steps=3", "train.batch_size=64"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny(name, *extra):
    return override_config(experiments.get_config(name), [*TINY, "train.steps=60", *extra])


def train_losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.parametrize("name", ["mnist1d-logreg", "mnist1d-mlp", "mnist1d-cnn", "mnist1d-cnn-shuffled",
                                  "digits-cnn"])
def test_each_experiment_learns(name, tmp_path):
    result = train_and_evaluate(tiny(name), tmp_path, progress=False)
    losses = train_losses(tmp_path)
    assert len(losses) == 6
    assert losses[-1] < 0.85 * losses[0], losses  # At least 15% below the first 10 steps' mean.
    assert result["test_accuracy"] > 0.2  # Chance is 0.1 on both datasets.
    assert result["experiment"] == name and result["params"] > 0 and result["steps"] == 60
    for artefact in ("config.json", "metrics.jsonl", "learning_curve.png"):
        assert (tmp_path / artefact).stat().st_size > 0
    assert (tmp_path / "checkpoints" / "60").is_dir()


def test_same_seed_same_result_other_seed_differs(tmp_path):
    a = train_and_evaluate(tiny("mnist1d-mlp"), tmp_path / "a", progress=False)
    b = train_and_evaluate(tiny("mnist1d-mlp"), tmp_path / "b", progress=False)
    c = train_and_evaluate(tiny("mnist1d-mlp", "seed=1"), tmp_path / "c", progress=False)
    assert a["test_loss"] == b["test_loss"]
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")
    assert c["test_loss"] != a["test_loss"]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = tiny("mnist1d-cnn", "train.checkpoint_every=20", "train.steps=60")
    whole = train_and_evaluate(config, tmp_path / "whole", progress=False)
    train_and_evaluate(config, tmp_path / "cut", progress=False)
    # Pretend the run died after step 40: only the checkpoints up to 40 survive.
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "60")
    resumed = train_and_evaluate(config, tmp_path / "cut", progress=False)
    assert resumed["resumed_from"] == 40
    assert resumed["test_loss"] == whole["test_loss"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [json.loads(line)["step"]
                     for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]


def test_batch_norm_statistics_are_trained_state(tmp_path):
    config = tiny("digits-cnn", "model.norm=batch", "train.steps=20")
    result = train_and_evaluate(config, tmp_path, progress=False)
    assert np.isfinite(result["test_loss"])


def test_schedule_warms_up_then_decays():
    config = experiments.get_config("mnist1d-cnn")
    schedule = make_schedule(config.optim, 1000)
    peak = config.optim.learning_rate
    assert float(schedule(0)) == 0.0
    assert float(schedule(config.optim.warmup_steps)) == pytest.approx(peak)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)
    values = [float(schedule(s)) for s in range(config.optim.warmup_steps, 1001, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("override,message", [
    ("train.steps=0", "train.steps is 0, expected a positive integer"),
    ("optim.schedule=step", "optim.schedule is 'step'"),
    ("optim.optimizer=lion", "optim.optimizer is 'lion'"),
    ("model.pool=mean", "CNN: pool is 'mean'"),
])
def test_bad_config_values_are_value_errors(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny("digits-cnn", override), tmp_path, progress=False)


def test_train_step_donates_and_is_not_retraced(tmp_path):
    from jaxarch.data import load_dataset
    from jaxarch.models import build_model
    from jaxarch.train import TASKS, init_state, make_train_step

    config = tiny("mnist1d-logreg")
    dataset = load_dataset("mnist1d")
    state = init_state(config, dataset, build_model("logreg", 10))
    step = make_train_step(TASKS.get("classification"), jit=False)
    step = jax.jit(chex.assert_max_traces(step, n=1), donate_argnums=0)
    for s in range(3):
        old_params = state.params
        state, _ = step(state, dataset.train_batch(0, s, 32))
    assert int(state.step) == 3
    assert jax.tree_util.tree_leaves(old_params)[0].is_deleted()


def test_a_warm_start_takes_the_parameters_and_a_fresh_optimizer(tmp_path):
    from jaxarch.train import init_state
    from jaxarch.train.checkpoint import Checkpointer, load_trained_params
    from jaxarch.train.loop import build_dataset_and_model

    first = tiny("mnist1d-mlp", "train.steps=30")
    train_and_evaluate(first, tmp_path / "first", progress=False)
    dataset, model = build_dataset_and_model(first)
    fresh = init_state(first, dataset, model)
    trained, _ = Checkpointer(tmp_path / "first", every=0, keep=1).restore(fresh)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "first").rglob("*"))
    warm, step = load_trained_params(tmp_path / "first", fresh)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "first").rglob("*")) == before
    assert step == 30 and int(warm.step) == 0
    chex.assert_trees_all_equal(warm.params, trained.params)
    chex.assert_trees_all_equal(warm.opt_state, fresh.opt_state)
    assert not np.array_equal(jax.tree_util.tree_leaves(warm.params)[0], jax.tree_util.tree_leaves(fresh.params)[0])

    # The warm-started run begins where the first one ended, not at the seed's loss.
    second = tiny("mnist1d-mlp", "train.steps=10", f"train.init_from={tmp_path / 'first'}")
    train_and_evaluate(second, tmp_path / "second", progress=False)
    assert train_losses(tmp_path / "second")[0] < 0.9 * train_losses(tmp_path / "first")[0]


def test_init_from_a_missing_run_or_another_model_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="train.init_from: .* has no checkpoints/ directory"):
        train_and_evaluate(tiny("mnist1d-mlp", f"train.init_from={tmp_path / 'none'}"), tmp_path / "a",
                           progress=False)
    train_and_evaluate(tiny("mnist1d-logreg", "train.steps=5"), tmp_path / "logreg", progress=False)
    with pytest.raises(ValueError, match="train.init_from: .*holds a different train state.*same model and "
                                         "optimizer settings"):
        train_and_evaluate(tiny("mnist1d-mlp", f"train.init_from={tmp_path / 'logreg'}"), tmp_path / "b",
                           progress=False)
