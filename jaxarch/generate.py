"""Autoregressive generation: `generate` for the "gpt" model with a key/value cache, and `continue_ids` for
every language model jaxarch trains.

`generate` runs the prompt once through the model in decoding mode (prefill: every layer writes its keys and
values into the "cache" collection), then a jit-compiled `lax.scan` feeds back one token per step, attending to
the cache instead of recomputing the whole prefix: each new token costs one position's work, not the sequence's.

`continue_ids` picks the way for the model it is given: a GPT uses the cache as far as its `max_length` reaches
and then recomputes a sliding window of the last `max_length` tokens per new token (`jaxarch.sampling`); a
recurrent language model ("rnn" with a "sequence" readout) steps its cells one token at a time, carrying their
state, so its context is unbounded; any other causal model is recomputed over a sliding `window`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
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
        fail(_MODULE, "prompt length + num_tokens", f"{prompt_len} + {num_tokens}", f"<= max_length {max_length} "
             "(the key/value cache's length); `continue_ids` goes on past it by recomputing a sliding window of "
             "the last max_length tokens")
    if temperature < 0:
        fail(_MODULE, "temperature", temperature, ">= 0 (0 is greedy)")
    if top_k is not None:
        check_positive_ints(_MODULE, "top_k", top_k)
    decoder = model.clone(decode=True, dropout_rate=0.0, attention_dropout_rate=0.0, parent=None)
    tokens = _generate(decoder, params, prompt_ids.astype(jnp.int32), rng, num_tokens=int(num_tokens),
                       temperature=float(temperature), top_k=None if top_k is None else int(top_k))
    return tokens[0] if unbatched else tokens


def _sample_continuation(step, carry, logits, rng, num_tokens: int, temperature: float, top_k: int | None):
    """From the logits after the prompt: `num_tokens` ids `[B, num_tokens]`, each fed back through
    `step(carry, ids [B]) -> (carry, logits [B, V])`."""
    first_rng, rng = jax.random.split(rng)
    first = sample_logits(logits, first_rng, temperature, top_k)

    def body(carry, step_rng):
        state, token = carry
        state, logits = step(state, token)
        next_token = sample_logits(logits, step_rng, temperature, top_k)
        return (state, next_token), next_token

    _, rest = lax.scan(body, (carry, first), jax.random.split(rng, num_tokens - 1))  # [N - 1, B]
    return jnp.concatenate([first[:, None], jnp.transpose(rest)], axis=1)


@functools.partial(jax.jit, static_argnames=("model", "num_tokens", "temperature", "top_k"))
def _generate_recurrent(model, params, prompt_ids, rng, *, num_tokens: int, temperature: float,
                        top_k: int | None):
    """`prompt_ids: [B, P]` -> `[B, num_tokens]` for a `RecurrentNet` language model, one cell step per token.

    The same computation as the model's own `__call__` (embedding, the stacked cells with their residual
    connections, the "head" Dense; dropout is off at inference), written per step so that the carry crosses
    from the prompt into the generated tokens.
    """
    from jaxarch.layers.recurrent import CELLS

    gates = {"chrono_max": model.chrono_max} if model.chrono_max else {}
    cells = [CELLS[model.cell](features, dtype=model.dtype, **gates) for features in model.hidden_sizes]
    cell_params = [params["StackedRNN_0"][f"layer_{index}"]["cell"] for index in range(len(cells))]
    embed = nn.Embed(model.vocab_size, model.embed_dim, dtype=model.dtype)
    head = nn.Dense(model.num_outputs, dtype=model.dtype)

    def step(carries, token):  # token: [B] -> logits [B, V]
        x = embed.apply({"params": params["embed"]}, token)  # [B, E]
        updated = []
        for cell, variables, carry in zip(cells, cell_params, carries):
            carry, y = cell.apply({"params": variables}, carry, x)
            if model.residual and y.shape[-1] == x.shape[-1]:
                y = y + x
            updated.append(carry)
            x = y
        return tuple(updated), head.apply({"params": params["head"]}, x)

    batch = prompt_ids.shape[0]
    sizes = (model.embed_dim, *model.hidden_sizes)
    carries = tuple(cell.initialize_carry(jax.random.key(0), (batch, in_features))
                    for cell, in_features in zip(cells, sizes))
    carries, prompt_logits = lax.scan(step, carries, jnp.transpose(prompt_ids))  # prefill: [P, B, V]
    return _sample_continuation(step, carries, prompt_logits[-1], rng, num_tokens, temperature, top_k)


def continue_ids(model, variables, prompt_ids, num_tokens: int, *, rng, temperature: float = 1.0,
                 top_k: int | None = None, window: int | None = None) -> np.ndarray:
    """`num_tokens` new ids after `prompt_ids` (1-D, non-empty) from any causal language model jaxarch trains.

    Args:
      model: the module as trained: a `GPT`, a `RecurrentNet` with `readout="sequence"` over token ids, or any
        model mapping `[batch, time]` ids to causal `[batch, time, vocab]` logits.
      variables: its variables, `{"params": ..., **other collections}`.
      prompt_ids: int `[prompt_len]`.
      num_tokens: how many ids to generate (no upper bound).
      rng: PRNG key for sampling (unused when greedy).
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k: sample among the `top_k` most likely ids only (None: all).
      window: the context of a model that is neither (e.g. its training sequence length); a GPT's is its
        `max_length`, and a recurrent model needs none.

    Returns: int32 `[num_tokens]`.
    """
    from jaxarch.models.recurrent import RecurrentNet
    from jaxarch.models.transformer import GPT
    from jaxarch.sampling import sample_by_recompute

    prompt_ids = np.asarray(prompt_ids)
    check_rank(_MODULE, "prompt_ids", prompt_ids, 1, "[prompt_len]")
    check_integer(_MODULE, "prompt_ids", prompt_ids)
    if prompt_ids.size == 0:
        fail(_MODULE, "prompt_ids length", 0, "at least one token")
    check_positive_ints(_MODULE, "num_tokens", num_tokens)
    if temperature < 0:
        fail(_MODULE, "temperature", temperature, ">= 0 (0 is greedy)")
    vocab = getattr(model, "num_outputs", None)
    if top_k is not None:
        check_positive_ints(_MODULE, "top_k", top_k)
        if vocab and top_k > vocab:
            fail(_MODULE, "top_k", top_k, f"<= the vocabulary size {vocab}")
    prompt_ids = prompt_ids.astype(np.int32)
    num_tokens, temperature = int(num_tokens), float(temperature)
    top_k = None if top_k is None else int(top_k)
    if isinstance(model, RecurrentNet):
        if model.vocab_size <= 0 or model.readout != "sequence" or model.bidirectional:
            fail(_MODULE, "model", f"RecurrentNet(vocab_size={model.vocab_size}, readout={model.readout!r}, "
                 f"bidirectional={model.bidirectional})", "a causal language model: vocab_size > 0, readout "
                 "'sequence', not bidirectional")
        tokens = _generate_recurrent(model, variables["params"], jnp.asarray(prompt_ids[None]), rng,
                                     num_tokens=num_tokens, temperature=temperature, top_k=top_k)
        return np.asarray(tokens[0])
    if isinstance(model, GPT):
        window = model.max_length
        cached = max(0, min(num_tokens, window - prompt_ids.size))  # what fits in the key/value cache
        if cached == num_tokens:
            return np.asarray(generate(model, variables["params"], prompt_ids, num_tokens, rng=rng,
                                       temperature=temperature, top_k=top_k))
        cache_rng, rng = jax.random.split(rng)
        first = (np.asarray(generate(model, variables["params"], prompt_ids, cached, rng=cache_rng,
                                     temperature=temperature, top_k=top_k)) if cached else np.zeros(0, np.int32))
        rest = sample_by_recompute(model.apply, variables, np.concatenate([prompt_ids, first]), num_tokens - cached,
                                   window=window, rng=rng, temperature=temperature, top_k=top_k)
        return np.concatenate([first, rest]).astype(np.int32)
    if window is None:
        fail(_MODULE, "window", None, f"the context length of a {type(model).__name__} (a positive int; GPT and "
             "recurrent models need none)")
    return sample_by_recompute(model.apply, variables, prompt_ids, num_tokens, window=window, rng=rng,
                               temperature=temperature, top_k=top_k)
