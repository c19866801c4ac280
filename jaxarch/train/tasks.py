"""What a model's outputs are judged by: per-example loss and metrics for each kind of task.

Every function returns per-example values ([batch]) so the training loss is their mean and evaluation can
weight them by a padding mask. Log-probabilities are computed in float32 whatever the compute dtype.
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


@dataclasses.dataclass(frozen=True)
class Task:
    """`per_example(outputs, targets)` returns {"loss": [batch], other metrics: [batch]}."""

    per_example: PerExample
    primary_metric: str  # The metric reported as the experiment's headline result.
    higher_is_better: bool


TASKS: Registry[Task] = Registry("task")


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

    The per-example loss is the mean over scored positions; `bits` is the same in bits (for language models).
    """
    logits = logits.astype(jnp.float32)
    scored = targets >= 0
    safe_targets = jnp.where(scored, targets, 0)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    count = jnp.maximum(jnp.sum(scored, axis=-1), 1)
    loss = jnp.sum(jnp.where(scored, token_loss, 0.0), axis=-1) / count
    correct = jnp.sum(jnp.where(scored, jnp.argmax(logits, axis=-1) == targets, False), axis=-1) / count
    return {"loss": loss, "bits_per_token": loss / math.log(2.0), "accuracy": correct}


TASKS.register("classification")(Task(_classification, "accuracy", higher_is_better=True))
TASKS.register("regression")(Task(_regression, "loss", higher_is_better=False))
TASKS.register("sequence_classification")(Task(_sequence_classification, "loss", higher_is_better=False))
