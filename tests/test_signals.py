"""Preemption: SIGTERM and SIGINT finish the step, write a checkpoint and exit with 128 + the signal; a second
signal exits at once; the resumed run ends bit-identical to an uninterrupted one, with the same records. Signal
handlers are the run's only while it runs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_resume import assert_bit_identical, records, saved_state, without_timing

from jaxarch import experiments
from jaxarch.train import train_and_evaluate
from jaxarch.train.checkpoint import CHECKPOINTS
from jaxarch.train.configure import override_config
from jaxarch.train.signals import Interrupted, StopRequests, agreed, exit_status

STEPS = 240
# Dropout (the RNG state matters), evaluations, and a log cadence (7) that no checkpoint step (50) is a
# multiple of: a stop between log records must carry the unlogged losses over to the resumed run.
RUN = ["mnist1d-cnn", f"train.steps={STEPS}", "train.checkpoint_every=50", "train.log_every=7", "train.eval_every=100",
       "train.keep_checkpoints=2", "train.batch_size=32", "model.features=(8,16)", "model.dropout_rate=0.3",
       "optim.warmup_steps=10"]
# A run that sends itself SIGTERM (TIMES times) from inside the checkpoint save at step 100, after its state is
# in hand and before orbax writes it.
SIGNAL_DURING_SAVE = """
import os, signal, sys, time
from jaxarch.train import checkpoint
real = checkpoint.host_shards
def host_shards(state):
    if int(state.step) == 100:
        for _ in range(TIMES):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
    return real(state)
checkpoint.host_shards = host_shards
from jaxarch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def command(workdir, prefix=("-m", "jaxarch.cli")):
    return [sys.executable, *prefix, "run", *RUN, "--workdir", str(workdir), "--no-progress"]


def last_logged_step(workdir) -> int:
    try:
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, IndexError, KeyError):
        return 0


def signal_after(process, workdir, step, signum, repeat=1):
    deadline = time.monotonic() + 300
    while last_logged_step(workdir) < step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    for _ in range(repeat):
        process.send_signal(signum)


def stopped_step(stderr: str, name: str) -> int:
    lines = [line for line in stderr.splitlines() if line.startswith(f"jaxarch: stopped by {name} after step")]
    assert len(lines) == 1, stderr
    return int(lines[0].split("after step ")[1].split(";")[0])


