"""Sampling text from any causal per-position model by recomputing its forward pass over a sliding window.

Model-agnostic (an LSTM and a GPT are sampled the same way); `jaxarch.generate.generate` is GPT's fast path with
a key/value cache, and `jaxarch.generate.continue_ids` picks the fastest way for each model, falling back to this
one where the cache ends.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxarch.generate import sample_logits


def sample_by_recompute(apply_fn: Callable, variables, prompt_ids: np.ndarray, num_tokens: int, *, window: int,
                        rng: jax.Array, temperature: float = 1.0, top_k: int | None = None) -> np.ndarray:
    """Appends `num_tokens` ids to `prompt_ids` (1-D, non-empty), each drawn from the model's next-token
    distribution given the last `window` ids (`apply_fn(variables, ids [1, window], train=False)` -> logits
    `[1, window, vocab]`). temperature 0 is greedy; `top_k` samples among the `top_k` most likely ids only.
    Returns the new ids only, int32 `[num_tokens]`."""
    prompt_ids = np.asarray(prompt_ids, np.int32)
    if prompt_ids.ndim != 1 or prompt_ids.size == 0:
        raise ValueError(f"sample_by_recompute: prompt_ids shape is {prompt_ids.shape}, expected [length >= 1]")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"sample_by_recompute: window is {window!r}, expected a positive int")

    @jax.jit
    def next_id(buffer, length, key):
        logits = apply_fn(variables, buffer[None], train=False)[:, length - 1]  # [1, V]
        return sample_logits(logits, key, temperature, top_k)[0]

    history = list(prompt_ids)
    for key in jax.random.split(rng, num_tokens):
        context = history[-window:]
        buffer = np.zeros(window, np.int32)  # Causal: positions after `length` never influence the logits.
        buffer[:len(context)] = context
        history.append(int(next_id(buffer, len(context), key)))
    return np.array(history[len(prompt_ids):], np.int32)
