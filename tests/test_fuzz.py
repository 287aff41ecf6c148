"""Hostile files, fuzzed: every parser of a file or value a user hands to vaelab either succeeds or
raises one VaelabError (a one-line message), never another exception, never a hang, and never
allocates much more than the input really holds (a header claiming gigabytes costs nothing).

Parsers: the IDX reader (raw and gzip), .npy and .npz loading and image folders (as
`load_dataset(path)` does them), the config parsers (`load_yaml`, `parse_overrides`,
`apply_overrides`), a run directory's config.json (`load_run_config`), its training checkpoint
(`load_training_state`) and its weights (`checkpoint.load`).

The default run tries DEFAULT_EXAMPLES inputs per parser, derandomized so CI is reproducible.
`python -m pytest -m fuzz tests/test_fuzz.py` is the full run: VAELAB_FUZZ_EXAMPLES per parser
(default 1000, so the eleven parsers together see over 10,000 inputs), from a random seed
(VAELAB_FUZZ_SEED fixes it); it prints how many inputs each parser saw and how they ended.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gzip
import io
import json
import math
import os
import shutil
import signal
import struct
import tempfile
import time
import traceback
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file

from tiny_runs import train, write_images
from vaelab import checkpoint
from vaelab.config import DataConfig, TrainConfig, apply_overrides, load_yaml, parse_overrides
from vaelab.data.datasets import IMAGE_SUFFIXES, load_dataset
from vaelab.data.idx import IDX_TYPES, read_idx
from vaelab.errors import VaelabError
from vaelab.registry import MODELS

DEFAULT_EXAMPLES = 200  # per parser, in the default test run
FULL_EXAMPLES = int(os.environ.get("VAELAB_FUZZ_EXAMPLES", "1000"))  # per parser, with -m fuzz
FULL_TOTAL = 10_000  # the full run must try at least this many inputs over all parsers
MEMORY_SLACK = 64 << 20  # peak traced memory may exceed 10x the justified input size by this much
MEMORY_FACTOR = 10
HANG_SECONDS = 30  # one input taking longer than this is a hang

PARSERS = ["idx", "idx-gzip", "npy", "npz", "image-folder", "yaml", "overrides", "apply-overrides",
           "run-config", "training-state", "weights"]
# parser -> outcome ("ok", "VaelabError") -> count, reported at the end of the module
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


# Exceptions the fuzz tolerates from checkpoint.py's own code, per parser: none since the bugs it
# found there (non-UTF-8 config.json, JSON nested too deep, numbers too long) were fixed; their
# regression tests are at the end of this file. A new entry needs a bug report beside it.
KNOWN_CHECKPOINT_BUGS: dict[str, tuple[type[BaseException], ...]] = {}  # all fixed; regression tests below
CHECKPOINT_PY = str(Path(checkpoint.__file__).resolve())
VAELAB_SRC = str(Path(checkpoint.__file__).resolve().parent)


def known_checkpoint_bug(parser: str, error: BaseException) -> bool:
    """Whether `error` is one of KNOWN_CHECKPOINT_BUGS[parser], raised by checkpoint.py's own code."""
    if not isinstance(error, KNOWN_CHECKPOINT_BUGS.get(parser, ())):
        return False
    frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)]
    ours = [name for name in frames if str(Path(name).resolve()).startswith(VAELAB_SRC)]
    return bool(ours) and str(Path(ours[-1]).resolve()) == CHECKPOINT_PY


# -- the property ----------------------------------------------------------------------------------

