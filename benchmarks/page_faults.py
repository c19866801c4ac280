"""Minor page faults a training step, with and without jaxarch's glibc allocator settings (`jaxarch.tune_cpu`).

A Transformer block's training step (batch 16, T 256, D 256, 4 heads), whose temporaries make one block of about
180 MB, runs in a fresh process for each setting; the median count of minor page faults a step after warm-up is
reported (the heap may still grow now and then while it settles). Without the settings glibc maps the block
afresh every step and the kernel faults in each of its pages (docs/performance/cpu.md). Both processes get
jaxarch's XLA flags, so only the allocator differs.

Command: python -m jaxarch.benchmarks.page_faults [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEPS = """
import resource, statistics, sys
import jaxarch
tuning = jaxarch.tune_cpu(host_allocator=sys.argv[1] == "1")
import jax, jax.numpy as jnp
from jaxarch.layers.transformer import DecoderBlock
block = DecoderBlock(num_heads=4, mlp_ratio=4)
x = jax.random.normal(jax.random.key(0), (16, 256, 256))
params = block.init(jax.random.key(1), x)
grad = jax.jit(jax.grad(lambda p: jnp.sum(block.apply(p, x) ** 2)))
faults = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(grad(params))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuning.host_allocator, statistics.median(faults[5:]))
"""


def minor_page_faults_per_step(host_allocator: bool, steps: int = 15) -> tuple[bool, float]:
    """(whether glibc took the settings, the median minor page faults a step after 5 warm-up steps), measured in
    a fresh process; `steps` > 5."""
    if steps <= 5:
        raise ValueError(f"benchmarks.page_faults: steps is {steps}, expected more than the 5 warm-up steps")
    environ = {key: value for key, value in os.environ.items()
               if key not in ("XLA_FLAGS", "JAXARCH_XLA_FLAGS", "JAXARCH_HOST_ALLOCATOR")}
    took, median = subprocess.run(
        [sys.executable, "-c", STEPS, "1" if host_allocator else "0", str(steps)], env=environ, check=True,
        capture_output=True, text=True, timeout=600).stdout.split()[-2:]
    return took == "True", float(median)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="steps a process, the first 5 not counted")
    args = parser.parse_args(argv)
    result = {}
    for host_allocator in (True, False):
        took, faults = minor_page_faults_per_step(host_allocator, args.steps)
        result["jaxarch_allocator" if host_allocator else "glibc_default"] = {"settings_took": took,
                                                                               "minor_faults_per_step": faults}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
