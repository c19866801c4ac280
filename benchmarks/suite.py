"""The benchmark suite behind `jaxarch bench`: training-step speed of every family beside its peers, in one run.

For each family (`benchmarks/workloads.py`: conv, rnn, lstm, gru, attention, gpt, vit, resnet) at each size
(small, the reference shapes, large), one training step (forward, backward, Adam update; for resnet also the
BatchNorm running averages) of:

- `jaxarch`: the family built from jaxarch's layers and models;
- `flax`: the same composition of Flax's built-in modules (`benchmarks/jax_models.py`);
- `torch_eager`, and `torch_compile` at the reference size (not in `--quick`): PyTorch on the same device, when
  torch is installed (`benchmarks/torch_models.py`, run in a worker process, `benchmarks/torch_worker.py`), with
  glibc's allocator as PyTorch's users have it;
- `torch_eager_mallopt` (not in `--quick`): PyTorch eager in a second worker that makes jaxarch's glibc settings
  (`jaxarch/host_allocator.py`), which the `jaxarch` command, and so this suite, runs with (`jaxarch.tune_cpu`).
  They halved PyTorch's LSTM and CNN steps on a 2-core CPU (oneDNN's RNN kernel maps its workspace afresh every
  step otherwise), so both are reported.

Every implementation of a workload is timed in the same rounds (`time_runs_interleaved`), so load from other jobs
on a shared machine hits them alike: the ratios are measured side by side, the absolute figures are not
comparable across runs. Reported per implementation: the first step's seconds (tracing and compilation
included), the median step time over the timed repetitions, steps/s, images or tokens/s, the achieved FLOP/s from
the counted FLOPs (see `benchmarks/workloads.py`), and its fraction of the matmul ceiling: the FLOP/s of a large
`[n, n] @ [n, n]` matmul in the benchmark dtype, timed in the same rounds as the workload's steps (a ceiling
measured apart read 35-45 GFLOP/s on a loaded 2-core CPU where the steps themselves reached 60, so each workload
is held against the ceiling measured beside it). On a device whose peak is known (`PEAK_FLOPS`) the fraction of
that peak is reported too: the model-FLOP utilisation. Before each implementation's steps in every round the
suite also times a fixed loop on each CPU (`benchmarks/host_probe.py`), so that a run says how far the machine's
own speed moved under each figure.

Dtypes: float32 on CPU; on GPU and TPU bfloat16 compute with float32 parameters, and attention through cuDNN's
fused kernel on GPUs where it supports the call (jaxarch's default implementation choice).

Then the scaling curves (`benchmarks/curves.py`); with more than one device, throughput against device count
(`benchmarks/scaling.py`: `DEVICE_SCALING_EXPERIMENTS` on data:1, data:2, ... every device); the targets
(`CPU_TARGETS`, `ACCELERATOR_TARGETS`), `jaxarch sweep`'s two strategies side by side (`benchmarks/sweep.py`),
and the JSON, a Markdown table and PNG plots (`benchmarks/report.py`).

The input pipeline beside ResNet-20's training loop is measured apart: `benchmarks/input_pipeline.py`.

Command: jaxarch bench [--quick] [--families conv,rnn,...] [--out benchmarks/results/bench_cpu.json]
(the full suite takes 10-15 minutes on a 2-core CPU, `--quick` under two minutes.)
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp

from jaxarch.benchmarks import curves, host_probe, scaling
from jaxarch.benchmarks import sweep as sweep_strategies
from jaxarch.benchmarks.jax_models import IMPLEMENTATIONS, build_model, train_step
from jaxarch.benchmarks.report import write_report
from jaxarch.benchmarks.timing import (SPREAD_WARNING, environment, matmul_step, time_runs_interleaved, timed_calls,
                                       torch_available, write_json)
from jaxarch.benchmarks.torch_worker import TorchWorker, TorchWorkerError
from jaxarch.benchmarks.workloads import FAMILIES, SIZES, Workload, check_family, make_data, workload
from jaxarch.host_allocator import huge_pages_in_use
from jaxarch.report.device import cpu_model

# Experiments timed against device count (with overrides): a CNN and a Transformer language model, global batch
# fixed (strong scaling).
DEVICE_SCALING_EXPERIMENTS = {"mnist1d-cnn": [], "charlm-gpt": []}
QUICK_DEVICE_SCALING_EXPERIMENTS = {"mnist1d-logreg": []}

# Dense bfloat16 peak FLOP/s by device kind (vendor figures), for the model-FLOP utilisation.
PEAK_FLOPS = {
    "H100": 989e12,  # SXM; the PCIe card is lower, so its utilisation reads low
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}
# (family, size, metric, at least): the speed targets. A metric "jaxarch/<peer>" is a steps/s ratio. PyTorch is
# held to them as its users run it and also given jaxarch's allocator settings.
CPU_TARGETS = tuple((family, "reference", f"jaxarch/{peer}", 1.0)
                    for family in ("conv", "lstm", "attention") for peer in ("torch_eager", "torch_eager_mallopt")) + (
    ("lstm", "reference", "fraction_of_matmul_ceiling", 0.5),
    ("gru", "reference", "jaxarch/flax", 1.0),
    ("attention", "reference", "fraction_of_matmul_ceiling", 0.5),
)
ACCELERATOR_TARGETS = (("gpt", "large", "model_flops_utilization", 0.5),)
DEFAULT_OUT = "benchmarks/results/bench_{backend}.json"
_CEILING = "matmul_ceiling"  # the ceiling matmul's run among a workload's implementations


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much the suite measures."""

    quick: bool
    sizes: tuple[str, ...]
    rounds: int  # passes over the implementations of a workload
    repetitions: int  # timed steps per pass, at most
    target_seconds: float  # timed work per implementation and workload, which sets the steps per pass
    ceiling_size: int  # n of the [n, n] @ [n, n] ceiling matmul
    torch_compile_sizes: tuple[str, ...]
    torch_mallopt_sizes: tuple[str, ...]  # where `torch_eager_mallopt` runs

    @classmethod
    def for_run(cls, quick: bool, backend: str) -> Settings:
        ceiling = 512 if quick else (2048 if backend == "cpu" else 8192)
        if quick:
            return cls(True, ("small",), rounds=2, repetitions=2, target_seconds=0.2, ceiling_size=ceiling,
                       torch_compile_sizes=(), torch_mallopt_sizes=())
        return cls(False, SIZES, rounds=5, repetitions=8, target_seconds=4.0, ceiling_size=ceiling,
                   torch_compile_sizes=("reference",), torch_mallopt_sizes=SIZES)


