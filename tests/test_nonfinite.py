"""Non-finite losses and gradients: the run stops naming the step and the quantity, keeps the last good
checkpoint and exits non-zero; jax_debug_nans finds the operation; the skip policy skips and counts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxarch import experiments
from jaxarch.cli import EXIT_NON_FINITE, main
from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train import TASKS, init_state, make_train_step
from jaxarch.train.checkpoint import CHECKPOINTS
from jaxarch.train.configure import override_config
from jaxarch.train.nonfinite import NonFiniteError, NonFiniteGuard, flag_names

# A learning rate of 1e38 turns the first update's parameters into ~1e38: the second step's logits overflow
# to inf and its loss is NaN, deterministically.
DIVERGING = ["mnist1d-logreg", "train.steps=30", "train.checkpoint_every=1", "train.log_every=1",
             "train.eval_every=0", "optim.learning_rate=1e38", "optim.grad_clip_norm=0", "optim.warmup_steps=0",
             "optim.schedule=constant"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def run(tmp_path, *extra):
    return main(["run", *DIVERGING, *extra, "--workdir", str(tmp_path), "--no-progress"])


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / CHECKPOINTS).iterdir() if p.name.isdigit())


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(tmp_path, capsys):
    assert run(tmp_path) == EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "non-finite loss at step 2" in err
    assert f"the last good checkpoint, step 1, is kept in {tmp_path / CHECKPOINTS}" in err
    assert "train.debug_nans=true" in err
    assert checkpoint_steps(tmp_path) == [1]
    params = ocp.StandardCheckpointer().restore((tmp_path / CHECKPOINTS / "1" / "state").absolute())["params"]
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1]  # Nothing from the bad step is recorded.


def test_debug_nans_names_the_operation_and_is_switched_off_afterwards(tmp_path, capsys):
    assert run(tmp_path, "train.debug_nans=true") == EXIT_NON_FINITE
    err = capsys.readouterr().err
    assert "FloatingPointError" in err and "invalid value (nan) encountered in" in err
    assert "at step 2" in err and "step 1, is kept" in err
    assert not jax.config.jax_debug_nans


def test_skip_policy_skips_and_counts_non_finite_steps(tmp_path, capsys):
    assert run(tmp_path, "train.nonfinite=skip") == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["skipped_steps"] == 29  # Every step after the first diverging update.
    assert "non-finite loss at step 2: update skipped" in captured.err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r][:3] == [0, 1, 2]
    state = ocp.StandardCheckpointer().restore((tmp_path / CHECKPOINTS / "30" / "state").absolute())
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


def test_a_skipped_step_leaves_parameters_and_optimizer_state_unchanged():
    config = override_config(experiments.get_config("mnist1d-logreg"), ["optim.warmup_steps=0"])
    dataset = load_dataset("mnist1d")
    state = init_state(config, dataset, build_model("logreg", 10))
    step = make_train_step(TASKS.get("classification"), skip_nonfinite=True, donate=False)
    batch = dataset.train_batch(0, 0, 8)
    poisoned = {**batch, "inputs": batch["inputs"].copy()}
    poisoned["inputs"][3, 5] = np.nan
    after_bad, metrics = step(state, poisoned)
    assert not bool(jnp.all(metrics["finite"]))
    assert int(after_bad.step) == 1 and int(after_bad.skipped_steps) == 1
    jax.tree.map(np.testing.assert_array_equal, after_bad.params, state.params)
    jax.tree.map(np.testing.assert_array_equal, after_bad.opt_state, state.opt_state)
    after_good, metrics = step(after_bad, batch)
    assert bool(jnp.all(metrics["finite"])) and int(after_good.skipped_steps) == 1
    assert not np.array_equal(after_good.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_the_guard_names_the_first_offending_gradient():
    params = {"encoder": {"kernel": np.zeros(2), "bias": np.zeros(1)}, "head": {"kernel": np.zeros(3)}}
    names = flag_names(params)
    assert names == ["loss", "gradient of encoder/bias", "gradient of encoder/kernel", "gradient of head/kernel"]
    guard = NonFiniteGuard(names, "stop")
    guard.record(7, jnp.array([True, True, True, True]))
    guard.record(8, jnp.array([True, True, False, False]))
    guard.record(9, jnp.array([False, False, False, False]))
    with pytest.raises(NonFiniteError, match="non-finite gradient of encoder/kernel at step 8"):
        guard.check()
