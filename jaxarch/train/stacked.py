"""Several members of a sweep trained as one: their train states stacked on a leading member axis and advanced
by one jitted step, `jax.vmap` of `jaxarch.train.steps.make_train_step`'s step over state, batch and keys.

Members of one stack share every config value except `jaxarch.train.sweep.STACKABLE`: the seed (initial
parameters, batches and dropout keys are each member's own) and the optimizer's learning rate and weight decay,
which enter the step as per-member arrays. Everything else is each member's single run: the same initial
state (`init_state` with the member's config), batch `(seed, step)`, dropout key `fold_in(rng, step)`, logging,
evaluation, checkpoints and TensorBoard events in the member's own run directory, in the single run's format, so
`jaxarch run` can resume a member and a member checkpoint resumes here. The results equal the single runs' within float rounding:
a batched matmul or convolution may sum in another order than the unbatched one.

On several devices the member axis is split over them (the largest device count that divides the members);
each member's step runs whole on one device.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxarch.train.checkpoint import Checkpointer, init_from_dir, load_trained_params
from jaxarch.train.loop import build_dataset_and_model, init_state, train_and_evaluate, write_figure
from jaxarch.train.mesh import make_mesh
from jaxarch.train.nonfinite import NonFiniteGuard, flag_names
from jaxarch.train.optim import OPTIMIZERS, make_schedule
from jaxarch.train.preflight import prepare_workdir
from jaxarch.train.records import MetricsLog, plot_learning_curve, write_config
from jaxarch.train.state import TrainState, count_params
from jaxarch.train.steps import evaluate, make_eval_step, make_train_step
from jaxarch.train.tasks import TASKS
from jaxarch.train.tensorboard import EventLog

MEMBERS = "members"  # the mesh axis the member axis is split over


def member_optimizer(optim: ml_collections.ConfigDict, total_steps: int, learning_rate: jax.Array,
                     weight_decay: jax.Array) -> optax.GradientTransformation:
    """`jaxarch.train.optim.make_optimizer` with the learning rate and weight decay given as (traced) arrays.

    Every schedule is linear in its peak (warm-up from 0, decay to peak x end_learning_rate_factor), so the
    member's schedule is its peak times the schedule of peak 1. The optimizer state has the single run's
    structure: a checkpoint written here is the single run's checkpoint.
    """
    unit = make_schedule(ml_collections.ConfigDict({**optim.to_dict(), "learning_rate": 1.0}), total_steps)
    options = types.SimpleNamespace(**{**optim.to_dict(), "weight_decay": weight_decay})
    opt = OPTIMIZERS[optim.optimizer](lambda count: learning_rate * unit(count), options)
    if optim.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
    return opt


def make_stacked_step(task, config: ml_collections.ConfigDict, *, skip_nonfinite: bool = False,
                      donate: bool = True):
    """Jitted `(stacked state, stacked batch, hyperparameters) -> (stacked state, metrics)`: the single run's
    step (`make_train_step`) vmapped over members. The stacked state holds no optimizer (`tx=None`): each member's
    is rebuilt in the step from its `{"learning_rate", "weight_decay"}` ([members] arrays). Metrics are
    [members] arrays, but "finite", flattened to [members x quantities] for one `NonFiniteGuard`."""
    single_step = make_train_step(task, jit=False, skip_nonfinite=skip_nonfinite,
                                  grad_accum_steps=config.train.grad_accum_steps)

    def member_step(state: TrainState, batch: dict, hyperparams: dict):
        tx = member_optimizer(config.optim, config.train.steps, **hyperparams)
        new_state, metrics = single_step(state.replace(tx=tx), batch)
        # No optimizer in the output either: a new one each trace would make every call's state a new pytree.
        return new_state.replace(tx=None), metrics

    def stacked_step(state, batch, hyperparams):
        new_state, metrics = jax.vmap(member_step)(state, batch, hyperparams)
        return new_state, {**metrics, "finite": metrics["finite"].reshape(-1)}

    return jax.jit(stacked_step, donate_argnums=0 if donate else ())


def hyperparameters(configs: Sequence[ml_collections.ConfigDict]) -> list[dict]:
    """Each member's stackable optimizer values, as the float32 scalars its schedule computes in."""
    return [{"learning_rate": np.float32(c.optim.learning_rate), "weight_decay": np.float32(c.optim.weight_decay)}
            for c in configs]


def member_devices(count: int) -> list:
    """The most devices, at most `count`, over which `count` members split evenly."""
    devices = jax.local_devices()
    used = max(d for d in range(1, min(count, len(devices)) + 1) if count % d == 0)
    return devices[:used]