class Hang(BaseException):  # not an Exception: no `except Exception` in vaelab may swallow it
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(parser: str, call: Callable[[], Any], justified_bytes: int) -> Any:
    """Run `call`: it must return or raise VaelabError with a one-line message, within HANG_SECONDS,
    with peak traced memory (numpy's arrays included) below MEMORY_SLACK + MEMORY_FACTOR x the bytes
    the input justifies. Returns what `call` returned (None after a VaelabError)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    result = None
    try:
        with time_limit(HANG_SECONDS):
            result = call()
        OUTCOMES[parser]["ok"] += 1
    except VaelabError as error:
        OUTCOMES[parser]["VaelabError"] += 1
        message = str(error)
        assert message.strip(), f"{type(error).__name__} without a message"
        assert "\n" not in message, f"a message of several lines: {message!r}"
    except Exception as error:
        if not known_checkpoint_bug(parser, error):
            raise
        OUTCOMES[parser][f"known checkpoint.py bug ({type(error).__name__})"] += 1
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if started:
            tracemalloc.stop()
    bound = MEMORY_SLACK + MEMORY_FACTOR * justified_bytes
    assert peak <= bound, f"peak traced memory {peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB for this input"
    return result


def fuzz(parser: str, full: bool, strategy: st.SearchStrategy, body: Callable[[Any], None]) -> None:
    """Run `body` on inputs drawn from `strategy`: DEFAULT_EXAMPLES derandomized, or FULL_EXAMPLES."""
    options = settings(max_examples=FULL_EXAMPLES if full else DEFAULT_EXAMPLES, deadline=None,
                       derandomize=not full, database=None, print_blob=True,
                       suppress_health_check=list(HealthCheck))
    test = options(given(strategy)(body))
    if full and os.environ.get("VAELAB_FUZZ_SEED"):
        test = seed(int(os.environ["VAELAB_FUZZ_SEED"]))(test)
    before = sum(OUTCOMES[parser].values())
    test()
    tried = sum(OUTCOMES[parser].values()) - before
    assert tried >= (FULL_EXAMPLES if full else DEFAULT_EXAMPLES) * 0.9, f"only {tried} inputs were tried"


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder for one input (hypothesis runs many inputs in one test: no tmp_path)."""
    folder = Path(tempfile.mkdtemp(prefix="vaelab-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


FULL = [False, pytest.param(True, marks=pytest.mark.fuzz, id="full")]


def full_ids(full) -> str:
    return "full" if full else "default"


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    started = time.perf_counter()
    yield
    if OUTCOMES:
        lines = [f"{parser:<16}{sum(counts.values()):>7} inputs: "
                 + ", ".join(f"{outcome} {count}" for outcome, count in sorted(counts.items()))
                 for parser, counts in OUTCOMES.items()]
        total = sum(sum(counts.values()) for counts in OUTCOMES.values())
        print(f"\nfuzzed inputs per parser ({total} in all, {time.perf_counter() - started:.1f} s):\n"
              + "\n".join(lines))


# -- mutations -------------------------------------------------------------------------------------

@st.composite
def mutated(draw, data: bytes, max_ops: int = 3) -> bytes:
    """`data` after 1..max_ops byte flips, truncations, insertions, or 4-byte overwrites (a length or a
    dimension field becoming something else)."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "append", "u32", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "u32":
            value = draw(st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 65536, 10**9]))
            data[at:at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), value)
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


def seeded_bytes(draw, size: int) -> bytes:
    """`size` random bytes from a drawn seed (fast for kilobytes, unlike st.binary)."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)


HUGE_DIMS = st.sampled_from([2**32 - 1, 2**31, 2**24, 10**6, 65536])


# -- IDX -------------------------------------------------------------------------------------------

@st.composite
def idx_files(draw) -> bytes:
    """IDX contents: valid, claiming huge dimensions, a wrong type code or dimension count,
    truncated, with trailing bytes, random, or a valid file mutated."""
    kind = draw(st.sampled_from(["valid", "huge", "type", "ndim", "truncated", "trailing", "random", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    code = draw(st.sampled_from(sorted(IDX_TYPES)))
    if kind == "type":
        code = draw(st.integers(0, 255).filter(lambda c: c not in IDX_TYPES))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    ndim = len(shape)
    if kind == "huge":
        shape[draw(st.integers(0, ndim - 1))] = draw(HUGE_DIMS)
        shape = [draw(st.one_of(st.just(size), HUGE_DIMS)) for size in shape]
    if kind == "ndim":
        ndim = draw(st.sampled_from([0, 5, 6, 255]))
        shape = draw(st.lists(st.integers(1, 3), min_size=min(ndim, 8), max_size=min(ndim, 8)))
    header = bytes([0, 0, code, ndim]) + struct.pack(f">{len(shape)}I", *shape)
    itemsize = IDX_TYPES[code].itemsize if code in IDX_TYPES else 1
    nbytes = math.prod(shape) * itemsize
    if kind == "huge" or nbytes > 1 << 16:
        size = draw(st.integers(0, 64))
    elif kind == "truncated":
        size = draw(st.integers(0, max(nbytes - 1, 0)))
    elif kind == "trailing":
        size = nbytes + draw(st.integers(1, 64))
    else:
        size = nbytes
    content = header + seeded_bytes(draw, size)
    return draw(mutated(content)) if kind == "mutated" else content


def idx_claim(plain: bytes) -> int:
    """The bytes an IDX header asks for (header and values), at least 64; for the memory bound."""
    if len(plain) < 4 or plain[2] not in IDX_TYPES or not 1 <= plain[3] <= 4 or len(plain) < 4 + 4 * plain[3]:
        return 64
    shape = struct.unpack(f">{plain[3]}I", plain[4:4 + 4 * plain[3]])
    return max(64, 4 + 4 * len(shape) + math.prod(shape) * IDX_TYPES[plain[2]].itemsize)


def _compress_zeros(prefix: bytes, zeros: int) -> bytes:
    """gzip of prefix + `zeros` zero bytes, built without holding the zeros."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    parts = [packer.compress(prefix)]
    for _ in range(zeros >> 20):
        parts.append(packer.compress(chunk))
    return b"".join([*parts, packer.flush()])


@functools.cache
def gzip_bombs() -> list[tuple[bytes, int]]:
    """(gzip file, decompressed bytes that justify memory) of decompression bombs: a valid 4-byte IDX
    file followed by 100 MiB of zeros (trailing bytes: only the 12 bytes the header asks for justify
    memory), a header claiming 2^64 bytes followed by 8 MiB of zeros (truncated: the 8 MiB are real),
    and a valid file of 8 MiB of zeros (it must load)."""
    return [
        (_compress_zeros(bytes([0, 0, 8, 1, 0, 0, 0, 4]) + b"abcd", 100 << 20), 12),
        (_compress_zeros(bytes([0, 0, 8, 2]) + b"\xff" * 8, 8 << 20), 12 + (8 << 20)),
        (_compress_zeros(bytes([0, 0, 8, 1]) + struct.pack(">I", 8 << 20), 8 << 20), 8 + (8 << 20)),
    ]


@st.composite
def gzip_idx_files(draw) -> tuple[bytes, int]:
    """(gzip file, bytes its decompression justifies): compressed IDX contents, mutated compressed
    streams, several members, garbage after the stream, decompression bombs."""
    kind = draw(st.sampled_from(["plain"] * 4 + ["mutated", "members", "garbage", "bomb"]))
    if kind == "bomb":
        return draw(st.sampled_from(gzip_bombs()))
    plain = draw(idx_files())
    data = gzip.compress(plain, mtime=0)
    if kind == "mutated":
        data = draw(mutated(data))
    elif kind == "members":
        cut = draw(st.integers(0, len(plain)))
        data = gzip.compress(plain[:cut], mtime=0) + gzip.compress(plain[cut:], mtime=0)
    elif kind == "garbage":
        data += draw(st.sampled_from([b"\0" * 8, b"\x1f\x8b", b"garbage", bytes(100)]))
    return data, min(len(plain) + 1024, idx_claim(plain))


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_idx_reader(full: bool) -> None:
    def body(content: bytes) -> None:
        with scratch() as folder:
            path = folder / "train-images-idx3-ubyte"
            path.write_bytes(content)
            array = check("idx", lambda: read_idx(path), len(content))
            if array is not None:
                assert array.dtype.isnative and array.flags.writeable

    fuzz("idx", full, idx_files(), body)


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_idx_reader_gzip(full: bool) -> None:
    def body(case: tuple[bytes, int]) -> None:
        content, plain = case
        with scratch() as folder:
            path = folder / "train-images-idx3-ubyte.gz"
            path.write_bytes(content)
            check("idx-gzip", lambda: read_idx(path), len(content) + plain)

    fuzz("idx-gzip", full, gzip_idx_files(), body)


def test_gzip_bombs_cost_only_what_the_header_asks_for() -> None:
    """Each bomb once, whatever the fuzzer draws: trailing zeros are counted, not held; the valid
    one loads."""
    results = []
    for data, justified in gzip_bombs():
        with scratch() as folder:
            path = folder / "bomb.gz"
            path.write_bytes(data)
            results.append(check("idx-gzip", lambda: read_idx(path), len(data) + justified))  # noqa: B023
    assert results[0] is None and results[1] is None and results[2].shape == (8 << 20,)


# -- .npy / .npz -----------------------------------------------------------------------------------

ODD_DTYPES = ["u1", "i1", "?", "<u2", ">i2", "<i4", "<i8", "<u8", "<f2", "<f4", ">f4", "<f8", ">f8", "g",
              "<c8", "<c16", "S3", "<U2", "V4", "<M8[s]", "<m8[D]", [("a", "u1"), ("b", "<f4")],
              [("a", "u1", (2,))]]
IMAGE_DTYPES = ["u1", "?", "<f4", "<f8", "<f2", ">f4"]
LABEL_DTYPES = ["u1", "i1", "<i8", "<u8", "<i4", "?", "<f4", "<m8[D]"]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.0, 2.0, -1.0, 1e30]


@st.composite
def arrays(draw, role: str = "any", count: int | None = None) -> np.ndarray:
    """Arrays of odd dtypes and shapes, NaN and inf included; for role "images" and "labels" half are
    valid ones (of `count` items when given)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    valid = role != "any" and draw(st.booleans())
    n = count if count is not None else draw(st.integers(0 if not valid and draw(st.booleans()) else 2, 6))
    if role == "images" and valid:
        dtype = np.dtype(draw(st.sampled_from(IMAGE_DTYPES)))
        h, w, c = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.sampled_from([1, 3]))
        shape = draw(st.sampled_from([(n, h, w), (n, c, h, w), (n, h, w, c)]))
    elif role == "images":
        dtype = np.dtype(draw(st.sampled_from(IMAGE_DTYPES + ODD_DTYPES[:4])))
        h, w, c = (draw(st.integers(0, 6)) for _ in range(3))
        shape = draw(st.sampled_from([(n, h, w), (n, c, h, w), (n, h, w, c), (n,), (n, h, w, c, 1)]))
    elif role == "labels" and valid:
        dtype, shape = np.dtype(draw(st.sampled_from(["u1", "i1", "<i8", "<i4", ">i2"]))), (n,)
    elif role == "labels":
        dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES)))
        shape = draw(st.sampled_from([(n,), (n, 2), (), (n + 1,)]))
    else:
        dtype = np.dtype(draw(st.sampled_from(ODD_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=5)))
    size = math.prod(shape)
    array = np.frombuffer(rng.bytes(size * dtype.itemsize), dtype=dtype, count=size).reshape(shape).copy()
    fill = "unit" if valid else draw(st.sampled_from(["random", "unit", "special"]))
    if fill == "unit" and dtype.kind == "f":
        array[...] = rng.uniform(0, 1, shape)
    elif fill == "unit" and dtype.kind in "uib":
        array[...] = rng.integers(0, 2 if dtype.kind == "b" else 3, shape)
    elif fill == "special" and dtype.kind in "fc":
        array[...] = rng.choice(SPECIAL_VALUES, shape)
    if dtype.kind == "f" and fill == "unit" and not valid and size and draw(st.booleans()):
        array.reshape(-1)[:1] = draw(st.sampled_from(SPECIAL_VALUES))  # one odd value in good data
    return np.asfortranarray(array) if draw(st.booleans()) else array


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(header: str, version: tuple[int, int]) -> bytes:
    """A .npy preamble around header text `header`, of format `version`."""
    encoded = header.encode("latin1", "replace")
    length = struct.pack("<H", len(encoded)) if version == (1, 0) else struct.pack("<I", len(encoded))
    return b"\x93NUMPY" + bytes(version) + length + encoded


SHAPES = st.one_of(
    st.lists(st.one_of(st.integers(0, 5), HUGE_DIMS, st.integers(-3, -1), st.just(10**30)), max_size=4).map(tuple),
    st.sampled_from(["(1.5,)", "'abc'", "[1, 2]", "(1, 'a')", "()", "None"]),
)


@st.composite
def npy_files(draw, role: str = "any") -> bytes:
    """.npy contents: arrays of odd dtypes (NaN and inf too), object arrays (pickled), headers with
    fuzzed fields (huge, negative or non-integer shapes, bad dtypes, bad versions), random bytes,
    valid files truncated, extended or mutated."""
    kind = draw(st.sampled_from(["array"] * 6 + ["object", "header", "huge", "text", "random", "truncated",
                                                 "trailing", "mutated", "raw-pickle"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "raw-pickle":
        return b"\x80\x04\x95" + draw(st.binary(max_size=64))
    if kind == "object":
        return npy_bytes(np.array([1, "a", None, [2]], dtype=object), allow_pickle=True)
    if kind == "huge":  # a valid header claiming gigabytes, then a few bytes
        shape = [draw(st.integers(1, 8)) for _ in range(draw(st.integers(0, 3)))]
        shape.insert(draw(st.integers(0, len(shape))), draw(st.sampled_from([2**31, 2**32 - 1, 10**9, 10**12])))
        descr = draw(st.sampled_from(["|u1", "<f4", "<f8", "|b1", "<i8", ">f4"]))
        header = f"{{'descr': '{descr}', 'fortran_order': {draw(st.booleans())}, 'shape': {tuple(shape)}, }}"
        header += " " * (-(len(header) + 11) % 64) + "\n"
        return npy_header(header, (1, 0)) + seeded_bytes(draw, draw(st.integers(0, 256)))
    if kind in ("header", "text"):
        version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 0), (4, 1)]))
        if kind == "text":
            header = draw(st.text(max_size=200))
        else:
            descr = draw(st.one_of(st.sampled_from(["'|u1'", "'<f4'", "'|O'", "'<U0'", "'|V0'", "'bogus'", "3",
                                                    "[('a', '|O')]", "[('a', '<f4', (10**9,))]", "'<f16'"]),
                                   st.text(max_size=10).map(repr)))
            shape = draw(SHAPES)
            fortran = draw(st.sampled_from(["False", "True", "1", "'yes'"]))
            header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}"
            header += " " * (-(len(header) + 11) % 64) + "\n"
        return npy_header(header, version) + seeded_bytes(draw, draw(st.integers(0, 256)))
    data = npy_bytes(draw(arrays(role)))
    if kind == "truncated":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "trailing":
        return data + draw(st.binary(min_size=1, max_size=32))
    if kind == "mutated":
        return draw(mutated(data))
    return data


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_npy_files(full: bool) -> None:
    def body(content: bytes) -> None:
        with scratch() as folder:
            path = folder / "data.npy"
            path.write_bytes(content)
            check("npy", lambda: load_dataset(str(path)), len(content))

    fuzz("npy", full, npy_files(role="images") | npy_files(), body)


