"""Using a finished run: `load_run(run_dir)` reads a work directory written by `jaxarch run` (or
`train_and_evaluate`) and returns its config, dataset, model and trained parameters as one `Run`, with `apply`,
`generate` and `evaluate`.

Loading only reads: nothing in the run directory is created, cleaned, moved or rewritten (it may be read-only,
or another user's), and nothing is printed. The run directory's layout is described in docs/using-runs.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxarch.train.records import CONFIG

_MODULE = "load_run"


class _QuietOrbax(logging.Filter):
    """Drops orbax's warnings (on the "absl" logger) while a run is read: a read-only CheckpointManager warns
    "Given directory is read only" on creation, which is what reading someone's run is meant to be."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_orbax():
    logger, quiet = logging.getLogger("absl"), _QuietOrbax()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A trained run, as `load_run` returns it.

    Attributes:
      run_dir: the work directory it was read from.
      config: the run's config (its config.json), an `ml_collections.ConfigDict`.
      dataset: the config's dataset, built as the run built it (the same vocabulary, splits and batches).
      model: the Flax module, sized by the dataset as in training.
      params: the "params" collection of the checkpoint at `step`.
      model_state: the model's other collections (e.g. {"batch_stats": ...}; {} for most models).
      step: the training step of the checkpoint read.
      steps: every step that has a checkpoint in the run directory.
      best_step: the checkpoint the run judged best on its first evaluation split (None: none was evaluated).
    """

    run_dir: Path
    config: ml_collections.ConfigDict
    dataset: Any
    model: Any
    params: Any
    model_state: dict
    step: int
    steps: tuple[int, ...]
    best_step: int | None
    _mesh: Any = dataclasses.field(repr=False, default=None)

    @property
    def variables(self) -> dict:
        """`{"params": ..., **model_state}`: what `model.apply` takes."""
        return {"params": self.params, **self.model_state}

    @property
    def batch_stats(self):
        """The "batch_stats" collection (models with BatchNorm), or None."""
        return self.model_state.get("batch_stats")

    def apply(self, inputs, **kwargs):
        """The trained model on `inputs` (a batch shaped like the dataset's, e.g. `[batch, time]` token ids for a
        language model), in evaluation mode: `model.apply(variables, inputs, train=False, **kwargs)`."""
        kwargs.setdefault("train", False)
        return self.model.apply(self.variables, inputs, **kwargs)

    def evaluate(self, split: str | None = None, *, batch_size: int | None = None) -> dict[str, float]:
        """The metrics of `split` (default: every evaluation split), computed as the run's own evaluation computes
        them: `{"<split>/<metric>": value}`, e.g. {"validation/loss": 1.93, "validation/bits_per_token": 2.79, ...}.
        `batch_size` defaults to the run's `train.eval_batch_size`; padding rows never count, so it changes
        nothing beyond float rounding."""
        from jaxarch.train.mesh import padded_batch_size, place_batch
        from jaxarch.train.steps import evaluate, make_eval_step
        from jaxarch.train.tasks import TASKS

        names = self.dataset.split_names()
        if split is not None and split not in names:
            raise ValueError(f"evaluate: split is {split!r}, expected one of {list(names)} (the splits of dataset "
                             f"{self.config.data.name!r})")
        eval_step = make_eval_step(TASKS.get(self.dataset.task))
        size = padded_batch_size(self._mesh, batch_size or self.config.train.eval_batch_size)
        state = _EvalState(self.model.apply, self.params, self.model_state)
        results = {}
        for name in names if split is None else (split,):
            batches = (place_batch(self._mesh, batch) for batch in self.dataset.eval_batches(name, size))
            for metric, value in evaluate(eval_step, state, batches).items():
                results[f"{name}/{metric}"] = value
        return results

    def default_prompt(self) -> str:
        """The prompt `generate` continues when given none: the config's `sample.prompt` when it sets one, else
        the dataset's (the start of its held-out text)."""
        self._require_text()
        return (self.config.get("sample") or {}).get("prompt") or self.dataset.default_prompt()

    def _require_text(self) -> None:
        if not all(hasattr(self.dataset, name) for name in ("encode", "decode", "default_prompt")):
            raise ValueError(f"generate: the run in {str(self.run_dir)!r} is of dataset {self.config.data.name!r}, "
                             "which has no text encoding, expected a language-model run (e.g. dataset 'text')")

    def generate(self, prompt: str | None = None, num_tokens: int | None = None, *, temperature: float | None = None,
                 top_k: int | None = None, seed: int = 0) -> str:
        """A continuation of `prompt` (text) by a language-model run; returns the new text only.

        Defaults: `prompt` the dataset's (the start of its held-out text) unless the config's `sample.prompt`
        names one; `num_tokens` and `temperature` from the config's `sample` section, else 200 and 0.8.
        temperature 0 is greedy; `top_k` samples among the k most likely tokens. A GPT decodes with its
        key/value cache as far as its context reaches and recomputes a sliding window after that; an LSTM steps
        its cell (see `jaxarch.generate.continue_ids`).
        """
        from jaxarch.generate import continue_ids

        self._require_text()
        prompt = self.default_prompt() if prompt is None else prompt
        sample = self.config.get("sample") or {}
        if not prompt:
            raise ValueError("generate: prompt is '', expected at least one character")
        num_tokens = sample.get("num_tokens", 200) if num_tokens is None else num_tokens
        temperature = sample.get("temperature", 0.8) if temperature is None else temperature
        ids = continue_ids(self.model, self.variables, self.dataset.encode(prompt), num_tokens,
                           rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
                           window=getattr(self.dataset, "seq_len", None))
        return self.dataset.decode(ids)


