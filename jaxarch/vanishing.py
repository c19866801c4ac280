"""`jaxarch gradients`: the vanishing-gradient picture, measured. For a tanh RNN, an LSTM and a GRU on the
adding problem, ||dLoss/dh_t|| at every step t, at initialisation and (optionally) after a short training run,
plotted on one figure."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxarch.data import load_dataset
from jaxarch.diagnostics import hidden_state_grad_norms, plot_hidden_state_grad_norms
from jaxarch.models import build_model

CELLS = ("rnn", "lstm", "gru")


def adding_gradient_norms(model, variables, seq_len: int, batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """`[seq_len]` norms ||dLoss/dh_t|| of a one-RNN model's mean squared error on one adding-problem batch."""
    batch = load_dataset("adding", seq_len=seq_len).train_batch(seed, 0, batch_size)
    inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    loss_fn = lambda predictions: jnp.mean(jnp.square(predictions - targets))
    (norms,) = hidden_state_grad_norms(model, variables, loss_fn, inputs).values()
    return np.asarray(norms)


def gradient_norms_at_init(seq_len: int, hidden: int = 128, batch_size: int = 64, seed: int = 0) -> dict:
    """{cell: [seq_len] norms} for freshly initialised one-layer models, on one adding-problem batch."""
    example = jnp.zeros((1, seq_len, 2), jnp.float32)
    out = {}
    for cell in CELLS:
        model = build_model("rnn", 1, cell=cell, hidden_sizes=(hidden,))
        variables = model.init(jax.random.PRNGKey(seed), example)
        out[cell] = adding_gradient_norms(model, variables, seq_len, batch_size, seed)
    return out


def summarise(norms: dict) -> dict:
    """For each cell: the norm at the last step, at the first, and their ratio (how much survives)."""
    return {cell: {"last_step": float(n[-1]), "first_step": float(n[0]),
                   "first_over_last": float(n[0] / n[-1]) if n[-1] > 0 else None}
            for cell, n in norms.items()}


def run(seq_len: int, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    norms = gradient_norms_at_init(seq_len)
    path = out_dir / f"gradient_norms_T{seq_len}.png"
    plot_hidden_state_grad_norms({cell.upper(): n for cell, n in norms.items()}, path,
                                 title=f"Adding problem, T = {seq_len}, at initialisation")
    summary = {"seq_len": seq_len, "figure": str(path), "cells": summarise(norms)}
    (out_dir / f"gradient_norms_T{seq_len}.json").write_text(json.dumps(summary, indent=2))
    return summary
