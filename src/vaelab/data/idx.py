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


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by the gzip magic bytes, not the name).

    Returns a writable array in native byte order with the file's dtype and shape.
    Raises DataError naming the file when it is unreadable, truncated, has trailing bytes,
    or its header is not a valid IDX header.
    """
    path = Path(path)
    data = _read_bytes(path)
    dtype, shape, offset = _parse_header(path, data)
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(data) < expected:
        raise DataError(
            f"{path}: truncated IDX file: header says shape {shape} ({expected} bytes), found {len(data)} bytes"
        )
    if len(data) > expected:
        raise DataError(
            f"{path}: {len(data) - expected} trailing bytes after the data of shape {shape} "
            f"(expected {expected} bytes, found {len(data)})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic number."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file: {e.strerror or e}") from e
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data: {e}") from e


def _parse_header(path: Path, data: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the IDX header; return (dtype, shape, offset of the first value)."""
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file: {len(data)} bytes, shorter than the 4-byte header")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number must start with two zero bytes, found {data[:4].hex()}"
        )
    if type_code not in IDX_TYPES:
        valid = ", ".join(f"0x{code:02X}" for code in IDX_TYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02X} (expected one of {valid})")
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{path}: IDX header gives {ndim} dimensions, expected 1 to {MAX_DIMS}")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {offset} bytes, found {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
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