NPZ_KEYS = ["x_train", "y_train", "x_test", "y_test", "images", "labels", "extra", "arr_0"]
COMPRESSIONS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


@st.composite
def npz_dataset(draw) -> dict[str, bytes]:
    """The members of a consistent data set .npz (x_train/x_test/y_train/y_test or images/labels),
    then maybe one member dropped, one added, or one replaced by a hostile .npy."""
    n_train, n_test = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    images = draw(arrays("images", count=n_train + n_test))
    labels = draw(arrays("labels", count=n_train + n_test))
    if draw(st.booleans()):
        arrays_by_key = {"x_train": images[:n_train], "x_test": images[n_train:]}
        if draw(st.booleans()):
            split = labels.ndim > 0  # an invalid labels array may be 0-d: then both get it whole
            arrays_by_key.update(y_train=labels[:n_train] if split else labels,
                                 y_test=labels[n_train:] if split else labels)
    else:
        arrays_by_key = {"images": images, **({"labels": labels} if draw(st.booleans()) else {})}
    members = {f"{key}.npy": npy_bytes(value) for key, value in arrays_by_key.items()}
    change = draw(st.sampled_from(["none", "none", "drop", "add", "hostile"]))
    if change == "drop":
        del members[draw(st.sampled_from(sorted(members)))]
    elif change == "add":
        members[draw(st.sampled_from(NPZ_KEYS)) + ".npy"] = npy_bytes(draw(arrays()))
    elif change == "hostile":
        members[draw(st.sampled_from(sorted(members)))] = draw(npy_files())
    return members


