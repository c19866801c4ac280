"""Orbax checkpoints of the train state in `<workdir>/checkpoints`, written asynchronously and atomically
(orbax writes to a temporary directory and renames it only once complete)."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxarch.train.state import TrainState


class Checkpointer:
    """Saves every `every` steps (and on demand), keeping the last `keep`; restores the latest."""

    def __init__(self, workdir: Path, *, every: int, keep: int):
        self.every = every
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, template: TrainState) -> TrainState:
        """The latest checkpoint, restored into the structure (and shardings) of `template`."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return self.manager.restore(self.manager.latest_step(), args=ocp.args.StandardRestore(abstract))

    def maybe_save(self, state: TrainState, step: int, *, force: bool = False) -> bool:
        if not force and (self.every <= 0 or step % self.every):
            return False
        if self.manager.latest_step() == step:
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
