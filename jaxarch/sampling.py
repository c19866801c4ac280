"""Sampling text from any causal per-position model by recomputing its forward pass over a sliding window.

Model-agnostic (an LSTM and a GPT are sampled the same way); for GPT, `jaxarch.generate` is the fast path
with a key/value cache.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def sample_by_recompute(apply_fn: Callable, variables, prompt_ids: np.ndarray, num_tokens: int, *, window: int,
                        rng: jax.Array, temperature: float = 1.0) -> np.ndarray:
    """Appends `num_tokens` ids to `prompt_ids` (1-D, non-empty), each drawn from the model's next-token
    distribution given the last `window` ids. temperature 0 is greedy. Returns the new ids only."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if prompt_ids.ndim != 1 or prompt_ids.size == 0:
        raise ValueError(f"sample_by_recompute: prompt_ids shape is {prompt_ids.shape}, expected [length >= 1]")

    @jax.jit
    def next_id(buffer, length, key):
        logits = apply_fn(variables, buffer[None], train=False)[0, length - 1].astype(jnp.float32)
        if temperature == 0:
            return jnp.argmax(logits).astype(jnp.int32)
        return jax.random.categorical(key, logits / temperature).astype(jnp.int32)

    history = list(prompt_ids)
    for key in jax.random.split(rng, num_tokens):
        context = history[-window:]
        buffer = np.zeros(window, np.int32)  # Causal: positions after `length` never influence the logits.
        buffer[:len(context)] = context
        history.append(int(next_id(buffer, len(context), key)))
    return np.array(history[len(prompt_ids):], np.int32)