@st.composite
def npz_members(draw) -> dict[str, bytes]:
    if draw(st.booleans()):
        return draw(npz_dataset())
    # zipfile cuts a name at its first NUL (and fails on an empty one): member names have none
    names = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=8).filter(lambda n: n != "/")
    keys = draw(st.lists(st.one_of(st.sampled_from(NPZ_KEYS), names),
                         max_size=5, unique=True))
    members = {}
    for key in keys:
        role = {"x_train": "images", "x_test": "images", "images": "images", "y_train": "labels", "y_test": "labels",
                "labels": "labels"}.get(key, "any")
        content = draw(st.one_of(npy_files(role), st.binary(max_size=64))) if draw(st.integers(0, 4)) == 0 \
            else npy_bytes(draw(arrays(role)))
        members[key + (".npy" if draw(st.integers(0, 5)) else "")] = content
    return members


def _patch_zip(data: bytes, field: str, value: int) -> bytes:
    """Set the general-purpose flags or the compression method of every local and central header."""
    data = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at != -1:
            offset = at + flags_at + (0 if field == "flags" else 2)
            data[offset:offset + 2] = struct.pack("<H", value)
            at = data.find(signature, at + 4)
    return bytes(data)


@st.composite
def npz_files(draw) -> tuple[bytes, int]:
    """(.npz contents, bytes its members justify): archives of odd arrays under missing, extra or
    foreign keys, any compression, mutated archives, encrypted or unknown-method members, random bytes."""
    kind = draw(st.sampled_from(["archive"] * 4 + ["mutated", "encrypted", "method", "random", "empty"]))
    if kind == "random":
        data = draw(st.binary(max_size=256))
        return (b"PK\x03\x04" + data if draw(st.booleans()) else data), 0
    members = {} if kind == "empty" else draw(npz_members())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=draw(st.sampled_from(COMPRESSIONS))) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    data = buffer.getvalue()
    if kind == "mutated":
        data = draw(mutated(data))
    elif kind == "encrypted":
        data = _patch_zip(data, "flags", 1)
    elif kind == "method":
        data = _patch_zip(data, "method", draw(st.sampled_from([1, 6, 9, 97, 99, 0xFFFF])))
    return data, sum(len(content) for content in members.values())


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_npz_files(full: bool) -> None:
    def body(case: tuple[bytes, int]) -> None:
        content, plain = case
        with scratch() as folder:
            path = folder / "data.npz"
            path.write_bytes(content)
            check("npz", lambda: load_dataset(str(path)), len(content) + plain)

    fuzz("npz", full, npz_files(), body)


