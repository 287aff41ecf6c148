"""Loading data sets: the embedded default, IDX folders, .npz/.npy files, image folders, splits."""

from __future__ import annotations

import io
import re
import struct
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.data import DEFAULT_DATASET, Split, describe, holdout_validation, load_dataset
from vaelab.errors import DataError


def test_digits_default() -> None:
    dataset = load_dataset(DEFAULT_DATASET)
    assert DEFAULT_DATASET == "digits" and dataset.name == "digits"
    assert (len(dataset.train), len(dataset.test)) == (1500, 297)
    assert dataset.image_shape == (1, 8, 8) and dataset.levels == 17 and dataset.num_classes == 10
    assert dataset.train.images.dtype == torch.float32 and dataset.train.labels.dtype == torch.int64
    assert 0 <= dataset.train.images.min() and dataset.train.images.max() == 1
    assert torch.equal(torch.unique(dataset.test.images * 16), torch.arange(17.0))  # exactly k / 16
    again = load_dataset("digits")
    assert torch.equal(again.test.images, dataset.test.images)  # the split is fixed


def test_idx_folder_as_path(tmp_path: Path, make_idx_dir) -> None:
    arrays = make_idx_dir(tmp_path / "fashion-mnist")
    dataset = load_dataset(str(tmp_path / "fashion-mnist"))
    assert dataset.image_shape == (1, 6, 5) and dataset.levels == 256 and dataset.num_classes == 10
    np.testing.assert_allclose(dataset.train.images[:, 0].numpy(), arrays["train_images"] / 255, rtol=1e-6)
    assert dataset.train.images.is_contiguous()


def test_npz_with_train_and_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    x_train = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)  # (N, H, W, C)
    np.savez(path, x_train=x_train, x_test=x_train[:3], y_train=np.arange(10) % 4, y_test=np.array([0, 1, 2]))
    dataset = load_dataset(str(path))
    assert dataset.name == "mine" and dataset.source == str(path)
    assert (len(dataset.train), len(dataset.test), dataset.image_shape) == (10, 3, (3, 4, 4))
    assert dataset.levels == 256 and dataset.num_classes == 4 and dataset.class_names is None
    np.testing.assert_allclose(dataset.train.images.numpy(), x_train.transpose(0, 3, 1, 2) / 255, rtol=1e-6)


def test_npz_images_and_labels_hold_out_ten_percent(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    images = np.linspace(0, 1, 20 * 2 * 9, dtype=np.float32).reshape(20, 1, 3, 6)  # (N, C, H, W)
    np.savez(path, images=images, labels=np.arange(20))
    dataset = load_dataset(str(path))
    assert (len(dataset.train), len(dataset.test), dataset.levels) == (18, 2, None)
    both = torch.cat([dataset.train.labels, dataset.test.labels])
    assert sorted(both.tolist()) == list(range(20))
    assert torch.equal(dataset.test.images, torch.from_numpy(images)[dataset.test.labels])
    assert torch.equal(load_dataset(str(path)).test.labels, dataset.test.labels)


def test_npy_single_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "grey.npy", np.full((30, 5, 5), 0.5, dtype=np.float64))
    np.save(tmp_path / "binary.npy", np.eye(4, dtype=bool)[None].repeat(10, axis=0))
    grey = load_dataset(str(tmp_path / "grey.npy"))
    assert (len(grey.train), len(grey.test), grey.image_shape) == (27, 3, (1, 5, 5))
    assert grey.train.labels is None and grey.num_classes is None and grey.levels is None
    binary = load_dataset(str(tmp_path / "binary.npy"))
    assert binary.levels == 2 and binary.train.images.sum() == 4 * len(binary.train)


