"""Jitted train and eval steps; the train step donates the state's buffers.

One compiled call per step, on purpose: fusing several steps into one call with `lax.scan` was measured
20x slower for a small 1-D CNN on XLA's CPU backend (convolutions inside a loop body lose their fast
path), while the per-call dispatch cost it would save is tens of microseconds."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxarch.train.nonfinite import finite_flags, keep_unless_finite
from jaxarch.train.state import TrainState
from jaxarch.train.tasks import WEIGHT, Task, weights_over_mean

Metrics = dict[str, jax.Array]


def make_train_step(task: Task, *, jit: bool = True, skip_nonfinite: bool = False,
                    donate: bool = True) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
    """One optimisation step: (state, batch) -> (state, {"loss", "grad_norm", "finite"}), jitted with the state
    donated (unless `donate` is False: `jax_debug_nans` re-runs a failing step on its original inputs).

    "finite" is `finite_flags(loss, grads)`; with `skip_nonfinite` a step with any False flag leaves the
    parameters, optimizer and model state as they were (see `keep_unless_finite`).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state)

        def loss_fn(params):
            variables = {"params": params, **state.model_state}
            outputs = state.apply_fn(variables, batch["inputs"], train=True, rngs={"dropout": dropout_rng},
                                     mutable=mutable or False)
            logits, new_model_state = outputs if mutable else (outputs, {})
            per_example = task.per_example(logits, batch["targets"])
            loss = jnp.mean(per_example["loss"] * weights_over_mean(per_example))
            return loss, new_model_state

        (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        finite = finite_flags(loss, grads)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state, model_state=new_model_state)
        if skip_nonfinite:
            new_state = keep_unless_finite(finite, new_state, state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "finite": finite}

    if not jit:
        return train_step
    return jax.jit(train_step, donate_argnums=0 if donate else ())


def make_eval_step(task: Task) -> Callable[[TrainState, dict], Metrics]:
    """Jitted: (state, batch with "mask") -> weighted sums of the metrics and the summed weight ("count": of
    examples, or of scored tokens where the task weighs its examples), for exact averaging."""

    def eval_step(state: TrainState, batch: dict) -> Metrics:
        variables = {"params": state.params, **state.model_state}
        outputs = state.apply_fn(variables, batch["inputs"], train=False)
        per_example = dict(task.per_example(outputs, batch["targets"]))
        mask = batch["mask"].astype(jnp.float32) * per_example.pop(WEIGHT, 1.0)
        sums = {name: jnp.sum(value * mask) for name, value in per_example.items()}
        sums["count"] = jnp.sum(mask)
        return sums

    return jax.jit(eval_step)


def evaluate(eval_step, state: TrainState, batches) -> dict[str, float]:
    """Exact means over a split's padded batches (weighted as the task weighs its examples)."""
    totals: dict[str, float] = {}
    for batch in batches:
        for name, value in eval_step(state, batch).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    count = totals.pop("count")
    return {name: total / count for name, total in totals.items()}
