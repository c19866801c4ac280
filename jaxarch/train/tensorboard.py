"""TensorBoard event files beside metrics.jsonl: every record the run logs, as scalars, and the learning-curve
figure, written with tensorboardX's protocol buffers (no TensorFlow).

`tensorboard --logdir runs/` finds every run directory below `runs/` (a sweep's members each have their own) and
shows them side by side; each scalar's tag is its metrics.jsonl key (`train/loss`, `test/accuracy`, ...), so
TensorBoard groups them by split.

Rules, the same as metrics.jsonl's (`jaxarch.train.records.MetricsLog`):
- A fresh run (no checkpoint to resume from) removes the event files of an earlier attempt in the directory.
- A resumed run keeps the events up to and including the step it resumes from and drops the later ones (steps
  trained after the last checkpoint and trained again now); the resumed steps continue in a new event file.
  The kept events are copied into the new file, which then starts with a `SessionLog.START` at the first new
  step (TensorBoard's own purge marker: a TensorBoard that was already showing the dropped steps forgets them),
  and the old files are deleted once the new one is on disk. A crash between those two leaves events twice;
  the next resume writes each only once (copies are recognised by their bytes, wall time included).
- Non-finite values, written as null in metrics.jsonl, are not written; records that are not numbers
  (`config_change`) are metrics.jsonl's alone.
- Writes go to a buffered file, flushed at every evaluation and checkpoint and at the end, so the events of every
  checkpointed step are on disk before the checkpoint is. A record costs a fraction of a millisecond, most of it
  tensorboardX's pure-Python checksum (docs/logging.md has the figure; the optional `crc32c` package makes it
  native).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import socket
import struct
import sys
import time
import types
from pathlib import Path

from jaxarch.train.records import write_failed

EVENTS_PREFIX = "events.out.tfevents."
FILE_VERSION = "brain.Event:2"


@functools.cache
def _tensorboardx() -> types.SimpleNamespace:
    """tensorboardX's protocol buffers and record checksum, imported on first use. Importing tensorboardX sets
    `CRC32C_SW_MODE` in the environment (for the optional native `crc32c` package); it is put back as it was, so
    that neither importing jaxarch nor a run changes the process's environment."""
    saved = os.environ.get("CRC32C_SW_MODE")
    try:
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import masked_crc32c
    finally:
        if saved is None:
            os.environ.pop("CRC32C_SW_MODE", None)
        else:
            os.environ["CRC32C_SW_MODE"] = saved
    return types.SimpleNamespace(Event=Event, SessionLog=SessionLog, Summary=Summary, masked_crc32c=masked_crc32c)


def event_files(directory: Path) -> list[Path]:
    """The event files in `directory`, in the order TensorBoard reads them (by name: the creation time leads)."""
    return sorted(path for path in Path(directory).glob(f"{EVENTS_PREFIX}*") if path.is_file())


def _frame(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, the data's masked CRC-32C."""
    crc = _tensorboardx().masked_crc32c
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", crc(header)) + data + struct.pack("<I", crc(data))


def read_records(path: Path) -> list[bytes]:
    """The serialized events of one event file; a record cut short (a crash mid-write) or damaged ends it."""
    data, crc = Path(path).read_bytes(), _tensorboardx().masked_crc32c
    records, offset = [], 0
    while offset + 12 <= len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        end = offset + 12 + length + 4
        if struct.unpack("<I", data[offset + 8:offset + 12])[0] != crc(header) or end > len(data):
            break
        record = data[offset + 12:end - 4]
        if struct.unpack("<I", data[end - 4:end])[0] != crc(record):
            break
        records.append(record)
        offset = end
    return records


def read_events(directory: Path) -> list:
    """Every event (`tensorboardX.proto.event_pb2.Event`) of every event file in `directory`, in reading order."""
    return [_tensorboardx().Event.FromString(record) for path in event_files(directory) for record in read_records(path)]


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """`tag -> [(step, value), ...]` of the scalar events in `directory`, in reading order."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(directory):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


class EventLog:
    """Writes a run's records as TensorBoard events in `directory` (see the module's rules for a fresh and a
    resumed run). `enabled=False` touches nothing (the processes of a multi-process run other than the first)."""

    def __init__(self, directory: Path, resume_step: int | None, *, enabled: bool = True):
        self.directory, self.enabled = Path(directory), enabled
        self._file = None
        if not enabled:
            return
        earlier = event_files(self.directory)
        kept = [] if resume_step is None else self._kept(earlier, resume_step)
        # The creation time leads the name so that TensorBoard reads the new file after the old ones; the host
        # and the process id keep apart files made in the same microsecond.
        tbx = _tensorboardx()
        name = f"{EVENTS_PREFIX}{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        path = self.path = self.directory / name
        try:
            self._file = path.open("wb")
            self._write(tbx.Event(wall_time=time.time(), step=0, file_version=FILE_VERSION))
            if resume_step is not None:
                self._write(tbx.Event(wall_time=time.time(), step=resume_step + 1,
                                      session_log=tbx.SessionLog(status=tbx.SessionLog.START)))
            for record in kept:
                self._file.write(_frame(record))
            self._file.flush()
            for old in earlier:
                old.unlink()
        except OSError as err:
            raise write_failed(path, err) from None

    @staticmethod
    def _kept(paths: list[Path], resume_step: int) -> list[bytes]:
        """The events of the earlier files at steps up to `resume_step`, without file headers, purge markers
        or exact copies."""
        kept, seen = [], set()
        for path in paths:
            for record in read_records(path):
                event = _tensorboardx().Event.FromString(record)
                if event.file_version or event.HasField("session_log") or event.step > resume_step:
                    continue
                if record not in seen:
                    seen.add(record)
                    kept.append(record)
        return kept

    def _write(self, event) -> None:
        try:
            self._file.write(_frame(event.SerializeToString()))
        except OSError as err:
            raise write_failed(self.path, err) from None

    def write(self, step: int, **values) -> None:
        """One record: each finite number becomes a scalar tagged with its key."""
        if self._file is None:
            return
        tbx = _tensorboardx()
        scalars = [tbx.Summary.Value(tag=key, simple_value=float(value)) for key, value in values.items()
                   if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)]
        if scalars:
            self._write(tbx.Event(wall_time=time.time(), step=step, summary=tbx.Summary(value=scalars)))

    def write_png(self, tag: str, step: int, png: bytes) -> None:
        """An image (a PNG file's bytes) at `step`: TensorBoard's Images tab shows it."""
        if self._file is None:
            return
        tbx = _tensorboardx()
        width, height = struct.unpack(">II", png[16:24])  # from the PNG's IHDR chunk
        image = tbx.Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        summary = tbx.Summary(value=[tbx.Summary.Value(tag=tag, image=image)])
        self._write(tbx.Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as err:
                raise write_failed(self.path, err) from None

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                print(f"[jaxarch] could not finish the TensorBoard events in {self.directory}: {err.strerror}",
                      file=sys.stderr)
            self._file = None
