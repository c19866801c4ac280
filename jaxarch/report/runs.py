"""The report's training runs: experiment configs with a few overrides, trained by `train_and_evaluate` in
their own work directories, each once, with the trained variables read back from the final checkpoint.

With `seeds` > 1 every run is a sweep over seeds 0..seeds-1 (`jaxarch.train.sweep`, sequential): its result
holds each metric's mean, and `per_seed` the values seed by seed, which the checks judge by their interval."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jaxarch.checks import fail

# The report reads only final metrics and the final checkpoint: no periodic evaluation or checkpoints.
_RUN_DEFAULTS = ("train.eval_every=0", "train.checkpoint_every=0")


@dataclasses.dataclass(frozen=True)
class Trained:
    config: ml_collections.ConfigDict
    dataset: Any
    model: Any
    variables: dict  # trained: {"params": ..., and any other model collections}
    result: dict  # train_and_evaluate's final metrics

    def initial_variables(self) -> dict:
        """The same run's variables at step 0 (initialisation is a function of the config's seed)."""
        from jaxarch.train import init_state

        return _as_variables(init_state(self.config, self.dataset, self.model))


def _as_variables(state) -> dict:
    return {"params": state.params, **state.model_state}


class Runs:
    """Trains `experiment` with `overrides` into `root/<label>` the first time a label is asked for; later
    requests for the same label (from other claims) reuse that run."""

    def __init__(self, root: str | Path, *, progress: bool | None = False, seeds: int = 1):
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            fail("Runs", "seeds", repr(seeds), "a positive integer")
        self.root = Path(root)
        self.progress = progress
        self.seeds = seeds
        self._runs: dict[str, tuple[ml_collections.ConfigDict, dict]] = {}

    def train(self, label: str, experiment: str, overrides: Sequence[str] = ()) -> dict:
        """Final metrics of the run `label` (trained now unless it already was, with the same settings); over
        several seeds: seed 0's result with every metric replaced by its mean, and `per_seed`: metric -> values."""
        from jaxarch import experiments
        from jaxarch.train import train_and_evaluate
        from jaxarch.train.configure import override_config
        from jaxarch.train.sweep import sweep

        config = override_config(experiments.get_config(experiment), [*_RUN_DEFAULTS, *overrides])
        if label in self._runs:
            if self._runs[label][0].to_dict() != config.to_dict():
                fail("Runs.train", f"settings of run {label!r}", f"{experiment} {list(overrides)}",
                     "the settings it was first trained with")
            return self._runs[label][1]
        print(f"[jaxarch report] training {label} ({experiment} {' '.join(overrides)})", file=sys.stderr,
              flush=True)
        if self.seeds == 1:
            result = train_and_evaluate(config, self.root / label, progress=self.progress)
        else:
            [point] = sweep(config, {}, range(self.seeds), self.root / label, strategy="sequential",
                            progress=self.progress)["points"]
            result = json.loads((self.root / label / point["seeds"][0]["workdir"] / "result.json").read_text())
            result.update({metric: stats["mean"] for metric, stats in point["metrics"].items()})
            result["per_seed"] = {metric: [row[metric] for row in point["seeds"]] for metric in point["metrics"]}
        self._runs[label] = (config, result)
        return result

    def run_dir(self, label: str) -> Path:
        """The run's directory; over several seeds, seed 0's (the run whose trained variables are probed)."""
        return self.root / label if self.seeds == 1 else self.root / label / "seed=0"

    def trained(self, label: str) -> Trained:
        """The run's config, dataset, model and trained variables (restored from its final checkpoint)."""
        from jaxarch.train import init_state
        from jaxarch.train.checkpoint import Checkpointer
        from jaxarch.train.loop import build_dataset_and_model

        if label not in self._runs:
            fail("Runs.trained", "label", repr(label), f"a run already trained, one of {sorted(self._runs)}")
        config, result = self._runs[label]
        dataset, model = build_dataset_and_model(config)
        # The checkpoint needs only the state's structure, shapes and dtypes: tracing the initialisation gives
        # them without compiling it.
        config = override_config_seed(config, 0) if self.seeds > 1 else config
        template = jax.eval_shape(lambda: init_state(config, dataset, model))
        checkpointer = Checkpointer(self.run_dir(label), every=0, keep=1)
        restored = checkpointer.restore(template)
        checkpointer.close()
        if restored is None:
            fail("Runs.trained", f"checkpoints of run {label!r}", "none intact", "the final checkpoint")
        state, _ = restored
        return Trained(config, dataset, model, _as_variables(state), result)


def override_config_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    from jaxarch.train.configure import override_config

    return override_config(config, [f"seed={seed}"])


def seed_values(result: dict, metric: str, scale: float = 1.0) -> list[float] | None:
    """A run's metric seed by seed (times `scale`), or None for a run of one seed."""
    values = result.get("per_seed", {}).get(metric)
    return None if values is None else [scale * value for value in values]
