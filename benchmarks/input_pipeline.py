"""The input pipeline beside ResNet-20's training loop on CIFAR-shaped data (docs/performance/input-pipeline.md).

The data: 50,000 synthetic 32x32x3 uint8 images and labels (CIFAR-10's training split's shapes and dtype, no
download), with the crop-and-flip augmentation and the per-channel standardisation of the `cifar10` dataset.

Measured:
- the loader alone: images/s of `dataset.train_batch` (gather, crop, flip, standardise) at batch 128 in one
  thread, and of `load_batch` (the same, placed on the devices), with nothing else running;
- the training loop of experiment `cifar10-resnet20` (`train_and_evaluate`, the real loop) for `steps` steps with
  `train.prefetch` 0 (each batch loaded in the loop) and 2 (the background thread), in the same process: steps/s
  and `train/data_wait_fraction` from metrics.jsonl, the first log interval (compilation) left out.

Command: python -m jaxarch.benchmarks.input_pipeline [--steps 60] [--prefetch 0,2] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np

NUM_TRAIN, NUM_TEST, IMAGE, CHANNELS, CLASSES = 50_000, 1_000, 32, 3, 10
BATCH_SIZE = 128
EXPERIMENT = "cifar10-resnet20"


def synthetic_cifar(num_train: int = NUM_TRAIN, seed: int = 0):
    """A `cifar10`-like dataset of random uint8 images: crop and flip on, standardised per channel."""
    from jaxarch.data.arrays import standardized
    from jaxarch.data.augment import crop_flip

    rng = np.random.default_rng(seed)
    train = (rng.integers(0, 256, (num_train, IMAGE, IMAGE, CHANNELS), dtype=np.uint8),
             rng.integers(0, CLASSES, num_train).astype(np.int32))
    test = (rng.integers(0, 256, (NUM_TEST, IMAGE, IMAGE, CHANNELS), dtype=np.uint8),
            rng.integers(0, CLASSES, NUM_TEST).astype(np.int32))
    return standardized("synthetic-cifar10", "classification", CLASSES, train, {"test": test}, augment=crop_flip(4))


def loader_images_per_second(dataset, batches: int = 40, batch_size: int = BATCH_SIZE) -> dict[str, float]:
    """Images/s of the loader alone, without and with the placement on the devices."""
    from jaxarch.train.mesh import load_batch, make_mesh

    mesh = make_mesh("")
    rates = {}
    for name, load in (("train_batch", lambda step: dataset.train_batch(0, step, batch_size)),
                       ("load_batch", lambda step: jax_ready(load_batch(mesh, dataset, 0, step, batch_size)))):
        load(0)
        start = time.perf_counter()
        for step in range(1, batches + 1):
            load(step)
        rates[name] = batches * batch_size / (time.perf_counter() - start)
    return rates


def jax_ready(tree):
    import jax

    return jax.block_until_ready(tree)


@contextlib.contextmanager
def serving(dataset):
    """The training loop's dataset factory answers `dataset` for every name while inside (this benchmark only)."""
    from jaxarch.train import loop

    real = loop.load_dataset
    loop.load_dataset = lambda name, **options: dataset
    try:
        yield
    finally:
        loop.load_dataset = real


def loop_run(dataset, steps: int, prefetch: int, log_every: int = 10) -> dict:
    """`cifar10-resnet20` for `steps` steps on `dataset` with `train.prefetch=prefetch`."""
    from jaxarch import experiments
    from jaxarch.train import train_and_evaluate
    from jaxarch.train.configure import override_config

    config = override_config(experiments.get_config(EXPERIMENT), [
        f"train.steps={steps}", f"train.log_every={log_every}", "train.eval_every=0", "train.checkpoint_every=0",
        f"train.prefetch={prefetch}"])
    with tempfile.TemporaryDirectory() as workdir, serving(dataset):
        result = train_and_evaluate(config, workdir, progress=False)
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "train/loss" in row][1:]  # The first interval holds the compilation.
    return {"prefetch": prefetch, "steps": steps,
            "steps_per_second": float(np.mean([row["train/steps_per_second"] for row in logged])),
            "data_wait_fraction": float(np.mean([row["train/data_wait_fraction"] for row in logged])),
            "data_wait_fraction_max": float(np.max([row["train/data_wait_fraction"] for row in logged])),
            "images_per_second": BATCH_SIZE * float(np.mean([row["train/steps_per_second"] for row in logged])),
            "train_seconds": result["train_seconds"]}


def run(steps: int = 60, depths: tuple[int, ...] = (0, 2), log=print) -> dict:
    import os

    import jax

    from jaxarch.report.device import cpu_model

    dataset = synthetic_cifar()
    result = {"benchmark": "input_pipeline", "experiment": EXPERIMENT, "batch_size": BATCH_SIZE,
              "num_train": NUM_TRAIN, "backend": jax.default_backend(), "cpu": cpu_model(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["loader_images_per_second"] = loader_images_per_second(dataset)
    log(f"loader alone: {result['loader_images_per_second']}")
    result["loop"] = []
    for prefetch in depths:
        row = loop_run(dataset, steps, prefetch)
        log(f"loop prefetch={prefetch}: {row}")
        result["loop"].append(row)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prefetch", default="0,2", help="the train.prefetch values to run, in this order")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    import jaxarch

    jaxarch.tune_cpu()  # As the `jaxarch` command runs training, before JAX's backends start.
    result = run(args.steps, tuple(int(depth) for depth in args.prefetch.split(",")))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
