"""One run per work directory: an OS file lock held for the run's whole life.

The lock is `fcntl.flock` on `<workdir>/.jaxarch.lock`. The kernel releases it when the holding process exits,
however it exits (SIGKILL, a crash, a lost node), so a killed run never leaves a stale lock behind and the lock
file itself is never deleted (deleting it would let a second run lock a new file while the first still holds
the old one). The holder writes its host and PID into the file so that a refused run can name it.

flock is advisory and, on network file systems, only as good as the file system's lock support (NFSv4 and
Lustre with `flock` mounts honour it across hosts; NFSv3 without lockd does not).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = ".jaxarch.lock"


class WorkdirBusyError(ValueError):
    """Another live process holds the work directory's lock."""


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the lock; a second holder (another process, or another open of the
    same file in this process) gets `WorkdirBusyError` at once, never a wait."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"workdir: cannot create the lock file {str(self.path)!r} ({err.strerror}), expected "
                             "a writable work directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"workdir: cannot lock {str(self.path)!r} ({err.strerror}), expected a file system "
                                 "that supports flock (one run per work directory depends on it)") from None
            raise WorkdirBusyError(
                f"workdir: {str(self.workdir)!r} is in use by another run ({holder}), expected a work directory "
                "no other run is using; wait for that run to end, stop it, or choose another --workdir") from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host={socket.gethostname()} pid={os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # A full disk: the lock holds without the note naming its holder; later writes report the disk.

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's note, e.g. 'host=node7 pid=4242', or a placeholder while it is being written."""
    try:
        note = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        note = ""
    return note or "host and pid not yet written"
