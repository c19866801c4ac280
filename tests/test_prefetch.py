"""The background input pipeline (jaxarch.train.prefetch): batches in order and unchanged, bounded look-ahead,
errors raised at the step that needed them, no thread left behind on any exit, and training with it equal bit
for bit to training without it, interrupted and resumed or not."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from test_resume import assert_bit_identical, records, saved_state, without_timing

from jaxarch import experiments
from jaxarch.train import loop, train_and_evaluate
from jaxarch.train.configure import override_config
from jaxarch.train.prefetch import Prefetcher
from jaxarch.train.signals import Interrupted


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("JAXARCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def prefetch_threads():
    return [thread for thread in threading.enumerate() if thread.name == "jaxarch-prefetch" and thread.is_alive()]


class Recorder:
    """`load(step)` that returns `step * 10` and records the steps it was asked for."""

    def __init__(self, fail_at=None, delay=0.0):
        self.asked, self.fail_at, self.delay = [], fail_at, delay

    def __call__(self, step):
        self.asked.append(step)
        time.sleep(self.delay)
        if step == self.fail_at:
            raise OSError(f"cannot read batch {step}")
        return step * 10


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_come_in_order_with_the_values_load_gives(depth):
    load = Recorder()
    with Prefetcher(load, start=5, stop=12, depth=depth) as batches:
        assert [batches.get(step) for step in range(5, 12)] == [step * 10 for step in range(5, 12)]
    assert load.asked == list(range(5, 12))  # Each batch loaded once, none past `stop`.
    assert not prefetch_threads()


def test_the_producer_stays_at_most_depth_plus_one_batches_ahead():
    load = Recorder()
    with Prefetcher(load, start=0, stop=100, depth=2) as batches:
        batches.get(0)
        time.sleep(0.3)  # Time for the producer to run as far ahead as it may.
        # Batches 1 and 2 wait in the queue, batch 3 is built and blocked on the full queue.
        assert max(load.asked) == 3
    assert not prefetch_threads()


def test_a_load_error_is_raised_by_the_get_of_its_step_and_the_thread_ends():
    load = Recorder(fail_at=3)
    with Prefetcher(load, start=0, stop=10, depth=2) as batches:
        assert [batches.get(step) for step in range(3)] == [0, 10, 20]
        with pytest.raises(OSError, match="cannot read batch 3"):
            batches.get(3)
    assert max(load.asked) == 3 and not prefetch_threads()


def test_close_stops_a_producer_blocked_on_a_full_queue_and_get_after_close_is_an_error():
    batches = Prefetcher(Recorder(), start=0, stop=10 ** 6, depth=1)
    time.sleep(0.1)
    assert batches.running
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 5 and not batches.running and not prefetch_threads()
    batches.close()  # Closing twice is harmless.
    with pytest.raises(ValueError, match=r"^Prefetcher: get\(0\) after close\(\)"):
        batches.get(0)


def test_steps_out_of_order_and_a_bad_depth_are_errors_naming_the_module():
    with Prefetcher(Recorder(), start=0, stop=5, depth=1) as batches:
        with pytest.raises(ValueError, match=r"^Prefetcher: step is 1, expected 0"):
            batches.get(1)
    with pytest.raises(ValueError, match=r"^Prefetcher: depth is -1, expected an integer >= 0"):
        Prefetcher(Recorder(), start=0, stop=5, depth=-1)


def test_the_wait_counts_the_time_get_was_blocked():
    with Prefetcher(Recorder(delay=0.05), start=0, stop=4, depth=1) as batches:
        for step in range(4):
            batches.get(step)
        waited = batches.take_wait_seconds()
    assert 0.15 <= waited < 2.0  # About four loads of 50 ms: nothing to overlap them with here.
    assert batches.take_wait_seconds() == 0.0  # Taken, so reset.


# ---------------------------------------------------------------------------------------------------------
# In the training loop.

def tiny(*extra):
    return override_config(experiments.get_config("mnist1d-cnn"), [
        "train.steps=30", "train.batch_size=16", "train.log_every=5", "train.eval_every=0",
        "train.checkpoint_every=0", "model.features=(4,8)", "model.norm=batch", "optim.warmup_steps=3", *extra])


class Tripwire:
    """A dataset that calls `action()` when asked for training batch `at` (from whichever thread loads it)."""

    def __init__(self, dataset, at, action):
        self._dataset, self._at, self._action = dataset, at, action

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def train_batch(self, seed, step, batch_size, rows=None):
        if step == self._at:
            self._action()
        return self._dataset.train_batch(seed, step, batch_size, rows)


def trip_at(monkeypatch, at, action):
    """Makes the loop's datasets `Tripwire`s; returns the real `load_dataset`."""
    real = loop.load_dataset
    monkeypatch.setattr(loop, "load_dataset", lambda *a, **k: Tripwire(real(*a, **k), at, action))
    return real


def test_a_run_with_prefetch_equals_one_without_bit_for_bit_and_records_its_data_wait(tmp_path):
    with_prefetch = train_and_evaluate(tiny("train.prefetch=3"), tmp_path / "prefetch", progress=False)
    assert not prefetch_threads()  # Ended with the training.
    without = train_and_evaluate(tiny("train.prefetch=0"), tmp_path / "inline", progress=False)
    state = saved_state(tmp_path / "prefetch", 30)[0]
    assert "batch_stats" in state["model_state"]
    assert_bit_identical(state, saved_state(tmp_path / "inline", 30)[0])
    assert without_timing(records(tmp_path / "prefetch")) == without_timing(records(tmp_path / "inline"))
    assert with_prefetch["test_accuracy"] == without["test_accuracy"]
    waits = [r["train/data_wait_fraction"] for r in records(tmp_path / "prefetch") if "train/loss" in r]
    assert len(waits) == 6 and all(0.0 <= wait <= 1.0 for wait in waits), waits


def test_a_signal_stops_the_thread_and_the_resumed_run_is_exact(tmp_path, monkeypatch):
    train_and_evaluate(tiny(), tmp_path / "whole", progress=False)
    # SIGTERM while batch 12 is being loaded, ahead of its step: the run stops a step or two later.
    real = trip_at(monkeypatch, 12, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Interrupted) as stopped:
        train_and_evaluate(tiny(), tmp_path / "cut", progress=False)
    assert 8 <= stopped.value.step <= 13 and not prefetch_threads()
    monkeypatch.setattr(loop, "load_dataset", real)
    resumed = train_and_evaluate(tiny(), tmp_path / "cut", progress=False)
    assert resumed["resumed_from"] == stopped.value.step
    assert_bit_identical(saved_state(tmp_path / "cut", 30)[0], saved_state(tmp_path / "whole", 30)[0])
    assert without_timing(records(tmp_path / "cut")) == without_timing(records(tmp_path / "whole"))


def test_a_loader_error_reaches_the_caller_and_leaves_no_thread(tmp_path, monkeypatch):
    def fail():
        raise OSError("the data disk went away")

    trip_at(monkeypatch, 7, fail)
    with pytest.raises(OSError, match="the data disk went away"):
        train_and_evaluate(tiny(), tmp_path, progress=False)
    assert not prefetch_threads()
    assert np.isfinite([r["train/loss"] for r in records(tmp_path) if "train/loss" in r]).all()
