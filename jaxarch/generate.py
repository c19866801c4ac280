"""Autoregressive generation for the "gpt" model with a key/value cache.

The prompt is run once through the model in decoding mode (prefill: every layer writes its keys and values
into the "cache" collection), then a jit-compiled `lax.scan` feeds back one token per step, attending to the
cache instead of recomputing the whole prefix: each new token costs one position's work, not the sequence's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxarch.checks import check_integer, check_positive_ints, check_rank, fail

_MODULE = "generate"


def sample_logits(logits, rng, temperature: float = 1.0, top_k: int | None = None):
    """Draws ids from `logits: [batch, vocab]` -> int32 `[batch]`.

    temperature 0 is greedy (argmax); otherwise logits are divided by `temperature` and, with `top_k`, all but
    the `top_k` largest per row are excluded before sampling.
    """
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth_largest = lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits >= kth_largest, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("decoder", "num_tokens", "temperature", "top_k"))
def _generate(decoder, params, prompt_ids, rng, *, num_tokens: int, temperature: float, top_k: int | None):
    batch = prompt_ids.shape[0]
    shapes = jax.eval_shape(lambda: decoder.init(jax.random.PRNGKey(0), prompt_ids[:, :1]))["cache"]
    cache = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)  # empty, cache_index 0

    def step(cache, ids):  # ids: [B, T] -> logits of the last position [B, V]
        logits, updated = decoder.apply({"params": params, "cache": cache}, ids, train=False, mutable=["cache"])
        return updated["cache"], logits[:, -1]

    cache, logits = step(cache, prompt_ids)  # prefill
    first_rng, rng = jax.random.split(rng)
    first = sample_logits(logits, first_rng, temperature, top_k)

    def body(carry, step_rng):
        cache, token = carry
        cache, logits = step(cache, token[:, None])
        next_token = sample_logits(logits, step_rng, temperature, top_k)
        return (cache, next_token), next_token

    _, rest = lax.scan(body, (cache, first), jax.random.split(rng, num_tokens - 1))  # [N - 1, B]
    return jnp.concatenate([first[:, None], jnp.transpose(rest).reshape(batch, num_tokens - 1)], axis=1)


def generate(model, params, prompt_ids, num_tokens: int, *, rng, temperature: float = 1.0,
             top_k: int | None = None):
    """Continues `prompt_ids` by `num_tokens` tokens with `model` (a `GPT`) and its `params`.

    Args:
      model: the GPT module as trained (its `decode` field is ignored; a decoding copy is made).
      params: its "params" collection.
      prompt_ids: int `[batch, prompt_len]` (or `[prompt_len]`, treated as a batch of one), non-empty.
      num_tokens: how many tokens to generate; `prompt_len + num_tokens <= model.max_length`.
      rng: PRNG key for sampling (unused when greedy).
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k: sample among the `top_k` most likely tokens only (None: all).

    Returns: int32 `[batch, num_tokens]` (or `[num_tokens]` for a 1-D prompt), the new tokens only.
    Compiled once per (model, prompt shape, num_tokens, temperature, top_k).
    """
    prompt_ids = jnp.asarray(prompt_ids)
    check_rank(_MODULE, "prompt_ids", prompt_ids, (1, 2), "[batch, prompt_len] or [prompt_len]")
    check_integer(_MODULE, "prompt_ids", prompt_ids)
    unbatched = prompt_ids.ndim == 1
    prompt_ids = prompt_ids[None] if unbatched else prompt_ids
    prompt_len = prompt_ids.shape[1]
    if prompt_len == 0:
        fail(_MODULE, "prompt_ids length", 0, "at least one token")
    check_positive_ints(_MODULE, "num_tokens", num_tokens)
    max_length = getattr(model, "max_length", None)
    if max_length is None or not hasattr(model, "decode"):
        fail(_MODULE, "model", type(model).__name__, "a GPT (a causal model with max_length and decode fields)")
    if prompt_len + num_tokens > max_length:
        fail(_MODULE, "prompt length + num_tokens", f"{prompt_len} + {num_tokens}", f"<= max_length {max_length}")
    if temperature < 0:
        fail(_MODULE, "temperature", temperature, ">= 0 (0 is greedy)")
    if top_k is not None:
        check_positive_ints(_MODULE, "top_k", top_k)
    decoder = model.clone(decode=True, dropout_rate=0.0, attention_dropout_rate=0.0, parent=None)
    tokens = _generate(decoder, params, prompt_ids.astype(jnp.int32), rng, num_tokens=int(num_tokens),
                       temperature=float(temperature), top_k=None if top_k is None else int(top_k))
    return tokens[0] if unbatched else tokens
