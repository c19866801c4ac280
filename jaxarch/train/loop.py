"""`train_and_evaluate(config, workdir)`: the whole life of a run, from the config to its final metrics."""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train.checkpoint import (CHECKPOINTS, Checkpointer, CheckpointMismatchError, init_from_dir,
                                     load_trained_params)
from jaxarch.train.distributed import workdir_lock
from jaxarch.train.lock import LOCK_FILE
from jaxarch.train.mesh import (DATA, check_batch_size, describe, load_batch, local_rows, make_mesh,
                                padded_batch_size, place_batch)
from jaxarch.train.nonfinite import NonFiniteError, NonFiniteGuard, flag_names
from jaxarch.train.optim import make_optimizer, make_schedule
from jaxarch.train.prefetch import Prefetcher
from jaxarch.train.preflight import (check_model_accepts_data, config_error, example_inputs, prepare_workdir,
                                     validate_config, with_experiment_name)
from jaxarch.train.profile import StepProfiler, check_profile
from jaxarch.train.records import (CONFIG, MetricsLog, config_dict, plot_learning_curve, read_saved_config,
                                   write_atomically, write_config)
from jaxarch.train.resume import check_config, check_steps, checkpoint_mismatch, config_changes, record_history
from jaxarch.train.resume import describe as describe_changes
from jaxarch.train.sharding import init_sharded_state, make_sharded_train_step
from jaxarch.train.signals import Interrupted, StopRequests
from jaxarch.train.state import TrainState, count_params
from jaxarch.train.steps import evaluate, make_eval_step
from jaxarch.train.tasks import TASKS
from jaxarch.train.tensorboard import EventLog


def _progress(total: int, initial: int, enabled: bool | None):
    # tqdm on stderr: stdout is kept for the final JSON line. None shows it only on a terminal.
    return tqdm(total=total, initial=initial, disable=(not enabled) if enabled is not None else None,
                file=sys.stderr, unit="step", dynamic_ncols=True, leave=False)


def build_dataset_and_model(config: ml_collections.ConfigDict):
    """The config's dataset and the model it sizes (outputs and vocabulary come from the dataset); a factory's
    error is restated with the config keys involved."""
    try:
        dataset = load_dataset(config.data.name, **{k: v for k, v in config.data.items() if k != "name"})
    except ValueError as err:
        raise config_error(config.data, "data", err) from None
    try:
        model = build_model(config.model.name, dataset.num_outputs, vocab_size=getattr(dataset, "vocab_size", None),
                            **{k: v for k, v in config.model.items() if k != "name"})
    except ValueError as err:
        raise config_error(config.model, "model", err) from None
    return dataset, model


