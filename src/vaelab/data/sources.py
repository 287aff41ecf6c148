"""Find the files of a named IDX data set on disk, or download them with checksums.

Resolution order (../shared/CLI.md): the `data_dir` argument (`--data-dir`), the `VAELAB_DATA`
environment variable, the user cache, a system install (Debian's `/usr/share/datasets/<name>`),
and last a checksum-verified download into the user cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from vaelab.errors import DataError
from vaelab.files import atomic_writer

# role -> file name, the same for MNIST and Fashion-MNIST
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class DatasetSpec:
    """A data set published as the four IDX files of `IDX_FILES`."""

    name: str
    urls: tuple[str, ...]  # base URLs, tried in order
    md5: dict[str, str]  # file name -> MD5 of the official .gz file
    class_names: tuple[str, ...]
    files: dict[str, str] = field(default_factory=lambda: dict(IDX_FILES))  # role -> file name


KNOWN_DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        urls=("https://ossci-datasets.s3.amazonaws.com/mnist/",),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        class_names=tuple(str(digit) for digit in range(10)),
    ),
}

# Roots of system-wide installs; each is searched for a `<name>/` folder. Tests override this.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

DOWNLOAD_TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """The user cache root: `$VAELAB_CACHE`, else `$XDG_CACHE_HOME/vaelab`, else `~/.cache/vaelab`."""
    if os.environ.get("VAELAB_CACHE"):
        return Path(os.environ["VAELAB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vaelab"


def get_spec(name: str) -> DatasetSpec:
    """The spec of a known downloadable data set, or DataError listing the known names."""
    if name not in KNOWN_DATASETS:
        raise DataError(f"unknown data set {name!r} (known IDX data sets: {', '.join(KNOWN_DATASETS)})")
    return KNOWN_DATASETS[name]


def find_idx_files(directory: str | os.PathLike[str], spec: DatasetSpec | None = None) -> dict[str, Path] | None:
    """Role -> path of the four IDX files in `directory`, each `.gz` or uncompressed; None if any is missing."""
    directory = Path(directory)
    files = spec.files if spec is not None else IDX_FILES
    found: dict[str, Path] = {}
    for role, file_name in files.items():
        path = _find_file(directory, file_name)
        if path is None:
            return None
        found[role] = path
    return found


def _find_file(directory: Path, gz_name: str) -> Path | None:
    """`directory/gz_name`, else the same name without `.gz`, else None."""
    for file_name in (gz_name, gz_name.removesuffix(".gz")):
        if (directory / file_name).is_file():
            return directory / file_name
    return None


def resolve_dataset_dir(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    progress: bool | None = None,
) -> Path:
    """The folder holding the four IDX files of data set `name`, downloading them if need be.

    Looks in `data_dir`, `$VAELAB_DATA`, the user cache (`cache_dir()`), then `SYSTEM_DATA_DIRS`.
    For `data_dir` and `$VAELAB_DATA` both `ROOT/<name>/` and `ROOT/` itself are accepted (in that
    order), except that `ROOT/` is not taken when its own name is another known data set (so
    `VAELAB_DATA=.../fashion-mnist` is never read as MNIST). The cache and system roots hold one
    folder per data set, so only `ROOT/<name>/` is searched there. A folder that exists but lacks a
    file is skipped. When nothing is found, the files are downloaded into `cache_dir()/<name>`,
    unless `download` is False or `VAELAB_OFFLINE=1`, in which case a DataError says where it looked.
    """
    spec = get_spec(name)
    looked: list[str] = []
    for directory in _candidate_dirs(name, data_dir):
        if find_idx_files(directory, spec) is not None:
            return directory
        looked.append(_describe_miss(directory, spec))
    offline = os.environ.get("VAELAB_OFFLINE", "") not in ("", "0")
    if not download or offline:
        raise DataError(_not_found_message(spec, looked, offline))
    target = cache_dir() / name
    download_dataset(spec, target, base_url=base_url, progress=progress)
    return target


def _candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Folders to search, in resolution order."""
    candidates: list[Path] = []
    for root in (data_dir, os.environ.get("VAELAB_DATA") or None):
        if root is None:
            continue
        root = Path(root).expanduser()
        candidates.append(root / name)
        if root.name == name or root.name not in KNOWN_DATASETS:
            candidates.append(root)
    candidates.append(cache_dir() / name)
    candidates.extend(Path(root) / name for root in SYSTEM_DATA_DIRS)
    return candidates


