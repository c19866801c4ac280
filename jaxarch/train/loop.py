"""`train_and_evaluate(config, workdir)`: the whole life of a run, from the config to its final metrics."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxarch.data import load_dataset
from jaxarch.models import build_model
from jaxarch.train.checkpoint import Checkpointer
from jaxarch.train.optim import make_optimizer, make_schedule
from jaxarch.train.records import MetricsLog, plot_learning_curve, write_config
from jaxarch.train.state import TrainState, count_params
from jaxarch.train.steps import evaluate, make_eval_step, make_train_step
from jaxarch.train.tasks import TASKS

REQUIRED_SECTIONS = ("data", "model", "optim", "train")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks the config's structure and arithmetic before anything is built or compiled."""
    missing = [s for s in (*REQUIRED_SECTIONS, "seed", "name") if s not in config]
    if missing:
        raise ValueError(f"config: missing keys {missing}, expected {['name', 'seed', *REQUIRED_SECTIONS]}")
    train = config.train
    for key in ("steps", "batch_size", "eval_batch_size"):
        if train[key] < 1:
            raise ValueError(f"config: train.{key} is {train[key]}, expected a positive integer")
    for key in ("eval_every", "log_every", "checkpoint_every"):
        if train[key] < 0:
            raise ValueError(f"config: train.{key} is {train[key]}, expected >= 0 (0 turns it off)")


def _progress(total: int, initial: int, enabled: bool | None):
    # tqdm on stderr: stdout is kept for the final JSON line. None shows it only on a terminal.
    return tqdm(total=total, initial=initial, disable=(not enabled) if enabled is not None else None,
                file=sys.stderr, unit="step", dynamic_ncols=True, leave=False)


def init_state(config: ml_collections.ConfigDict, dataset, model) -> TrainState:
    """Parameters from the seed: the same seed gives the same initial state on the same machine."""
    init_rng, dropout_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    example = np.zeros((1, *dataset.input_shape), dataset.train_batch(config.seed, 0, 1)["inputs"].dtype)
    variables = jax.jit(lambda x: model.init({"params": init_rng, "dropout": dropout_rng}, x, train=False))(example)
    tx = make_optimizer(config.optim, config.train.steps)
    return TrainState.create(apply_fn=model.apply, variables=variables, tx=tx, rng=state_rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, *,
                       progress: bool | None = None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Writes config.json, metrics.jsonl, learning_curve.png and checkpoints/ in `workdir`, and returns the
    final metrics: experiment, test metrics, params, train_seconds (the training loop's wall time, compile
    included, evaluation and checkpointing excluded), steps and steps_per_second.
    """
    validate_config(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start_wall = time.perf_counter()

    dataset = load_dataset(config.data.name, **{k: v for k, v in config.data.items() if k != "name"})
    model = build_model(config.model.name, dataset.num_outputs, vocab_size=getattr(dataset, "vocab_size", None),
                        **{k: v for k, v in config.model.items() if k != "name"})
    task = TASKS.get(dataset.task)
    train, seed = config.train, config.seed

    state = init_state(config, dataset, model)
    checkpointer = Checkpointer(workdir, every=train.checkpoint_every, keep=train.keep_checkpoints)
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
        state = checkpointer.restore(state)
        print(f"[jaxarch] resuming {config.name} from the checkpoint at step {resume_step}", file=sys.stderr)
    write_config(workdir, config)
    log = MetricsLog(workdir / "metrics.jsonl", resume_step)

    train_step, eval_step = make_train_step(task), make_eval_step(task)
    schedule = make_schedule(config.optim, train.steps)
    step = int(state.step)
    train_seconds = 0.0
    pending: list[jax.Array] = []  # Per-step losses, read back only when logged so dispatch stays async.
    last_log = (step, time.perf_counter())

    def run_eval(at_step: int) -> dict[str, float]:
        results = {}
        for split in dataset.split_names():
            for name, value in evaluate(eval_step, state, dataset.eval_batches(split, train.eval_batch_size)).items():
                results[f"{split}/{name}"] = value
        log.write(at_step, **results)
        return results

    bar = _progress(train.steps, step, progress)
    loop_start = time.perf_counter()
    while step < train.steps:
        state, metrics = train_step(state, dataset.train_batch(seed, step, train.batch_size))
        pending.append(metrics["loss"])
        step += 1
        bar.update(1)
        if train.log_every and (step % train.log_every == 0 or step == train.steps):
            loss = float(np.mean(jax.device_get(pending)))
            pending.clear()
            now = time.perf_counter()
            rate = (step - last_log[0]) / (now - last_log[1])
            last_log = (step, now)
            log.write(step, **{"train/loss": loss, "train/learning_rate": float(schedule(step)),
                               "train/steps_per_second": rate})
            bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{rate:.1f}")
        pauses = time.perf_counter()
        evaluated = train.eval_every and step % train.eval_every == 0 and step < train.steps
        if evaluated:
            jax.block_until_ready(state)
            pauses = time.perf_counter()
            run_eval(step)
        saved = checkpointer.maybe_save(state, step)
        if evaluated or saved:
            # Evaluation and checkpoint writing are not training time.
            paused = time.perf_counter() - pauses
            loop_start += paused
            last_log = (last_log[0], last_log[1] + paused)
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - loop_start
    bar.close()

    final = run_eval(train.steps)
    checkpointer.maybe_save(state, train.steps, force=True)
    checkpointer.close()
    plot_learning_curve(log.records(), workdir / "learning_curve.png", config.name)

    sample = _maybe_sample(config, dataset, state, workdir)
    trained_steps = train.steps - (resume_step or 0)
    result = {
        "experiment": config.name,
        **{key.replace("/", "_"): value for key, value in final.items()},
        "params": count_params(state.params),
        "steps": train.steps,
        "train_seconds": round(train_seconds, 2),
        "steps_per_second": round(trained_steps / train_seconds, 2) if train_seconds > 0 else None,
        "wall_seconds": round(time.perf_counter() - start_wall, 2),
        "resumed_from": resume_step,
        "workdir": str(workdir),
    }
    if sample is not None:
        result["sample"] = sample
    return result


def _maybe_sample(config: ml_collections.ConfigDict, dataset, state: TrainState, workdir: Path) -> str | None:
    """For language models (configs with a `sample` section and a dataset that decodes ids): a text sample,
    written to sample.txt and shown on stderr."""
    if "sample" not in config or not hasattr(dataset, "decode"):
        return None
    from jaxarch.sampling import sample_by_recompute

    variables = {"params": state.params, **state.model_state}
    prompt = dataset.encode(config.sample.prompt) if config.sample.prompt else dataset.train_ids[:1]
    ids = sample_by_recompute(state.apply_fn, variables, prompt, config.sample.num_tokens,
                              window=dataset.seq_len, rng=jax.random.PRNGKey(config.seed),
                              temperature=config.sample.temperature)
    text = config.sample.prompt + dataset.decode(ids)
    (workdir / "sample.txt").write_text(text)
    print(f"[jaxarch] sample from {config.name}:\n{text}", file=sys.stderr)
    return text
