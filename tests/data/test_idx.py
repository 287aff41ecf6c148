"""IDX reading and writing: round trips and every kind of malformed file."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from vaelab.data.idx import read_idx, write_idx
from vaelab.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 3)], ids=["1d", "3d", "4d"])
def test_round_trip(tmp_path: Path, dtype, compress: bool, shape) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]  # no temporary file left behind


def test_big_endian_on_disk(tmp_path: Path) -> None:
    write_idx(tmp_path / "a", np.array([1, 258], dtype=np.int16))
    assert (tmp_path / "a").read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_compression_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "looks-raw", array, compress=True)
    write_idx(tmp_path / "looks-compressed.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks-raw"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks-compressed.gz"), array)


def test_write_rejects_dtype_idx_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.int64))
    assert not any(tmp_path.iterdir())


def _header(type_code: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


MALFORMED = {
    "bad magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab", "two zero bytes"),
    "bad type code": (_header(0x0A, (2,)) + b"ab", "type code 0x0A"),
    "truncated": (_header(0x08, (2, 3)) + b"abcde", "truncated"),
    "trailing bytes": (_header(0x08, (2, 3)) + b"abcdefg", "1 trailing bytes"),
    "zero dimension": (_header(0x08, (2, 0)), "must be positive"),
    "no dimensions": (_header(0x08, ()), "0 dimensions"),
    "truncated header": (bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02", "truncated IDX header"),
    "too short": (b"\x00\x00", "shorter than the 4-byte header"),
    "int32 truncated": (_header(0x0C, (2,)) + b"\x00" * 7, "truncated"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_file_raises_data_error(tmp_path: Path, case: str, compress: bool) -> None:
    content, message = MALFORMED[case]
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(_header(0x08, (4,)) + b"abcd")[:-6])
    with pytest.raises(DataError, match=f"{path}: corrupt gzip"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "nope")


def _peak_traced_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_trailing_bytes_are_counted_not_held(tmp_path: Path) -> None:
    """Found by tests/test_fuzz.py: a 4-byte IDX file followed by 64 MiB of zeros, 64 KB compressed,
    was decompressed whole (twice its size in memory) before the trailing bytes were reported."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip, without holding the zeros
    head = packer.compress(_header(0x08, (4,)) + b"abcd")
    zeros = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64))
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(head + zeros + packer.flush())
    assert path.stat().st_size < 1 << 20

    def read() -> None:
        with pytest.raises(DataError, match="more than 16777216 trailing bytes after the data of shape \\(4,\\)"):
            read_idx(path)

    assert _peak_traced_bytes(read) < 8 << 20


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_header_claiming_huge_dimensions_allocates_nothing(tmp_path: Path, compress: bool) -> None:
    content = _header(0x0E, (2**32 - 1, 2**32 - 1, 2**32 - 1)) + bytes(100)  # 6e29 bytes claimed
    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)

    def read() -> None:
        with pytest.raises(DataError, match="truncated IDX file: header says shape"):
            read_idx(path)

    assert _peak_traced_bytes(read) < 8 << 20
