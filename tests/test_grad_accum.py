"""`train.grad_accum_steps=k`: k micro-batches in one jitted step equal the whole-batch step within float
rounding (loss, gradients, parameters after several steps, also for a task whose examples weigh differently);
each micro-batch draws its own dropout; the non-finite guard sees the accumulated gradient; a resumed run is
exact; on a data-parallel mesh (simulated devices) it equals one device; a batch that does not split is refused
naming both keys."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxarch import experiments
from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train import TASKS, TrainState, init_state, make_train_step, train_and_evaluate, validate_config
from jaxarch.train.checkpoint import CHECKPOINTS
from jaxarch.train.configure import override_config
from jaxarch.train.loop import check_accumulation
from jaxarch.train.steps import accumulated_loss_and_grads, split_micro_batches

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = dict(rtol=2e-5, atol=2e-6)  # float32 sums in another order


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOLERANCE), a, b)


def cnn_state(*extra):
    config = override_config(experiments.get_config("mnist1d-cnn"),
                             ["model.features=(4,)", "model.dropout_rate=0.0", "optim.warmup_steps=0", *extra])
    dataset = load_dataset("mnist1d")
    model = build_model("cnn", 10, **{k: v for k, v in config.model.items() if k != "name"})
    return init_state(config, dataset, model), dataset


def test_micro_batches_take_strided_rows():
    batch = {"inputs": np.arange(12).reshape(6, 2), "targets": np.arange(6)}
    micro = split_micro_batches(batch, 3)
    np.testing.assert_array_equal(micro["targets"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(micro["inputs"][1], [[2, 3], [8, 9]])
    with pytest.raises(ValueError, match="batch of 6 rows .* expected a multiple of train.grad_accum_steps=4"):
        split_micro_batches(batch, 4)


def test_four_micro_batches_equal_the_whole_batch_over_several_steps():
    state, dataset = cnn_state()
    task = TASKS.get("classification")
    whole = make_train_step(task, donate=False)
    accumulated = make_train_step(task, donate=False, grad_accum_steps=4)
    a = b = state
    for step in range(3):
        batch = dataset.train_batch(0, step, 24)
        a, metrics_a = whole(a, batch)
        b, metrics_b = accumulated(b, batch)
        np.testing.assert_allclose(metrics_b["loss"], metrics_a["loss"], **TOLERANCE)
        np.testing.assert_allclose(metrics_b["grad_norm"], metrics_a["grad_norm"], **TOLERANCE)
    close(b.params, a.params)
    close(b.opt_state, a.opt_state)
    assert not np.allclose(a.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])  # it trained


class PerPosition(nn.Module):
    """[batch, time, 3] -> [batch, time, 5] logits, with dropout."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Dense(5)(x)


def sequence_state(rate: float = 0.0) -> TrainState:
    model = PerPosition(rate)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 3)))
    return TrainState.create(apply_fn=model.apply, variables=variables, tx=optax.sgd(0.1),
                             rng=jax.random.PRNGKey(1))