BAD_ARRAYS = {
    "float above 1": (np.full((4, 3, 3), 2.0), "must lie in \\[0, 1\\], found values in \\[2, 2\\]"),
    "nan": (np.full((4, 3, 3), np.nan), "NaN"),
    "int64": (np.zeros((4, 3, 3), dtype=np.int64), "found dtype int64"),
    "2-D": (np.zeros((4, 9), dtype=np.uint8), "found shape \\(4, 9\\)"),
    "two channels": (np.zeros((4, 2, 3, 2), dtype=np.uint8), "C in \\{1, 3\\}"),
    "no images": (np.zeros((0, 3, 3), dtype=np.uint8), "N > 0"),
    # found by tests/test_fuzz.py: float images of height 0 raised numpy's ValueError (min of an empty
    # array), uint8 ones gave a data set of empty images
    "zero height float": (np.zeros((4, 0, 3), dtype=np.float32), "H > 0, W > 0"),
    "zero width uint8": (np.zeros((4, 1, 3, 0), dtype=np.uint8), "H > 0, W > 0"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS, ids=list(BAD_ARRAYS))
def test_bad_arrays(tmp_path: Path, case: str) -> None:
    array, message = BAD_ARRAYS[case]
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message) as error:
        load_dataset(str(tmp_path / "bad.npy"))
    assert str(tmp_path / "bad.npy") in str(error.value)


BAD_NPZ = {
    "label count": ({"images": np.zeros((5, 3, 3), np.uint8), "labels": np.arange(4)}, "expected 5 labels"),
    "float labels": ({"images": np.zeros((5, 3, 3), np.uint8), "labels": np.zeros(5)}, "labels must be integers"),
    "negative labels": ({"images": np.zeros((5, 3, 3), np.uint8), "labels": -np.ones(5, int)}, "labels must be >= 0"),
    "unknown keys": ({"a": np.zeros(3), "b": np.zeros(3)}, "found keys a, b"),
    "x_test only": ({"x_test": np.zeros((5, 3, 3), np.uint8)}, "no x_train"),
    "sizes differ": ({"x_train": np.zeros((5, 3, 3), np.uint8), "x_test": np.zeros((5, 4, 3), np.uint8)}, "test images are"),
    "one-sided labels": (
        {"x_train": np.zeros((5, 3, 3), np.uint8), "x_test": np.zeros((2, 3, 3), np.uint8), "y_train": np.zeros(5, int)},
        "labels are given for one split only",
    ),
    "object array": ({"x_train": np.array([None, 1], dtype=object)}, "cannot read .npz"),
}


