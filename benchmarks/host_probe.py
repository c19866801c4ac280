"""How fast the machine's own CPUs are running: a fixed loop timed on each CPU in turn.

A figure's spread over a run's rounds has two causes that look alike: the workload's own variation, and the
machine changing speed under it. On a virtual machine the second can be large and has nothing to do with the
program: a vCPU's speed depends on what the host runs beside it. The probe shows whether the machine moved. It
times a fixed pure-Python loop (no memory traffic, no library call, nothing jaxarch or XLA could change) pinned to
each CPU the process may use, so a change in its time is the machine's: other jobs on it, or on a virtual machine
the host's load. `jaxarch bench` samples it before each implementation's steps in every round
(`benchmarks/suite.py`) and reports, for each implementation, each workload and the run, how fast the slowest CPU
ran against the fastest sample of the run: a step on several threads waits for its slowest one. A sample is an
instant, and a host's speed can change within a round, so it says that the machine moved, not by how much each
figure moved with it.

The measurements that led to it are in docs/performance/cpu.md ("The CNN step and the host's memory state").
Watch a machine's speed for a while before trusting a benchmark on it:

Command: python -m jaxarch.benchmarks.host_probe [--seconds 20] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

LOOP = 100_000  # additions: about 3 ms of CPython on a 2.4 GHz core
SAMPLES = 3  # per CPU; the fastest counts, so that an interrupt does not read as a slow machine
MAX_CPUS = 16  # probed per sample: the first of those the process may use, to bound a sample's cost


def _loop_seconds() -> float:
    start = time.perf_counter()
    total = 0
    for value in range(LOOP):
        total += value
    return time.perf_counter() - start


def cpu_seconds(samples: int = SAMPLES) -> list[float]:
    """The loop's seconds on each CPU this process may use (the fastest of `samples` runs on each), in the order
    of the CPUs' numbers; empty where the platform cannot pin a thread to a CPU (not Linux).

    Pins the calling thread only, and gives it back its affinity before returning: threads already started, such
    as XLA's or a worker process's, are not moved.
    """
    if samples < 1:
        raise ValueError(f"benchmarks.host_probe: samples is {samples}, expected at least 1")
    if not hasattr(os, "sched_setaffinity"):
        return []
    allowed = os.sched_getaffinity(0)
    seconds = []
    try:
        for cpu in sorted(allowed)[:MAX_CPUS]:
            os.sched_setaffinity(0, {cpu})
            seconds.append(min(_loop_seconds() for _ in range(samples)))
    finally:
        os.sched_setaffinity(0, allowed)
    return seconds


def slowest_cpu_speeds(samples: list[list[float]], fastest: float | None = None) -> list[float]:
    """For each sample (`cpu_seconds`' list), its slowest CPU's speed as a fraction of `fastest` (the loop's
    fastest seconds; default: the fastest in `samples`): 1.0 where every CPU ran as fast as the best seen, 0.5
    where one took twice as long. Empty samples are skipped."""
    samples = [sample for sample in samples if sample]
    if not samples:
        return []
    if fastest is None:
        fastest = min(min(sample) for sample in samples)
    return [fastest / max(sample) for sample in samples]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to watch")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.interval < 0:
        parser.error(f"seconds is {args.seconds} and interval {args.interval}, expected seconds > 0, interval >= 0")
    samples, end = [], time.monotonic() + args.seconds
    while not samples or time.monotonic() < end:
        samples.append(cpu_seconds())
        print(" ".join(f"{1e3 * seconds:.2f}" for seconds in samples[-1]), "ms", flush=True)
        time.sleep(args.interval)
    speeds = slowest_cpu_speeds(samples)
    measured = [sample for sample in samples if sample]
    result = {"samples": len(samples),
              "loop_ms_fastest": 1e3 * min(min(sample) for sample in measured) if measured else None,
              "slowest_cpu_speed_min": min(speeds, default=None),
              "slowest_cpu_speed_median": statistics.median(speeds) if speeds else None}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
