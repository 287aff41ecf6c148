"""Writing files so that nothing is lost: atomically, durably, and one writer at a time.

- `atomic_writer`: readers never see a half-written file; the data and the rename are fsynced, so a
  power cut or a SIGKILL leaves either the old file or the new one.
- A write that fails (a full disk, an unwritable directory) raises StorageError, one line naming the
  file, and leaves the previous version of the file in place.
- `run_lock`: one process writes into a run directory at a time; the lock is an flock, which the
  kernel releases when its process dies, so a lock left by a killed process is seen as stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vaelab.errors import StorageError, VaelabError

LOCK_FILE = ".lock"


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or an unlink inside `directory` durable."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as error:
        raise StorageError(f"cannot write {directory}: {error.strerror or error}") from None


def replace(source: Path, target: Path) -> None:
    """os.replace, with an OSError turned into a StorageError naming the file."""
    try:
        os.replace(source, target)
    except OSError as error:
        raise StorageError(f"cannot write {target}: {error.strerror or error}") from None


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write `path` all at once: yield a temporary file beside it, fsync it, `os.replace` it into
    place and fsync the directory.

    If the block raises, the temporary file is removed and `path` is left as it was, so readers
    never see a half-written file (an interrupted download, a full disk, a failed checksum); an
    OSError becomes a StorageError naming the file. The temporary file is opened with mode "xb" so
    it gets the usual umask permissions.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise StorageError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write payload to path atomically, creating the parent directory if needed."""
    make_directory(Path(path).parent)
    with atomic_writer(path) as handle:
        handle.write(payload)


def atomic_write_json(path: str | os.PathLike[str], values: Any) -> None:
    atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode())


def make_directory(directory: str | os.PathLike[str]) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"cannot create {directory}: {error.strerror or error}") from None


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the run directory's write lock for the block, or raise one VaelabError line when another
    live process holds it. The lock file keeps the holder's pid, for the message; a file left by a
    process that died holds no flock and is taken over, with a note."""
    path = Path(run_dir) / LOCK_FILE
    make_directory(run_dir)
    try:
        handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    except OSError as error:
        raise VaelabError(f"cannot write to {run_dir}: {error.strerror or error}") from None
    with handle:
        _acquire(handle, run_dir)
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()  # an empty lock file: released by a process that finished
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: Any, run_dir: str | os.PathLike[str]) -> None:
    handle.seek(0)
    previous = handle.read().strip()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise VaelabError(f"{run_dir} is in use by another vaelab process (pid {previous or '?'}); "
                          "wait for it to finish or choose another --out") from None
    if previous and previous != str(os.getpid()):
        print(f"note: {run_dir} had a stale lock of process {previous}, which is no longer running; "
              "taking it over", file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
