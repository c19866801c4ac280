"""The benchmark suite: `jaxarch bench --quick` writes its documented JSON, Markdown and plots for every family, the
PyTorch peers are timed beside the JAX steps, and the counted FLOPs, targets and GPU choices are right. Nothing here
asserts a speed."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxarch.benchmarks import host_probe, suite
from jaxarch.benchmarks.report import markdown
from jaxarch.benchmarks.timing import Timing, time_runs_interleaved
from jaxarch.benchmarks.workloads import FAMILIES, forward_flops, shape_of, workload
from jaxarch.cli import main
from jaxarch.host_allocator import HUGE_PAGES_TUNABLE, huge_pages_in_use
from jaxarch.layers import attention as attention_lib

HAS_TORCH = importlib.util.find_spec("torch") is not None
HUGE_PAGES = huge_pages_in_use({"GLIBC_TUNABLES": HUGE_PAGES_TUNABLE})  # whether glibc and the kernel have them
RESULT_KEYS = {"steps_per_second", "median_seconds", "compile_seconds", "repetitions", "round_steps_per_second",
               "spread", "items_per_second", "gflops_per_second", "fraction_of_matmul_ceiling",
               "model_flops_utilization", "host_probe_seconds", "host_speed"}


def test_quick_suite_writes_every_family(tmp_path):
    # The PyTorch peers are covered by the next test; without them the run stays well under a minute of CPU.
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "jaxarch.cli", "bench", "--quick", "--no-torch", "--out", str(out)],
                   check=True, timeout=600, capture_output=True)
    result = json.loads(out.read_text())

    assert result["benchmark"] == "jaxarch_suite" and result["quick"] is True
    assert result["backend"] == "cpu" and result["dtype"] == "float32" and result["torch"] is None
    # The suite switches jaxarch's allocator settings off (conftest.py), huge pages for the heap with them.
    assert result["huge_pages"] is False
    ceiling = result["matmul_ceiling"]
    assert 0 < ceiling["gflops_per_second_min"] <= ceiling["gflops_per_second_max"] and result["peak_flops"] is None
    assert list(result["families"]) == list(FAMILIES)
    for family, entry in result["families"].items():
        assert entry["item_unit"] == ("images" if family in ("conv", "vit", "resnet") else "tokens")
        assert list(entry["sizes"]) == ["small"]
        measured = entry["sizes"]["small"]
        assert measured["shape"] == shape_of(family, "small")
        assert measured["train_flops"] == workload(family, "small").train_flops > 0
        assert measured["matmul_ceiling_gflops_per_second"] > 0
        assert set(measured["results"]) == {"jaxarch", "flax"} and measured["errors"] == {}
        for name, r in measured["results"].items():
            assert set(r) == RESULT_KEYS, (family, name)
            checked_apart = {"model_flops_utilization", "round_steps_per_second", "spread", "host_probe_seconds",
                             "host_speed"}  # None on CPU, lists, or a spread that may be 0
            assert all(r[key] > 0 for key in RESULT_KEYS - checked_apart), (family, name)
            assert len(r["round_steps_per_second"]) >= 2 and r["spread"] >= 0, (family, name)
            assert min(r["round_steps_per_second"]) <= r["steps_per_second"] <= max(r["round_steps_per_second"])
            # The machine's speed, sampled on each CPU before its steps in each of the 2 rounds.
            assert len(r["host_probe_seconds"]) == 2
            assert all(len(sample) == min(len(os.sched_getaffinity(0)), host_probe.MAX_CPUS) and min(sample) > 0
                       for sample in r["host_probe_seconds"])
            assert 0 < r["host_speed"][0] <= r["host_speed"][1] <= 1
        assert set(measured["ratios"]) == {"jaxarch/flax"} and measured["ratios"]["jaxarch/flax"] > 0
        low, high = measured["ratio_ranges"]["jaxarch/flax"]
        assert 0 < low <= high
        assert measured["host_speed"] == [min(r["host_speed"][0] for r in measured["results"].values()),
                                          max(r["host_speed"][1] for r in measured["results"].values())]
    host = result["host"]
    assert host["samples"] == 2 * 2 * len(FAMILIES) and 0 < host["speed_min"] <= host["speed_max"] <= 1
    assert host["speed_max"] == max(entry["sizes"]["small"]["host_speed"][1]
                                    for entry in result["families"].values())
    assert result["targets"] == []  # they are set at the reference size
    sequence, images = result["scaling"]["sequence_length"], result["scaling"]["image_size"]
    assert {(p["model"], p["time"]) for p in sequence["points"]} == {
        (model, length) for model in ("lstm", "transformer") for length in (32, 64)}
    assert {(p["model"], p["image"]) for p in images["points"]} == {("jaxarch", 16), ("jaxarch", 32)}
    assert all(p["median_seconds"] > 0 for p in sequence["points"] + images["points"])
    table = out.with_suffix(".md").read_text()
    assert "| conv | small | jaxarch |" in table and "Train-step ms against sequence length" in table
    for suffix in ("ratios", "sequence", "image"):
        assert (tmp_path / f"bench_{suffix}.png").stat().st_size > 0


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_peer_is_timed_beside_the_jax_steps():
    from jaxarch.benchmarks.torch_worker import TorchWorker, TorchWorkerError

    settings = dataclasses.replace(suite.Settings.for_run(quick=True, backend="cpu"), torch_mallopt_sizes=("small",))
    with TorchWorker("cpu") as worker, TorchWorker("cpu", host_allocator=True) as mallopt_worker:
        info = worker.info()
        assert info["threads"] >= 1
        # PyTorch's own OpenMP settings, or the user's: a forced PASSIVE policy halved its LSTM step.
        assert info["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY", "default")
        # glibc's allocator as PyTorch's users have it, whatever this process set; the second peer has jaxarch's.
        assert info["host_allocator"] is False and mallopt_worker.info()["host_allocator"] is True
        entry = suite.measure_workload(workload("lstm", "small"), jnp.float32, settings, worker, mallopt_worker)
        with pytest.raises(TorchWorkerError, match="family is 'nope'"):
            worker.build("bad", "nope", {}, compiled=False)
    suite.add_ratios(entry, peak_flops=None)
    assert entry["matmul_ceiling_gflops_per_second"] > 0
    assert set(entry["results"]) == {"jaxarch", "flax", "torch_eager", "torch_eager_mallopt"}
    for peer in ("torch_eager", "torch_eager_mallopt"):
        assert entry["results"][peer]["compile_seconds"] > 0
        assert entry["results"][peer]["repetitions"] == settings.rounds * settings.repetitions
    assert set(entry["ratios"]) == {"jaxarch/flax", "jaxarch/torch_eager", "jaxarch/torch_eager_mallopt"}


def test_torch_peer_makes_the_allocator_settings_only_when_asked(tmp_path, monkeypatch):
    # Whatever the parent's environment says: the worker's allocator is an argument, not a side effect of imports.
    # Huge pages for the heap, which the `jaxarch` command starts with, go with jaxarch's settings only.
    monkeypatch.setenv("JAXARCH_HOST_ALLOCATOR", "1")
    monkeypatch.setenv("GLIBC_TUNABLES", HUGE_PAGES_TUNABLE)
    if not HAS_TORCH:  # a stand-in with what the worker imports and its info request reads
        (tmp_path / "torch" / "nn").mkdir(parents=True)
        (tmp_path / "torch" / "__init__.py").write_text(
            "__version__ = 'stand-in'\nTensor = object\n\n\ndef get_num_threads():\n    return 1\n")
        (tmp_path / "torch" / "nn" / "__init__.py").write_text("class Module:\n    pass\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    from jaxarch.benchmarks.torch_worker import TorchWorker
    from jaxarch.host_allocator import glibc

    with TorchWorker("cpu") as worker, TorchWorker("cpu", host_allocator=True) as mallopt_worker:
        assert worker.info()["host_allocator"] is False and worker.info()["huge_pages"] is False
        assert mallopt_worker.info()["host_allocator"] is (glibc() is not None)
        assert mallopt_worker.info()["huge_pages"] is HUGE_PAGES


def test_counted_flops_follow_the_stated_formulas():
    reference = {family: workload(family, "reference") for family in FAMILIES}
    assert reference["lstm"].train_flops == 3 * 2 * 64 * 128 * (64 + 256) * 4 * 256
    assert reference["gru"].train_flops == 3 * 2 * 64 * 128 * (64 + 256) * 3 * 256
    conv = 2 * 128 * 28 * 28 * 9 * 1 * 32 + 2 * 128 * 14 * 14 * 9 * 32 * 64 + 2 * 128 * 7 * 7 * 64 * 10
    assert reference["conv"].train_flops == 3 * conv
    block = 2 * 16 * 256 * 12 * 256 ** 2 + 4 * 16 * 256 ** 2 * 256
    assert reference["attention"].train_flops == 3 * block
    gpt = shape_of("gpt", "reference")
    assert forward_flops("gpt", gpt) == 4 * block + 2 * 16 * 256 * 256 * 256
    assert reference["vit"].items_per_step == 64 and reference["gpt"].items_per_step == 16 * 256
    # ResNet-20 at batch 128: the stem, three stages of three blocks of two 3x3 convolutions, the head.
    stages = sum(3 * 2 * 128 * side ** 2 * 9 * 2 * width ** 2 for side, width in ((32, 16), (16, 32), (8, 64)))
    first_blocks = 2 * 128 * 16 ** 2 * 9 * (16 - 32) * 32 + 2 * 128 * 8 ** 2 * 9 * (32 - 64) * 64  # Fewer inputs.
    resnet = 2 * 128 * 32 ** 2 * 9 * 3 * 16 + stages + first_blocks + 2 * 128 * 64 * 10
    assert reference["resnet"].train_flops == 3 * resnet and reference["resnet"].items_per_step == 128
    with pytest.raises(ValueError, match="family is 'cnn', expected one of conv"):
        workload("cnn", "small")
    with pytest.raises(ValueError, match="size is 'huge'"):
        workload("conv", "huge")


def test_accelerators_get_bfloat16_a_larger_large_size_and_cudnn_attention():
    assert suite.benchmark_dtype("cpu") == jnp.float32 and suite.benchmark_dtype("gpu") == jnp.bfloat16
    assert suite.Settings.for_run(False, "gpu").ceiling_size == 8192
    assert suite._torch_device("tpu") is None
    assert shape_of("gpt", "large", "gpu")["features"] > shape_of("gpt", "large", "cpu")["features"]
    assert suite._peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and suite._peak_flops("cpu") is None
    # jaxarch's default attention takes cuDNN's fused kernel on a GPU for the suite's bfloat16 blocks.
    for family in ("attention", "gpt"):
        shape = shape_of(family, "large", "gpu")
        head_dim = shape["features"] // shape["heads"]
        query = jnp.zeros((1, shape["time"], shape["heads"], head_dim), jnp.bfloat16)
        generated = attention_lib._Generated(True, None, None, None, None)
        assert attention_lib._cudnn_unsupported(query, query, 0.0, False, generated, True, "gpu") is None


def test_targets_report_measured_ratios_and_missing_peers():
    entry = {"results": {"jaxarch": {"fraction_of_matmul_ceiling": 0.3}}, "ratios": {"jaxarch/flax": 1.2}}
    families = {name: {"sizes": {"reference": entry}} for name in ("lstm", "gru")}
    targets = {(t["family"], t["metric"]): t for t in suite.evaluate_targets(families, "cpu")}
    assert targets[("gru", "jaxarch/flax")]["met"] is True
    assert targets[("lstm", "fraction_of_matmul_ceiling")] == {
        "family": "lstm", "size": "reference", "metric": "fraction_of_matmul_ceiling", "target": 0.5,
        "measured": 0.3, "met": False}
    assert targets[("lstm", "jaxarch/torch_eager")]["met"] is None  # no torch measured
    assert targets[("lstm", "jaxarch/torch_eager_mallopt")]["met"] is None
    assert ("conv", "jaxarch/torch_eager") not in targets  # not run


def test_interleaved_runs_scale_repetitions_to_the_target_time():
    durations = {"fast": 0.001, "slow": 1.0}
    calls = {name: [] for name in durations}

    def run_of(name):
        def run(count):
            calls[name].append(count)
            return [durations[name]] * count
        return run

    timings = time_runs_interleaved({name: run_of(name) for name in durations}, rounds=3, repetitions=5, warmup=1,
                                    target_seconds=0.6)
    assert calls["fast"] == [1, 1, 5, 5, 5] and calls["slow"] == [1, 1, 2, 2, 2]
    assert timings["slow"].repetitions == 6 and np.isclose(timings["fast"].median_seconds, 0.001)
    with pytest.raises(ValueError, match="warmup >= 1 when target_seconds"):
        time_runs_interleaved({}, warmup=0, target_seconds=1.0)


def test_rounds_give_each_figure_its_spread_and_each_ratio_its_range():
    # Round medians 1, 2, 4 ms against a steady 2 ms peer: the ratio moves from 2x to 0.5x within the run.
    seconds = {"ours": iter([0.001] * 3 + [0.002] * 2 + [0.004] * 2), "peer": iter([0.002] * 7)}
    runs = {name: (lambda count, name=name: [next(seconds[name]) for _ in range(count)]) for name in seconds}
    timings = time_runs_interleaved(runs, rounds=3, repetitions=2, warmup=0)
    assert timings["ours"].round_seconds == (0.001, 0.002, 0.004)
    assert np.isclose(timings["ours"].spread, (0.004 - 0.001) / 0.002) and timings["peer"].spread == 0.0
    assert Timing(1.0, 0.5, 4, (0.5,)).spread is None  # one round says nothing about steadiness

    def result_of(timing):
        return {"steps_per_second": timing.steps_per_second, "round_steps_per_second":
                [1 / s for s in timing.round_seconds], "spread": timing.spread, "gflops_per_second": 1.0}

    entry = {"matmul_ceiling_gflops_per_second": 10.0, "shape": {"batch": 1},
             "results": {"jaxarch": result_of(timings["ours"]), "flax": result_of(timings["peer"])}, "errors": {}}
    suite.add_ratios(entry, None)
    assert np.allclose(entry["ratio_ranges"]["jaxarch/flax"], [0.5, 2.0])
    families = {"conv": {"item_unit": "images", "sizes": {"reference": entry}}}
    assert suite.unsteady(families) == ["conv reference jaxarch: rounds differ by 150% of the median"]
    for r in entry["results"].values():
        r.update(median_seconds=1 / r["steps_per_second"], compile_seconds=1.0, items_per_second=1.0)
    table = markdown({"families": families, "unsteady": suite.unsteady(families), "targets": [],
                      **_HEADER_FIELDS})
    assert "| 1.00 (0.50-2.00) | 10 | - |" in table and "**Unsteady figures**" in table
    assert "- conv reference jaxarch: rounds differ by 150% of the median" in table
    entry["host_speed"] = [0.625, 1.0]
    host = {"cpus_probed": 2, "speed_min": 0.625, "speed_max": 1.0}
    table = markdown({"families": families, "unsteady": [], "targets": [], **_HEADER_FIELDS, "host": host})
    assert "| 1.00 (0.50-2.00) | 10 | 62-100% |" in table and "| 10.0% | - |" in table  # no result's speed
    assert "its slowest CPU ran at 62-100% of the run's fastest." in table


def test_the_host_probe_times_each_cpu_and_gives_the_thread_its_affinity_back():
    allowed = os.sched_getaffinity(0)
    seconds = host_probe.cpu_seconds(samples=2)
    assert os.sched_getaffinity(0) == allowed
    assert len(seconds) == min(len(allowed), host_probe.MAX_CPUS) and all(0 < s < 1 for s in seconds)
    with pytest.raises(ValueError, match="samples is 0, expected at least 1"):
        host_probe.cpu_seconds(samples=0)
    # A sample's speed is its slowest CPU's against the fastest loop: a step on two threads waits for the slower.
    assert host_probe.slowest_cpu_speeds([[1.0, 1.0], [1.0, 2.0], [], [0.5, 1.0]]) == [0.5, 0.25, 0.5]
    assert host_probe.slowest_cpu_speeds([[2.0, 4.0]], fastest=1.0) == [0.25]
    assert host_probe.slowest_cpu_speeds([[], []]) == []
    watched = host_probe.main(["--seconds", "0.05", "--interval", "0"])
    assert watched["samples"] >= 1 and 0 < watched["slowest_cpu_speed_min"] <= 1


def test_a_run_whose_machine_changed_speed_says_so():
    calls = []
    time_runs_interleaved({"a": lambda count: [0.001] * count, "b": lambda count: [0.002] * count}, rounds=2,
                          repetitions=2, warmup=0, before_run=calls.append)
    assert calls == ["a", "b", "a", "b"]  # before each run's steps in each timed round
    # The machine slowed under "ours" in its second round only.
    entry = {"results": {"ours": {"host_probe_seconds": [[1.0, 1.0], [1.0, 1.6]]},
                         "peer": {"host_probe_seconds": [[1.0, 1.0], [1.0, 1.0]]}}}
    quiet = {"results": {"ours": {"host_probe_seconds": [[1.0, 1.1], [1.0, 1.1]]}}}
    families = {"conv": {"sizes": {"reference": entry}}, "lstm": {"sizes": {"reference": quiet}}}
    host = suite.add_host_speeds(families)
    assert host == {"loop_seconds_fastest": 1.0, "cpus_probed": 2, "samples": 6, "speed_min": 0.625,
                    "speed_max": 1.0}
    assert entry["results"]["ours"]["host_speed"] == [0.625, 1.0] and entry["results"]["peer"]["host_speed"] == [1, 1]
    assert entry["host_speed"] == [0.625, 1.0] and np.allclose(quiet["host_speed"], [1 / 1.1] * 2)
    assert suite.host_unsteady(host) == [
        "the machine itself: its slowest CPU ran at 62-100% of the run's fastest speed (a fixed loop pinned to "
        "each CPU before each implementation's steps), so part of the spreads above is the machine's, not the "
        "workloads'"]
    assert suite.host_unsteady({**host, "speed_min": 0.95}) == [] and suite.host_unsteady(None) == []
    # Where the probe could not run (no sched_setaffinity), the run has no host figures and says nothing.
    assert suite.add_host_speeds({"conv": {"sizes": {"reference": {"results": {"ours": {
        "host_probe_seconds": [[], []]}}}}}}) is None


_HEADER_FIELDS = {"torch": None, "matmul_ceiling": {"gflops_per_second_min": 10.0, "gflops_per_second_max": 10.0,
                                                    "size": 2048, "dtype": "float32"},
                  "date": "2026-12-06", "cpu": "test", "cores": 2, "backend": "cpu", "device": "cpu",
                  "dtype": "float32", "quick": False, "jax": "x", "flax": "x", "xla_flags": ""}


def test_bench_rejects_unknown_families_and_sizes(capsys):
    assert main(["bench", "--families", "conv,cnn"]) == 2
    assert "family is 'cnn', expected one of conv, rnn" in capsys.readouterr().err
    assert main(["bench", "--sizes", "tiny"]) == 2
    assert "sizes is ('tiny',)" in capsys.readouterr().err
