"""Generation speed with a key/value cache versus recomputing the full forward pass for every new token.

Both paths are jit-compiled once and timed after a warm-up call, on the same small GPT with random parameters:

- cached: `jaxarch.generate.generate` (prefill, then a `lax.scan` feeding one token per step);
- recompute: a `lax.fori_loop` that runs the whole fixed-length buffer through the model at every step and
  reads the logits at the current position (causal attention: the not-yet-written tail cannot influence them).

Greedy decoding, so both must produce the same tokens (checked). Prints a JSON summary and writes it to --out.

Command: python benchmarks/kv_cache.py [--out benchmarks/results/kv_cache.json]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxarch import tune_cpu
from jaxarch.benchmarks.timing import environment, write_json
from jaxarch.generate import generate
from jaxarch.models import MODELS


def recompute_generate(model, params, prompt_ids, num_tokens: int):
    """Greedy generation by a full forward pass over a `[batch, prompt + num_tokens]` buffer per token."""
    batch, prompt_len = prompt_ids.shape
    total = prompt_len + num_tokens

    @jax.jit
    def run(params, prompt_ids):
        buffer = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt_ids)

        def body(position, buffer):  # writes the token that follows `position - 1`
            logits = model.apply({"params": params}, buffer)  # [B, total, V]
            last = lax.dynamic_index_in_dim(logits, position - 1, axis=1, keepdims=False)
            token = jnp.argmax(last, axis=-1).astype(jnp.int32)
            return lax.dynamic_update_index_in_dim(buffer, token, position, axis=1)

        return lax.fori_loop(prompt_len, total, body, buffer)[:, prompt_len:]

    return run(params, prompt_ids)


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    out = jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times), np.asarray(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/kv_cache.json")
    parser.add_argument("--num-tokens", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tune_cpu()  # timed as under the `jaxarch` command

    config = dict(num_outputs=128, embed_dim=128, num_layers=4, num_heads=4,
                  max_length=args.prompt_len + args.num_tokens)
    model = MODELS.get("gpt")(**config)
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 128, (args.batch, args.prompt_len)), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), prompt)["params"]
    # Spread the 0.02-scale embeddings so greedy decoding does not settle into a constant token.
    params = jax.tree.map(lambda p: p * 10.0 if p.ndim == 2 and p.shape[0] in (128, config["max_length"]) else p,
                          params)

    rng = jax.random.PRNGKey(0)
    cached_s, cached = timed(lambda: generate(model, params, prompt, args.num_tokens, rng=rng, temperature=0.0),
                             args.repeats)
    recompute_s, recomputed = timed(lambda: recompute_generate(model, params, prompt, args.num_tokens), 1)
    result = {
        "benchmark": "kv_cache",
        "model": {k: v for k, v in config.items()},
        "params": int(sum(x.size for x in jax.tree.leaves(params))),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "num_tokens": args.num_tokens,
        "cached_seconds": round(cached_s, 4),
        "recompute_seconds": round(recompute_s, 4),
        "cached_tokens_per_second": round(args.batch * args.num_tokens / cached_s, 1),
        "recompute_tokens_per_second": round(args.batch * args.num_tokens / recompute_s, 1),
        "speedup": round(recompute_s / cached_s, 2),
        "same_tokens": bool(np.array_equal(cached, recomputed)),
        **environment(),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
