"""Non-finite losses and gradients: flags computed inside the jitted step, the skip-step update, and the guard
that reads the flags back and stops a run at the first bad step.

Policies (`train.nonfinite`): "stop" ends the run at the first step whose loss or any gradient is NaN or
infinite, naming the step and the first offending quantity; "skip" leaves the parameters, optimizer state and
model state unchanged for such a step and counts it in `TrainState.skipped_steps`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

POLICIES = ("stop", "skip")
# Flags are read back in batches so that the host never waits on the device every step; this bounds how many
# steps can run past a bad one before the run stops (their results are discarded, never saved).
MAX_UNCHECKED_STEPS = 100


def finite_flags(loss: jax.Array, grads) -> jax.Array:
    """`[1 + number of gradient leaves]` bool: whether the loss, then each gradient leaf, is entirely finite."""
    leaves = jax.tree_util.tree_leaves(grads)
    return jnp.stack([jnp.all(jnp.isfinite(loss))] + [jnp.all(jnp.isfinite(g)) for g in leaves])


def flag_names(params) -> list[str]:
    """What each entry of `finite_flags(loss, grads)` refers to, for grads shaped like `params`."""
    paths = [jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return ["loss"] + [f"gradient of {path}" for path in paths]


def keep_unless_finite(finite: jax.Array, new_state, old_state):
    """`new_state` if every flag is True, else `old_state`'s parameters, optimizer and model state with the
    step advanced (the next batch is the next step's) and the skip counted.

    Written here rather than with `optax.apply_if_finite` because that guards the parameters only, and a
    non-finite batch must not reach batch-norm statistics either.
    """
    ok = jnp.all(finite)
    kept = jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old),
                                  (new_state.params, new_state.opt_state, new_state.model_state),
                                  (old_state.params, old_state.opt_state, old_state.model_state))
    params, opt_state, model_state = kept
    return new_state.replace(params=params, opt_state=opt_state, model_state=model_state,
                             skipped_steps=old_state.skipped_steps + jnp.where(ok, 0, 1).astype(jnp.int32))


class NonFiniteError(RuntimeError):
    """A step produced a non-finite loss or gradient. `last_checkpoint` is the newest checkpoint step (every
    saved checkpoint predates the bad step), filled in by the training loop."""

    def __init__(self, step: int, quantity: str, detail: str = ""):
        self.step, self.quantity, self.detail = step, quantity, detail
        self.last_checkpoint: int | None = None
        self.checkpoint_dir: str | None = None
        super().__init__(step, quantity)

    def __str__(self) -> str:
        if self.last_checkpoint is None:
            kept = "no checkpoint had been written yet"
        else:
            kept = f"the last good checkpoint, step {self.last_checkpoint}, is kept in {self.checkpoint_dir}"
        hint = ("" if self.detail else
                "; rerun with train.debug_nans=true to find the operation that produced it, or "
                "train.nonfinite=skip to skip such steps")
        detail = f" ({self.detail})" if self.detail else ""
        return f"non-finite {self.quantity} at step {self.step}{detail}; {kept}{hint}"


class NonFiniteGuard:
    """Collects each step's flags and inspects them when `check` is called (before anything is logged or
    saved). Under "stop" the first bad step raises `NonFiniteError`; under "skip" it is reported once."""

    def __init__(self, names: list[str], policy: str):
        self.names, self.policy = names, policy
        self._pending: list[tuple[int, jax.Array]] = []
        self._reported = False

    def record(self, step: int, flags: jax.Array) -> None:
        self._pending.append((step, flags))

    def due(self) -> bool:
        return len(self._pending) >= MAX_UNCHECKED_STEPS

    def check(self) -> None:
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        flags = np.asarray(jax.device_get([f for _, f in self._pending]))  # [steps, quantities]
        self._pending.clear()
        bad_rows = np.flatnonzero(~flags.all(axis=1))
        if not bad_rows.size:
            return
        row = bad_rows[0]
        quantity = self.names[int(np.flatnonzero(~flags[row])[0])]
        if self.policy == "stop":
            raise NonFiniteError(steps[row], quantity)
        if not self._reported:
            self._reported = True
            print(f"[jaxarch] non-finite {quantity} at step {steps[row]}: update skipped (train.nonfinite=skip; "
                  "later skips are counted in train/skipped_steps)", file=sys.stderr)
