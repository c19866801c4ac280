"""One run per work directory: a second run, a second --restart, and the processes of a multi-process run are all
refused while a live run holds the directory; a killed holder leaves no stale lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxarch.train.lock import LOCK_FILE, WorkdirBusyError, WorkdirLock

HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def jaxarch_run(workdir, *args):
    return [sys.executable, "-m", "jaxarch.cli", "run", *args, "--workdir", str(workdir), "--no-progress"]


def wait_for_holder(workdir, pid, process, timeout=120):
    deadline = time.monotonic() + timeout
    lock = workdir / LOCK_FILE
    while time.monotonic() < deadline and process.poll() is None:
        if lock.exists() and f"pid={pid}" in lock.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took the lock (exit status {process.poll()})")


def test_a_second_holder_is_refused_at_once_naming_the_first(tmp_path):
    first = WorkdirLock(tmp_path)
    first.acquire()
    with pytest.raises(WorkdirBusyError, match=rf"workdir: '{tmp_path}' is in use by another run "
                                               rf"\(host={HOST} pid={os.getpid()}\)"):
        WorkdirLock(tmp_path).acquire()
    first.release()
    with WorkdirLock(tmp_path):  # Released: the next run takes it.
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxarch.train.lock import WorkdirLock; "
                               "WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(300)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError, match=f"pid={holder.pid}"):
        WorkdirLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with WorkdirLock(tmp_path):
        pass


def test_a_second_run_and_a_restart_are_refused_while_a_run_lives_and_sigterm_stops_it(tmp_path):
    """Two real `jaxarch run`s on one directory: the second stops at once with exit 2 naming the first's host
    and PID, `--restart` deletes nothing, and no record is written twice; SIGTERM then stops the first with 143
    after writing a checkpoint."""
    workdir = tmp_path / "run"
    args = ["mnist1d-logreg", "train.steps=1000000", "train.checkpoint_every=0", "train.eval_every=0",
            "train.log_every=50"]
    first = subprocess.Popen(jaxarch_run(workdir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_holder(workdir, first.pid, first)
        for extra in ([], ["--restart"], ["train.steps=10"]):
            started = time.monotonic()
            second = subprocess.run(jaxarch_run(workdir, *args, *extra), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert (f"jaxarch: error: workdir: '{workdir}' is in use by another run (host={HOST} pid={first.pid})"
                    in second.stderr), second.stderr
            assert "Traceback" not in second.stderr
            assert time.monotonic() - started < 60  # Refused at once, not after waiting for the first.
        assert (workdir / "config.json").exists()  # --restart deleted nothing.
        deadline = time.monotonic() + 120
        while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 143, err
    stopped = [line for line in err.splitlines() if line.startswith("jaxarch: stopped by SIGTERM after step")]
    assert len(stopped) == 1, err
    step = int(stopped[0].split("after step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(step)).is_dir()
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] <= step
    assert not list((workdir / "checkpoints").glob("*tmp*"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_the_processes_of_a_distributed_run_share_one_lock_through_process_0(tmp_path):
    """Process 0 takes the lock for the run; when it is held elsewhere every process stops with exit 2."""
    command = jaxarch_run(tmp_path, "mnist1d-logreg", "train.steps=4", "train.eval_every=0", "--coordinator-address",
                          f"localhost:{_free_port()}", "--num-processes", "2")
    env = {**os.environ, "MPLBACKEND": "Agg", "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                                           "--xla_cpu_multi_thread_eigen=false"}
    with WorkdirLock(tmp_path):
        processes = [subprocess.Popen([*command, "--process-id", str(index)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for index in range(2)]
        outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [2, 2], outputs
    assert f"is in use by another run (host={HOST} pid={os.getpid()})" in outputs[0][1]
    assert "is in use by another run (process 0 could not lock it)" in outputs[1][1]
    assert not (tmp_path / "metrics.jsonl").exists()

    # Free, the two processes run together under process 0's lock.
    command[command.index("--coordinator-address") + 1] = f"localhost:{_free_port()}"
    processes = [subprocess.Popen([*command, "--process-id", str(index)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for index in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
