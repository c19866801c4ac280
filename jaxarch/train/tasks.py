"""What a model's outputs are judged by: per-example loss and metrics for each kind of task.

Every function returns per-example values ([batch]) so the training loss is their mean and evaluation can
weight them by a padding mask. A task whose examples carry different amounts of evidence (sequences scoring
different numbers of positions) also returns each example's `WEIGHT`, and every mean, in training as in
evaluation, weighs the examples by it. Log-probabilities are computed in float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxarch.registry import Registry

PerExample = Callable[[jax.Array, jax.Array], dict[str, jax.Array]]

# The optional per-example entry that weighs each example in the means (not a metric itself).
WEIGHT = "weight"


@dataclasses.dataclass(frozen=True)
class Task:
    """`per_example(outputs, targets)` returns {"loss": [batch], other metrics: [batch]}, and optionally
    {WEIGHT: [batch]}: each example's weight in the means (without it, every example counts once)."""

    per_example: PerExample
    primary_metric: str  # The metric reported as the experiment's headline result.
    higher_is_better: bool


TASKS: Registry[Task] = Registry("task")


def weights_over_mean(per_example: dict[str, jax.Array]) -> jax.Array | float:
    """Each example's `WEIGHT` over the batch's mean weight ([batch]; 1.0 without weights), so that
    `mean(value * weights_over_mean(...))` is the weighted mean of a per-example value.

    With equal weights each factor is exactly 1 (integer counts divide exactly), so that mean and its gradient are
    bitwise those of `mean(value)`. A batch whose weights are all zero gets zeros.
    """
    if WEIGHT not in per_example:
        return 1.0
    weight = per_example[WEIGHT]
    mean = jnp.mean(weight)
    return jnp.where(mean > 0, weight / jnp.where(mean > 0, mean, 1.0), 0.0)


def _classification(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """logits: [batch, classes]; targets: [batch] int."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"loss": loss, "accuracy": correct}


def _regression(predictions: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """predictions, targets: [batch, outputs] (or [batch]); the loss is the mean squared error."""
    error = predictions.astype(jnp.float32).reshape(targets.shape[0], -1) - targets.reshape(targets.shape[0], -1)
    return {"loss": jnp.mean(jnp.square(error), axis=-1)}


def _sequence_classification(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """logits: [batch, time, classes]; targets: [batch, time] int, -1 marks positions that are not scored.

    Each metric is the sequence's mean over its scored positions (`bits_per_token` is the loss in bits, for
    language models), and its `WEIGHT` is the count of those positions: the means over sequences are then means
    over scored tokens, whatever the sequences' lengths.
    """
    logits = logits.astype(jnp.float32)
    scored = targets >= 0
    safe_targets = jnp.where(scored, targets, 0)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    count = jnp.sum(scored, axis=-1).astype(jnp.float32)
    per_position = jnp.maximum(count, 1.0)  # a sequence scoring nothing has weight 0: its zeros never count
    loss = jnp.sum(jnp.where(scored, token_loss, 0.0), axis=-1) / per_position
    correct = jnp.sum(jnp.where(scored, jnp.argmax(logits, axis=-1) == targets, False), axis=-1) / per_position
    return {"loss": loss, "bits_per_token": loss / math.log(2.0), "accuracy": correct, WEIGHT: count}


TASKS.register("classification")(Task(_classification, "accuracy", higher_is_better=True))
TASKS.register("regression")(Task(_regression, "loss", higher_is_better=False))
TASKS.register("sequence_classification")(Task(_sequence_classification, "loss", higher_is_better=False))
