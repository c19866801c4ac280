"""PyTorch peers in a child process, timed side by side with the JAX steps of the parent.

In one process PyTorch's spinning OpenMP threads and XLA's thread pool starve each other (torch measured 20-30x
slower on a 2-core CPU), so the torch models live in a worker process. It runs with PyTorch's own OpenMP settings
(the environment's `OMP_WAIT_POLICY`, if any, passes through): that is how users run it, and for the LSTM by far
its fastest here. Measured on a quiet 2-core AMD EPYC, torch alone, reference shapes, steps/s with the default
policy against `OMP_WAIT_POLICY=PASSIVE`: LSTM 20.8 against 11.5 (the passive wake-ups between the many small
parallel regions of a recurrent step cost 45%), CNN 51.6 against 53.1, attention block 7.5 against 7.1; with one
core busy with another job, CNN 28.9 against 31.2 and LSTM 9.9 against 10.7. (This suite forced `PASSIVE` before
2026-12-02, which understated the LSTM peer about twofold.) The parent's interleaved timer asks it for a few timed
steps at a time (`TorchWorker.run`), so the torch steps take their turns in the same rounds as the JAX steps and
load from other jobs hits both alike; neither process computes while the other is timed (by default torch's OpenMP
threads spin only briefly after a step before they sleep; with `OMP_WAIT_POLICY=ACTIVE`, which spins on, the JAX
steps timed in the same rounds ran 11-15% slower, the CNN 33.6 against 39.3 steps/s beside a passive peer).

By default the worker leaves glibc's allocator as it is, so torch allocates as it does for its users;
`TorchWorker(host_allocator=True)` starts it with `--host-allocator`, and it makes jaxarch's glibc settings
(`jaxarch/host_allocator.py`, those of `jaxarch.tune_cpu`) before torch starts its threads. They matter most for
PyTorch's LSTM (oneDNN's RNN kernel takes a fresh mapping for its workspace every step) and CNN. On a 2-core AMD
EPYC (family 26, model 2), reference shapes, glibc's defaults against jaxarch's settings, a process for each: LSTM
111 against 53 ms a step (about 40,800 minor page faults and 88 ms of system time a step against none), CNN 37.1
against 16.8 ms (7,500 faults against none), attention block 156 against 137 ms, GRU 122 against 112, GPT 593
against 580, ViT 460 against 468.

Protocol: one JSON object a line on the worker's stdin, one JSON reply a line on its stdout (the worker's own
prints go to stderr). Requests: `{"command": "info"}`; `{"command": "build", "name", "family", "shape",
"compiled"}` builds a model and times its first step (`torch.compile` compiles there); `{"command": "run", "name",
"count"}` times `count` steps; `{"command": "drop", "name"}` frees a model. A failing request replies `{"error"}`.

Command (the parent starts it): python -m jaxarch.benchmarks.torch_worker --device cpu [--host-allocator]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback

from jaxarch.host_allocator import without_huge_pages


class TorchWorkerError(RuntimeError):
    """A request the worker could not carry out (e.g. `torch.compile` failing on this machine)."""


class TorchWorker:
    """The parent's handle on the worker process; use as a context manager."""

    def __init__(self, device: str = "cpu", host_allocator: bool = False):
        """`host_allocator`: whether the worker makes jaxarch's glibc settings (default: glibc's own)."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"benchmarks.torch_worker: device is {device!r}, expected 'cpu' or 'cuda'")
        self._stderr = tempfile.TemporaryFile(mode="w+")
        # glibc's heap huge pages come with the rest of jaxarch's settings (from the `jaxarch` command's
        # environment); without them the worker runs on glibc's defaults, as PyTorch's users have them.
        self._process = subprocess.Popen(
            [sys.executable, "-m", "jaxarch.benchmarks.torch_worker", "--device", device]
            + (["--host-allocator"] if host_allocator else []),
            env=None if host_allocator else without_huge_pages(os.environ),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1)

    def __enter__(self) -> TorchWorker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.wait(timeout=60)
        self._stderr.close()

    def request(self, **message) -> dict:
        self._process.stdin.write(json.dumps(message) + "\n")
        line = self._process.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:]
            raise TorchWorkerError(f"benchmarks.torch_worker: the worker exited; its stderr ends:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise TorchWorkerError(reply["error"])
        return reply

    def info(self) -> dict:
        """`{"torch": version, "threads": intra-op threads, "device": ..., "omp_wait_policy": ...,
        "host_allocator": whether it made jaxarch's glibc settings and glibc took them, "huge_pages": whether its heap
        asks for huge pages (`jaxarch.host_allocator.huge_pages_in_use`)}`."""
        return self.request(command="info")

    def build(self, name: str, family: str, shape: dict, compiled: bool) -> float:
        """Builds `name` and returns the seconds of its first step (compilation included)."""
        return self.request(command="build", name=name, family=family, shape=shape, compiled=compiled)["seconds"]

    def runner(self, name: str):
        """`name` as a run for `benchmarks.timing.time_runs_interleaved`."""

        def run(count: int) -> list[float]:
            return self.request(command="run", name=name, count=count)["seconds"]

        return run

    def drop(self, name: str) -> None:
        self.request(command="drop", name=name)


def serve(device: str, host_allocator: bool = False) -> None:
    """The worker's loop: answers requests until stdin closes. With `host_allocator`, it first makes jaxarch's
    glibc settings (the arena setting reaches only threads that have not allocated yet: before torch starts any)."""
    from jaxarch.host_allocator import configure_host_allocator, huge_pages_in_use

    host_allocator_configured = configure_host_allocator() if host_allocator else False
    import torch

    from jaxarch.benchmarks.timing import timed_calls
    from jaxarch.benchmarks.torch_models import train_step

    replies, sys.stdout = sys.stdout, sys.stderr  # only replies on the protocol stream
    runs = {}
    for line in sys.stdin:
        message = json.loads(line)
        try:
            command = message["command"]
            if command == "info":
                reply = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device,
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                         "host_allocator": host_allocator_configured,
                         "huge_pages": huge_pages_in_use(os.environ)}
            elif command == "build":
                runs[message["name"]] = timed_calls(train_step(message["family"], message["shape"], device,
                                                               message["compiled"]))
                reply = {"seconds": runs[message["name"]](1)[0]}
            elif command == "run":
                reply = {"seconds": runs[message["name"]](message["count"])}
            elif command == "drop":
                runs.pop(message["name"], None)
                reply = {}
            else:
                reply = {"error": f"benchmarks.torch_worker: command is {command!r}, expected info, build, run "
                                  "or drop"}
        except Exception as error:  # reported to the parent, which records it and carries on
            runs.pop(message.get("name"), None)
            traceback.print_exc()
            reply = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--host-allocator", action="store_true", help="make jaxarch's glibc settings first")
    args = parser.parse_args(argv)
    serve(args.device, args.host_allocator)


if __name__ == "__main__":
    main()
