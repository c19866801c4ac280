"""Memory of blockwise attention at sequence length 32,768 (batch 1, one head, head_dim 64), forward + backward.

Reports, for the loss `sum(attention(q, k, v) * cotangent)` differentiated with respect to q, k and v:

- XLA's compile-time memory analysis (temporary bytes, arguments, outputs) of the blockwise path and of the
  naive "xla" path, which materialises `[q_len, kv_len]` float32 logits and probabilities (4 GiB each at this
  length); the naive program is compiled, never run, and marked as not fitting when its temporaries exceed
  the machine's physical memory;
- the peak resident set size of a fresh subprocess that compiles and runs one blockwise step, measured before
  and after the step (`ru_maxrss`), so the step's own growth is visible beside the interpreter's baseline.

Command: python benchmarks/attention_memory.py [--out benchmarks/results/attention_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from jaxarch import tune_cpu
from jaxarch.benchmarks.timing import environment, write_json
from jaxarch.layers.attention import dot_product_attention


def _loss_grad(implementation: str, is_causal: bool, chunk: int):
    def loss(query, key, value, cotangent):
        out = dot_product_attention(query, key, value, is_causal=is_causal, implementation=implementation,
                                    q_chunk_size=chunk, kv_chunk_size=chunk)
        return jnp.sum(out * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _inputs(length: int, head_dim: int, abstract: bool):
    shape = (1, length, 1, head_dim)  # [batch, time, heads, head_dim]
    if abstract:
        return [jax.ShapeDtypeStruct(shape, jnp.float32)] * 4
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    return [jax.random.normal(key, shape, jnp.float32) for key in keys]


def compiled_memory(implementation: str, length: int, head_dim: int, is_causal: bool, chunk: int) -> dict:
    start = time.perf_counter()
    compiled = _loss_grad(implementation, is_causal, chunk).lower(*_inputs(length, head_dim, True)).compile()
    analysis = compiled.memory_analysis()
    return {
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "compile_seconds": round(time.perf_counter() - start, 2),
    }


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(length: int, head_dim: int, is_causal: bool, chunk: int) -> None:
    """Runs one blockwise step in this (fresh) process and prints its RSS figures as JSON."""
    inputs = _inputs(length, head_dim, False)
    compiled = _loss_grad("blockwise", is_causal, chunk).lower(*inputs).compile()
    jax.block_until_ready(inputs)
    before = _max_rss_bytes()
    start = time.perf_counter()
    grads = jax.block_until_ready(compiled(*inputs))
    seconds = time.perf_counter() - start
    finite = all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    print(json.dumps({"peak_rss_before_step_bytes": before, "peak_rss_bytes": _max_rss_bytes(),
                      "step_seconds": round(seconds, 2), "gradients_finite": finite}))


def _gib(n: int) -> float:
    return round(n / 2**30, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/attention_memory.json")
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--not-causal", action="store_true", help="full (bidirectional) attention")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tune_cpu()  # the parent's compiled sizes and the child's peak memory as under the `jaxarch` command
    is_causal = not args.not_causal
    if args.child:
        child(args.length, args.head_dim, is_causal, args.chunk)
        return

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    blockwise = compiled_memory("blockwise", args.length, args.head_dim, is_causal, args.chunk)
    naive = compiled_memory("xla", args.length, args.head_dim, is_causal, args.chunk)
    naive["fits_in_physical_memory"] = naive["temp_bytes"] + naive["argument_bytes"] < physical
    command = [sys.executable, __file__, "--child", "--length", str(args.length), "--head-dim",
               str(args.head_dim), "--chunk", str(args.chunk)] + (["--not-causal"] if args.not_causal else [])
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    step_growth = measured["peak_rss_bytes"] - measured["peak_rss_before_step_bytes"]
    result = {
        "benchmark": "attention_memory",
        "shape": {"batch": 1, "length": args.length, "heads": 1, "head_dim": args.head_dim},
        "is_causal": is_causal,
        "chunk": args.chunk,
        "blockwise": {**blockwise, "temp_gib": _gib(blockwise["temp_bytes"]), **measured,
                      "peak_rss_gib": _gib(measured["peak_rss_bytes"]), "step_rss_growth_gib": _gib(step_growth)},
        "xla": {**naive, "temp_gib": _gib(naive["temp_bytes"]),
                "verdict": "fits" if naive["fits_in_physical_memory"] else "does not fit"},
        "logits_gib_float32": _gib(4 * args.length**2),
        "physical_memory_gib": _gib(physical),
        "temp_ratio_xla_over_blockwise": round(naive["temp_bytes"] / max(blockwise["temp_bytes"], 1), 1),
        **environment(),
    }
    write_json(result, args.out)


if __name__ == "__main__":
    main()
