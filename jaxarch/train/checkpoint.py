"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Each checkpoint holds two items: `state` (the whole `TrainState`: parameters, optimizer state, model state,
step and RNG key; the data position is the step, since batches are a function of `(seed, step)`) and
`integrity` (a SHA-256 digest of the state's bytes). Orbax writes a checkpoint into a temporary directory and
renames it only once complete, and deletes old checkpoints only after a new one is finalised, so a crash at any
moment leaves every earlier checkpoint intact. Retention keeps the last `keep` checkpoints and the best one by
a validation metric.

A checkpoint that cannot be read, or whose contents do not match its digest (a flipped bit restores silently
otherwise), is reported, moved to `<workdir>/corrupt_checkpoints`, and the previous one is tried.

`load_trained_params` warm-starts a run from another run's checkpoints, reading them without changing that
directory.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxarch.train.state import TrainState

CHECKPOINTS = "checkpoints"
QUARANTINE = "corrupt_checkpoints"


def state_digest(state) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # Split across processes: every process gathers the whole array, in the same order, so all agree.
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _leaf_signatures(tree) -> dict[str, tuple]:
    """`path -> (shape, dtype)` for every array leaf; paths written the same for saved and live trees."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in flat}


class CheckpointMismatchError(ValueError):
    """The work directory's checkpoints hold a differently shaped train state (another model or optimizer)."""


class Checkpointer:
    """Saves every `every` steps and at each evaluation; keeps the last `keep` and the best by `best_metric`.

    `best_metric` is a key of the evaluation results (e.g. "test/accuracy"); `higher_is_better` its direction.
    """

    def __init__(self, workdir: Path, *, every: int, keep: int, best_metric: str | None = None,
                 higher_is_better: bool = True, read_only: bool = False,
                 mismatch_hint: str = "use --restart to start over or choose another --workdir"):
        self.every = every
        self.read_only = read_only  # another run's directory: nothing there is created, cleaned or moved
        self.mismatch_hint = mismatch_hint
        self.workdir = Path(workdir).absolute()
        worst = -math.inf if higher_is_better else math.inf
        # Checkpoints between evaluations carry no metric and rank below every evaluated one (orbax warns on
        # each save without metrics when tracking a best, so they are saved with an empty dict instead).
        self._metric = lambda metrics: metrics.get(best_metric, worst)
        retained = [policies.LatestN(keep)]
        if best_metric is not None:
            retained.append(policies.BestN(get_metric_fn=self._metric, reverse=not higher_is_better, n=1))
        options = ocp.CheckpointManagerOptions(
            # A save cut short leaves a temporary directory only, cleaned up here (unless read-only).
            create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
            best_fn=self._metric if best_metric is not None else None,
            best_mode="max" if higher_is_better else "min",
            preservation_policy=policies.AnyPreservationPolicy(retained))
        self.manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINTS, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, template: TrainState) -> tuple[TrainState, int] | None:
        """The newest checkpoint that reads back intact, restored into the structure of `template`, and its
        step; None if there is none. Damaged checkpoints on the way are reported and quarantined."""
        for step in reversed(self.all_steps()):
            problem = self._incompatible_or_unreadable(step, template)
            if problem is None:
                abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
                try:
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), integrity=ocp.args.JsonRestore()))
                except Exception as err:  # noqa: BLE001 - any failure to read is damage; the next one is tried
                    problem = f"it cannot be read ({type(err).__name__}: {_first_line(err)})"
                else:
                    if state_digest(restored.state) == restored.integrity.get("sha256"):
                        return restored.state, step
                    problem = "its contents do not match the digest written with it"
            self._quarantine(step, problem)
        return None

    def _incompatible_or_unreadable(self, step: int, template: TrainState) -> str | None:
        """Raises CheckpointMismatchError if the checkpoint's metadata describes another train state; returns
        a description of the damage if the metadata cannot be read, else None."""
        try:
            metadata = self.manager.item_metadata(step)["state"]
            saved = _leaf_signatures(metadata.tree if hasattr(metadata, "tree") else metadata)
        except Exception as err:  # noqa: BLE001 - unreadable metadata is damage
            return f"its metadata cannot be read ({type(err).__name__}: {_first_line(err)})"
        live = _leaf_signatures(template)
        if saved != live:
            differences = sorted(set(saved.items()) ^ set(live.items()))[:3]
            shown = "; ".join(f"{path}: {'saved' if (path, sig) in saved.items() else 'now'} {sig}"
                              for path, sig in differences)
            raise CheckpointMismatchError(
                f"checkpoint: the checkpoint at step {step} in {self.workdir / CHECKPOINTS} holds a different "
                f"train state ({shown}), expected one written by the same model and optimizer settings; "
                f"{self.mismatch_hint}")
        return None

    def _quarantine(self, step: int, problem: str) -> None:
        if self.read_only:
            print(f"[jaxarch] the checkpoint at step {step} in {self.workdir / CHECKPOINTS} is damaged: {problem}; "
                  "trying the previous one", file=sys.stderr)
            return
        source = self.workdir / CHECKPOINTS / str(step)
        target = self.workdir / QUARANTINE / str(step)
        suffix = 1
        while target.exists():
            target = self.workdir / QUARANTINE / f"{step}.{suffix}"
            suffix += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        self.manager.reload()
        print(f"[jaxarch] the checkpoint at step {step} is damaged: {problem}; moved it to {target} and trying "
              "the previous one", file=sys.stderr)

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: TrainState, step: int, metrics: dict[str, float] | None = None) -> bool:
        """Starts an asynchronous save of `state` at `step` (unless that step is saved already)."""
        if step in self.manager.all_steps():
            return False
        integrity = {"sha256": state_digest(state), "step": step}
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), integrity=ocp.args.JsonSave(integrity)),
            metrics=dict(metrics or {}), force=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_trained_params(workdir: str | Path, template: TrainState) -> tuple[TrainState, int]:
    """`template` with the parameters and model state of the newest intact checkpoint in another run's
    `workdir` (a warm start: optimizer state, step and RNG stay the template's). That run must have had the
    same model and optimizer settings, so that its train state has the template's structure."""
    workdir = Path(workdir).expanduser()
    if not (workdir / CHECKPOINTS).is_dir():
        raise ValueError(f"train.init_from: {str(workdir)!r} has no {CHECKPOINTS}/ directory, expected the work "
                         "directory of an earlier run")
    source = Checkpointer(workdir, every=0, keep=1, read_only=True,
                          mismatch_hint="train.init_from needs a run of the same model and optimizer settings (the "
                                        "data and step count may differ)")
    try:
        restored = source.restore(template)
    except CheckpointMismatchError as err:
        raise ValueError(f"train.init_from: {err}") from None
    finally:
        source.close()
    if restored is None:
        raise ValueError(f"train.init_from: {str(workdir)!r} holds no intact checkpoint, expected at least one")
    trained, step = restored
    return template.replace(params=trained.params, model_state=trained.model_state), step


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""
