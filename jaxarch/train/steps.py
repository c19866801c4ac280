"""Jitted train and eval steps; the train step donates the state's buffers.

One compiled call per step, on purpose: fusing several steps into one call with `lax.scan` was measured
20x slower for a small 1-D CNN on XLA's CPU backend (convolutions inside a loop body lose their fast
path), while the per-call dispatch cost it would save is tens of microseconds. Gradient accumulation is the one
loop inside a step: only a loop keeps a single micro-batch's activations alive at a time (unrolled, XLA
schedules the micro-batches together and the memory saving is gone); docs/logging.md has its cost on CPU."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxarch.train.nonfinite import finite_flags, keep_unless_finite
from jaxarch.train.state import TrainState
from jaxarch.train.tasks import WEIGHT, Task, weights_over_mean

Metrics = dict[str, jax.Array]


def make_train_step(task: Task, *, jit: bool = True, skip_nonfinite: bool = False, donate: bool = True,
                    grad_accum_steps: int = 1) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
    """One optimisation step: (state, batch) -> (state, {"loss", "grad_norm", "finite"}), jitted with the state
    donated (unless `donate` is False: `jax_debug_nans` re-runs a failing step on its original inputs).

    "finite" is `finite_flags(loss, grads)`; with `skip_nonfinite` a step with any False flag leaves the
    parameters, optimizer and model state as they were (see `keep_unless_finite`).

    With `grad_accum_steps=k` > 1 the batch ([batch, ...], batch divisible by k) is processed as k micro-batches
    of batch / k rows, one after another inside the step (`lax.scan`), so that only one micro-batch's
    activations are alive at a time; their gradients are summed and the update is made once, with the
    gradient of the whole batch's loss (`accumulated_loss_and_grads`). Micro-batch i draws its dropout from
    `fold_in(step key, i)`; batch statistics (batch norm) are computed per micro-batch and the running
    averages advance once per micro-batch.
    """
    if not isinstance(grad_accum_steps, int) or isinstance(grad_accum_steps, bool) or grad_accum_steps < 1:
        raise ValueError(f"make_train_step: grad_accum_steps is {grad_accum_steps!r}, expected a positive integer")

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum_steps == 1:
            def loss_fn(params):
                per_example, new_model_state = _forward(task, state, params, state.model_state, batch, dropout_rng)
                return jnp.mean(per_example["loss"] * weights_over_mean(per_example)), new_model_state

            (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            loss, new_model_state, grads = accumulated_loss_and_grads(task, state, batch, dropout_rng,
                                                                      grad_accum_steps)
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


def _forward(task: Task, state: TrainState, params, model_state, batch: dict, dropout_rng: jax.Array):
    """The model in training mode on `batch`: (the task's per-example values, the new model state)."""
    mutable = list(model_state)
    outputs = state.apply_fn({"params": params, **model_state}, batch["inputs"], train=True,
                             rngs={"dropout": dropout_rng}, mutable=mutable or False)
    logits, new_model_state = outputs if mutable else (outputs, {})
    return task.per_example(logits, batch["targets"]), new_model_state


def split_micro_batches(batch: dict, count: int) -> dict:
    """`{name: [batch, ...]}` -> `{name: [count, batch / count, ...]}`; micro-batch i holds rows i, i + count,
    i + 2 count, ... (strided, not contiguous): a batch split along a data axis into contiguous per-device
    blocks then gives every device an equal share of every micro-batch (when batch / devices is divisible by
    `count`), so no rows move between devices."""
    def split(values: jax.Array) -> jax.Array:
        if values.shape[0] % count:
            raise ValueError(f"train step: batch of {values.shape[0]} rows (shape {values.shape}), expected a "
                             f"multiple of train.grad_accum_steps={count}")
        return jnp.swapaxes(values.reshape(values.shape[0] // count, count, *values.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulated_loss_and_grads(task: Task, state: TrainState, batch: dict, dropout_rng: jax.Array, count: int):
    """The whole batch's loss, new model state and loss gradient, computed over `count` micro-batches in a
    `lax.scan`: (loss [], model_state, grads like params).

    Each micro-batch contributes the weighted sum of its per-example losses and the sum of its weights; the
    loss and the gradient are the summed ones over the total weight, which is the whole batch's weighted mean
    (and its gradient) exactly up to float rounding, even when the micro-batches' weights differ (sequences
    scoring different numbers of tokens). A batch whose weights are all zero gets a zero loss and zero
    gradients, as the unaccumulated step does.
    """

    def weighted_sum(params, model_state, micro_batch, rng):
        per_example, new_model_state = _forward(task, state, params, model_state, micro_batch, rng)
        weight = jax.lax.stop_gradient(per_example.get(WEIGHT, jnp.ones_like(per_example["loss"])))
        return jnp.sum(per_example["loss"] * weight), (jnp.sum(weight), new_model_state)

    def body(carry, inputs):
        loss_sum, weight_sum, model_state, grad_sum = carry
        index, micro_batch = inputs
        (loss, (weight, model_state)), grads = jax.value_and_grad(weighted_sum, has_aux=True)(
            state.params, model_state, micro_batch, jax.random.fold_in(dropout_rng, index))
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (loss_sum + loss, weight_sum + weight, model_state, grad_sum), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), state.model_state, zeros)
    micro_batches = (jnp.arange(count), split_micro_batches(batch, count))
    (loss_sum, weight_sum, model_state, grad_sum), _ = jax.lax.scan(body, init, micro_batches)
    total = jnp.where(weight_sum > 0, weight_sum, 1.0)
    grads = jax.tree.map(lambda g: (g / total).astype(g.dtype), grad_sum)
    return loss_sum / total, model_state, grads


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
