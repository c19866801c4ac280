"""A sequence task's metrics are per scored token, in training and in evaluation, however many positions each
sequence scores; with equal counts the training loss is bitwise the plain mean over sequences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxarch.train import TASKS, evaluate, make_eval_step
from jaxarch.train.state import TrainState
from jaxarch.train.steps import make_train_step
from jaxarch.train.tasks import WEIGHT, weights_over_mean

CLASSES = 3
# Two sequences of 5 positions: the first scores 1 of them, the second 4 (-1: not scored).
TARGETS = np.array([[2, -1, -1, -1, -1], [0, 1, 2, 1, -1]], np.int32)


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 5, CLASSES)).astype(np.float32)


def _token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Cross-entropy of every scored position, in float64."""
    logits = logits.astype(np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    return np.array([-log_probs[b, t, targets[b, t]] for b, t in zip(*np.nonzero(targets >= 0))])


def _state(shift=None) -> TrainState:
    """A model whose outputs are its inputs (logits) plus a learned shift per class."""
    params = {"shift": jnp.zeros(CLASSES) if shift is None else shift}

    def apply(variables, inputs, **kwargs):
        return inputs + variables["params"]["shift"].reshape(1, 1, CLASSES)

    return TrainState.create(apply_fn=apply, variables={"params": params}, tx=optax.sgd(0.1), rng=jax.random.key(0))


def test_bits_per_token_weighs_sequences_by_their_scored_positions():
    logits = _logits()
    want = _token_losses(logits, TARGETS)  # 1 + 4 positions
    eval_step = make_eval_step(TASKS.get("sequence_classification"))
    batch = {"inputs": jnp.asarray(logits), "targets": jnp.asarray(TARGETS), "mask": jnp.ones(2, bool)}
    result = evaluate(eval_step, _state(), [batch])
    # Not the mean of the two sequences' means, (want[0] + mean(want[1:])) / 2.
    assert result["bits_per_token"] == pytest.approx(want.mean() / math.log(2.0), rel=1e-5)
    assert result["loss"] == pytest.approx(want.mean(), rel=1e-5)
    correct = np.argmax(logits, axis=-1)[TARGETS >= 0] == TARGETS[TARGETS >= 0]
    assert result["accuracy"] == pytest.approx(correct.mean(), rel=1e-6)
    # The same over two padded batches, one sequence each (the padding example scores 4 positions, masked out).
    pad_targets = np.array([1, 1, 1, 1, -1], np.int32)
    batches = [{"inputs": jnp.asarray(np.stack([logits[i], logits[1 - i]])),
                "targets": jnp.asarray(np.stack([TARGETS[i], pad_targets])),
                "mask": jnp.asarray([True, False])} for i in (0, 1)]
    split = evaluate(eval_step, _state(), batches)
    assert split["bits_per_token"] == pytest.approx(result["bits_per_token"], rel=1e-6)


def test_training_loss_is_the_mean_over_scored_tokens():
    logits = _logits(1)
    shift = jnp.asarray([0.3, -0.2, 0.1])
    batch = {"inputs": jnp.asarray(logits), "targets": jnp.asarray(TARGETS)}
    _, metrics = make_train_step(TASKS.get("sequence_classification"), jit=False)(_state(shift), batch)
    assert float(metrics["loss"]) == pytest.approx(_token_losses(logits + np.asarray(shift), TARGETS).mean(),
                                                   rel=1e-5)


def test_equal_counts_train_bitwise_as_the_mean_over_sequences():
    task = TASKS.get("sequence_classification")
    logits, targets = jnp.asarray(_logits(2)), jnp.asarray(np.array([[2, 0, -1, 1, -1], [0, -1, 2, 1, -1]], np.int32))

    def loss(shift, weighted):
        per_example = task.per_example(logits + shift.reshape(1, 1, CLASSES), targets)
        factor = weights_over_mean(per_example) if weighted else 1.0
        return jnp.mean(per_example["loss"] * factor)

    shift = jnp.asarray([0.3, -0.2, 0.1])
    weighted, plain = (jax.value_and_grad(loss)(shift, weighted) for weighted in (True, False))
    np.testing.assert_array_equal(weighted[0], plain[0])
    np.testing.assert_array_equal(weighted[1], plain[1])


def test_weights_over_mean():
    assert weights_over_mean({"loss": jnp.ones(3)}) == 1.0  # unweighted tasks: every example counts once
    np.testing.assert_allclose(weights_over_mean({WEIGHT: jnp.asarray([1.0, 3.0])}), [0.5, 1.5])
    np.testing.assert_array_equal(weights_over_mean({WEIGHT: jnp.zeros(2)}), [0.0, 0.0])  # nothing scored
    per_example = TASKS.get("sequence_classification").per_example(jnp.asarray(_logits()), jnp.asarray(TARGETS))
    np.testing.assert_array_equal(per_example[WEIGHT], [1.0, 4.0])