# -- image folders ---------------------------------------------------------------------------------

IMAGE_MODES = ["L", "RGB", "RGBA", "P", "1", "LA", "I", "F", "I;16", "CMYK", "YCbCr"]
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP"}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def claimed_png(width: int, height: int, pixels: bytes) -> bytes:
    """A PNG whose header claims width x height grey pixels, with only `pixels` compressed after it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(pixels))
            + png_chunk(b"IEND", b""))


@st.composite
def image_bytes(draw, suffix: str) -> tuple[bytes, int]:
    """(file contents, decoded pixels it justifies) for an image file named *`suffix`."""
    kind = draw(st.sampled_from(["image"] * 4 + ["random", "empty", "mutated", "claimed"]))
    if kind == "random":
        return draw(st.binary(max_size=128)), 0
    if kind == "empty":
        return b"", 0
    if kind == "claimed":
        width, height = draw(st.one_of(st.integers(1, 8), HUGE_DIMS)), draw(st.one_of(st.integers(1, 8), HUGE_DIMS))
        return claimed_png(width, height, bytes(draw(st.integers(0, 64)))), 0
    mode = draw(st.sampled_from(IMAGE_MODES))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = Image.frombytes("L", size, rng.bytes(size[0] * size[1])).convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=FORMATS.get(suffix.lower(), "PNG"))
    except (OSError, ValueError, KeyError):  # a mode the format cannot hold
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    return (draw(mutated(data)) if kind == "mutated" else data), size[0] * size[1]


@st.composite
def image_folders(draw) -> tuple[dict[str, bytes | None], int]:
    """({relative path: contents, or None for a folder}, decoded pixels justified): images of mixed
    sizes, modes and formats, random bytes and empty files with image names, headers claiming huge
    images, class subfolders mixed with top-level images, hidden and non-image files."""
    entries: dict[str, bytes | None] = {}
    pixels = 0
    if draw(st.booleans()):  # a good data set: images of one size, in the folder or in class folders
        size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
        folders = draw(st.sampled_from([[""], ["cats/", "dogs/"], ["a/", "b/", "c/"]]))
        for i in range(draw(st.integers(2, 6))):
            mode = draw(st.sampled_from(["L", "RGB", "P", "RGBA", "1"]))
            suffix = draw(st.sampled_from([".png", ".bmp"]))
            image = Image.frombytes("L", size, seeded_bytes(draw, size[0] * size[1])).convert(mode)
            buffer = io.BytesIO()
            image.save(buffer, format=FORMATS[suffix])
            entries[f"{folders[i % len(folders)]}{i}{suffix}"] = buffer.getvalue()
            pixels += size[0] * size[1]
        if not draw(st.integers(0, 3)):  # then one hostile file among them
            suffix = draw(st.sampled_from(IMAGE_SUFFIXES))
            content, image_pixels = draw(image_bytes(suffix))
            entries[f"{folders[0]}z{suffix}"] = content
            pixels += image_pixels
        return entries, pixels
    for _ in range(draw(st.integers(0, 6))):
        folder = draw(st.sampled_from(["", "", "cats/", "dogs/", ".hidden/"]))
        suffix = draw(st.sampled_from([*IMAGE_SUFFIXES[:3], ".png", ".PNG", ".png", ".txt", *IMAGE_SUFFIXES[3:]]))
        stem = draw(st.sampled_from(["a", "b", "c", ".d", "e"]))
        if draw(st.integers(0, 15)) == 0:
            entries[f"{folder}{stem}{suffix}"] = None  # a folder with an image's name
            continue
        content, image_pixels = draw(image_bytes(suffix))
        entries[f"{folder}{stem}{suffix}"] = content
        pixels += image_pixels
    return entries, pixels


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_image_folders(full: bool) -> None:
    def body(case: tuple[dict[str, bytes | None], int]) -> None:
        entries, pixels = case
        with scratch() as folder:
            root = folder / "images"
            root.mkdir()
            for name, content in entries.items():
                path = root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if content is None:
                    path.mkdir(exist_ok=True)
                elif not path.is_dir():
                    path.write_bytes(content)
            size = sum(len(content or b"") for content in entries.values())
            check("image-folder", lambda: load_dataset(str(root)), size + 32 * pixels)

    fuzz("image-folder", full, image_folders(), body)


# -- configs ---------------------------------------------------------------------------------------

def default_configs(model: str = "vae") -> dict[str, Any]:
    return {"model": MODELS[model].config_class(), "data": DataConfig(), "train": TrainConfig()}


CONFIG_KEYS = sorted({f.name for model in MODELS for f in MODELS[model].config_class.__dataclass_fields__.values()}
                     | set(DataConfig.__dataclass_fields__) | set(TrainConfig.__dataclass_fields__))
KEYS = st.one_of(st.sampled_from(CONFIG_KEYS), st.sampled_from(["model", "data", "train"]),
                 st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(["model", "data", "train", "x"]),
                           st.sampled_from(CONFIG_KEYS)),
                 st.text(max_size=12))
# a flow list of 9 anchored lists, each holding the one before 10 times: the last is 10^9 ones
# (20 lines of YAML, a few kilobytes of objects, but its repr would never finish)
ALIAS_BOMB = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
    f"&{new} [{', '.join(['*' + old] * 10)}]" for old, new in zip("abcdefgh", "bcdefghi", strict=True)) + "]"
# Nesting deep enough to exhaust the recursion limit, not deeper: tracemalloc walks the whole stack on
# every allocation, so a parser recursing 2000 deep under it takes minutes
DEEP = 600
YAML_VALUES = st.one_of(
    st.sampled_from(["1e-3", "[300, 300]", "[]", "true", "no", "null", "~", "3", "-1", "0.5", "bernoulli", "dynamic",
                     "2001-13-40", "2001-12-14 21:59:43.10 +99:00", "!!timestamp 2001-1-1t99:00:00",
                     "!!python/object/apply:os.system ['touch /tmp/pwned']", "!!python/name:os.system",
                     "!!binary AAAA", "!!binary !!!", "!!set {a, b}", "!!int 0x", "!!float abc", "!!str", "&x [1, 2]",
                     "*x", "*undefined", "{a: 1}", "'unterminated", '"\\x00"', '"\\ud800"', "1" * 5000, "9" * 400,
                     "0x", "0o9", ".nan", ".inf", "-.inf", "1:2:3", "[" * DEEP, "{" * DEEP, "- " * DEEP, "? [1, 2]",
                     ALIAS_BOMB, "[" * DEEP + "]" * DEEP,
                     "|\n  text", "!!map [1]", "<<: *x", "%YAML 9.9", "---\n---", "\t", "\x00", "\ufeff"]),
    st.integers().map(str), st.floats().map(str), st.text(max_size=20))


@st.composite
def yaml_texts(draw) -> bytes:
    """YAML-ish documents of config keys and hostile values (timestamps out of range, 5000-digit
    ints, python tags, aliases, deep nesting, alias bombs), random text and random bytes."""
    kind = draw(st.sampled_from(["document"] * 3 + ["sections", "text", "bytes", "bomb"]))
    if kind == "text":
        return draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    lines = []
    if kind == "bomb":  # the bomb's value under a real key, then more real keys holding part of it
        lines.append(f"{draw(st.sampled_from(CONFIG_KEYS))}: {ALIAS_BOMB}")
        lines += [f"{draw(st.sampled_from(CONFIG_KEYS))}: *{draw(st.sampled_from('abcdefghi'))}"
                  for _ in range(draw(st.integers(0, 3)))]
    for _ in range(draw(st.integers(0, 6))):
        line = f"{draw(KEYS)}: {draw(YAML_VALUES)}"
        if kind == "sections":
            line = f"{draw(st.sampled_from(['model', 'data', 'train']))}:\n  {line}"
        lines.append(line)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_yaml_config_files(full: bool) -> None:
    """load_yaml, then apply_overrides of what it read, as `vaelab train --config` does."""
    def body(case: tuple[bytes, str]) -> None:
        content, model = case
        with scratch() as folder:
            path = folder / "config.yaml"
            path.write_bytes(content)
            check("yaml", lambda: apply_overrides(default_configs(model), load_yaml(path)), len(content))

    fuzz("yaml", full, st.tuples(yaml_texts(), st.sampled_from(sorted(MODELS))), body)


OVERRIDES = st.lists(st.one_of(
    st.builds(lambda key, value: f"{key}={value}", KEYS, YAML_VALUES),
    st.text(max_size=30),
    st.sampled_from(["=", "=1", "lr", "lr==1", " = ", "lr=", "train.=1", ".lr=1", "a.b.c=1"]),
), max_size=6)


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_key_value_overrides(full: bool) -> None:
    """parse_overrides, then apply_overrides, as `vaelab train KEY=VALUE ...` does."""
    def body(case: tuple[list[str], str]) -> None:
        pairs, model = case
        size = sum(len(pair) for pair in pairs)
        check("overrides", lambda: apply_overrides(default_configs(model), parse_overrides(pairs)), size)

    fuzz("overrides", full, st.tuples(OVERRIDES, st.sampled_from(sorted(MODELS))), body)


PLAIN_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-10, 10**4), st.floats(),
                         st.text(max_size=12), st.binary(max_size=8), st.sampled_from(CONFIG_KEYS))
PYTHON_VALUES = st.recursive(PLAIN_VALUES, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=8), inner, max_size=3),
    st.frozensets(st.integers(), max_size=3)), max_leaves=12)
PYTHON_KEYS = st.one_of(KEYS, st.integers(), st.none(), st.booleans(), st.floats(), st.tuples(st.integers()))


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_apply_overrides(full: bool) -> None:
    """apply_overrides of random keys (dotted, sections, non-strings) and values of any type."""
    values = st.dictionaries(PYTHON_KEYS, st.one_of(PYTHON_VALUES, st.dictionaries(KEYS, PYTHON_VALUES, max_size=3)),
                             max_size=5)

    def body(case: tuple[dict, str]) -> None:
        updates, model = case
        check("apply-overrides", lambda: apply_overrides(default_configs(model), updates), 1 << 10)

    fuzz("apply-overrides", full, st.tuples(values, st.sampled_from(sorted(MODELS))), body)


# -- run directories -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny run: config.json, model.safetensors and its checkpoints."""
    folder = tmp_path_factory.mktemp("fuzz-run")
    data = write_images(folder / "tiny.npz", labels=True)
    run_dir = folder / "vae"
    assert train(run_dir, data, "--epochs", "2") == 0
    return run_dir


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)


