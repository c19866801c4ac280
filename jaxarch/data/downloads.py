"""Files fetched from their publishers on first use, verified against SHA-256 digests written in the code.

A dataset's files live in `data_dir() / <dataset>/`. A file already there (downloaded before, or put there by hand
on a machine without network) is used without any network access once its digest matches. A missing file is
downloaded into a temporary file in the same folder, hashed while it streams, and moved into place with
`os.replace` only when its digest matches, so a partial or corrupt download is never read and never left behind.
Every failure is a `ValueError` naming the file, its expected digest, its URL and the folder to put it in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from jaxarch.data.base import cache_dir

# The function that opens a URL; tests replace it so that they never reach the network.
urlopen = urllib.request.urlopen
_CHUNK = 1 << 20
_TIMEOUT_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One published file: its name in the dataset's folder, where it is published, and its digest."""

    name: str
    url: str
    sha256: str
    size: int  # bytes, for the error message's benefit (the digest is what is checked)


def data_dir() -> Path:
    """Where downloaded datasets live: $JAXARCH_DATA_DIR, else `data/` in the jaxarch cache (~/.cache/jaxarch)."""
    if os.environ.get("JAXARCH_DATA_DIR"):
        return Path(os.environ["JAXARCH_DATA_DIR"]).expanduser()
    return cache_dir() / "data"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _put_it_there(dataset: str, file: RemoteFile, folder: Path) -> str:
    return (f"download {file.url} yourself and put it in {folder} as {file.name} (expected SHA-256 {file.sha256}, "
            f"{file.size:,} bytes), or set JAXARCH_DATA_DIR to a folder whose {dataset}/ subfolder holds it")


def fetch(dataset: str, file: RemoteFile) -> Path:
    """The verified local path of `file` for `dataset`, downloading it first if it is missing.

    Raises ValueError if the file on disk has another digest (it is left alone: it may be the user's), if the
    download fails (no network, or JAXARCH_OFFLINE=1) or if the downloaded bytes have another digest.
    """
    folder = data_dir() / dataset
    path = folder / file.name
    if path.exists():
        try:
            digest = file_sha256(path)
        except OSError as err:
            raise ValueError(f"dataset {dataset!r}: {path} cannot be read ({err.strerror}); "
                             f"{_put_it_there(dataset, file, folder)}") from None
        if digest != file.sha256:
            raise ValueError(f"dataset {dataset!r}: {path} has SHA-256 {digest}, expected {file.sha256}: it is "
                             f"incomplete or a different file; delete it to download it again from {file.url}, or "
                             f"{_put_it_there(dataset, file, folder)}")
        return path
    if os.environ.get("JAXARCH_OFFLINE", "") not in ("", "0"):
        raise ValueError(f"dataset {dataset!r}: {file.name} is not in {folder} and JAXARCH_OFFLINE is set; "
                         f"{_put_it_there(dataset, file, folder)}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # In the destination folder, so that os.replace is an atomic rename on the same file system.
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{file.name}.", suffix=".part", delete=False)
    except OSError as err:
        raise ValueError(f"dataset {dataset!r}: cannot write into {folder} ({err.strerror}); "
                         f"{_put_it_there(dataset, file, folder)}") from None
    temporary = Path(handle.name)
    try:
        digest = hashlib.sha256()
        with handle, urlopen(file.url, timeout=_TIMEOUT_SECONDS) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                handle.write(chunk)
        if digest.hexdigest() != file.sha256:
            raise ValueError(f"dataset {dataset!r}: the download of {file.url} has SHA-256 {digest.hexdigest()}, "
                             f"expected {file.sha256}; it was discarded. {_put_it_there(dataset, file, folder)}")
        os.replace(temporary, path)
    except (OSError, http.client.HTTPException) as err:  # URLError is an OSError; a cut connection an HTTPException
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or repr(err)
        raise ValueError(f"dataset {dataset!r}: {file.name} is not in {folder} and could not be downloaded from "
                         f"{file.url} ({reason}); {_put_it_there(dataset, file, folder)}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
