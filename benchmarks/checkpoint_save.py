"""How long `Checkpointer.save` holds the training thread, for a state of a given size.

    python benchmarks/checkpoint_save.py --mib 256 --saves 7 --baseline 1a16e33

Times the `save` call only (what the training loop waits for; the write and, since the digests moved off the
training thread, the digesting go on in the background) and, apart, the `wait` that follows. Between saves a
jitted step that donates the state's buffers replaces the state, as a train step does. With `--baseline REV`
the `jaxarch/train/checkpoint.py` of that git revision is timed too, alternating save by save with the current
one, so both see the same load on a shared machine. Prints one JSON line per implementation (the medians and
every save's seconds), then the medians of the current save's host copy and of digesting it, each timed alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxarch.train import checkpoint

REPO = Path(__file__).resolve().parents[1]


def module_at(revision: str):
    """`jaxarch/train/checkpoint.py` as it was at `revision`, imported under another name."""
    source = subprocess.run(["git", "show", f"{revision}:jaxarch/train/checkpoint.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "checkpoint_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("checkpoint_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_state(mib: int) -> dict:
    """`mib` MiB of float32 in four leaves of different shapes, plus a step counter."""
    rows = mib * 2**20 // 4 // 4 // 1024
    keys = jax.random.split(jax.random.key(0), 4)
    return {"params": {f"layer_{i}": jax.random.normal(key, (rows, 1024)) for i, key in enumerate(keys)},
            "step": jnp.int32(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--saves", type=int, default=7)
    parser.add_argument("--baseline", help="a git revision whose checkpoint.py is timed alongside")
    args = parser.parse_args()

    implementations = {"current": checkpoint}
    if args.baseline:
        implementations[f"baseline {args.baseline}"] = module_at(args.baseline)
    train_step = jax.jit(lambda state: jax.tree_util.tree_map(lambda x: x + 1, state), donate_argnums=0)
    state = jax.block_until_ready(make_state(args.mib))
    size = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state))
    workdir = Path(tempfile.mkdtemp(prefix="checkpoint_save_"))
    savers = {name: module.Checkpointer(workdir / name.replace(" ", "_"), every=1, keep=1)
              for name, module in implementations.items()}
    seconds = {name: {"save": [], "wait": []} for name in implementations}
    try:
        for step in range(1, args.saves + 2):  # the first save of each is a warm-up, not counted
            for name, saver in savers.items():
                state = jax.block_until_ready(train_step(state))
                start = time.perf_counter()
                saver.save(state, step)
                saved = time.perf_counter()
                saver.wait()
                if step > 1:
                    seconds[name]["save"].append(saved - start)
                    seconds[name]["wait"].append(time.perf_counter() - saved)
    finally:
        for saver in savers.values():
            saver.close()
        shutil.rmtree(workdir)
    parts = {"host_copy": [], "digest": []}  # the current save's two halves, timed alone on the training thread
    for _ in range(3):
        state = jax.block_until_ready(train_step(state))
        start = time.perf_counter()
        pieces = checkpoint.host_shards(state)
        copied = time.perf_counter()
        checkpoint.digest_shards(pieces)
        parts["host_copy"].append(copied - start)
        parts["digest"].append(time.perf_counter() - copied)
    for name, timing in seconds.items():
        print(json.dumps({"implementation": name, "state_mib": round(size / 2**20, 1), "saves": args.saves,
                          "median_save_seconds": statistics.median(timing["save"]),
                          "median_wait_seconds": statistics.median(timing["wait"]),
                          "save_seconds": timing["save"]}))
    print(json.dumps({f"median_{part}_seconds": statistics.median(values) for part, values in parts.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
