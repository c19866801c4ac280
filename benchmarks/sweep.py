"""The sweep strategies side by side: member-steps per second of `jaxarch sweep`'s sequential and vmap strategies.

K members of one experiment (seeds 0..K-1) take training steps: "sequential" one member's step after another
(the single run's jitted step), "vmap" one stacked step for all K (`jaxarch.train.stacked.make_stacked_step`,
the member axis split over the devices). Both are timed in the same rounds (`time_runs_interleaved`), so load
from other jobs hits them alike; batches are placed on the device beforehand, so data loading (the same host
work for both) is left out. A member-step is one member advanced by one step: the vmap strategy's rate is K
over its step time.

Command: python -m jaxarch.benchmarks.sweep [--members K] [--experiment NAME] (also a row of `jaxarch bench`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxarch.benchmarks.timing import time_runs_interleaved, timed_calls

EXPERIMENT = "mnist1d-cnn"
MEMBERS = 4
QUICK_EXPERIMENT, QUICK_OVERRIDES = "mnist1d-cnn", ("model.features=(8,16)", "train.batch_size=32")


def measure(experiment: str = EXPERIMENT, overrides: Sequence[str] = (), *, members: int = MEMBERS,
            rounds: int = 5, repetitions: int = 6) -> dict:
    """member_steps_per_second of each strategy, their ratio (vmap over sequential) and the settings."""
    from jaxarch import experiments
    from jaxarch.train.configure import override_config
    from jaxarch.train.loop import build_dataset_and_model, init_state
    from jaxarch.train.mesh import make_mesh
    from jaxarch.train.stacked import MEMBERS as AXIS
    from jaxarch.train.stacked import hyperparameters, make_stacked_step, member_devices, stack
    from jaxarch.train.steps import make_train_step
    from jaxarch.train.tasks import TASKS

    if members < 1:
        raise ValueError(f"benchmarks.sweep: members is {members}, expected a positive integer")
    base = override_config(experiments.get_config(experiment), overrides)
    configs = [override_config(base, [f"seed={seed}"]) for seed in range(members)]
    dataset, model = build_dataset_and_model(base)
    task = TASKS.get(dataset.task)
    one_device = make_mesh("data:1", jax.local_devices()[:1])
    states = [init_state(config, dataset, model, one_device) for config in configs]
    batches = [dataset.train_batch(config.seed, 0, base.train.batch_size) for config in configs]

    sequential_step = make_train_step(task)
    sequential = {"states": list(states), "batches": [jax.device_put(b, jax.local_devices()[0]) for b in batches]}

    def sequential_call() -> None:
        for index in range(members):
            sequential["states"][index], metrics = sequential_step(sequential["states"][index],
                                                                   sequential["batches"][index])
        jax.block_until_ready(metrics["loss"])

    devices = member_devices(members)
    split = NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))
    stacked_step = make_stacked_step(task, base)
    stacked = {"state": stack([state.replace(tx=None) for state in states], split),
               "batch": stack(batches, split), "hyper": stack(hyperparameters(configs), split)}

    def stacked_call() -> None:
        stacked["state"], metrics = stacked_step(stacked["state"], stacked["batch"], stacked["hyper"])
        jax.block_until_ready(metrics["loss"])

    timings = time_runs_interleaved({"sequential": timed_calls(sequential_call), "vmap": timed_calls(stacked_call)},
                                    rounds=rounds, repetitions=repetitions)
    # Each timed call advances every member by one step.
    rates = {name: members / timing.median_seconds for name, timing in timings.items()}
    return {"experiment": experiment, "overrides": list(overrides), "members": members,
            "devices": len(devices), "backend": jax.default_backend(),
            "member_steps_per_second": rates, "vmap_over_sequential": rates["vmap"] / rates["sequential"],
            "compile_seconds": {name: timing.compile_seconds for name, timing in timings.items()},
            "repetitions": {name: timing.repetitions for name, timing in timings.items()}}


def run(*, quick: bool = False, log=print) -> dict:
    """The bench row: `measure` on the experiment's own config (small shapes and fewer calls with `quick`)."""
    if quick:
        row = measure(QUICK_EXPERIMENT, QUICK_OVERRIDES, rounds=2, repetitions=3)
    else:
        row = measure()
    log(f"sweep {row['experiment']} x{row['members']}: " + ", ".join(
        f"{name} {rate:.1f} member-steps/s" for name, rate in row["member_steps_per_second"].items())
        + f"; vmap/sequential {row['vmap_over_sequential']:.2f}x")
    return row


def markdown_lines(row: dict) -> list[str]:
    rates = row["member_steps_per_second"]
    return ["## Sweep strategies", "",
            f"{row['members']} members of {row['experiment']} {' '.join(row['overrides'])} on {row['devices']} "
            f"{row['backend']} device(s), member-steps/s (timed side by side, data loading excluded):", "",
            "| sequential | vmap | vmap / sequential |", "|---|---|---|",
            f"| {rates['sequential']:.1f} | {rates['vmap']:.1f} | {row['vmap_over_sequential']:.2f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default=EXPERIMENT)
    parser.add_argument("--members", type=int, default=MEMBERS)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    print(json.dumps(measure(args.experiment, args.overrides, members=args.members)))


if __name__ == "__main__":
    main()