@dataclasses.dataclass(frozen=True)
class _EvalState:
    """What `jaxarch.train.steps.make_eval_step` reads from a train state."""

    apply_fn: Any
    params: Any
    model_state: Any


jax.tree_util.register_dataclass(_EvalState, data_fields=["params", "model_state"], meta_fields=["apply_fn"])


def _read_config(run_dir: Path) -> ml_collections.ConfigDict:
    path = run_dir / CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{_MODULE}: {str(run_dir)!r} has no {CONFIG}, expected the work directory of a run "
                         "(`jaxarch run NAME --workdir DIR` writes DIR/config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{_MODULE}: {str(path)!r} cannot be read ({getattr(err, 'strerror', None) or err}), "
                         "expected the config.json the run wrote") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{_MODULE}: {str(path)!r} is not a JSON object, expected the config.json the run wrote")
    return ml_collections.ConfigDict(raw)


def _choose_step(step, steps: list[int], best: int | None, run_dir: Path) -> int:
    if step == "latest":
        return steps[-1]
    if step == "best":
        return steps[-1] if best is None else best
    if isinstance(step, str) and step.isdigit():
        step = int(step)
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool) and int(step) in steps:
        return int(step)
    raise ValueError(f"{_MODULE}: step is {step!r}, expected 'best', 'latest' or one of the checkpointed steps "
                     f"{steps} in {str(run_dir / 'checkpoints')!r}")


def load_run(run_dir: str | Path, step: str | int = "best") -> Run:
    """The run in `run_dir` at checkpoint `step`: "best" (the run's best on its first evaluation split; the last
    checkpoint if none was evaluated), "latest", or a step number that has a checkpoint.

    Reads config.json and checkpoints/ without writing anything, and prints nothing. The dataset is built from
    the saved config, so a run on `data.text_file=...` needs that file where it was (its vocabulary is the
    file's); the checkpoint is checked against its digests. Raises `ValueError` naming the file or key when the
    directory is not a finished or resumable run.
    """
    from jaxarch.train.checkpoint import CHECKPOINTS, Checkpointer, CheckpointMismatchError
    from jaxarch.train.loop import build_dataset_and_model, init_state
    from jaxarch.train.mesh import make_mesh
    from jaxarch.train.preflight import validate_config
    from jaxarch.train.tasks import TASKS

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ValueError(f"{_MODULE}: run_dir {str(run_dir)!r} is not a directory, expected a run's work directory")
    config = _read_config(run_dir)
    try:
        validate_config(config)
    except ValueError as err:
        raise ValueError(f"{_MODULE}: {str(run_dir / CONFIG)!r}: {err}") from None
    if not (run_dir / CHECKPOINTS).is_dir():
        raise ValueError(f"{_MODULE}: {str(run_dir)!r} has no {CHECKPOINTS}/ directory, expected a run that wrote "
                         "at least one checkpoint")
    dataset, model = build_dataset_and_model(config)
    try:
        mesh = make_mesh(config.mesh)
    except ValueError:  # trained on more devices than this machine has: every value is the same on fewer
        mesh = make_mesh("")
    task = TASKS.get(dataset.task)
    with _quiet_orbax():
        checkpointer = Checkpointer(run_dir, every=0, keep=1, read_only=True,
                                    best_metric=f"{dataset.split_names()[0]}/{task.primary_metric}",
                                    higher_is_better=task.higher_is_better,
                                    mismatch_hint="the run's config.json does not describe its checkpoints")
        try:
            steps = checkpointer.all_steps()
            if not steps:
                raise ValueError(f"{_MODULE}: {str(run_dir / CHECKPOINTS)!r} holds no checkpoint, expected at least "
                                 "one (a run writes one at its end and every train.checkpoint_every steps)")
            best = checkpointer.best_step()
            chosen = _choose_step(step, steps, best, run_dir)
            template = init_state(config, dataset, model, mesh)
            try:
                state = checkpointer.restore_step(template, chosen)
            except CheckpointMismatchError as err:
                raise ValueError(f"{_MODULE}: {err}") from None
        finally:
            checkpointer.close()
    return Run(run_dir=run_dir, config=config, dataset=dataset, model=model, params=state.params,
               model_state=dict(state.model_state), step=chosen, steps=tuple(steps), best_step=best, _mesh=mesh)