def stack(trees: Sequence, sharding: NamedSharding):
    """Member trees -> one tree of [members, ...] arrays, split over the member axis."""
    return jax.device_put(jax.tree.map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]), *trees),
                          sharding)


def train_stacked(members: Sequence) -> list[dict]:
    """Trains `members` (`jaxarch.train.sweep.Member`s of one group) together; returns each one's final metrics,
    as `train_and_evaluate` returns them. Each member resumes from its newest checkpoint; members whose
    checkpoints are at different steps (a sweep killed while saving) are trained one after another instead, and
    so are members under `train.debug_nans` (whose search for a NaN re-runs one member's step)."""
    configs = [member.config for member in members]
    config = configs[0]
    if jax.process_count() > 1:
        raise ValueError("sweep: the vmap strategy runs in one process, expected --strategy sequential for a "
                         "multi-process run")
    if config.train.debug_nans:
        return [train_and_evaluate(member.config, member.workdir, progress=False) for member in members]
    start_wall = time.perf_counter()
    workdirs = [prepare_workdir(member.workdir) for member in members]
    dataset, model = build_dataset_and_model(config)
    task = TASKS.get(dataset.task)
    train = config.train
    one_device = make_mesh("data:1", jax.local_devices()[:1])
    # Each member's own initial state (its seed's parameters, key and optimizer state), as its single run makes it.
    states = [init_state(member_config, dataset, model, one_device) for member_config in configs]
    best_metric = f"{dataset.split_names()[0]}/{task.primary_metric}"
    checkpointers = [Checkpointer(workdir, every=train.checkpoint_every, keep=train.keep_checkpoints,
                                  best_metric=best_metric, higher_is_better=task.higher_is_better)
                     for workdir in workdirs]
    try:
        restored = [checkpointer.restore(state) for checkpointer, state in zip(checkpointers, states)]
        resume_steps = {None if r is None else r[1] for r in restored}
        if len(resume_steps) > 1:
            while checkpointers:
                checkpointers.pop().close()
            print(f"[jaxarch sweep] members' checkpoints are at different steps {sorted(map(str, resume_steps))}; "
                  "resuming them one after another", file=sys.stderr)
            return [train_and_evaluate(member.config, member.workdir, progress=False) for member in members]
        resume_step = resume_steps.pop()
        if resume_step is not None:
            states = [r[0] for r in restored]
            print(f"[jaxarch sweep] resuming {len(members)} stacked members from step {resume_step}",
                  file=sys.stderr)
        elif train.init_from:
            states = [load_trained_params(init_from_dir(train.init_from, member_config.seed), state)[0]
                      for member_config, state in zip(configs, states)]
        return _train(members, configs, states, checkpointers, dataset, task, resume_step, start_wall)
    finally:
        for checkpointer in checkpointers:
            checkpointer.close()


def _train(members, configs, states, checkpointers, dataset, task, resume_step, start_wall) -> list[dict]:
    """Each member's records (metrics.jsonl and TensorBoard events, closed whatever happens) around the loop."""
    for member, member_config in zip(members, configs):
        write_config(member.workdir, member_config)
    logs = [MetricsLog(member.workdir / "metrics.jsonl", resume_step) for member in members]
    events = [EventLog(member.workdir, resume_step) for member in members]
    try:
        return _train_members(members, configs, states, checkpointers, dataset, task, resume_step, start_wall, logs,
                              events)
    finally:
        for member_events in events:
            member_events.close()