def benchmark_dtype(backend: str):
    """float32 on CPU; bfloat16 compute (parameters stay float32) on GPU and TPU."""
    return jnp.float32 if backend == "cpu" else jnp.bfloat16


def _torch_device(backend: str) -> str | None:
    """The device PyTorch runs on beside this backend, or None (no torch, or a TPU)."""
    if not torch_available() or backend not in ("cpu", "gpu"):
        return None
    if backend == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _peak_flops(device_kind: str) -> float | None:
    matches = [peak for name, peak in PEAK_FLOPS.items() if name in device_kind]
    return matches[0] if matches else None


def measure_workload(work: Workload, dtype, settings: Settings, worker: TorchWorker | None,
                     mallopt_worker: TorchWorker | None = None) -> dict:
    """Times every implementation of `work` and the ceiling matmul side by side; `results` hold times, `errors`
    what could not run. `worker` runs the PyTorch peers with glibc's allocator settings, `mallopt_worker` with
    jaxarch's."""
    inputs, targets = make_data(work.family, work.shape)
    runs = {name: timed_calls(train_step(build_model(name, work.family, work.shape, dtype), work.family, inputs,
                                         targets))
            for name in IMPLEMENTATIONS}
    runs[_CEILING] = timed_calls(matmul_step(dtype, settings.ceiling_size))
    errors, torch_first, peers = {}, {}, {}
    if worker is not None:
        peers["torch_eager"] = (worker, False)
        if work.size in settings.torch_compile_sizes:
            peers["torch_compile"] = (worker, True)
    if mallopt_worker is not None and work.size in settings.torch_mallopt_sizes:
        peers["torch_eager_mallopt"] = (mallopt_worker, False)
    for name, (peer_worker, compiled) in peers.items():
        try:
            torch_first[name] = peer_worker.build(name, work.family, work.shape, compiled)
            runs[name] = peer_worker.runner(name)
        except TorchWorkerError as error:
            errors[name] = str(error)
    # The machine's own speed just before each implementation's steps in each round, so that a spread the machine
    # caused can be told from the implementation's own.
    host_seconds = {name: [] for name in runs}
    timings = time_runs_interleaved(runs, rounds=settings.rounds, repetitions=settings.repetitions,
                                    warmup=1, target_seconds=settings.target_seconds,
                                    before_run=lambda name: host_seconds[name].append(host_probe.cpu_seconds()))
    for name, first in torch_first.items():  # its first step ran when it was built
        timings[name] = dataclasses.replace(timings[name], compile_seconds=first)
        peers[name][0].drop(name)
    ceiling = timings.pop(_CEILING)
    results = {}
    for name, timing in timings.items():
        results[name] = {
            "steps_per_second": timing.steps_per_second,
            "median_seconds": timing.median_seconds,
            "compile_seconds": timing.compile_seconds,
            "repetitions": timing.repetitions,
            "round_steps_per_second": [1.0 / seconds for seconds in timing.round_seconds],
            "spread": timing.spread,
            "items_per_second": work.items_per_step * timing.steps_per_second,
            "gflops_per_second": work.train_flops * timing.steps_per_second / 1e9,
            "host_probe_seconds": host_seconds[name],
        }
    return {"shape": work.shape, "train_flops": work.train_flops, "items_per_step": work.items_per_step,
            "matmul_ceiling_gflops_per_second": 2 * settings.ceiling_size ** 3 / ceiling.median_seconds / 1e9,
            "results": results, "errors": errors}