def _describe_miss(directory: Path, spec: DatasetSpec) -> str:
    """`directory` with why it did not qualify, for the not-found message."""
    if not directory.is_dir():
        return f"{directory} (no such folder)"
    missing = [file_name for file_name in spec.files.values() if _find_file(directory, file_name) is None]
    if len(missing) == len(spec.files):
        return f"{directory} (none of the files)"
    return f"{directory} (missing {', '.join(missing)})"


def _not_found_message(spec: DatasetSpec, looked: list[str], offline: bool) -> str:
    """One line: what is missing, where we looked, how to fix it."""
    allow = "unset VAELAB_OFFLINE to download them" if offline else "allow the download"
    return (
        f"data set {spec.name!r} not found and downloading is off; looked in: {'; '.join(looked)}. "
        f"Put the files {', '.join(spec.files.values())} (.gz or uncompressed) in one of these folders, "
        f"or pass --data-dir DIR, or set VAELAB_DATA=DIR, or {allow}"
    )


def download_dataset(
    spec: DatasetSpec,
    target: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    progress: bool | None = None,
) -> None:
    """Download the files of `spec` missing from `target`, verifying each against its MD5.

    The base URL is `base_url`, else `$VAELAB_DOWNLOAD_URL`, else the spec's URLs in turn (the next
    one is tried when one cannot be reached). Files already in `target` are kept: each was
    verified before it was moved into place.
    """
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create download folder {target}: {e.strerror or e}") from e
    override = base_url or os.environ.get("VAELAB_DOWNLOAD_URL")
    bases = (override,) if override else spec.urls
    show = sys.stderr.isatty() if progress is None else progress
    for file_name in spec.files.values():
        if _find_file(target, file_name) is None:
            _download_from_any(bases, file_name, target / file_name, spec.md5.get(file_name), show)


def _download_from_any(bases: tuple[str, ...], file_name: str, dest: Path, md5: str | None, progress: bool) -> None:
    """Try each base URL in turn; raise the last network error if none works."""
    error: DataError | None = None
    for base in bases:
        try:
            return download_file(base.rstrip("/") + "/" + file_name, dest, md5=md5, progress=progress)
        except _NetworkError as e:
            error = e
    assert error is not None
    raise error


class _NetworkError(DataError):
    """A download that failed for network reasons (another mirror may work)."""


def download_file(url: str, dest: str | os.PathLike[str], *, md5: str | None, progress: bool = False) -> None:
    """Download `url` to `dest` atomically; with `md5`, a mismatch removes the file and raises DataError."""
    dest = Path(dest)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_writer(dest) as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            digest = _copy_with_md5(response, f, total, dest.name, progress)
            if md5 is not None and digest != md5:
                raise DataError(
                    f"checksum mismatch for {dest.name} from {url}: expected MD5 {md5}, got {digest}; file removed"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        # HTTPError's str has the status code ("HTTP Error 404: Not Found"); URLError's reason is the cause
        reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise _NetworkError(f"download of {url} failed: {reason}") from e


def _copy_with_md5(source: BinaryIO, dest_file: BinaryIO, total: int | None, label: str, progress: bool) -> str:
    """Copy `source` to `dest_file` in chunks, with a progress bar if asked; return the MD5 hex digest."""
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check against the published sums
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress, leave=False) as bar:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            dest_file.write(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()
