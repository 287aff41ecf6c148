"""Writing files atomically: readers never see a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write `path` all at once: yield a temporary file beside it, then `os.replace` it into place.

    If the block raises, the temporary file is removed and `path` is left as it was, so readers
    never see a half-written file (an interrupted download, a full disk, a failed checksum).
    The temporary file is opened with mode "xb" so it gets the usual umask permissions.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write payload to path atomically, creating the parent directory if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        handle.write(payload)


def atomic_write_json(path: str | os.PathLike[str], values: Any) -> None:
    atomic_write_bytes(path, (json.dumps(values, indent=2) + "\n").encode())
