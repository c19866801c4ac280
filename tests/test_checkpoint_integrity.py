"""Checkpoint digests off the training thread: the training thread copies its shards to host memory and orbax's
background commit digests them; a checkpoint becomes visible only with its digests written, a crash before
that leaves the previous checkpoint in use, a digest failure surfaces at the next wait, and a multi-process
record (one file of digests per process) is merged and checked on restore."""

import json
import signal
import subprocess
import sys
import threading
import time
import types

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_resume import flip_a_byte, largest_data_file

from jaxarch.train import checkpoint
from jaxarch.train.checkpoint import CHECKPOINTS, QUARANTINE, CheckpointReadError, Checkpointer


def small_state(offset: float = 0.0) -> dict:
    """A train-state-like tree; every dimension a different size so a swapped axis shows. The kernel's values
    do not compress, so its data file is the checkpoint's largest."""
    return {"params": {"kernel": jnp.sin(jnp.arange(2800.0)).reshape(40, 70) + offset, "bias": jnp.full((70,), offset)},
            "count": jnp.arange(3, dtype=jnp.int32), "step": jnp.int32(int(offset))}


def assert_same(a, b):
    for x, y in zip(*(sorted(jax_leaves(t).items()) for t in (a, b))):
        assert x[0] == y[0]
        np.testing.assert_array_equal(x[1], y[1], err_msg=x[0])


def jax_leaves(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in jax_leaves(sub, f"{prefix}{key}/").items()}
    return {prefix: np.asarray(tree)}


def on_disk(workdir):
    """The checkpoint directory's entries, an unfinished save's as "STEP.orbax-checkpoint-tmp" (orbax releases
    before 0.11.20 or so add a suffix, "-0", to that name)."""
    return sorted(_unsuffixed(p.name) for p in (workdir / CHECKPOINTS).iterdir())


def _unsuffixed(name):
    head, mark, _ = name.partition(checkpoint.TEMPORARY_MARK)
    return head + mark


def unfinished_save(workdir, step):
    """The temporary directory of step `step`'s unfinished save, once orbax has made it, else None."""
    found = sorted((workdir / CHECKPOINTS).glob(f"{step}{checkpoint.TEMPORARY_MARK}*"))
    return found[0] if found else None


def state_manifest(unfinished):
    """The manifest of the state item orbax writes last into an unfinished save, once it is there, else None."""
    found = sorted(unfinished.glob(f"state{checkpoint.TEMPORARY_MARK}*/ocdbt.process_0/manifest.ocdbt"))
    return found[0] if found else None


def saved(workdir, *states, keep=5):
    """Saves `states` at steps 1, 2, ... and returns the closed checkpointer's steps."""
    saver = Checkpointer(workdir, every=1, keep=keep)
    for step, state in enumerate(states, 1):
        saver.save(state, step)
    saver.close()
    return saver.all_steps()


def restored(workdir, template=None):
    reader = Checkpointer(workdir, every=1, keep=5)
    try:
        return reader.restore(small_state() if template is None else template)
    finally:
        reader.close()


def test_the_training_thread_copies_and_the_digests_are_computed_in_the_background(tmp_path, monkeypatch):
    hashing_threads = []
    real_sha256 = checkpoint.hashlib.sha256

    def sha256(*args):
        hashing_threads.append(threading.current_thread())
        return real_sha256(*args)

    # Every hash the checkpoint module computes goes through here, whichever function asks for it.
    monkeypatch.setattr(checkpoint, "hashlib", types.SimpleNamespace(sha256=sha256))
    release = threading.Event()
    real_digest = checkpoint._piece_digest

    def held_digest(array):
        assert threading.current_thread() is not threading.main_thread(), "digesting on the training thread"
        assert release.wait(timeout=300), "the digest was never released"
        return real_digest(array)

    monkeypatch.setattr(checkpoint, "_piece_digest", held_digest)
    saver = Checkpointer(tmp_path, every=1, keep=5)
    try:
        state = small_state(1.0)
        # Returns while the digest is held: the training thread does not wait for it ...
        saver.save(state, 1)
        # ... nor is the checkpoint visible before its digests are written.
        assert on_disk(tmp_path) == [f"1{checkpoint.TEMPORARY_MARK}"]
        release.set()
        saver.wait()
        assert on_disk(tmp_path) == ["1"]
    finally:
        release.set()
        saver.close()
    assert hashing_threads and threading.main_thread() not in hashing_threads
    record = json.loads((tmp_path / CHECKPOINTS / "1" / "integrity" / "metadata").read_text())
    assert record["format"] == checkpoint.DIGEST_FORMAT and record["processes"] == 1
    monkeypatch.undo()
    assert record["shards"] == checkpoint.shard_digests(state)  # the same digests the state has now
    state_back, step = restored(tmp_path)
    assert step == 1
    assert_same(state_back, state)


