"""Gradient diagnostics for recurrent models: how far back in time does the loss reach the hidden state?

`hidden_state_grad_norms` returns, for every `RNN` in a model, `||dLoss/dh_t||` for each step t: the vanishing /
exploding-gradient picture of Bengio et al. 1994 and Pascanu et al. 2013 ("On the difficulty of training recurrent
neural networks"). It differentiates the loss with respect to an additive zeros term that `RNN` adds to every
`h_t` inside the recurrence (the variable collection `HIDDEN_STATE_PERTURBATIONS`), so the gradient includes every
path from `h_t` to the loss: through the output at t and through all later steps. Models run without that
collection pay nothing.

Example:

    model = RNN(SimpleRNNCell(32))
    variables = model.init(key, x)
    loss_fn = lambda outputs: jnp.mean(jnp.sum((outputs[:, -1] - y) ** 2, axis=-1))
    norms = hidden_state_grad_norms(model, variables, loss_fn, x)   # {"RNN": [time]}
    plot_hidden_state_grad_norms({"tanh RNN": norms["RNN"]}, "grad_norms.png")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxarch.checks import fail
from jaxarch.layers.recurrent import HIDDEN_STATE_PERTURBATIONS

REDUCTIONS = ("mean", "batch")


def hidden_state_grad_norms(model: nn.Module, variables: Mapping[str, Any], loss_fn: Callable[[Any], jax.Array],
                            *args, reduction: str = "mean", **apply_kwargs) -> dict[str, jax.Array]:
    """`||dLoss/dh_t||` for every step of every `RNN` inside `model`.

    Args:
        model, variables: a Linen model containing one or more `jaxarch.layers.recurrent.RNN`s, and its variables.
        loss_fn: `model_output -> scalar loss`; close over the targets.
        *args, **apply_kwargs: passed to `model.apply(variables, *args, **apply_kwargs)`. `args` (the inputs)
            must be arrays: they are traced by `jax.jit`; `apply_kwargs` (`seq_lengths=`, `rngs=`,
            `deterministic=`, `method=` ...) are closed over, so they may be Python values.
        reduction: "mean": the mean over the batch of the per-example norms `||dLoss/dh_t[b]||` (a typical
            example's sensitivity); "batch": the norm over batch and features together, `||dLoss/dH_t||_F`.
            With a batch-mean loss every per-example gradient carries a factor 1/batch; both reductions keep it.

    Returns:
        `{path: norms}`, `norms: [time]` (float32), `t` indexing input positions also for reversed RNNs, and
        `path` the RNN's module path, e.g. `"layer_0/backward_rnn"` (the model's class name for a top-level RNN).
        Steps past a sequence's `seq_lengths` do not touch the loss and read 0.
    """
    name = "hidden_state_grad_norms"
    if reduction not in REDUCTIONS:
        fail(name, "reduction", repr(reduction), f"one of {REDUCTIONS}")
    variables = {k: v for k, v in variables.items() if k != HIDDEN_STATE_PERTURBATIONS}

    def apply_declaring_perturbations(variables):
        return model.apply(variables, *args, mutable=[HIDDEN_STATE_PERTURBATIONS], **apply_kwargs)

    _, declared = jax.eval_shape(apply_declaring_perturbations, variables)
    if HIDDEN_STATE_PERTURBATIONS not in declared:
        fail(name, "model", type(model).__name__, "a model containing a jaxarch RNN (none declared "
             f"{HIDDEN_STATE_PERTURBATIONS!r})")
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), declared[HIDDEN_STATE_PERTURBATIONS])

    def loss_of_perturbations(perturbations, variables, args):
        outputs = model.apply({**variables, HIDDEN_STATE_PERTURBATIONS: perturbations}, *args, **apply_kwargs)
        return loss_fn(outputs)

    grads = jax.jit(jax.grad(loss_of_perturbations))(zeros, variables, args)
    norms = {}
    for path, grad in traverse_util.flatten_dict(grads).items():  # grad: [time, batch, features]
        grad = grad.astype(jnp.promote_types(grad.dtype, jnp.float32))
        if reduction == "mean":
            per_step = jnp.linalg.norm(grad, axis=-1).mean(axis=-1)
        else:
            per_step = jnp.sqrt(jnp.sum(jnp.square(grad), axis=(1, 2)))
        norms["/".join(path[:-1]) or type(model).__name__] = per_step
    return norms


def plot_hidden_state_grad_norms(norms_by_label: Mapping[str, Any], path: str | os.PathLike, *,
                                 title: str = "Gradient reaching the hidden state") -> None:
    """Writes a PNG with one curve `||dLoss/dh_t||` against t per label, on a log-scale y axis.

    `norms_by_label`: `{label: [time] norms}` (e.g. outputs of `hidden_state_grad_norms` for several models).
    Uses matplotlib's Agg canvas directly, so it neither needs a display nor changes pyplot's global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    name = "plot_hidden_state_grad_norms"
    if not norms_by_label:
        fail(name, "norms_by_label", "empty", "at least one {label: [time] norms} entry")
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, norms in norms_by_label.items():
        norms = np.asarray(norms, dtype=np.float64)
        if norms.ndim != 1:
            fail(name, f"norms[{label!r}] rank", f"{norms.ndim} (shape {norms.shape})", "rank 1 [time]")
        positive = np.where(norms > 0, norms, np.nan)  # a log axis cannot show zeros (e.g. padded steps)
        axes.plot(np.arange(norms.shape[0]), positive, label=str(label))
    axes.set_yscale("log")
    axes.set_xlabel("time step t")
    axes.set_ylabel(r"$\|\partial\,\mathrm{loss} / \partial h_t\|$")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