@pytest.mark.parametrize("case", BAD_NPZ, ids=list(BAD_NPZ))
def test_bad_npz(tmp_path: Path, case: str) -> None:
    arrays, message = BAD_NPZ[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: cannot read .npz"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_unsupported_file_and_unknown_name(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_dataset(str(tmp_path / "data.csv"))
    with pytest.raises(DataError, match="not a known name \\(digits, fashion-mnist, mnist\\)"):
        load_dataset("cifar-100")


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for class_name, count in (("zebra", 4), ("ant", 6), ("moth", 10)):
        for i in range(count):
            _save_png(tmp_path / "imgs" / class_name / f"{i}.png", rng.integers(0, 256, (5, 7), dtype=np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    dataset = load_dataset(str(tmp_path / "imgs"))
    assert dataset.class_names == ["ant", "moth", "zebra"] and dataset.image_shape == (1, 5, 7)
    assert (len(dataset.train), len(dataset.test), dataset.levels) == (18, 2, 256)
    counts = torch.bincount(torch.cat([dataset.train.labels, dataset.test.labels]))
    assert counts.tolist() == [6, 10, 4]


def test_flat_colour_folder(tmp_path: Path) -> None:
    pixels = np.zeros((3, 4, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # red
    for i in range(10):
        _save_png(tmp_path / "flat" / f"{i:02d}.png", pixels)
    dataset = load_dataset(str(tmp_path / "flat"))
    assert dataset.image_shape == (3, 3, 4) and dataset.train.labels is None
    assert dataset.train.images[:, 0].min() == 1 and dataset.train.images[:, 1:].max() == 0


def test_image_folder_errors(tmp_path: Path) -> None:
    _save_png(tmp_path / "sizes" / "a.png", np.zeros((4, 4), np.uint8))
    _save_png(tmp_path / "sizes" / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match="b.png: image is 4x5 but a.png is 4x4"):
        load_dataset(str(tmp_path / "sizes"))
    _save_png(tmp_path / "mixed" / "a.png", np.zeros((4, 4), np.uint8))
    _save_png(tmp_path / "mixed" / "cls" / "b.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="both in the folder and in subfolders"):
        load_dataset(str(tmp_path / "mixed"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="a.png: cannot read image"):
        load_dataset(str(tmp_path / "junk"))


# -- hostile files found by tests/test_fuzz.py: one DataError line each, no huge allocation ------------

def _npy_header(shape: str, descr: str = "|u1", version: int = 1) -> bytes:
    """A .npy preamble with header text for `shape` and `descr` (checked by nothing but the reader)."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    length = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header


def _peak_traced_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _one_data_error(path: Path, match: str) -> DataError:
    with pytest.raises(DataError, match=match) as error:
        load_dataset(str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    return error.value


def test_npy_header_claiming_a_gigabyte_allocates_nothing(tmp_path: Path) -> None:
    """numpy.load allocated the claimed 1e9 bytes (np.fromfile) before finding 100 bytes of data."""
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy_header("(100000, 100, 100)") + bytes(100))
    peak = _peak_traced_bytes(lambda: _one_data_error(path, "truncated .npy data: header says shape "
                                                            "\\(100000, 100, 100\\) of uint8 \\(1000000000 bytes\\), "
                                                            "found 100 bytes"))
    assert peak < 16 << 20


def test_npz_member_claiming_a_gigabyte_allocates_nothing(tmp_path: Path) -> None:
    """numpy allocated an ndarray of the claimed size before reading an npz member."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", _npy_header("(100000, 100, 100)") + bytes(100))
    peak = _peak_traced_bytes(lambda: _one_data_error(path, "cannot read .npz member x_train.npy: truncated"))
    assert peak < 16 << 20


BAD_NPY_HEADERS = {
    # numpy's fallback header parser (for Python 2 files) raised tokenize.TokenError on a NUL byte
    "nul byte": (_npy_header("(2, 0, 0)").replace(b"'shape", b"'shape\x00\x00"), "invalid .npy header"),
    "negative dimension": (_npy_header("(-1, 2, 2)") + bytes(16), "negative dimension, shape \\(-1, 2, 2\\)"),
    # numpy's message for a header over 10,000 characters spans three lines
    "header too long": (_npy_header("(2,)" + " " * 20000, version=2), "invalid .npy header: Header info length"),
    "object dtype": (_npy_header("(2,)", descr="|O") + bytes(16), "holds Python objects"),
    "zero-size dtype": (_npy_header("(2,)", descr="|V0"), "zero-size items"),
    "unknown version": (b"\x93NUMPY\x09\x00" + bytes(64), "unsupported .npy format version 9.0"),
    "trailing data": (_npy_header("(2,)") + bytes(3), "data continues after the array"),
    "pickle": (b"\x80\x04\x95\x00", "not a .npy file"),
}


@pytest.mark.parametrize("case", BAD_NPY_HEADERS, ids=list(BAD_NPY_HEADERS))
def test_bad_npy_headers(tmp_path: Path, case: str) -> None:
    content, message = BAD_NPY_HEADERS[case]
    (tmp_path / "bad.npy").write_bytes(content)
    _one_data_error(tmp_path / "bad.npy", message)


def _zip_with_method(path: Path, method: int = zipfile.ZIP_DEFLATED, flags: int | None = None) -> None:
    """An npz of one good x_train, then its compression method or flags overwritten in both headers."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((4, 3, 3), np.uint8))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", buffer.getvalue())
    data = bytearray(path.read_bytes())
    for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = data.find(signature)
        if flags is not None:
            data[start + at:start + at + 2] = struct.pack("<H", flags)
        data[start + at + 2:start + at + 4] = struct.pack("<H", method)
    path.write_bytes(bytes(data))


def test_npz_members_zipfile_cannot_read(tmp_path: Path) -> None:
    """zipfile raised NotImplementedError (compression method 99) and RuntimeError (an encrypted
    member), which load_dataset let through."""
    _zip_with_method(tmp_path / "method.npz", method=99)
    _one_data_error(tmp_path / "method.npz", "cannot read .npz: .*compression method")
    _zip_with_method(tmp_path / "encrypted.npz", flags=1)
    _one_data_error(tmp_path / "encrypted.npz", "cannot read .npz: .*encrypted")


def test_npz_member_names_stay_on_one_line(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "names.npz", "w") as archive:
        archive.writestr("a\nb.npy", b"\x93NUMPY\x01\x00" + bytes(4))
        archive.writestr("c\rd", b"junk")
    _one_data_error(tmp_path / "names.npz", re.escape("member 'a\\nb.npy': invalid .npy header"))


def _claimed_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels, with 100 zero bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100)))
            + chunk(b"IEND", b""))


def test_png_headers_claiming_huge_images(tmp_path: Path) -> None:
    """20000x20000: Pillow's DecompressionBombError (not an OSError) went through; 10000x10000: Pillow
    warned, then allocated 100 MB before finding the data short. Now refused before decoding."""
    for size in (20000, 10000):
        folder = tmp_path / str(size)
        folder.mkdir()
        (folder / "a.png").write_bytes(_claimed_png(size, size))
        (folder / "b.png").write_bytes(_claimed_png(2, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning either
            error = _one_data_error(folder, "a.png: ")
        assert "DecompressionBomb" in str(error) or "more than the 16777216 pixels" in str(error)


def _labelled_split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1) / n, torch.arange(n))


def test_holdout_validation_is_disjoint_and_deterministic() -> None:
    split = _labelled_split(100)
    rest, val = holdout_validation(split, 0.2, seed=3)
    assert (len(rest), len(val)) == (80, 20)
    assert sorted(torch.cat([rest.labels, val.labels]).tolist()) == list(range(100))
    torch.testing.assert_close(val.images.flatten() * 100, val.labels.float())  # images travel with their labels
    assert torch.equal(holdout_validation(split, 20, seed=3)[1].labels, val.labels)
    assert torch.equal(holdout_validation(split, 20.0, seed=3)[1].labels, val.labels)  # a count from a float field
    assert not torch.equal(holdout_validation(split, 20, seed=4)[1].labels, val.labels)
    assert len(holdout_validation(split, 0, seed=3)[1]) == 0


@pytest.mark.parametrize("size", [100, 100.0, 2.5, -1, -0.1, True, "10"])
def test_holdout_validation_bad_size(size) -> None:
    with pytest.raises(DataError, match="validation size"):
        holdout_validation(_labelled_split(100), size, seed=0)


def test_describe() -> None:
    text = describe(load_dataset("digits"))
    for expected in ("digits", "sklearn", "1500 images", "297 images", "1 x 8 x 8", "17", "pixel mean"):
        assert expected in text


def test_real_fashion_mnist(real_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAELAB_DATA", str(real_data_dir))
    dataset = load_dataset("fashion-mnist", download=False)
    assert (len(dataset.train), len(dataset.test), dataset.image_shape) == (60000, 10000, (1, 28, 28))
    assert dataset.levels == 256 and dataset.num_classes == 10 and dataset.class_names[9] == "Ankle boot"
    assert torch.equal(torch.bincount(dataset.test.labels), torch.full((10,), 1000))
    assert abs(dataset.train.images.mean().item() - 0.2860) < 1e-3