def test_the_host_copy_is_taken_before_the_save_returns(tmp_path):
    """The train step donates the state's buffers after a save returns; what is digested must not change."""
    state = small_state(2.0)
    pieces = checkpoint.host_shards(state)
    kernel = pieces["['params']['kernel']"]["0:40,0:70"]
    assert kernel.flags.owndata and not np.shares_memory(kernel, np.asarray(state["params"]["kernel"]))
    np.testing.assert_array_equal(kernel, np.asarray(state["params"]["kernel"]))
    assert checkpoint.digest_shards(pieces) == checkpoint.shard_digests(state)


def test_a_flipped_bit_in_a_checkpoint_digested_in_the_background_is_detected(tmp_path, capsys):
    assert saved(tmp_path, small_state(1.0), small_state(2.0)) == [1, 2]
    flip_a_byte(largest_data_file(tmp_path / CHECKPOINTS / "2"))
    state, step = restored(tmp_path)
    assert step == 1
    assert_same(state, small_state(1.0))
    assert "the checkpoint at step 2 is damaged: its contents do not match" in capsys.readouterr().err
    assert (tmp_path / QUARANTINE / "2").is_dir()


def test_a_digest_failure_surfaces_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    saver = Checkpointer(tmp_path, every=1, keep=5)
    saver.save(small_state(1.0), 1)
    saver.wait()

    def failing_digest(array):
        raise RuntimeError("the digest failed")

    monkeypatch.setattr(checkpoint, "_piece_digest", failing_digest)
    saver.save(small_state(2.0), 2)  # the failure is in the background; it surfaces at the next wait
    with pytest.raises(RuntimeError, match="the digest failed"):
        saver.wait()
    saver.save(small_state(3.0), 3)
    with pytest.raises(RuntimeError, match="the digest failed"):
        saver.close()  # close waits for the save in flight and raises its failure too
    monkeypatch.undo()
    assert [name for name in on_disk(tmp_path) if name.isdigit()] == ["1"]
    state, step = restored(tmp_path)  # the unfinished saves' temporary directories are removed
    assert step == 1 and not list((tmp_path / CHECKPOINTS).glob("*tmp*"))
    assert_same(state, small_state(1.0))


class SlowWriter:
    """A commit future that finishes a second after it starts, as a large array's write does."""

    def __init__(self):
        self.finished = threading.Event()
        self.thread = threading.Thread(target=lambda: (time.sleep(1.0), self.finished.set()))
        self.thread.start()

    def result(self, timeout=None):
        self.thread.join(timeout)


def test_a_failed_save_raises_only_once_its_other_writers_have_finished(tmp_path, monkeypatch):
    """Orbax stops waiting at the first failed commit; a writer still running then would recreate the
    temporary directory that the next run, or the same process's next Checkpointer, has just removed."""
    writers = []
    state_save = ocp.StandardCheckpointHandler.async_save

    async def with_a_slow_writer(self, *args, **kwargs):
        writers.append(SlowWriter())
        return [*(await state_save(self, *args, **kwargs) or ()), writers[-1]]

    saver = Checkpointer(tmp_path, every=1, keep=5)
    saver.save(small_state(1.0), 1)
    saver.wait()
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", with_a_slow_writer)
    monkeypatch.setattr(checkpoint, "_piece_digest", lambda array: (_ for _ in ()).throw(RuntimeError("failed")))
    saver.save(small_state(2.0), 2)
    with pytest.raises(RuntimeError, match="failed"):
        saver.close()
    assert len(writers) == 1 and writers[0].finished.is_set()


# A process that saves step 1, then step 2 with a digest that never finishes, and waits to be killed.
CRASH_BEFORE_THE_DIGESTS = """
import pathlib, sys, threading
import jax.numpy as jnp
from jaxarch.train import checkpoint
workdir, marker = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
saver = checkpoint.Checkpointer(workdir, every=1, keep=5)
saver.save({"kernel": jnp.arange(35.0).reshape(5, 7), "step": jnp.int32(1)}, 1)
saver.wait()
def never_finishes(array):
    marker.touch()
    threading.Event().wait()
checkpoint._piece_digest = never_finishes
saver.save({"kernel": jnp.arange(35.0).reshape(5, 7) + 1, "step": jnp.int32(2)}, 2)
threading.Event().wait()
"""


