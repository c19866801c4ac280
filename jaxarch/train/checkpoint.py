"""Orbax checkpoints of the train state in `<workdir>/checkpoints`.

Each checkpoint holds two items: `state` (the whole `TrainState`: parameters, optimizer state, model state,
step and RNG key; the data position is the step, since batches are a function of `(seed, step)`) and
`integrity` (SHA-256 digests of the state's shards, and the losses of the steps not yet logged). Orbax writes a
checkpoint into a temporary directory and renames it only once complete, and deletes old checkpoints only
after a new one is finalised, so a crash at any moment leaves every earlier checkpoint intact; temporary
directories left by a crash or a failed write are removed when the next run starts. Retention keeps the last
`keep` checkpoints and the best one by a validation metric.

Each process digests only the shards it holds (`shard_digests`: one digest per distinct shard, keyed by the
leaf and the shard's index), so a save never gathers an array onto one host. The training thread only copies
those shards to host memory (`host_shards`; the next train step donates their device buffers); the digesting
runs in orbax's background commit of the `integrity` item (`_IntegrityHandler`). Process 0 writes the record
and every other process writes its own digests beside it; orbax renames a checkpoint into place only after
every item's commit has finished on every process, so no checkpoint is ever visible without its digests, and
a crash before they are written leaves a temporary directory like any other unfinished save. A restore merges
the processes' digests and checks every saved shard that the restored layout lets this process see whole,
which on the same mesh is all of its own.

A checkpoint whose contents do not match its digests (a flipped bit restores silently otherwise), or whose
files cannot be decoded (truncated or garbled data or metadata), is reported, moved to
`<workdir>/corrupt_checkpoints`, and the previous one is tried. Any other failure to read it (out of memory, a
file system error, a missing permission, a missing file) may pass, so it is not taken for damage: the
checkpoint stays where it is and `CheckpointReadError` stops the run.

`load_trained_params` warm-starts a run from another run's checkpoints, reading them without changing that
directory.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxarch.train.state import TrainState

CHECKPOINTS = "checkpoints"
QUARANTINE = "corrupt_checkpoints"
TEMPORARY_MARK = ".orbax-checkpoint-tmp"  # in the names of orbax's unfinished checkpoint directories
DIGEST_FORMAT = 3  # 3: process p > 0 writes its digests to `integrity/shards.<p>.json`; 2: one merged record
# TensorStore's status codes for bytes that cannot be decoded (a truncated or garbled file); other codes
# (UNAVAILABLE, RESOURCE_EXHAUSTED, PERMISSION_DENIED, NOT_FOUND, ...) describe the reader's situation.
_DAMAGE_CODES = ("DATA_LOSS:", "OUT_OF_RANGE:")
_DAMAGE_TYPES = (json.JSONDecodeError, UnicodeDecodeError)


class _RestatedWriteErrors(logging.Filter):
    """Drops orbax's error records (with tracebacks, one per writer thread) of file system errors, which
    `Checkpointer` restates as one `CheckpointWriteError`; installed on orbax's logger while a Checkpointer is
    open only."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.levelno >= logging.ERROR and error is not None and _os_error(error) is not None)


class CheckpointReadError(RuntimeError):
    """A checkpoint could not be read for a reason other than damage to its files; it was left in place."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (a full disk, a read-only file system); earlier ones are intact."""


def _as_array(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def _index_key(index: tuple, shape: tuple[int, ...]) -> str:
    """A shard's index (slices into the global array) as text: 'start:stop' per dimension, ',' between."""
    bounds = [slice_.indices(size)[:2] for slice_, size in zip(index, shape)]
    return ",".join(f"{start}:{stop}" for start, stop in bounds)


def _parse_index(key: str) -> tuple[slice, ...]:
    return tuple(slice(*map(int, part.split(":"))) for part in key.split(",")) if key else ()


def _piece_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype}:{array.shape};".encode())
    # The bytes in memory order, hashed in place (no `tobytes` copy); hashlib releases the GIL while hashing.
    digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _own_copy(data) -> np.ndarray:
    """`data` in host memory that nothing else writes: the next train step donates the state's buffers (frees
    or reuses them), so a view of one, which `np.asarray` gives on CPU, is copied; an array numpy owns (a
    transfer from an accelerator) is nobody else's to write and is used as it is."""
    array = np.asarray(data)
    return array if array.flags.owndata else array.copy()


