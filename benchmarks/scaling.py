"""Train-step throughput against device count: one experiment's jitted train step timed on a series of meshes.

For each mesh (by default `data:1`, `data:2`, `data:4`, ... up to every device) the experiment's train state is
built on that mesh (`jaxarch.train.init_state`, with the config's `train.fsdp`) and its sharded train step is
timed by `jaxarch.benchmarks.timing.time_jax_step` on one fixed batch. Strong scaling by default: the global batch
stays `train.batch_size` on every mesh; with `per_device_batch_size` the global batch grows with the data axis
(weak scaling). Each row reports steps and examples per second, the speed-up over the first mesh and the
parallel efficiency (speed-up / device-count ratio).

`measure_scaling(config, meshes)` is the piece a benchmark suite calls when `jax.device_count() > 1`.

Command: python benchmarks/scaling.py [EXPERIMENT] [key=value ...] [--meshes data:1 data:4,model:2 ...]
[--per-device-batch N] [--out benchmarks/results/scaling.json]
On a CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` simulates 8 devices; they share the same cores,
so such numbers mostly measure partitioning overhead. Where one device leaves cores idle they show a real gain:
small recurrences use a second core poorly, and on a 2-core CPU `adding-lstm` (hidden 128) ran 1.05-1.09x faster
on `data:2` than on `data:1`.
"""

from __future__ import annotations

import argparse
import math

import jax
import ml_collections

from jaxarch import tune_cpu
from jaxarch.benchmarks.timing import environment, time_jax_step, write_json
from jaxarch.train import TASKS, init_state
from jaxarch.train.loop import build_dataset_and_model
from jaxarch.train.mesh import DATA, MODEL, check_batch_size, describe, make_mesh, place_batch
from jaxarch.train.sharding import make_sharded_train_step


def default_meshes(device_count: int) -> list[str]:
    """`data:1`, `data:2`, `data:4`, ... (powers of two) and `data:<device_count>`."""
    if not isinstance(device_count, int) or device_count < 1:
        raise ValueError(f"default_meshes: device_count is {device_count!r}, expected a positive int")
    counts = {2 ** i for i in range(int(math.log2(device_count)) + 1)} | {device_count}
    return [f"{DATA}:{count}" for count in sorted(counts)]


def measure_scaling(config: ml_collections.ConfigDict, meshes: list[str] | None = None, *,
                    per_device_batch_size: int | None = None, repetitions: int = 20, warmup: int = 2) -> list[dict]:
    """One row per mesh: mesh, devices, batch_size, steps_per_second, examples_per_second, median_seconds,
    compile_seconds, speedup and efficiency (both relative to the first mesh)."""
    meshes = default_meshes(jax.device_count()) if meshes is None else list(meshes)
    if not meshes:
        raise ValueError("measure_scaling: meshes is [], expected at least one mesh such as 'data:1'")
    if per_device_batch_size is not None and per_device_batch_size < 1:
        raise ValueError(f"measure_scaling: per_device_batch_size is {per_device_batch_size}, expected >= 1 or None")
    dataset, model = build_dataset_and_model(config)
    task = TASKS.get(dataset.task)
    rows = []
    for spec in meshes:
        mesh = make_mesh(spec)
        batch_size = config.train.batch_size
        if per_device_batch_size is not None:
            batch_size = per_device_batch_size * mesh.shape[DATA]
        check_batch_size(mesh, batch_size, "batch size")
        state = init_state(config, dataset, model, mesh)
        step = make_sharded_train_step(task, state, mesh)
        batch = place_batch(mesh, dataset.train_batch(config.seed, 0, batch_size))
        timing = time_jax_step(step, state, batch, repetitions=repetitions, warmup=warmup)
        rows.append({"mesh": describe(mesh), "devices": mesh.size, "data": mesh.shape[DATA],
                     "model": mesh.shape[MODEL], "batch_size": batch_size,
                     "steps_per_second": timing.steps_per_second,
                     "examples_per_second": batch_size * timing.steps_per_second,
                     "median_seconds": timing.median_seconds, "compile_seconds": timing.compile_seconds,
                     "repetitions": timing.repetitions})
    first = rows[0]
    for row in rows:
        row["speedup"] = row["examples_per_second"] / first["examples_per_second"]
        row["efficiency"] = row["speedup"] * first["devices"] / row["devices"]
    return rows


def main():
    from jaxarch import experiments
    from jaxarch.train.configure import override_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="mnist1d-cnn")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument("--meshes", nargs="+", help="mesh specs (default: data:1, data:2, ... every device)")
    parser.add_argument("--per-device-batch", type=int, help="weak scaling: this many examples per data shard")
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    args = parser.parse_args()
    tune_cpu()  # timed as under the `jaxarch` command
    config = override_config(experiments.get_config(args.experiment), args.overrides)
    rows = measure_scaling(config, args.meshes, per_device_batch_size=args.per_device_batch,
                           repetitions=args.repetitions)
    write_json({"benchmark": "scaling", "experiment": args.experiment, "overrides": args.overrides,
                "device_count": jax.device_count(), "meshes": rows, **environment()}, args.out)


if __name__ == "__main__":
    main()