def init_state(config: ml_collections.ConfigDict, dataset, model, mesh: Mesh | None = None) -> TrainState:
    """Parameters from the seed: the same seed gives the same initial state on the same machine, whatever the
    mesh. The state is laid out on `mesh` (default: the config's) as `jaxarch.train.sharding` describes."""
    init_rng, dropout_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    example = example_inputs(dataset, config.seed)
    tx = make_optimizer(config.optim, config.train.steps)
    return init_sharded_state(lambda: model.init({"params": init_rng, "dropout": dropout_rng}, example, train=False),
                              model.apply, tx, state_rng, make_mesh(config.mesh) if mesh is None else mesh,
                              fsdp=config.train.fsdp)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       progress: bool | None = None, restart: bool = False,
                       allow_config_change: bool = False, profile: tuple[int, int] | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its newest intact checkpoint if there is one.

    Writes config.json, metrics.jsonl, TensorBoard event files (`jaxarch.train.tensorboard`), learning_curve.png
    and checkpoints/ in `workdir`, and returns the
    final metrics: experiment, test metrics, params, train_seconds (the training loop's wall time, compile
    included, evaluation and checkpointing excluded), steps, steps_per_second, the best checkpoint's step and
    the mesh. Trains on the mesh of `config.mesh`; in a multi-process run every process calls this, and only
    process 0 writes the records.

    The run holds `workdir`'s lock throughout: another live run there raises `WorkdirBusyError` (a
    `ValueError`). `restart` empties the directory first (under the lock). A resumed run whose config differs
    from the saved one raises `ValueError` unless `allow_config_change` (see `jaxarch.train.resume`). SIGTERM
    or SIGINT during the run finishes the step, writes a checkpoint and raises `Interrupted` (handlers are
    installed for the run only). A non-finite loss or gradient raises `NonFiniteError` (under
    `train.nonfinite="stop"`) after the last good checkpoint has been written out.

    `profile=(START, COUNT)` traces the steps after step START, COUNT of them, into `workdir`/profile
    (`jaxarch.train.profile`); a window outside the run is a `ValueError` naming `--profile`.
    """
    validate_config(config)
    config = with_experiment_name(config)
    if profile is not None:
        check_profile(profile, config.train.steps)
    workdir = prepare_workdir(workdir)
    with workdir_lock(workdir), StopRequests(num_processes=jax.process_count()) as stop:
        if restart:
            _clear_workdir(workdir)
        return _train(config, workdir, progress, allow_config_change, stop, profile)


def _clear_workdir(workdir: Path) -> None:
    """Deletes everything in the work directory but its lock; process 0 does it while the others wait."""
    if jax.process_index() == 0:
        entries = [entry for entry in workdir.iterdir() if entry.name != LOCK_FILE]
        try:
            for entry in entries:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as err:
            raise ValueError(f"workdir: --restart could not delete {str(entry)!r} ({err.strerror}), expected a "
                             "directory this process can delete") from None
        if entries:
            print(f"[jaxarch] --restart: emptied {workdir}, starting from step 0", file=sys.stderr)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxarch restart")


def check_accumulation(mesh: Mesh, batch_size: int, grad_accum_steps: int) -> None:
    """Each device's rows of a batch split into `grad_accum_steps` equal micro-batch parts: the batch must be a
    multiple of `grad_accum_steps` x the data axis size."""
    data = mesh.shape[DATA]
    if batch_size % (grad_accum_steps * data):
        raise ValueError(f"config: train.batch_size is {batch_size}, expected a multiple of train.grad_accum_steps="
                         f"{grad_accum_steps} x the data axis size {data} (mesh {describe(mesh)!r}) = "
                         f"{grad_accum_steps * data}: each device takes an equal part of every micro-batch")


def _train(config: ml_collections.ConfigDict, workdir: Path, progress: bool | None, allow_config_change: bool,
           stop: StopRequests, profile: tuple[int, int] | None) -> dict:
    start_wall = time.perf_counter()
    dataset, model = build_dataset_and_model(config)
    check_model_accepts_data(config, dataset, model)
    task = TASKS.get(dataset.task)
    train, seed = config.train, config.seed

    mesh = make_mesh(config.mesh)
    check_batch_size(mesh, train.batch_size, "train.batch_size")
    check_accumulation(mesh, train.batch_size, train.grad_accum_steps)
    primary = jax.process_index() == 0
    state = init_state(config, dataset, model, mesh)
    # The best checkpoint is judged on the first evaluation split by the task's headline metric.
    best_metric = f"{dataset.split_names()[0]}/{task.primary_metric}"
    checkpointer = Checkpointer(workdir, every=train.checkpoint_every, keep=train.keep_checkpoints,
                                best_metric=best_metric, higher_is_better=task.higher_is_better)
    try:  # Until the loop's own try takes over: a refusal to resume still lets orbax's threads finish.
        try:
            restored = checkpointer.restore(state)
        except CheckpointMismatchError as err:  # the config keys that caused it come first
            raise checkpoint_mismatch(err, read_saved_config(workdir), config_dict(config), workdir) from None
        resume_step, changes, unlogged, unlogged_norms = None, {}, [], []
        if restored is not None:
            state, resume_step = restored
            check_steps(train.steps, resume_step, workdir / CHECKPOINTS)
            saved = read_saved_config(workdir)
            if saved is None:
                print(f"[jaxarch] {workdir} has no config.json to compare with; resuming with the current config",
                      file=sys.stderr)
            else:
                # A run saved before train.grad_accum_steps existed trained without accumulation.
                if isinstance(saved.get("train"), dict):
                    saved["train"].setdefault("grad_accum_steps", 1)
                changes = config_changes(saved, config_dict(config))
                check_config(changes, allowed=allow_config_change, workdir=workdir)
            # Losses of the steps after the last log record, saved with the checkpoint.
            unlogged = [np.float32(loss) for loss in checkpointer.restored_notes.get("unlogged_losses", [])]
            unlogged_norms = [np.float32(norm) for norm in checkpointer.restored_notes.get("unlogged_grad_norms", [])]
            print(f"[jaxarch] resuming {config.name} from the checkpoint at step {resume_step}", file=sys.stderr)
        elif train.init_from:
            # Only a fresh run is warm-started; a resumed one already holds its own trained parameters.
            source = init_from_dir(train.init_from, config.seed)
            state, source_step = load_trained_params(source, state)
            print(f"[jaxarch] {config.name} starts from the parameters of {source} at step {source_step}",
                  file=sys.stderr)
        schedule = make_schedule(config.optim, train.steps)
        if primary and (changes or resume_step is None or not (workdir / CONFIG).exists()):
            write_config(workdir, config)
        finished = resume_step == train.steps
        log = MetricsLog(workdir / "metrics.jsonl", resume_step, enabled=primary)
        # A finished run adds no records: its event files are left as they are.
        events = EventLog(workdir, resume_step, enabled=primary and not finished)

        def record(at_step: int, **values) -> None:
            log.write(at_step, **values)
            events.write(at_step, **values)

        if changes:
            _announce_changes(config, saved, workdir, resume_step, changes, schedule, primary, record)
    except BaseException:
        checkpointer.close()
        raise
    if finished:
        print(f"[jaxarch] {config.name} in {workdir} is already complete at step {resume_step}; evaluating its "
              "final checkpoint without adding records", file=sys.stderr)

    skipping = train.nonfinite == "skip"
    train_step = make_sharded_train_step(task, state, mesh, skip_nonfinite=skipping, donate=not train.debug_nans,
                                         grad_accum_steps=train.grad_accum_steps)
    eval_step = make_eval_step(task)
    # Padding rows are masked out of the metrics, so evaluation may round its batch up to split evenly.
    eval_batch_size = padded_batch_size(mesh, train.eval_batch_size)
    guard = NonFiniteGuard(flag_names(state.params), train.nonfinite)
    step = int(state.step)
    pending: list = unlogged  # Per-step losses, read back only when logged so dispatch stays async.
    pending_norms: list = unlogged_norms  # and gradient norms, alike
    last_log = (step, time.perf_counter())

    def run_eval(at_step: int, write: bool = True) -> dict[str, float]:
        results = {}
        for split in dataset.split_names():
            batches = (place_batch(mesh, batch) for batch in dataset.eval_batches(split, eval_batch_size))
            for name, value in evaluate(eval_step, state, batches).items():
                results[f"{split}/{name}"] = value
        if write:
            record(at_step, **results)
        return results

    # A context, not a global update: it overrides any setting in force and restores it afterwards.
    debug_nans = jax.debug_nans(True) if train.debug_nans else contextlib.nullcontext()
    debug_nans.__enter__()
    bar = _progress(train.steps, step, progress)
    saved_step = resume_step
    profiler = StepProfiler(profile, workdir, train.steps, step)
    # Batches are loaded and placed on the mesh by a background thread, `train.prefetch` steps ahead.
    batches = Prefetcher(lambda at: load_batch(mesh, dataset, seed, at, train.batch_size), start=step,
                         stop=train.steps, depth=train.prefetch)
    try:
        loop_start = time.perf_counter()
        while step < train.steps:
            if stop.should_stop(step):
                guard.check()  # Nothing from a non-finite step is ever saved.
                if saved_step != step and step > 0:
                    # The losses not yet logged travel with the checkpoint, so that the resumed run's next log
                    # record averages the same steps as an uninterrupted run's.
                    jax.block_until_ready(state)
                    events.flush()
                    checkpointer.save(state, step, None, notes=_unlogged(pending, pending_norms))
                checkpointer.wait()
                raise Interrupted(stop.signum, step if step > 0 else None, str(workdir / CHECKPOINTS))
            try:
                with profiler.annotation(step):
                    state, metrics = train_step(state, batches.get(step))
            except FloatingPointError as err:  # raised by jax_debug_nans, naming the operation
                raise NonFiniteError(step + 1, "value inside the train step", str(err).splitlines()[0]) from err
            pending.append(metrics["loss"])
            pending_norms.append(metrics["grad_norm"])
            step += 1
            profiler.after(step, state)
            guard.record(step, metrics["finite"])
            bar.update(1)
            logged = train.log_every and (step % train.log_every == 0 or step == train.steps)
            evaluated = train.eval_every and step % train.eval_every == 0 and step < train.steps
            # The last step is saved after the final evaluation, with its metrics, below.
            saving = evaluated or (checkpointer.should_save(step) and step < train.steps)
            if logged or saving or guard.due():
                guard.check()  # Nothing from a non-finite step is ever logged or saved.
            if logged:
                loss, grad_norm = _finite_mean(pending), _finite_mean(pending_norms)
                pending.clear()
                pending_norms.clear()
                now = time.perf_counter()
                rate = (step - last_log[0]) / (now - last_log[1])
                # The share of the interval the loop spent waiting for its batches (jaxarch.train.prefetch).
                data_wait = batches.take_wait_seconds() / (now - last_log[1]) if now > last_log[1] else 0.0
                last_log = (step, now)
                extra = {"train/skipped_steps": int(state.skipped_steps)} if skipping else {}
                record(step, **{"train/loss": loss, "train/grad_norm": grad_norm,
                                "train/learning_rate": float(schedule(step)), "train/steps_per_second": rate,
                                "train/data_wait_fraction": data_wait}, **extra)
                bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{rate:.1f}")
            if saving:
                # Evaluation and checkpoint writing are not training time.
                jax.block_until_ready(state)
                pause_start = time.perf_counter()
                evaluation = run_eval(step) if evaluated else None
                # The events of every step up to this checkpoint are on disk before it is.
                events.flush()
                checkpointer.save(state, step, evaluation, notes=_unlogged(pending, pending_norms))
                saved_step = step
                paused = time.perf_counter() - pause_start
                loop_start += paused
                last_log = (last_log[0], last_log[1] + paused)
        guard.check()
        jax.block_until_ready(state)
        train_seconds = time.perf_counter() - loop_start
        # A signal after the last step lets the final evaluation and checkpoint finish: the run is complete.
        final = run_eval(train.steps, write=not finished)
        events.flush()
        checkpointer.save(state, train.steps, final)
        checkpointer.wait()
        if primary:
            plot_learning_curve(log.records(), workdir / "learning_curve.png", config.name)
            write_figure(events, workdir / "learning_curve.png", train.steps)
    except NonFiniteError as err:
        err.last_checkpoint, err.checkpoint_dir = checkpointer.latest_step(), str(workdir / CHECKPOINTS)
        raise
    finally:
        profiler.close()
        batches.close()  # No producer thread outlives the loop, however it ends.
        bar.close()
        debug_nans.__exit__(None, None, None)
        checkpointer.close()  # Waits for a checkpoint still being written, even when stopping on an error.
        events.close()
    # Sampling is a host-side loop of small steps; across processes it would need them all in lockstep.
    sample = _maybe_sample(config, dataset, state, workdir) if jax.process_count() == 1 else None
    trained_steps = train.steps - (resume_step or 0)
    result = {
        "experiment": config.name,
        **{key.replace("/", "_"): value for key, value in final.items()},
        "params": count_params(state.params),
        "steps": train.steps,
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(trained_steps / train_seconds, 2) if train_seconds > 0 and trained_steps else None,
        "wall_seconds": round(time.perf_counter() - start_wall, 2),
        "resumed_from": resume_step,
        "mesh": describe(mesh),
        "best_checkpoint_step": checkpointer.best_step(),
        "workdir": str(workdir),
    }
    if changes:
        result["config_changes"] = {key: {"saved": old, "new": new} for key, (old, new) in changes.items()}
    if skipping:
        result["skipped_steps"] = int(state.skipped_steps)
    if jax.process_count() > 1:  # The rows of each batch this process loaded.
        rows = local_rows(mesh, train.batch_size) or slice(0, train.batch_size)
        result["local_batch_rows"] = f"{rows.start}:{rows.stop}"
    if sample is not None:
        result["sample"] = sample
    return result


def _finite_mean(values: list) -> float:
    """The mean of the per-step values read back from the device, over the finite ones (only skipped steps can
    be non-finite here); NaN when none is."""
    values = np.asarray(jax.device_get(values)).reshape(-1)
    finite = values[np.isfinite(values)]
    return float(np.mean(finite)) if finite.size else math.nan


def _unlogged(losses: list, grad_norms: list) -> dict:
    """A checkpoint's notes: the per-step values not yet logged, so that the resumed run's next log record
    averages the same steps as an uninterrupted run's."""
    def floats(values):
        return [float(x) for x in np.asarray(jax.device_get(values)).reshape(-1)]

    return {"unlogged_losses": floats(losses), "unlogged_grad_norms": floats(grad_norms)}