def sequence_batch(rows: int = 8) -> dict:
    """Sequences scoring different numbers of positions (-1: not scored), so micro-batches weigh differently."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, (rows, 7))
    targets[rng.random((rows, 7)) < 0.5] = -1
    targets[0, :] = -1  # a sequence that scores nothing
    return {"inputs": rng.normal(size=(rows, 7, 3)).astype(np.float32), "targets": targets}


def test_weighted_examples_give_the_whole_batch_gradient():
    state, batch, task = sequence_state(), sequence_batch(), TASKS.get("sequence_classification")
    per_row = (batch["targets"] >= 0).sum(axis=1)
    micro = split_micro_batches(batch["targets"], 4)
    assert len({int((m >= 0).sum()) for m in micro}) > 1, per_row  # the micro-batches' weights differ

    def whole_loss(params):
        per_example = task.per_example(state.apply_fn({"params": params}, batch["inputs"]), batch["targets"])
        return jnp.sum(per_example["loss"] * per_example["weight"]) / jnp.sum(per_example["weight"])

    loss, grads = jax.jit(jax.value_and_grad(whole_loss))(state.params)
    accumulated_loss, _, accumulated_grads = jax.jit(
        lambda state, batch: accumulated_loss_and_grads(task, state, batch, state.rng, 4))(state, batch)
    np.testing.assert_allclose(accumulated_loss, loss, **TOLERANCE)
    close(accumulated_grads, grads)
    _, metrics = make_train_step(task, donate=False)(state, batch)
    np.testing.assert_allclose(accumulated_loss, metrics["loss"], **TOLERANCE)


def test_each_micro_batch_draws_its_own_dropout():
    state, batch, task = sequence_state(rate=0.5), sequence_batch(), TASKS.get("sequence_classification")
    batch["targets"][batch["targets"] < 0] = 0  # equal weights: the reference is a plain mean of the micro means
    step_rng = jax.random.fold_in(state.rng, state.step)

    @jax.jit
    @jax.value_and_grad
    def micro_loss(params, inputs, targets, key):
        logits = state.apply_fn({"params": params}, inputs, train=True, rngs={"dropout": key})
        return jnp.mean(task.per_example(logits, targets)["loss"])

    def reference(key_of):
        """Hand-stepped micro-batches: micro-batch i's loss and gradient with dropout key `key_of(i)`, averaged."""
        micro = split_micro_batches(batch, 2)
        losses, grads = zip(*[micro_loss(state.params, micro["inputs"][i], micro["targets"][i], key_of(i))
                              for i in range(2)])
        return np.mean(losses), jax.tree.map(lambda *g: sum(g) / len(g), *grads)

    _, metrics = make_train_step(task, donate=False, grad_accum_steps=2)(state, batch)
    own_key, own_grads = reference(lambda index: jax.random.fold_in(step_rng, index))
    np.testing.assert_allclose(metrics["loss"], own_key, **TOLERANCE)
    _, shared_grads = reference(lambda index: step_rng)
    assert not np.allclose(optax.tree.norm(shared_grads), optax.tree.norm(own_grads))
    np.testing.assert_allclose(metrics["grad_norm"], optax.tree.norm(own_grads), **TOLERANCE)


def test_batch_statistics_advance_once_per_micro_batch():
    state, dataset = cnn_state("model.norm=batch")
    assert "batch_stats" in state.model_state
    batch = dataset.train_batch(0, 0, 8)
    after, _ = make_train_step(TASKS.get("classification"), donate=False, grad_accum_steps=2)(state, batch)
    # Reference: the model in training mode on micro-batch 0, then on micro-batch 1 with the statistics it left.
    model_state = state.model_state
    for micro in split_micro_batches(batch["inputs"], 2):
        _, model_state = state.apply_fn({"params": state.params, **model_state}, micro, train=True,
                                        mutable=["batch_stats"])
    close(after.model_state, model_state)
    assert not np.allclose(jax.tree.leaves(after.model_state)[0], jax.tree.leaves(state.model_state)[0])


def test_the_nonfinite_guard_sees_the_accumulated_gradient():
    state, dataset = cnn_state()
    step = make_train_step(TASKS.get("classification"), skip_nonfinite=True, donate=False, grad_accum_steps=4)
    batch = dataset.train_batch(0, 0, 8)
    poisoned = {**batch, "inputs": batch["inputs"].copy()}
    poisoned["inputs"][5, 3] = np.nan  # row 5: the second micro-batch only
    after, metrics = step(state, poisoned)
    assert not bool(jnp.all(metrics["finite"])) and not bool(metrics["finite"][0])
    assert int(after.skipped_steps) == 1 and int(after.step) == 1
    jax.tree.map(np.testing.assert_array_equal, after.params, state.params)


