"""The optimizer and learning-rate schedule, built from a config's `optim` section with optax."""

from __future__ import annotations

import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = {
    "adamw": lambda lr, o: optax.adamw(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
    "adam": lambda lr, o: optax.adam(lr, b1=o.b1, b2=o.b2),
    # b1 doubles as the momentum coefficient; 0 gives plain SGD.
    "sgd": lambda lr, o: optax.sgd(lr, momentum=o.b1 or None, nesterov=bool(o.b1)),
    # The ResNet papers' SGD (PyTorch's `SGD(momentum=b1, weight_decay=...)`): heavy-ball momentum b1 and an L2
    # penalty, `weight_decay * params` added to the gradient before the momentum.
    "sgd_l2": lambda lr, o: optax.chain(optax.add_decayed_weights(o.weight_decay),
                                        optax.sgd(lr, momentum=o.b1 or None)),
}


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 over `warmup_steps`, then cosine or linear decay to `end_learning_rate`, or constant."""
    peak, warmup = optim.learning_rate, min(optim.warmup_steps, total_steps)
    end = optim.learning_rate * optim.end_learning_rate_factor
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end)
    if optim.schedule == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.linear_schedule(peak, end, total_steps - warmup)],
            [warmup])
    if optim.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
    raise ValueError(f"config: optim.schedule is {optim.schedule!r}, expected one of {list(SCHEDULES)}")


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm (if `grad_clip_norm` > 0), then the optimizer with the schedule."""
    schedule = make_schedule(optim, total_steps)
    if optim.optimizer not in OPTIMIZERS:
        raise ValueError(f"config: optim.optimizer is {optim.optimizer!r}, expected one of {sorted(OPTIMIZERS)}")
    opt = OPTIMIZERS[optim.optimizer](schedule, optim)
    if optim.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
    return opt