def _train_members(members, configs, states, checkpointers, dataset, task, resume_step, start_wall, logs,
                   events) -> list[dict]:
    config, train = configs[0], configs[0].train
    count = len(members)
    devices = member_devices(count)
    mesh = Mesh(np.array(devices), (MEMBERS,))
    split = NamedSharding(mesh, PartitionSpec(MEMBERS))
    apply_fn, template_tx = states[0].apply_fn, states[0].tx
    # The optimizer is rebuilt inside the step from each member's hyperparameters; the stacked state holds none.
    stacked = stack([state.replace(tx=None) for state in states], split)
    hyper = stack(hyperparameters(configs), split)
    skipping = train.nonfinite == "skip"
    step_fn = make_stacked_step(task, config, skip_nonfinite=skipping)
    eval_step = make_eval_step(task)
    names = flag_names(states[0].params)
    labels = [" ".join(member.overrides) for member in members]
    guard = NonFiniteGuard([f"{name} (member {label})" for label in labels for name in names], train.nonfinite)
    schedules = [make_schedule(c.optim, train.steps) for c in configs]
    step = int(states[0].step)
    pending: list[jax.Array] = []  # [members] losses per step, read back when logged
    pending_norms: list[jax.Array] = []  # [members] gradient norms, alike
    last_log = (step, time.perf_counter())

    def member_state(index: int) -> TrainState:
        return jax.tree.map(lambda x: x[index], stacked).replace(apply_fn=apply_fn, tx=template_tx)

    def run_eval(at_step: int) -> list[dict[str, float]]:
        results = []
        for index, log in enumerate(logs):
            state, values = member_state(index), {}
            for split_name in dataset.split_names():
                batches = dataset.eval_batches(split_name, train.eval_batch_size)
                for name, value in evaluate(eval_step, state, batches).items():
                    values[f"{split_name}/{name}"] = value
            log.write(at_step, **values)
            events[index].write(at_step, **values)
            results.append(values)
        return results

    def save(at_step: int, evaluations: list[dict] | None) -> None:
        for member_events in events:  # The events up to a checkpoint are on disk before it is.
            member_events.flush()
        for index, checkpointer in enumerate(checkpointers):
            checkpointer.save(member_state(index), at_step, evaluations[index] if evaluations else None)

    loop_start = time.perf_counter()
    while step < train.steps:
        batch = stack([dataset.train_batch(c.seed, step, train.batch_size) for c in configs], split)
        stacked, metrics = step_fn(stacked, batch, hyper)
        pending.append(metrics["loss"])
        pending_norms.append(metrics["grad_norm"])
        step += 1
        guard.record(step, metrics["finite"])
        logged = train.log_every and (step % train.log_every == 0 or step == train.steps)
        evaluated = train.eval_every and step % train.eval_every == 0 and step < train.steps
        saving = evaluated or (checkpointers[0].should_save(step) and step < train.steps)
        if logged or saving or guard.due():
            guard.check()
        if logged:
            losses = np.asarray(jax.device_get(pending))  # [steps, members]
            norms = np.asarray(jax.device_get(pending_norms))  # [steps, members]
            pending.clear()
            pending_norms.clear()
            now = time.perf_counter()
            rate = (step - last_log[0]) / (now - last_log[1])
            last_log = (step, now)
            skipped = np.asarray(stacked.skipped_steps) if skipping else None
            for index, log in enumerate(logs):
                loss, grad_norm = _finite_mean(losses[:, index]), _finite_mean(norms[:, index])
                extra = {"train/skipped_steps": int(skipped[index])} if skipping else {}
                values = {"train/loss": loss, "train/grad_norm": grad_norm,
                          "train/learning_rate": float(schedules[index](step)), "train/steps_per_second": rate, **extra}
                log.write(step, **values)
                events[index].write(step, **values)
        if saving:
            jax.block_until_ready(stacked)
            pause_start = time.perf_counter()
            save(step, run_eval(step) if evaluated else None)
            paused = time.perf_counter() - pause_start
            loop_start += paused
            last_log = (last_log[0], last_log[1] + paused)
    guard.check()
    jax.block_until_ready(stacked)
    train_seconds = time.perf_counter() - loop_start
    finals = run_eval(train.steps)
    save(train.steps, finals)
    best_steps = []
    while checkpointers:  # Waits for the last saves; the caller's list is left empty, nothing to close twice.
        checkpointer = checkpointers.pop(0)
        checkpointer.close()
        best_steps.append(checkpointer.best_step())
    trained_steps = train.steps - (resume_step or 0)
    results = []
    for index, (member, member_config) in enumerate(zip(members, configs)):
        plot_learning_curve(logs[index].records(), member.workdir / "learning_curve.png", member_config.name)
        write_figure(events[index], member.workdir / "learning_curve.png", train.steps)
        result = {
            "experiment": member_config.name,
            **{key.replace("/", "_"): value for key, value in finals[index].items()},
            "params": count_params(states[0].params),
            "steps": train.steps,
            # The stack's time: the members trained together.
            "train_seconds": round(train_seconds, 2),
            "steps_per_second": round(trained_steps / train_seconds, 2) if train_seconds > 0 else None,
            "wall_seconds": round(time.perf_counter() - start_wall, 2),
            "resumed_from": resume_step,
            "mesh": f"{MEMBERS}:{len(devices)}",
            "best_checkpoint_step": best_steps[index],
            "workdir": str(member.workdir),
            "stacked_members": count,
        }
        if skipping:
            result["skipped_steps"] = int(np.asarray(stacked.skipped_steps)[index])
        results.append(result)
    return results


def _finite_mean(values: np.ndarray) -> float:
    """The mean over the finite values (only skipped steps can be non-finite); NaN when none is."""
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if finite.size else float("nan")
