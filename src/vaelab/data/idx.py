"""Read and write IDX files, the format of the MNIST and Fashion-MNIST releases.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order, big-endian.
See http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST DATABASE").
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from vaelab.errors import DataError
from vaelab.files import atomic_writer

# type code -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
MAX_DIMS = 4
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20  # bytes read (or decompressed) at a time
MAX_TRAILING_COUNT = 1 << 24  # trailing bytes of a gzip file are counted up to this many, then "more than"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by the gzip magic bytes, not the name).

    Returns a writable array in native byte order with the file's dtype and shape.
    Raises DataError naming the file when it is unreadable, truncated, has trailing bytes,
    or its header is not a valid IDX header.

    Memory stays proportional to the data the file really holds: a header claiming gigabytes is
    checked against the file's size (raw) or against what decompresses (gzip, read in chunks and
    never beyond what the header asks for), before anything of that size is allocated.
    """
    path = Path(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115 (closed below; the gzip reader wraps it)
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file: {e.strerror or e}") from e
    with raw:
        compressed = _ChunkedReader(path, raw, "cannot read IDX file").read(len(GZIP_MAGIC)) == GZIP_MAGIC
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                return _read_values(path, _ChunkedReader(path, unzipped, "corrupt gzip data"), None)
        return _read_values(path, _ChunkedReader(path, raw, "cannot read IDX file"), os.fstat(raw.fileno()).st_size)


class ByteStream(Protocol):
    """What `read_chunked` reads from: a binary file, a GzipFile, a zip member."""

    def read(self, size: int = ..., /) -> bytes: ...


def read_chunked(stream: ByteStream, size: int) -> bytearray:
    """Up to `size` bytes of `stream` (fewer only at its end), read READ_CHUNK at a time: a huge
    `size` (a header's claim) never allocates more than the stream really delivers."""
    data = bytearray()
    while len(data) < size and (chunk := stream.read(min(size - len(data), READ_CHUNK))):
        data += chunk
    return data


class _ChunkedReader:
    """Reads a stream in bounded chunks; every read error becomes one DataError naming the file."""

    def __init__(self, path: Path, stream: ByteStream, problem: str):
        self.path, self.stream, self.problem = path, stream, problem

    def read(self, size: int) -> bytearray:
        """Up to `size` bytes (fewer only at the end of the data); see `read_chunked`."""
        try:
            return read_chunked(self.stream, size)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{self.path}: {self.problem}: {getattr(e, 'strerror', None) or e}") from e

    def count_rest(self, limit: int) -> int:
        """How many bytes are left (read and dropped), counting at most `limit` + 1."""
        count = 0
        while count <= limit and (chunk := self.read(min(READ_CHUNK, limit + 1 - count))):
            count += len(chunk)
        return count


def _read_values(path: Path, stream: _ChunkedReader, file_size: int | None) -> np.ndarray:
    """The array of an IDX stream; `file_size` (raw files) lets a header's claim be checked before reading."""
    dtype, shape, offset = _parse_header(path, stream)
    expected = offset + math.prod(shape) * dtype.itemsize
    if file_size is not None and file_size < expected:
        raise DataError(
            f"{path}: truncated IDX file: header says shape {shape} ({expected} bytes), found {file_size} bytes"
        )
    values = stream.read(expected - offset)
    if len(values) < expected - offset:
        raise DataError(
            f"{path}: truncated IDX file: header says shape {shape} ({expected} bytes), "
            f"found {offset + len(values)} bytes"
        )
    trailing = file_size - expected if file_size is not None else stream.count_rest(MAX_TRAILING_COUNT)
    if trailing > MAX_TRAILING_COUNT:
        raise DataError(f"{path}: more than {MAX_TRAILING_COUNT} trailing bytes after the data of shape {shape} "
                        f"(expected {expected} bytes)")
    if trailing:
        raise DataError(
            f"{path}: {trailing} trailing bytes after the data of shape {shape} "
            f"(expected {expected} bytes, found {expected + trailing})"
        )
    array = np.frombuffer(values, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _parse_header(path: Path, stream: _ChunkedReader) -> tuple[np.dtype, tuple[int, ...], int]:
    """Read and validate the IDX header; return (dtype, shape, offset of the first value)."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: not an IDX file: {len(magic)} bytes, shorter than the 4-byte header")
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number must start with two zero bytes, found {magic.hex()}"
        )
    if type_code not in IDX_TYPES:
        valid = ", ".join(f"0x{code:02X}" for code in IDX_TYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02X} (expected one of {valid})")
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{path}: IDX header gives {ndim} dimensions, expected 1 to {MAX_DIMS}")
    offset = 4 + 4 * ndim
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {offset} bytes, found {4 + len(dims)}"
        )
    shape = struct.unpack(f">{ndim}I", dims)
    if 0 in shape:
        raise DataError(f"{path}: IDX dimensions must be positive, found shape {shape}")
    return IDX_TYPES[type_code], shape, offset


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool = False) -> None:
    """Write `array` as an IDX file (gzip-compressed when `compress`), atomically.

    The dtype must be one IDX can hold: uint8, int8, int16, int32, float32 or float64.
    Compressed output has a zero timestamp, so equal arrays give byte-identical files.
    """
    path = Path(path)
    array = np.asarray(array)
    type_code = _type_code(path, array.dtype)
    if not 1 <= array.ndim <= MAX_DIMS:
        raise DataError(f"{path}: IDX holds 1 to {MAX_DIMS} dimensions, array has {array.ndim}")
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[type_code]).tobytes()
    if compress:
        payload = gzip.compress(payload, mtime=0)
    with atomic_writer(path) as f:
        f.write(payload)


def _type_code(path: Path, dtype: np.dtype) -> int:
    """The IDX type code for `dtype`, ignoring byte order."""
    for code, idx_dtype in IDX_TYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    raise DataError(
        f"{path}: IDX cannot hold dtype {dtype} (expected uint8, int8, int16, int32, float32 or float64)"
    )