def host_shards(state) -> dict[str, dict[str, np.ndarray]]:
    """`leaf path -> {shard index -> host copy}` of the shards of `state` this process holds a primary copy of
    (replica 0 of each distinct index): what a save digests, taken while the state's buffers are still alive.
    Each shard is copied alone: no array is gathered or assembled."""
    pieces = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        leaf = _as_array(leaf)
        entries = {}
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                if shard.replica_id == 0:
                    entries[_index_key(shard.index, leaf.shape)] = _own_copy(shard.data)
        else:
            array = np.array(leaf)  # a copy: the caller may change a host array in place after the save
            entries[_index_key((slice(None),) * array.ndim, array.shape)] = array
        pieces[jax.tree_util.keystr(path)] = entries
    return pieces


def digest_shards(pieces: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, str]]:
    """`host_shards`' pieces, each replaced by its SHA-256."""
    return {path: {key: _piece_digest(piece) for key, piece in entries.items()} for path, entries in pieces.items()}


def shard_digests(state) -> dict[str, dict[str, str]]:
    """`leaf path -> {shard index -> SHA-256}` over the shards of `state` this process holds a primary copy of."""
    return digest_shards(host_shards(state))


def _merge_digests(merged: dict, part) -> bool:
    """Adds one process's digests to `merged`; False if `part` is not `path -> {index -> digest}`."""
    if not isinstance(part, dict) or not all(isinstance(entries, dict) for entries in part.values()):
        return False
    for path, entries in part.items():
        merged.setdefault(path, {}).update(entries)
    return True