@st.composite
def mutated_json(draw, value: Any) -> Any:
    """`value` (a JSON document) with a few entries deleted, replaced by any JSON, or added."""
    value = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, 4))):
        parent, key = None, None
        node = value
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 2)):
            parent = node
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            node = node[key]
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if parent is None:
            if op == "replace":
                value = draw(JSON_VALUES)
            elif isinstance(value, dict):
                value[draw(st.text(max_size=8))] = draw(JSON_VALUES)
            continue
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        elif isinstance(node, list):
            node.append(draw(JSON_VALUES))
    return value


HOSTILE_JSON = st.sampled_from(["[" * 100_000 + "]" * 100_000, "{\"a\":" * DEEP + "1" + "}" * DEEP,
                                "[" * DEEP + "]" * DEEP, "1" * 5000,
                                "NaN", "Infinity", "-Infinity", "\"\\ud800\"", "{\"model_name\": \"vae\"", "", "null"])


@st.composite
def json_files(draw, document: Any) -> bytes:
    """A JSON file: `document` mutated, hostile JSON (nesting 100,000 deep, 5000-digit ints, NaN),
    the document's text truncated or byte-mutated, random bytes (not UTF-8)."""
    kind = draw(st.sampled_from(["mutated"] * 4 + ["hostile", "text", "bytes", "truncated", "same"]))
    text = json.dumps(document)
    if kind == "mutated":
        return json.dumps(draw(mutated_json(document))).encode()
    if kind == "hostile":
        return draw(HOSTILE_JSON).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncated":
        return text.encode()[:draw(st.integers(0, len(text) - 1))]
    if kind == "text":
        return draw(mutated(text.encode()))
    return text.encode()


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_run_config_json(full: bool, tiny_run: Path) -> None:
    document = json.loads((tiny_run / checkpoint.CONFIG_FILE).read_text())

    def body(content: bytes) -> None:
        with scratch() as folder:
            (folder / checkpoint.CONFIG_FILE).write_bytes(content)
            check("run-config", lambda: checkpoint.load_run_config(folder), len(content))

    fuzz("run-config", full, json_files(document), body)