def write_figure(events: EventLog, path: Path, step: int) -> None:
    """The learning-curve PNG (when one was drawn) as an image event at the run's last step."""
    if path.exists():
        events.write_png("learning_curve", step, path.read_bytes())


def _announce_changes(config: ml_collections.ConfigDict, saved: dict, workdir: Path, resume_step: int,
                      changes: dict, schedule, primary: bool, record) -> None:
    """Reports allowed config changes on stderr and records them (config_history.jsonl and a `config_change`
    record in metrics.jsonl at the resume step). The learning-rate schedule is recomputed for the new config
    as if the run had started with it; when `train.steps` or an `optim` key changed, the rate at the resume
    step under the saved schedule and under the new one are both reported, since the step between them is
    what the change does to training."""
    print(f"[jaxarch] resuming {workdir} at step {resume_step} with config changes: {describe_changes(changes)}",
          file=sys.stderr)
    marker = {"config_change": {key: {"saved": old, "new": new} for key, (old, new) in changes.items()}}
    touched = [key for key in changes if key == "train.steps" or key.startswith("optim.")]
    if touched:
        old_optim = ml_collections.ConfigDict({**config.optim.to_dict(), **saved.get("optim", {})})
        old_steps = saved.get("train", {}).get("steps", config.train.steps)
        try:
            before = float(make_schedule(old_optim, old_steps)(resume_step))
        except (ValueError, TypeError, KeyError):
            before = math.nan
        after = float(schedule(resume_step))
        marker["train/learning_rate_before"], marker["train/learning_rate_after"] = before, after
        print(f"[jaxarch] the learning-rate schedule is recomputed for the new config: at step {resume_step} the "
              f"rate goes from {before:.3g} (saved schedule) to {after:.3g} (new schedule)", file=sys.stderr)
    if primary:
        record_history(workdir, resume_step, changes)
        record(resume_step, **marker)
def _maybe_sample(config: ml_collections.ConfigDict, dataset, state: TrainState, workdir: Path) -> str | None:
    """For language models (configs with a `sample` section and a dataset that decodes ids): a text sample,
    written to sample.txt and shown on stderr."""
    if "sample" not in config or not hasattr(dataset, "decode"):
        return None
    from jaxarch.sampling import sample_by_recompute

    variables = {"params": state.params, **state.model_state}
    prompt = config.sample.prompt or dataset.default_prompt()  # "": the start of the held-out text
    ids = sample_by_recompute(state.apply_fn, variables, dataset.encode(prompt), config.sample.num_tokens,
                              window=dataset.seq_len, rng=jax.random.PRNGKey(config.seed),
                              temperature=config.sample.temperature)
    text = prompt + dataset.decode(ids)
    write_atomically(workdir / "sample.txt", text)
    print(f"[jaxarch] sample from {config.name}:\n{text}", file=sys.stderr)
    return text