def _probe_samples(entry: dict) -> list[list[float]]:
    return [sample for result in entry["results"].values() for sample in result.get("host_probe_seconds", [])]


def _speed_range(samples: list[list[float]], fastest: float) -> list[float] | None:
    speeds = host_probe.slowest_cpu_speeds(samples, fastest)
    return [min(speeds), max(speeds)] if speeds else None


def add_host_speeds(families: dict) -> dict | None:
    """Sets `host_speed` on each result and workload: [lowest, highest] over its rounds of the slowest CPU's speed
    against the run's fastest probe (`host_probe.slowest_cpu_speeds`). Returns the run's: the probe's fastest
    seconds and the range over every sample; None where the probe could not run."""
    entries = [entry for by_size in families.values() for entry in by_size["sizes"].values()]
    samples = [sample for entry in entries for sample in _probe_samples(entry) if sample]
    if not samples:
        return None
    fastest = min(min(sample) for sample in samples)
    for entry in entries:
        for result in entry["results"].values():
            result["host_speed"] = _speed_range(result.get("host_probe_seconds", []), fastest)
        entry["host_speed"] = _speed_range(_probe_samples(entry), fastest)
    speeds = host_probe.slowest_cpu_speeds(samples, fastest)
    return {"loop_seconds_fastest": fastest, "cpus_probed": max(len(sample) for sample in samples),
            "samples": len(samples), "speed_min": min(speeds), "speed_max": max(speeds)}


def host_unsteady(host: dict | None) -> list[str]:
    """A line when the machine's own speed moved by more than `SPREAD_WARNING` during the run."""
    if host is None or host["speed_max"] - host["speed_min"] <= SPREAD_WARNING:
        return []
    return [f"the machine itself: its slowest CPU ran at {100 * host['speed_min']:.0f}-{100 * host['speed_max']:.0f}% "
            "of the run's fastest speed (a fixed loop pinned to each CPU before each implementation's steps), so "
            "part of the spreads above is the machine's, not the workloads'"]