def test_a_crash_after_the_state_is_written_and_before_its_digests_leaves_the_previous_checkpoint(tmp_path):
    workdir, marker = tmp_path / "run", tmp_path / "digesting"
    child = subprocess.Popen([sys.executable, "-c", CRASH_BEFORE_THE_DIGESTS, str(workdir), str(marker)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def written():
        unfinished = unfinished_save(workdir, 2)
        return unfinished is not None and state_manifest(unfinished) is not None

    try:
        deadline = time.monotonic() + 240
        while not (marker.exists() and written()) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists() and written(), child.stderr.read() if child.poll() is not None else ""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The state of step 2 is on disk, its digests are not: it was never renamed into place.
    unfinished = unfinished_save(workdir, 2)
    assert on_disk(workdir) == ["1", f"2{checkpoint.TEMPORARY_MARK}"]
    template = {"kernel": jnp.zeros((5, 7)), "step": jnp.int32(0)}
    state, step = restored(workdir, template)
    assert step == 1 and int(state["step"]) == 1
    assert not unfinished.exists() and not (workdir / QUARANTINE).exists()


def split_record(directory):
    """Rewrites a one-process record as a two-process save writes it: process 1's digests (here the kernel's)
    in `shards.1.json` beside the record."""
    integrity = directory / "integrity"
    record = json.loads((integrity / "metadata").read_text())
    kernel = "['params']['kernel']"
    part = {kernel: record["shards"].pop(kernel)}
    record["processes"] = 2
    (integrity / "metadata").write_text(json.dumps(record))
    (integrity / "shards.1.json").write_text(json.dumps(part))
    return integrity / "shards.1.json", part


def test_the_digests_of_every_process_are_merged_and_checked(tmp_path, capsys):
    assert saved(tmp_path, small_state(1.0), small_state(2.0)) == [1, 2]
    part_file, part = split_record(tmp_path / CHECKPOINTS / "2")
    state, step = restored(tmp_path)
    assert step == 2
    assert_same(state, small_state(2.0))

    # A digest in another process's file that does not match is damage, named by its shard.
    (digest,) = part["['params']['kernel']"].values()
    part_file.write_text(json.dumps({"['params']['kernel']": {"0:40,0:70": digest[::-1]}}))
    state, step = restored(tmp_path)
    assert step == 1
    err = capsys.readouterr().err
    assert "the checkpoint at step 2 is damaged" in err and "['params']['kernel'][0:40,0:70]" in err, err
    assert (tmp_path / QUARANTINE / "2").is_dir()


@pytest.mark.parametrize("part_text", ["[1, 2]", '{"x": 3}'])
def test_a_malformed_file_of_digests_is_damage(part_text, tmp_path, capsys):
    assert saved(tmp_path, small_state(1.0), small_state(2.0)) == [1, 2]
    part_file, _ = split_record(tmp_path / CHECKPOINTS / "2")
    part_file.write_text(part_text)
    assert restored(tmp_path)[1] == 1
    assert "the checkpoint at step 2 is damaged: its record of digests is malformed" in capsys.readouterr().err


def test_a_missing_file_of_digests_is_not_taken_for_damage_nor_trusted(tmp_path):
    """A finalised checkpoint always has all its processes' digests; one missing is a file system's doing, as a
    missing data file is: the checkpoint is left in place and the run stops, as for any read failure."""
    assert saved(tmp_path, small_state(1.0), small_state(2.0)) == [1, 2]
    part_file, _ = split_record(tmp_path / CHECKPOINTS / "2")
    part_file.unlink()
    with pytest.raises(CheckpointReadError, match=r"checkpoint at step 2 .* could not be read .*left in place"):
        restored(tmp_path)
    assert (tmp_path / CHECKPOINTS / "2").is_dir() and not (tmp_path / QUARANTINE).exists()


def test_a_checkpoint_with_one_merged_record_of_digests_still_restores(tmp_path, capsys):
    """Format 2: every process's digests merged into the one record, gathered on the training thread."""
    state = small_state(4.0)
    writer = Checkpointer(tmp_path, every=1, keep=5)
    record = {"format": 2, "step": 4, "shards": checkpoint.shard_digests(state), "notes": {"unlogged_losses": [0.5]}}
    writer.manager.save(4, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), integrity=ocp.args.JsonSave(record)), force=True)
    writer.close()
    reader = Checkpointer(tmp_path, every=1, keep=5)
    state_back, step = reader.restore(small_state())
    reader.close()
    assert step == 4 and reader.restored_notes == {"unlogged_losses": [0.5]}
    assert_same(state_back, state)
    assert "damaged" not in capsys.readouterr().err