def test_signals_stop_cleanly_and_the_resumed_runs_are_bit_identical(tmp_path):
    whole_dir = tmp_path / "whole"
    cases = {"sigterm": (signal.SIGTERM, 60), "sigint": (signal.SIGINT, 110)}
    whole = subprocess.Popen(command(whole_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = {name: subprocess.Popen(command(tmp_path / name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in cases}
    once = SIGNAL_DURING_SAVE.replace("TIMES", "1")
    during_save = subprocess.Popen(command(tmp_path / "save", ("-c", once)), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    for name, (signum, step) in cases.items():
        signal_after(runs[name], tmp_path / name, step, signum)
    stops = {}
    for name, process in [*runs.items(), ("save", during_save)]:
        out, err = process.communicate(timeout=300)
        signum = cases.get(name, (signal.SIGTERM,))[0]
        assert process.returncode == 128 + signum, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        stops[name] = stopped_step(err, signal.Signals(signum).name)
        workdir = tmp_path / name
        assert (workdir / CHECKPOINTS / str(stops[name])).is_dir()
        assert not list((workdir / CHECKPOINTS).glob("*tmp*"))
        assert max(r["step"] for r in records(workdir)) <= stops[name]
    assert stops["save"] == 100
    assert 60 <= stops["sigterm"] < STEPS and 110 <= stops["sigint"] < STEPS, stops
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    for name in stops:
        workdir = tmp_path / name
        resumed = subprocess.run(command(workdir), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == stops[name]
        assert_bit_identical(saved_state(workdir, STEPS)[0], saved_state(whole_dir, STEPS)[0])
        assert saved_state(workdir, STEPS)[1] == saved_state(whole_dir, STEPS)[1]
        assert without_timing(records(workdir)) == without_timing(records(whole_dir)), name


def test_a_second_signal_exits_at_once_and_the_next_run_cleans_up(tmp_path):
    twice = SIGNAL_DURING_SAVE.replace("TIMES", "2")
    stopped = subprocess.run(command(tmp_path, ("-c", twice)), capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 143, stopped.stderr
    assert "second SIGTERM: exiting at once without a checkpoint" in stopped.stderr
    assert "jaxarch: stopped by" not in stopped.stderr and "Traceback" not in stopped.stderr
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["50"]
    # A save cut short leaves orbax's temporary directory; the next run removes it and resumes from step 50.
    (tmp_path / CHECKPOINTS / "100.orbax-checkpoint-tmp").mkdir()
    (tmp_path / CHECKPOINTS / "100.orbax-checkpoint-tmp" / "state").write_text("partial")
    config = override_config(experiments.get_config(RUN[0]), [*RUN[1:], "train.steps=60"])
    result = train_and_evaluate(config, tmp_path, progress=False, allow_config_change=True)
    assert result["resumed_from"] == 50
    assert not list((tmp_path / CHECKPOINTS).glob("*tmp*"))


def test_the_processes_agree_on_the_step_to_stop_at():
    assert not agreed([False, False]) and agreed([False, True]) and agreed(np.array([1, 0]))
    exchanged = []

    def exchange(flag):  # This process's flag and another process's, which got SIGTERM.
        exchanged.append(flag)
        return np.array([flag, len(exchanged) >= 2])

    stop = StopRequests(num_processes=2, sync_every=5, exchange=exchange)
    assert [stop.should_stop(step) for step in range(1, 12)] == [False] * 9 + [True, False]
    assert exchanged == [False, False]  # At steps 5 and 10 only: between exchanges no process stops.
    assert stop.signum == signal.SIGTERM  # This process stops as the signalled one does.
    assert exit_status(signal.SIGTERM) == 143 and exit_status(signal.SIGINT) == 130


def tiny(*extra):
    return override_config(experiments.get_config("mnist1d-logreg"), [
        "train.steps=40", "train.checkpoint_every=0", "train.log_every=10", "train.eval_every=0", *extra])


def test_handlers_are_installed_for_the_run_only_and_restored(tmp_path, monkeypatch):
    def mine(signum, frame):
        raise AssertionError("the caller's handler ran")

    previous = {signum: signal.signal(signum, mine) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        train_and_evaluate(tiny(), tmp_path / "done", progress=False)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine

        from jaxarch.train import loop

        real = loop.load_batch

        def load_batch(mesh, dataset, seed, step, batch_size):
            if step == 13:
                os.kill(os.getpid(), signal.SIGINT)
            return real(mesh, dataset, seed, step, batch_size)

        monkeypatch.setattr(loop, "load_batch", load_batch)
        # Batches loaded in the loop's thread (no prefetch), so the signal comes while step 13's batch is loaded.
        with pytest.raises(Interrupted, match=r"stopped by SIGINT after step 14; its checkpoint is in") as stopped:
            train_and_evaluate(tiny("train.prefetch=0"), tmp_path / "stopped", progress=False)
        assert stopped.value.exit_status == 130
        assert (tmp_path / "stopped" / CHECKPOINTS / "14").is_dir()
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is mine
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_signal_to_one_process_of_a_distributed_run_stops_all_after_the_same_step(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "jaxarch.cli", "run", "mnist1d-logreg", "train.steps=1000000",
               "train.checkpoint_every=0", "train.eval_every=0", "train.log_every=20", "--workdir", str(tmp_path),
               "--no-progress", "--coordinator-address", f"localhost:{port}", "--num-processes", "2"]
    env = {**os.environ, "MPLBACKEND": "Agg",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false"}
    processes = [subprocess.Popen([*command, "--process-id", str(index)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for index in range(2)]
    signal_after(processes[1], tmp_path, 40, signal.SIGTERM)  # Process 1 only, as a node's own preemption.
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [143, 143], errors
    steps = [stopped_step(err, "SIGTERM") for err in errors]
    assert steps[0] == steps[1] and steps[0] % 10 == 0  # Flags are exchanged every 10 steps.
    assert (tmp_path / CHECKPOINTS / str(steps[0])).is_dir()