def add_ratios(entry: dict, peak_flops: float | None) -> None:
    """Adds each implementation's fraction of the workload's ceiling (and of the peak) and the jaxarch/peer
    ratios."""
    results = entry["results"]
    for result in results.values():
        achieved = result["gflops_per_second"] * 1e9
        result["fraction_of_matmul_ceiling"] = achieved / (entry["matmul_ceiling_gflops_per_second"] * 1e9)
        result["model_flops_utilization"] = None if peak_flops is None else achieved / peak_flops
    ours = results["jaxarch"]
    peers = {peer: result for peer, result in results.items() if peer != "jaxarch"}
    entry["ratios"] = {f"jaxarch/{peer}": ours["steps_per_second"] / result["steps_per_second"]
                       for peer, result in peers.items()}
    # Round by round: the rounds interleave the implementations, so each pair was timed under the same load, and
    # the range of the pairs' ratios is the run's error bar on the ratio.
    entry["ratio_ranges"] = {}
    for peer, result in peers.items():
        pairs = [mine / theirs for mine, theirs in zip(ours.get("round_steps_per_second", []),
                                                        result.get("round_steps_per_second", []))]
        if pairs:
            entry["ratio_ranges"][f"jaxarch/{peer}"] = [min(pairs), max(pairs)]


def unsteady(families: dict) -> list[str]:
    """A line for each implementation whose rounds differ by more than `SPREAD_WARNING` of its median."""
    return [f"{family} {size} {name}: rounds differ by {100 * r['spread']:.0f}% of the median"
            for family, entry in families.items() for size, measured in entry["sizes"].items()
            for name, r in measured["results"].items()
            if r.get("spread") is not None and r["spread"] > SPREAD_WARNING]


def evaluate_targets(families: dict, backend: str) -> list[dict]:
    """Each target whose workload ran, with the measured value and whether it is met (None: no measurement)."""
    targets = CPU_TARGETS if backend == "cpu" else ACCELERATOR_TARGETS
    evaluated = []
    for family, size, metric, at_least in targets:
        entry = families.get(family, {}).get("sizes", {}).get(size)
        if entry is None:
            continue
        if metric.startswith("jaxarch/"):
            measured = entry["ratios"].get(metric)
        else:
            measured = entry["results"]["jaxarch"][metric]
        evaluated.append({"family": family, "size": size, "metric": metric, "target": at_least,
                          "measured": measured, "met": None if measured is None else measured >= at_least})
    return evaluated


def check_families(families: Sequence[str]) -> tuple[str, ...]:
    families = tuple(families)
    if not families:
        raise ValueError(f"jaxarch bench: families is empty, expected some of {', '.join(FAMILIES)}")
    for family in families:
        check_family(family)
    return families