def test_a_batch_that_does_not_split_is_refused_naming_both_keys(tmp_path):
    config = override_config(experiments.get_config("mnist1d-logreg"), ["train.batch_size=10",
                                                                        "train.grad_accum_steps=4"])
    with pytest.raises(ValueError, match=r"train.batch_size is 10, expected a multiple of train.grad_accum_steps=4"):
        validate_config(config)
    with pytest.raises(ValueError, match=r"train.grad_accum_steps is 0, expected a positive integer"):
        validate_config(override_config(config, ["train.grad_accum_steps=0"]))
    two_devices = types.SimpleNamespace(shape={"data": 2, "model": 1})
    with pytest.raises(ValueError, match=r"train.batch_size is 12, expected a multiple of train.grad_accum_steps=4 "
                                         r"x the data axis size 2 \(mesh 'data:2'\) = 8"):
        check_accumulation(two_devices, 12, 4)
    check_accumulation(two_devices, 16, 4)


def saved_params(workdir, step):
    return ocp.StandardCheckpointer().restore((workdir / CHECKPOINTS / str(step) / "state").absolute())


TIMING = {"train/steps_per_second", "train/data_wait_fraction"}  # measured, so never equal between two runs


def records(workdir):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_accumulated_run_is_exact_and_its_events_are_not_doubled(tmp_path):
    """A run stopped after its last step but before its final checkpoint (as SIGKILL would leave it: records and
    events up to step 12, checkpoints up to 8) resumes from step 8 to the uninterrupted run's state, records
    and events, bit for bit; dropout makes the micro-batches' keys matter."""
    from jaxarch.train.tensorboard import read_scalars

    config = override_config(experiments.get_config("mnist1d-cnn"), [
        "model.features=(4,8)", "model.dropout_rate=0.3", "train.grad_accum_steps=2", "train.batch_size=16",
        "train.steps=12", "train.checkpoint_every=4", "train.log_every=2", "train.eval_every=6",
        "train.eval_batch_size=500", "optim.warmup_steps=2"])
    train_and_evaluate(config, tmp_path / "whole", progress=False)
    train_and_evaluate(config, tmp_path / "cut", progress=False)
    shutil.rmtree(tmp_path / "cut" / CHECKPOINTS / "12")
    result = train_and_evaluate(config, tmp_path / "cut", progress=False)
    assert result["resumed_from"] == 8
    jax.tree.map(np.testing.assert_array_equal, saved_params(tmp_path / "cut", 12),
                 saved_params(tmp_path / "whole", 12))
    assert records(tmp_path / "cut") == records(tmp_path / "whole")
    whole, cut = read_scalars(tmp_path / "whole"), read_scalars(tmp_path / "cut")
    for key in TIMING:
        del whole[key], cut[key]
    assert cut == whole
    assert [step for step, _ in cut["train/loss"]] == [2, 4, 6, 8, 10, 12]


def test_on_four_simulated_devices_accumulation_equals_one_device(tmp_path):
    flags = "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=false"
    env = {**os.environ, "XLA_FLAGS": flags, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, str(REPO / "tests" / "grad_accum_checks.py"), str(tmp_path)], env=env,
                   check=True, timeout=600, stdout=subprocess.DEVNULL)
    report = json.loads((tmp_path / "report.json").read_text())
    one, four = report["data:1"], report["data:4,k=2"]
    assert len(one["losses"]) == 4
    np.testing.assert_allclose(four["losses"], one["losses"], **TOLERANCE)
    np.testing.assert_allclose(four["test_loss"], one["test_loss"], **TOLERANCE)
    assert four["mesh"] == "data:4"
    assert report["error"] == ("config: train.batch_size is 12, expected a multiple of train.grad_accum_steps=2 x "
                               "the data axis size 4 (mesh 'data:4') = 8: each device takes an equal part of every "
                               "micro-batch")


def test_a_run_saved_before_the_key_existed_resumes_as_unaccumulated(tmp_path):
    config = override_config(experiments.get_config("mnist1d-logreg"), [
        "train.steps=4", "train.checkpoint_every=2", "train.eval_every=0", "train.log_every=2"])
    train_and_evaluate(config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["train"]["grad_accum_steps"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert train_and_evaluate(config, tmp_path, progress=False)["resumed_from"] == 4
    accumulated = override_config(config, ["train.grad_accum_steps=2"])
    with pytest.raises(ValueError, match=r"train.grad_accum_steps: saved 1, now 2"):
        train_and_evaluate(accumulated, tmp_path, progress=False)