# -- safetensors files -----------------------------------------------------------------------------

def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def join_safetensors(header: dict[str, Any], body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


ST_DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "U16", "U32", "U64", "BOOL", "F8_E4M3",
             "F8_E5M2", "C64", "F4", "E8M0", "F6_E2M3", "garbage", "", 3]


@st.composite
def safetensors_files(draw, original: bytes, tensors: dict, can_recompute: bool) -> bytes:
    """A safetensors file: `original` with its metadata mutated (the state JSON, the checksum, the
    metadata itself), its tensor entries mutated (dtype, shape, offsets, names), its data or length
    prefix mutated, truncated, random bytes, or a pickle."""
    kind = draw(st.sampled_from(["metadata"] * 3 + ["tensors", "body", "prefix", "truncated", "random", "pickle",
                                                    "same"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "pickle":
        return b"\x80\x04\x95" + draw(st.binary(max_size=64)) + b"."
    if kind == "truncated":
        return original[:draw(st.integers(0, len(original) - 1))]
    if kind == "same":
        return original
    header, body = split_safetensors(original)
    if kind == "prefix":
        value = draw(st.sampled_from([0, 1, 7, 2**63, 2**64 - 1, 100 << 20, len(original)]))
        return value.to_bytes(8, "little") + original[8:]
    if kind == "body":
        body = draw(mutated(body)) if body else draw(st.binary(max_size=16))
        return join_safetensors(header, body)
    if kind == "tensors":
        names = [name for name in header if name != "__metadata__"]
        for _ in range(draw(st.integers(1, 3))):
            if not names:
                break
            name = draw(st.sampled_from(names))
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "delete", "rename", "extra"]))
            if field == "dtype":
                header[name]["dtype"] = draw(st.sampled_from(ST_DTYPES))
            elif field == "shape":
                header[name]["shape"] = draw(st.lists(st.one_of(st.integers(0, 8), HUGE_DIMS, st.integers(-2, -1)),
                                                      max_size=4))
            elif field == "data_offsets":
                header[name]["data_offsets"] = draw(st.lists(st.integers(0, len(body) * 2 + 8), min_size=2,
                                                             max_size=2))
            elif field == "delete":
                del header[name]
                names.remove(name)
            elif field == "rename":
                header[draw(st.text(min_size=1, max_size=8))] = header.pop(name)
                names.remove(name)
            else:
                header[draw(st.text(min_size=1, max_size=8))] = dict(header[name])
        return join_safetensors(header, body)
    metadata = header.get("__metadata__") or {}
    op = draw(st.sampled_from(["state", "state", "drop-state", "drop-checksum", "checksum", "drop", "non-string",
                               "not-a-dict"]))
    if op == "state" and "state" in metadata:
        state = json.loads(metadata["state"])
        metadata["state"] = draw(st.one_of(st.builds(json.dumps, mutated_json(state)), HOSTILE_JSON,
                                           st.text(max_size=20)))
    elif op == "drop-state":
        metadata.pop("state", None)
    elif op == "drop-checksum":
        metadata.pop(getattr(checkpoint, "CHECKSUM_KEY", "sha256"), None)
    elif op == "checksum":
        metadata[getattr(checkpoint, "CHECKSUM_KEY", "sha256")] = draw(st.text(max_size=64))
    elif op == "drop":
        header.pop("__metadata__", None)
        return join_safetensors(header, body)
    elif op == "non-string":
        metadata[draw(st.text(max_size=8))] = draw(JSON_VALUES)
    else:
        header["__metadata__"] = draw(JSON_VALUES)
        return join_safetensors(header, body)
    key = getattr(checkpoint, "CHECKSUM_KEY", "sha256")
    if can_recompute and key in metadata and op == "state" and draw(st.booleans()):
        metadata[key] = checkpoint.checksum(tensors, metadata)  # the mutated state gets parsed, not just refused
    header["__metadata__"] = metadata
    return join_safetensors(header, body)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / checkpoint.CHECKPOINT_DIR


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_training_state(full: bool, tiny_run: Path) -> None:
    """load_training_state of a run whose checkpoints/last.safetensors (and maybe previous) is hostile."""
    last = checkpoint_dir(tiny_run) / "last.safetensors"
    previous = checkpoint_dir(tiny_run) / "previous.safetensors"
    original = last.read_bytes()
    files = safetensors_files(original, load_file(str(last)), hasattr(checkpoint, "checksum"))
    plant_previous = st.sampled_from(["none", "real", "hostile"]) if previous.is_file() else st.just("none")

    def body(case: tuple[bytes, str, bytes]) -> None:
        content, previous_kind, previous_content = case
        with scratch() as folder:
            checkpoint_dir(folder).mkdir()
            (checkpoint_dir(folder) / "last.safetensors").write_bytes(content)
            if previous_kind == "real":
                shutil.copy(previous, checkpoint_dir(folder) / "previous.safetensors")
            elif previous_kind == "hostile":
                (checkpoint_dir(folder) / "previous.safetensors").write_bytes(previous_content)
            size = len(content) + len(previous_content) + len(original)
            with contextlib.redirect_stderr(io.StringIO()) as stderr:  # "warning: ... resuming from the previous"
                state = check("training-state", lambda: checkpoint.load_training_state(folder), size)
            assert state is None or isinstance(state, dict)
            assert all(line.startswith("warning: ") for line in stderr.getvalue().splitlines()), stderr.getvalue()

    fuzz("training-state", full, st.tuples(files, plant_previous, files), body)