def run(families: Sequence[str] = FAMILIES, *, quick: bool = False, sizes: Sequence[str] | None = None,
        include_torch: bool | None = None, include_scaling: bool = True, log=print) -> dict:
    """Runs the suite and returns its result (the JSON document); `log` receives progress lines.

    `sizes` narrows the sizes measured (default: "small" with `quick`, else all three).
    """
    families = check_families(families)
    backend = jax.default_backend()
    settings = Settings.for_run(quick, backend)
    if sizes is not None:
        sizes = tuple(sizes)
        if not sizes or any(size not in SIZES for size in sizes):
            raise ValueError(f"jaxarch bench: sizes is {sizes!r}, expected some of {', '.join(SIZES)}")
        settings = dataclasses.replace(settings, sizes=sizes)
    dtype = benchmark_dtype(backend)
    device_kind = jax.devices()[0].device_kind
    torch_device = _torch_device(backend) if include_torch in (None, True) else None
    if include_torch and torch_device is None:
        raise ValueError(f"jaxarch bench: include_torch is True, expected torch to be installed with a device "
                         f"beside the {backend!r} backend")
    result = {
        "benchmark": "jaxarch_suite",
        "quick": quick,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **environment(),
        "backend": backend,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flax": flax.__version__,
        "dtype": jnp.dtype(dtype).name,
        "param_dtype": "float32",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # with those of `jaxarch.tune_cpu`, which `jaxarch bench` makes
        "huge_pages": huge_pages_in_use(os.environ),  # the heap's, which the `jaxarch` command starts with
        "torch": None,
    }
    worker = TorchWorker(torch_device) if torch_device else None
    # The glibc settings are host memory's: beside a GPU the peer's buffers come from PyTorch's CUDA allocator.
    with_mallopt = torch_device == "cpu" and settings.torch_mallopt_sizes
    mallopt_worker = TorchWorker(torch_device, host_allocator=True) if with_mallopt else None
    try:
        if worker is not None:
            info = worker.info()
            result.update(torch=info["torch"], torch_threads=info["threads"], torch_device=info["device"],
                          torch_omp_wait_policy=info["omp_wait_policy"], torch_host_allocator=info["host_allocator"],
                          torch_huge_pages=info["huge_pages"])
        if mallopt_worker is not None:
            info = mallopt_worker.info()
            result.update(torch_eager_mallopt_host_allocator=info["host_allocator"],
                          torch_eager_mallopt_huge_pages=info["huge_pages"])
        measured = {}
        for family in families:
            measured[family] = {}
            for size in settings.sizes:
                work = workload(family, size, backend)
                measured[family][size] = (work, measure_workload(work, dtype, settings, worker, mallopt_worker))
                entry = measured[family][size][1]
                log(f"{family} {size}: " + ", ".join(f"{name} {r['steps_per_second']:.2f} steps/s"
                                                     for name, r in entry["results"].items())
                    + f"; matmul ceiling {entry['matmul_ceiling_gflops_per_second']:.1f} GFLOP/s")
                for line in unsteady({family: {"sizes": {size: entry}}}):
                    log(f"warning: unsteady: {line}; the machine was busy or its state changed during the run")
                probe = host_probe.slowest_cpu_speeds(_probe_samples(entry))
                if probe and max(probe) - min(probe) > SPREAD_WARNING:
                    log(f"warning: the machine's own speed moved during {family} {size}: its slowest CPU ran at "
                        f"{100 * min(probe):.0f}-{100 * max(probe):.0f}% of the workload's fastest probe")
    finally:
        for each in (worker, mallopt_worker):
            if each is not None:
                each.close()
    peak = _peak_flops(device_kind) if backend != "cpu" else None
    ceilings = [entry["matmul_ceiling_gflops_per_second"] for by_size in measured.values()
                for _, entry in by_size.values()]
    result["matmul_ceiling"] = {"gflops_per_second_min": min(ceilings), "gflops_per_second_max": max(ceilings),
                                "size": settings.ceiling_size, "dtype": jnp.dtype(dtype).name}
    result["peak_flops"] = peak
    result["families"] = {}
    for family, by_size in measured.items():
        entries = {}
        for size, (work, entry) in by_size.items():
            add_ratios(entry, peak)
            entries[size] = entry
        result["families"][family] = {"item_unit": work.item_unit, "sizes": entries}
    result["host"] = add_host_speeds(result["families"])
    result["targets"] = evaluate_targets(result["families"], backend)
    result["unsteady"] = unsteady(result["families"]) + host_unsteady(result["host"])
    if include_scaling:
        result["scaling"] = curves.run(quick=quick, dtype=dtype, log=log)
    if jax.device_count() > 1:
        result["device_scaling"] = device_scaling(quick=quick, log=log)
    result["sweep_strategies"] = sweep_strategies.run(quick=quick, log=log)
    return result


def device_scaling(*, quick: bool = False, log=print) -> dict[str, list[dict]]:
    """Experiment name -> `scaling.measure_scaling` rows on data:1, data:2, ... every device."""
    from jaxarch import experiments
    from jaxarch.train.configure import override_config

    rows = {}
    for name, overrides in (QUICK_DEVICE_SCALING_EXPERIMENTS if quick else DEVICE_SCALING_EXPERIMENTS).items():
        config = override_config(experiments.get_config(name), overrides)
        rows[name] = scaling.measure_scaling(config, repetitions=3 if quick else 20)
        log(f"devices {name}: " + ", ".join(f"{row['mesh']} {row['examples_per_second']:.0f} examples/s"
                                             for row in rows[name]))
    return rows


def run_and_write(out: str | None = None, **kwargs) -> dict:
    """`run(**kwargs)`, then the JSON at `out` (default `DEFAULT_OUT`) and the Markdown and plots beside it."""
    result = run(**kwargs)
    out = out or DEFAULT_OUT.format(backend=result["backend"])
    write_json(result, out, echo=False)
    write_report(result, out)
    return result