def verify_shards(state, saved: dict[str, dict[str, str]]) -> tuple[list[str], int]:
    """Checks `state` against saved shard digests: returns the mismatching `path[index]`s and how many saved
    shards this process could not see whole in the restored layout (checked by another process, or by none
    when the layout changed so that no process holds that region in one piece)."""
    flat = {jax.tree_util.keystr(path): _as_array(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    if flat.keys() != saved.keys():
        return [f"leaves {sorted(flat.keys() ^ saved.keys())[:3]}"], 0
    mismatches, unchecked = [], 0
    for path, entries in saved.items():
        leaf = flat[path]
        whole = np.asarray(leaf) if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable else None
        shards = [] if whole is not None else [(_parse_index(_index_key(s.index, leaf.shape)), s)
                                               for s in leaf.addressable_shards]
        for key, expected in entries.items():
            region = _parse_index(key)
            if whole is not None:
                piece = whole[region]
            else:
                holder = next(((bounds, shard) for bounds, shard in shards
                               if all(b.start <= r.start and r.stop <= b.stop for b, r in zip(bounds, region))), None)
                if holder is None:
                    unchecked += 1
                    continue
                bounds, shard = holder
                piece = np.asarray(shard.data)[tuple(slice(r.start - b.start, r.stop - b.start)
                                                     for b, r in zip(bounds, region))]
            if _piece_digest(piece) != expected:
                mismatches.append(f"{path}[{key}]")
    return mismatches, unchecked


def legacy_state_digest(state) -> str:
    """The digest of checkpoints written before per-shard digests: SHA-256 over every leaf's path, dtype,
    shape and bytes, in tree order (gathering split arrays, as those checkpoints did)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        leaf = _as_array(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            # Split across processes: every process gathers the whole array, in the same order, so all agree.
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _leaf_signatures(tree) -> dict[str, tuple]:
    """`path -> (shape, dtype)` for every array leaf; paths written the same for saved and live trees."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): (tuple(leaf.shape), np.dtype(leaf.dtype))
            for path, leaf in flat}


def _part_name(process: int) -> str:
    return f"shards.{process}.json"


@dataclasses.dataclass
class _UnsealedRecord:
    """A save's integrity record before its digests: `pieces` are this process's `host_shards`."""

    step: int
    notes: dict
    pieces: dict[str, dict[str, np.ndarray]]


class _RecordsCommits:
    """Appends the commit futures of each save to `commits` (a list the `Checkpointer` shares): when one item's
    commit fails, orbax raises at once while the other items' writers run on, and they must finish before the
    failed save's temporary directory can be removed (a writer still running recreates it)."""

    commits: list

    async def async_save(self, *args, **kwargs):
        futures = await super().async_save(*args, **kwargs)
        self.commits.extend(futures or ())
        return futures


class _StateHandler(_RecordsCommits, ocp.StandardCheckpointHandler):
    """The `state` item: orbax's standard handler, its commits recorded."""


class _IntegrityHandler(_RecordsCommits, ocp.JsonCheckpointHandler):
    """The `integrity` item: a JSON record (`metadata`) written by process 0, and in a multi-process save one
    file of digests per other process beside it (`shards.<p>.json`).

    A save hands it an `_UnsealedRecord`, digested in `_save_fn`, which orbax runs in this item's own commit
    thread after the training thread has returned; the commit's failure is raised by the manager's next wait,
    as a failed write is. Orbax renames the checkpoint into place only after every item's commit on every
    process has finished (in a multi-process save, after a barrier), so all the digest files are there before
    the checkpoint is. The processes share the checkpoint directory and exchange nothing: a collective off
    the training thread could interleave with the train step's own collectives in another order on each
    process."""

    async def _save_fn(self, record, directory):
        if isinstance(record, _UnsealedRecord):
            digests = digest_shards(record.pieces)
            record.pieces = {}  # frees the host copies once digested
            if jax.process_index() != 0:
                (directory / _part_name(jax.process_index())).write_text(json.dumps(digests))
                return
            record = {"format": DIGEST_FORMAT, "step": record.step, "processes": jax.process_count(),
                      "shards": digests, "notes": record.notes}
        await super()._save_fn(record, directory)

    def restore(self, directory, item=None, args=None):
        """The record with every process's digests merged into `shards` (None when a file of digests is
        malformed, which `Checkpointer._mismatch` reports); a missing file raises FileNotFoundError."""
        record = super().restore(directory, item, args)
        if isinstance(record, dict) and isinstance(record.get("shards"), dict):
            processes = record.get("processes", 1)
            for process in range(1, processes if isinstance(processes, int) else 1):
                part = json.loads((directory / _part_name(process)).read_text())
                if not _merge_digests(record["shards"], part):
                    record["shards"] = None
                    break
        return record


class CheckpointMismatchError(ValueError):
    """The work directory's checkpoints hold a differently shaped train state (another model or optimizer)."""


class Checkpointer:
    """Saves every `every` steps and at each evaluation; keeps the last `keep` and the best by `best_metric`.

    `best_metric` is a key of the evaluation results (e.g. "test/accuracy"); `higher_is_better` its direction.
    """

    def __init__(self, workdir: Path, *, every: int, keep: int, best_metric: str | None = None,
                 higher_is_better: bool = True, read_only: bool = False,
                 mismatch_hint: str = ("choose another --workdir, or pass --restart, which deletes this run's "
                                       "checkpoints and records, to start over")):
        self.every = every
        self.read_only = read_only  # another run's directory: nothing there is created, cleaned or moved
        self.mismatch_hint = mismatch_hint
        self.workdir = Path(workdir).absolute()
        worst = -math.inf if higher_is_better else math.inf
        # Checkpoints between evaluations carry no metric and rank below every evaluated one (orbax warns on
        # each save without metrics when tracking a best, so they are saved with an empty dict instead).
        self._metric = lambda metrics: metrics.get(best_metric, worst)
        retained = [policies.LatestN(keep)]
        if best_metric is not None:
            retained.append(policies.BestN(get_metric_fn=self._metric, reverse=not higher_is_better, n=1))
        options = ocp.CheckpointManagerOptions(
            # A save cut short leaves a temporary directory only, cleaned up here (unless read-only).
            create=not read_only, cleanup_tmp_directories=not read_only, read_only=read_only,
            best_fn=self._metric if best_metric is not None else None,
            best_mode="max" if higher_is_better else "min",
            preservation_policy=policies.AnyPreservationPolicy(retained))
        self.restored_notes: dict = {}
        self._in_flight: int | None = None
        self._write_failed = False  # then `close` removes what the failed save's other writer threads left
        self._log_filter = _RestatedWriteErrors()
        logging.getLogger("absl").addFilter(self._log_filter)
        self.remove_temporary()
        handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler, integrity_handler = _StateHandler(), _IntegrityHandler()
        self._commits: list = []  # the commit futures of the save in flight
        state_handler.commits = integrity_handler.commits = self._commits
        handlers.add("state", ocp.args.StandardSave, state_handler)
        handlers.add("state", ocp.args.StandardRestore, state_handler)
        # The JSON item's arguments, served by the subclass (orbax's global registry maps them to the base).
        handlers.add("integrity", ocp.args.JsonSave, integrity_handler)
        handlers.add("integrity", ocp.args.JsonRestore, integrity_handler)
        self.manager = ocp.CheckpointManager(self.workdir / CHECKPOINTS, options=options, handler_registry=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, template: TrainState) -> tuple[TrainState, int] | None:
        """The newest checkpoint that reads back intact, restored into the structure of `template`, and its
        step; None if there is none. Damaged checkpoints on the way are reported and quarantined; any other
        failure to read one raises `CheckpointReadError` and leaves it in place. The notes saved with the
        restored checkpoint are in `restored_notes`."""
        for step in reversed(self.all_steps()):
            state, problem = self._restore_verified(step, template)
            if problem is None:
                return state, step
            self._quarantine(step, problem)
        return None

    def _restore_verified(self, step: int, template: TrainState):
        """(the checkpoint at `step` checked against its digests, None) or (None, why it is damaged); a failure
        to read it for any other reason raises `CheckpointReadError`. Moves nothing."""
        problem = self._incompatible_or_unreadable(step, template)
        if problem is not None:
            return None, problem
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), integrity=ocp.args.JsonRestore()))
        except Exception as err:  # noqa: BLE001 - sorted into damage and everything else
            if not _is_damage(err):
                raise self._read_error(step, err) from err
            return None, f"it cannot be decoded ({_cause_line(err)})"
        problem = self._mismatch(restored.state, restored.integrity)
        if problem is not None:
            return None, problem
        self.restored_notes = dict(restored.integrity.get("notes") or {})
        return restored.state, None

    def restore_step(self, template: TrainState, step: int) -> TrainState:
        """The checkpoint at `step` (one of `all_steps()`), restored into the structure of `template` and checked
        against its digests. Nothing is moved or written: a damaged checkpoint raises `ValueError` and any other
        failure to read it `CheckpointReadError`; a checkpoint of another train state raises
        `CheckpointMismatchError`. The notes saved with it are in `restored_notes`."""
        state, problem = self._restore_verified(step, template)
        if problem is None:
            return state
        raise ValueError(f"checkpoint: the checkpoint at step {step} in {self.workdir / CHECKPOINTS} is damaged: "
                         f"{problem}, expected an intact checkpoint; choose another step")

    def _mismatch(self, state, integrity) -> str | None:
        """Why `state` does not match the digests saved with it, or None; every process reaches the same
        answer (a mismatch on any process is a mismatch)."""
        if not isinstance(integrity, dict):
            problem = "its integrity record is not a JSON object"
        elif "shards" in integrity and not _merge_digests({}, integrity["shards"]):
            problem = "its record of digests is malformed"
        elif "shards" in integrity:
            mismatches, _ = verify_shards(state, integrity["shards"])
            problem = (f"its contents do not match the digests written with it ({', '.join(mismatches[:3])})"
                       if mismatches else None)
        elif "sha256" in integrity:  # written before per-shard digests
            problem = (None if legacy_state_digest(state) == integrity["sha256"]
                       else "its contents do not match the digest written with it")
        else:
            problem = "its integrity record holds no digest"
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.int32(problem is not None))
            if problem is None and np.any(flags):
                problem = "its contents do not match the digests written with it (seen by another process)"
        return problem

    def _read_error(self, step: int, err: Exception) -> CheckpointReadError:
        return CheckpointReadError(
            f"checkpoint: the checkpoint at step {step} in {self.workdir / CHECKPOINTS} could not be read "
            f"({type(err).__name__}: {_cause_line(err)}); this is not damage to its files, so it is left in place. "
            "Rerun once the cause has passed; if it persists, move that checkpoint's directory aside")

    def _incompatible_or_unreadable(self, step: int, template: TrainState) -> str | None:
        """Raises CheckpointMismatchError if the checkpoint's metadata describes another train state; returns
        a description of the damage if the metadata cannot be read, else None."""
        try:
            metadata = self.manager.item_metadata(step)["state"]
            saved = _leaf_signatures(metadata.tree if hasattr(metadata, "tree") else metadata)
        except Exception as err:  # noqa: BLE001 - sorted into damage and everything else
            if not _is_damage(err) and not isinstance(err, (AttributeError, KeyError, TypeError)):
                raise self._read_error(step, err) from err
            # Metadata that decodes to the wrong shape (no tree, no item) is damaged as surely as garbled bytes.
            return f"its metadata cannot be decoded ({type(err).__name__}: {_cause_line(err)})"
        live = _leaf_signatures(template)
        if saved != live:
            differences = sorted(set(saved.items()) ^ set(live.items()))[:3]
            shown = "; ".join(f"{path}: {'saved' if (path, sig) in saved.items() else 'now'} {sig}"
                              for path, sig in differences)
            raise CheckpointMismatchError(
                f"checkpoint: the checkpoint at step {step} in {self.workdir / CHECKPOINTS} holds a different "
                f"train state ({shown}), expected one written by the same model and optimizer settings; "
                f"{self.mismatch_hint}")
        return None

    def _quarantine(self, step: int, problem: str) -> None:
        if self.read_only:
            print(f"[jaxarch] the checkpoint at step {step} in {self.workdir / CHECKPOINTS} is damaged: {problem}; "
                  "trying the previous one", file=sys.stderr)
            return
        source = self.workdir / CHECKPOINTS / str(step)
        target = self.workdir / QUARANTINE / str(step)
        suffix = 1
        while target.exists():
            target = self.workdir / QUARANTINE / f"{step}.{suffix}"
            suffix += 1
        if jax.process_index() == 0:  # The directory is shared: one process moves it, the others wait.
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jaxarch quarantine {step}")
        self.manager.reload()
        print(f"[jaxarch] the checkpoint at step {step} is damaged: {problem}; moved it to {target} and trying "
              "the previous one", file=sys.stderr)

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, state: TrainState, step: int, metrics: dict[str, float] | None = None, *,
             notes: dict | None = None) -> bool:
        """Starts an asynchronous save of `state` at `step` (unless that step is saved already), with `notes`
        (JSON) beside it. The training thread copies this process's shards to host memory and hands them on;
        they are digested in the background, and `wait` or the next save waits for that as for the write. A
        failure to write, now or of the previous save still in flight, raises `CheckpointWriteError` when it is
        a file system error."""
        if step in self.manager.all_steps():
            return False
        # Orbax waits for the previous save before starting one; waiting here first ties a failure to its step.
        self.wait()
        record = _UnsealedRecord(step=step, notes=notes or {}, pieces=host_shards(state))
        self._in_flight = step
        try:
            return self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), integrity=ocp.args.JsonSave(record)),
                metrics=dict(metrics or {}), force=True)
        except Exception as err:  # noqa: BLE001 - file system errors are restated, the rest re-raised
            raise self._write_error(err) from None

    def wait(self) -> None:
        """Waits for a save in flight, its digests included; its failure is raised as in `save`."""
        try:
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - file system errors are restated, the rest re-raised
            raise self._write_error(err) from None
        finally:
            self._in_flight = None
            self._commits.clear()

    def _settle(self) -> None:
        """Waits for every writer of a failed save: orbax stops waiting at the first failed commit."""
        for commit in self._commits:
            try:
                commit.result()
            except Exception:  # noqa: BLE001, S110 - the first failure is the one raised; these are its echoes
                pass

    def _write_error(self, err: Exception) -> Exception:
        """What to raise for a failed save, once every writer of it has finished."""
        self._settle()
        cause = _os_error(err)
        if cause is None:
            return err
        step, self._in_flight = self._in_flight, None
        self._write_failed = True
        self.remove_temporary()
        directory = self.workdir / CHECKPOINTS
        complete = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
        kept = (f"the checkpoint at step {complete[-1]} is the newest complete one" if complete
                else "no complete checkpoint has been written")
        at = f" at step {step}" if step is not None else ""
        return CheckpointWriteError(
            f"checkpoint: writing a checkpoint{at} in {self.workdir / CHECKPOINTS} failed "
            f"({cause.strerror or type(cause).__name__}), expected a writable file system with free space; "
            f"{kept}, and the same command resumes from it once space is freed")

    def remove_temporary(self) -> None:
        """Removes the temporary directories of unfinished saves (a crash, a kill, a failed write). Only the
        lock's holder calls this, so no live save owns them."""
        if self.read_only or jax.process_index() != 0:
            return
        directory = self.workdir / CHECKPOINTS
        for leftover in directory.glob(f"*{TEMPORARY_MARK}*") if directory.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)

    def close(self) -> None:
        """Waits for a save in flight and releases orbax's threads, also when the save failed."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception as err:  # noqa: BLE001 - a failed save may surface again here; reported once
                if _os_error(err) is None:
                    raise
            finally:
                logging.getLogger("absl").removeFilter(self._log_filter)
                if self._write_failed:
                    self.remove_temporary()


SEED_PLACEHOLDER = "{seed}"


def init_from_dir(init_from: str, seed: int) -> Path:
    """`train.init_from` for the run of `seed`: each `{seed}` in it replaced by the seed, so that one sweep of a
    curriculum's second stage starts every seed from the same seed's first stage
    (`train.init_from=runs/stage1/seed={seed}`). A plain replacement, not `str.format`, so other braces in a path
    stay as they are."""
    return Path(init_from.replace(SEED_PLACEHOLDER, str(seed))).expanduser()


def check_warm_start_source(workdir: Path) -> None:
    """Raises `ValueError` unless `workdir` (a `train.init_from`) holds a checkpoints/ directory."""
    if not (workdir / CHECKPOINTS).is_dir():
        raise ValueError(f"train.init_from: {str(workdir)!r} has no {CHECKPOINTS}/ directory, expected the work "
                         "directory of an earlier run")


def load_trained_params(workdir: str | Path, template: TrainState) -> tuple[TrainState, int]:
    """`template` with the parameters and model state of the newest intact checkpoint in another run's
    `workdir` (a warm start: optimizer state, step and RNG stay the template's). That run must have had the
    same model and optimizer settings, so that its train state has the template's structure."""
    workdir = Path(workdir).expanduser()
    check_warm_start_source(workdir)
    source = Checkpointer(workdir, every=0, keep=1, read_only=True,
                          mismatch_hint="train.init_from needs a run of the same model and optimizer settings (the "
                                        "data and step count may differ)")
    try:
        restored = source.restore(template)
    except CheckpointMismatchError as err:
        raise ValueError(f"train.init_from: {err}") from None
    finally:
        source.close()
    if restored is None:
        raise ValueError(f"train.init_from: {str(workdir)!r} holds no intact checkpoint, expected at least one")
    trained, step = restored
    return template.replace(params=trained.params, model_state=trained.model_state), step


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _is_damage(err: BaseException) -> bool:
    """Whether a failure to read says that the files' bytes cannot be decoded (see `_DAMAGE_CODES`)."""
    return any(isinstance(e, _DAMAGE_TYPES) or str(e).lstrip().startswith(_DAMAGE_CODES) for e in _chain(err))


def _os_error(err: BaseException) -> OSError | None:
    """The file system error behind `err` (orbax wraps its writer threads' errors), if there is one."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if "No space left on device" in str(e):
            return OSError(errno.ENOSPC, "No space left on device")
    return None


def _cause_line(err: BaseException) -> str:
    """The most specific line of an error chain: TensorStore's status line rather than orbax's wrapper."""
    lines = [_first_line(e) for e in _chain(err)]
    return next((line for line in reversed(lines) if line), "")