@pytest.mark.parametrize("full", FULL, ids=full_ids)
def test_weights(full: bool, tiny_run: Path) -> None:
    """checkpoint.load of a run whose weights (final, best or last) are random, truncated or mutated."""
    kinds = {"final": tiny_run / checkpoint.WEIGHTS_FILE, "best": checkpoint_dir(tiny_run) / "best.safetensors"}
    if "last" in getattr(checkpoint, "CHECKPOINTS", ()):
        kinds["last"] = checkpoint_dir(tiny_run) / "last.safetensors"
    originals = {name: path.read_bytes() for name, path in kinds.items()}
    tensors = {name: load_file(str(path)) for name, path in kinds.items()}
    recompute = hasattr(checkpoint, "checksum")
    cases = st.sampled_from(sorted(kinds)).flatmap(
        lambda name: st.tuples(st.just(name), safetensors_files(originals[name], tensors[name], recompute)))

    def body(case: tuple[str, bytes]) -> None:
        name, content = case
        with scratch() as folder:
            shutil.copy(tiny_run / checkpoint.CONFIG_FILE, folder / checkpoint.CONFIG_FILE)
            path = folder / kinds[name].relative_to(tiny_run)
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            check("weights", lambda: checkpoint.load(folder, checkpoint=name), len(content) + len(originals[name]))

    fuzz("weights", full, cases, body)


@pytest.mark.fuzz
def test_full_run_saw_enough_inputs() -> None:
    """After the full run of every parser (this test runs last): at least FULL_TOTAL inputs in all."""
    if not all(sum(OUTCOMES[parser].values()) >= FULL_EXAMPLES for parser in PARSERS):
        pytest.skip("run the whole module with -m fuzz to count the inputs of every parser")
    total = sum(sum(counts.values()) for counts in OUTCOMES.values())
    assert total >= len(PARSERS) * FULL_EXAMPLES
    if FULL_EXAMPLES * len(PARSERS) >= FULL_TOTAL:  # not when VAELAB_FUZZ_EXAMPLES asks for a shorter run
        assert total >= FULL_TOTAL


# -- regression tests of the bugs the fuzzer found in checkpoint.py (see KNOWN_CHECKPOINT_BUGS) ------

def _config_dir(tmp_path: Path, content: bytes) -> Path:
    (tmp_path / checkpoint.CONFIG_FILE).write_bytes(content)
    return tmp_path


def test_run_config_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match=r"config\.json"):
        checkpoint.load_run_config(_config_dir(tmp_path, b"\x80\xff{}"))


def test_run_config_nested_too_deep(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match=r"config\.json"):
        checkpoint.load_run_config(_config_dir(tmp_path, b"[" * 100_000 + b"]" * 100_000))


def test_run_config_int_too_long(tmp_path: Path) -> None:
    with pytest.raises(VaelabError, match=r"config\.json"):
        checkpoint.load_run_config(_config_dir(tmp_path, b'{"model_name": "vae", "num_classes": ' + b"1" * 5000 + b"}"))


def test_training_state_nested_too_deep(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    checkpoint_dir(tmp_path).mkdir()
    save_file({"state/x": torch.zeros(1)}, str(checkpoint_dir(tmp_path) / "last.safetensors"),
              metadata={"state": "[" * 100_000 + "]" * 100_000})  # no checksum: as files written before them
    with pytest.raises(VaelabError):
        checkpoint.load_training_state(tmp_path)
