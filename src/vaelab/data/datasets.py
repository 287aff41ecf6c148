"""Image data sets as float32 tensors in [0, 1]: named ones (IDX), the embedded default, the user's files.

Every source ends up as an `ImageDataset` with a train and a test `Split` of images shaped
(N, C, H, W). Pixel models (binarization, dequantization) are applied later, see `pixels.py`.
"""

from __future__ import annotations

import io
import lzma
import math
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.lib.format as npy_format
import torch

from vaelab.data.idx import ByteStream, read_chunked, read_idx
from vaelab.data.sources import KNOWN_DATASETS, find_idx_files, resolve_dataset_dir
from vaelab.errors import DataError

DEFAULT_DATASET = "digits"
DIGITS_TEST_SIZE = 297  # 1797 images -> 1500 train / 297 test
TEST_FRACTION = 0.1  # held out as test when a user's data has no test split
SPLIT_SEED = 0  # seed of the fixed train/test splits; changing it changes every reported number
NPY_MAGIC = b"\x93NUMPY"  # numpy.lib.format.MAGIC_PREFIX
MAX_IMAGE_PIXELS = 1 << 24  # 4096 x 4096; a header claiming more is refused before decoding
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Split:
    """A set of images, with labels when the source has them."""

    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor | None = None  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"images must be (N, C, H, W), found shape {tuple(self.images.shape)}")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor | slice) -> Split:
        """The images (and labels) at `index`, a (K,) integer tensor or a slice."""
        labels = None if self.labels is None else self.labels[index]
        return Split(self.images[index], labels)


@dataclass
class ImageDataset:
    """A train and a test split and what is known about their source."""

    name: str
    train: Split
    test: Split
    levels: int | None = None  # grey levels of the source: 256 for 8-bit, 17 for sklearn digits, None for floats
    class_names: list[str] | None = None
    source: str | None = None  # where it was loaded from

    def __post_init__(self) -> None:
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train.images.shape[1:])} "
                f"but test images are {tuple(self.test.images.shape[1:])}"
            )
        if (self.train.labels is None) != (self.test.labels is None):
            raise DataError(f"{self.name}: labels are given for one split only; give them for both or neither")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        channels, height, width = self.train.images.shape[1:]
        return channels, height, width

    @property
    def num_classes(self) -> int | None:
        """Number of classes: from `class_names`, else the largest label + 1, else None (no labels)."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.train.labels is None:
            return None
        # __post_init__ makes the test split labelled whenever the training split is.
        labels = [split.labels for split in (self.train, self.test) if split.labels is not None]
        largest = max((int(split_labels.max()) for split_labels in labels if len(split_labels)), default=-1)
        return largest + 1


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """A permutation of range(n) fixed by `seed`, as a (n,) int64 tensor.

    Uses numpy's legacy RandomState, whose stream is frozen across numpy versions (NEP 19), so the
    train/test and validation splits, and the numbers measured on them, stay the same everywhere.
    """
    return torch.from_numpy(np.random.RandomState(seed).permutation(n)).long()


def holdout_validation(split: Split, size: int | float, seed: int) -> tuple[Split, Split]:
    """Split `split` into (rest, validation) by a seeded permutation; both keep the original order.

    `size` is a count (an int, or a whole float >= 1 such as 5000.0) or a fraction of len(split)
    (a float in [0, 1)); 0 gives an empty validation split. Use it on the training split only: the
    test split is never touched.
    """
    num_val = _validation_count(size, len(split))
    perm = seeded_permutation(len(split), seed)
    val_index, _ = perm[:num_val].sort()
    rest_index, _ = perm[num_val:].sort()
    return split.subset(rest_index), split.subset(val_index)


def _validation_count(size: int | float, n: int) -> int:
    """Number of validation images for `size` (count or fraction) out of `n`; DataError if it leaves
    no training image."""
    if isinstance(size, float) and 0 <= size < 1:
        count = round(size * n)
    elif isinstance(size, float) and size.is_integer():  # a count read from a float config field, e.g. 5000.0
        count = int(size)
    elif isinstance(size, int) and not isinstance(size, bool):
        count = size
    else:
        raise DataError(f"validation size must be a count or a fraction in [0, 1), found {size!r}")
    if count != 0 and not 0 < count < n:
        raise DataError(f"validation size {size!r} ({count} images) leaves no training images out of {n}")
    return count


def load_dataset(
    spec: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool | None = None,
) -> ImageDataset:
    """Load a data set by name (`fashion-mnist`, `mnist`, `digits`) or path (.npz, .npy, a folder).

    Names win over paths. Named IDX data sets are found as `sources.resolve_dataset_dir` describes
    (`data_dir`, `$VAELAB_DATA`, cache, system install, download). A path source without a test
    split gets a seeded 10% of its images held out as test.
    """
    key = str(spec).strip().lower().replace("_", "-")
    if key == DEFAULT_DATASET:
        return load_digits()
    if key in KNOWN_DATASETS:
        directory = resolve_dataset_dir(key, data_dir, download=download, progress=progress)
        return load_idx_folder(directory, key)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join([DEFAULT_DATASET, *KNOWN_DATASETS])
        raise DataError(f"unknown data set {spec!r}: not a known name ({known}) and no such file or folder")
    return _load_path(path)


def _load_path(path: Path) -> ImageDataset:
    """A user's .npz, .npy or folder (of images, or of the four IDX files)."""
    if path.is_dir():
        if find_idx_files(path) is not None:
            return load_idx_folder(path, path.name)
        return _load_image_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _dataset_from_arrays(path, *_read_npz(path))
    if suffix == ".npy":
        return _dataset_from_arrays(path, x_train=_read_npy(path))
    raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r} (expected .npz, .npy or a folder of images)")


def load_idx_folder(directory: str | os.PathLike[str], name: str) -> ImageDataset:
    """The four IDX files in `directory` (see `sources.IDX_FILES`) as an ImageDataset."""
    directory = Path(directory)
    files = find_idx_files(directory)
    if files is None:
        raise DataError(f"{directory}: does not hold the four IDX files of {name}")
    spec = KNOWN_DATASETS.get(name)
    class_names = list(spec.class_names) if spec else None
    splits, levels = {}, {}
    for split in ("train", "test"):
        images_path, labels_path = files[f"{split}_images"], files[f"{split}_labels"]
        images, levels[split] = images_from_array(read_idx(images_path), str(images_path))
        labels = labels_from_array(read_idx(labels_path), len(images), str(labels_path), class_names)
        splits[split] = Split(images, labels)
    if levels["train"] != levels["test"]:
        raise DataError(f"{directory}: train and test images differ in type "
                        f"(grey levels {levels['train']} vs {levels['test']})")
    return ImageDataset(name, splits["train"], splits["test"], levels["train"], class_names, str(directory))


def load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (17 grey levels, 0..16), split 1500 train / 297 test."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, only when used

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).float().div_(16).unsqueeze(1)  # (1797, 1, 8, 8)
    everything = Split(images, torch.from_numpy(bunch.target).long())
    train, test = holdout_validation(everything, DIGITS_TEST_SIZE, SPLIT_SEED)
    class_names = [str(digit) for digit in range(10)]
    return ImageDataset(DEFAULT_DATASET, train, test, 17, class_names, "sklearn.datasets.load_digits")


def images_from_array(array: np.ndarray, where: str) -> tuple[torch.Tensor, int | None]:
    """Images of any accepted layout and dtype as ((N, C, H, W) float32 in [0, 1], grey levels).

    Layouts: (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3} (channels-first is taken
    when both read as possible). Dtypes: uint8 (levels 256), bool (levels 2), float in [0, 1]
    (levels None). The result never shares memory with `array`. `where` names the source in errors.
    """
    array = np.asarray(array)
    if not (array.dtype in (np.uint8, np.bool_) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{where}: images must be uint8 (0..255) or float in [0, 1], found dtype {array.dtype}")
    layout = _layout(array.shape, where)
    if layout == "NHW":
        array = array[:, None]
    elif layout == "NHWC":
        array = array.transpose(0, 3, 1, 2)
    values = array.astype(np.float32, order="C")  # (N, C, H, W), one copy, native byte order
    if array.dtype == np.uint8:
        levels = 256
        np.divide(values, 255, out=values)
    elif array.dtype == np.bool_:
        levels = 2
    else:
        levels = None
        _check_unit_range(values, where)
    return torch.from_numpy(values), levels


def _layout(shape: tuple[int, ...], where: str) -> str:
    """'NHW', 'NCHW' or 'NHWC' for an images array of `shape`, or DataError."""
    if len(shape) == 3 and min(shape) > 0:
        return "NHW"
    if len(shape) == 4 and min(shape) > 0 and shape[1] in (1, 3):
        return "NCHW"
    if len(shape) == 4 and min(shape) > 0 and shape[3] in (1, 3):
        return "NHWC"
    raise DataError(
        f"{where}: expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C) with N > 0, H > 0, W > 0 "
        f"and C in {{1, 3}}, found shape {shape}"
    )


def _check_unit_range(array: np.ndarray, where: str) -> None:
    """DataError unless every value of a float array is finite and in [0, 1]."""
    if not np.isfinite(array).all():
        raise DataError(f"{where}: float images contain NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise DataError(
            f"{where}: float images must lie in [0, 1], found values in [{low:g}, {high:g}] "
            f"(store 8-bit images as uint8, or rescale)"
        )


def labels_from_array(
    array: np.ndarray, num_images: int, where: str, class_names: list[str] | None = None
) -> torch.Tensor:
    """Labels as a (N,) int64 tensor; DataError unless they are N non-negative integers (< len(class_names))."""
    array = np.asarray(array)
    if array.ndim != 1 or len(array) != num_images:
        raise DataError(f"{where}: expected {num_images} labels (one per image), found shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers, found dtype {array.dtype}")
    labels = torch.from_numpy(array.astype(np.int64))
    limit = len(class_names) if class_names is not None else None
    if len(labels) and (labels.min() < 0 or (limit is not None and labels.max() >= limit)):
        bound = f"0..{limit - 1}" if limit is not None else ">= 0"
        raise DataError(f"{where}: labels must be {bound}, found {int(labels.min())}..{int(labels.max())}")
    return labels


class _NpzArrays(NamedTuple):
    """The arrays of a .npz, in the order of `_dataset_from_arrays`'s arguments."""

    x_train: np.ndarray
    y_train: np.ndarray | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _read_npz(path: Path) -> _NpzArrays:
    """The arrays of a .npz as the leading arguments of `_dataset_from_arrays`.

    Keys are the member names without `.npy`, as numpy.load gives them. Every member is read with
    `_read_npy_stream` (never unpickled, never allocated beyond what the member really holds); a
    member that is not a .npy array is an error only when its key is used.
    """
    arrays: dict[str, np.ndarray | None] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                key = info.filename.removesuffix(".npy")
                with archive.open(info) as member:
                    arrays[key] = _read_npy_stream(member, f"{path}: cannot read .npz member {_name(info.filename)}",
                                                   npz_member=True)
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: cannot read .npz: {_one_line(e)}") from e

    def array(key: str) -> np.ndarray:
        value = arrays[key]
        if value is None:
            raise DataError(f"{path}: {_name(key)} is not a .npy array")
        return value

    def optional(key: str) -> np.ndarray | None:
        return array(key) if key in arrays else None

    keys = set(arrays)
    if keys & {"x_train", "x_test", "y_train", "y_test"}:
        if "x_train" not in keys:
            raise DataError(f"{path}: has {', '.join(map(_name, sorted(keys)))} but no x_train")
        if "x_test" not in keys and "y_test" in keys:
            raise DataError(f"{path}: has y_test but no x_test")
        return _NpzArrays(array("x_train"), optional("y_train"), optional("x_test"), optional("y_test"))
    if "images" in keys:
        return _NpzArrays(array("images"), y_train=optional("labels"))
    if len(keys) == 1:
        return _NpzArrays(array(keys.pop()))
    raise DataError(
        f"{path}: expected keys x_train/x_test (optional y_train/y_test), images (optional labels), "
        f"or a single array; found keys {', '.join(map(_name, sorted(keys))) or '(none)'}"
    )


# What reading a damaged zip archive can raise: zipfile's own errors, and those of its decompressors
# and of a member's extra fields (an unknown compression method, an encrypted member, a bad filename).
ZIP_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, struct.error,
              NotImplementedError, RuntimeError)


# .npy format version -> header reader; 3.0 differs from 2.0 only in the header's encoding (UTF-8
# field names, which no array vaelab can use has)
NPY_HEADER_READERS: dict[tuple[int, ...], Callable[[ByteStream], tuple[tuple[int, ...], bool, np.dtype]]] = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
    (3, 0): npy_format.read_array_header_2_0,
}


def _read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file (never unpickled)."""
    try:
        with open(path, "rb") as stream:
            array = _read_npy_stream(stream, f"{path}: cannot read .npy")
    except OSError as e:
        raise DataError(f"{path}: cannot read .npy: {e.strerror or e}") from e
    assert array is not None  # only an npz member may be something other than an array
    return array


def _one_line(error: BaseException | str) -> str:
    """An error's text on one line (numpy's and zipfile's messages can span several, and quote the file)."""
    return " ".join(str(error).split())


def _name(key: str) -> str:
    """An npz member name for a message: as is when printable, else its repr (no newline from a file)."""
    return key if key.isprintable() else repr(key)


def _read_npy_stream(stream: ByteStream, where: str, npz_member: bool = False) -> np.ndarray | None:
    """The array of a .npy stream (a file or an npz member), in the .npy format of numpy.lib.format.

    The header is read and checked first: no object dtype (that would need unpickling), no negative
    dimension. The data is then read in chunks up to the size the header claims, so a header claiming
    gigabytes costs only the bytes really there before the DataError saying the data is short; only
    then does numpy.load (allow_pickle=False) parse the bytes read.
    An npz member that does not start with the .npy magic gives None (numpy.load returns its bytes).
    """
    magic = read_chunked(stream, len(NPY_MAGIC))
    if magic != NPY_MAGIC:
        if npz_member:
            return None
        raise DataError(f"{where}: not a .npy file (it does not start with the .npy magic string; "
                        "vaelab never reads pickled data)")
    version = tuple(read_chunked(stream, 2))
    read_header = NPY_HEADER_READERS.get(version)
    if read_header is None:
        raise DataError(f"{where}: unsupported .npy format version {'.'.join(map(str, version)) or '(none)'}")
    length = read_chunked(stream, 2 if version == (1, 0) else 4)
    header = bytes(length + read_chunked(stream, int.from_bytes(length, "little")))
    try:
        shape, _, dtype = read_header(io.BytesIO(header))
    except Exception as e:  # numpy's parser of the header text: ValueError, SyntaxError, tokenize.TokenError, ...
        raise DataError(f"{where}: invalid .npy header: {_one_line(e)}") from e
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (dtype {dtype}); vaelab never unpickles data, "
                        "save numeric arrays (uint8, bool or float)")
    if any(size < 0 for size in shape):
        raise DataError(f"{where}: .npy header gives a negative dimension, shape {shape}")
    if dtype.itemsize == 0:
        raise DataError(f"{where}: .npy dtype {dtype} has zero-size items")
    nbytes = math.prod(shape) * dtype.itemsize
    data = read_chunked(stream, nbytes + 1)
    if len(data) < nbytes:
        raise DataError(f"{where}: truncated .npy data: header says shape {shape} of {dtype} "
                        f"({nbytes} bytes), found {len(data)} bytes")
    if len(data) > nbytes:
        raise DataError(f"{where}: data continues after the array of shape {shape} of {dtype} ({nbytes} bytes)")
    try:  # the checked bytes, now known to hold what the header says
        return np.load(io.BytesIO(NPY_MAGIC + bytes(version) + header + data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{where}: {_one_line(e)}") from e


def _dataset_from_arrays(
    path: Path,
    x_train: np.ndarray,
    y_train: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> ImageDataset:
    """An ImageDataset from arrays; without x_test, a seeded TEST_FRACTION of x_train becomes the test split."""
    train_where = f"{path} (x_train)" if x_test is not None else str(path)
    train, levels = _split_from_arrays(x_train, y_train, train_where, class_names)
    if x_test is None:
        train, test = _hold_out_test(train, path)
    else:
        test, test_levels = _split_from_arrays(x_test, y_test, f"{path} (x_test)", class_names)
        if test_levels != levels:
            raise DataError(f"{path}: x_train and x_test differ in dtype ({x_train.dtype} vs {x_test.dtype})")
    return ImageDataset(path.stem, train, test, levels, class_names, str(path))


def _split_from_arrays(
    images: np.ndarray, labels: np.ndarray | None, where: str, class_names: list[str] | None
) -> tuple[Split, int | None]:
    """One Split (and its grey levels) from an images array and an optional labels array."""
    tensor, levels = images_from_array(images, where)
    label_tensor = None if labels is None else labels_from_array(labels, len(tensor), f"{where} labels", class_names)
    return Split(tensor, label_tensor), levels


def _hold_out_test(split: Split, path: Path) -> tuple[Split, Split]:
    """(train, test) with a seeded TEST_FRACTION (at least one image) as test."""
    if len(split) < 2:
        raise DataError(f"{path}: need at least 2 images to hold out a test split, found {len(split)}")
    num_test = min(max(round(TEST_FRACTION * len(split)), 1), len(split) - 1)
    return holdout_validation(split, num_test, SPLIT_SEED)


def _load_image_folder(folder: Path) -> ImageDataset:
    """A folder of images; images in subfolders get the (sorted) subfolder names as class labels."""
    files, labels, class_names = _list_image_folder(folder)
    pixels = _read_images(files, folder)  # (N, C, H, W) uint8: channels-first, never ambiguous
    return _dataset_from_arrays(folder, pixels, labels, class_names=class_names)


def _list_image_folder(folder: Path) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """(image files, labels or None, class names or None) of a folder of images."""
    top = _images_in(folder)
    class_dirs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".") and _images_in(d)]
    if top and class_dirs:
        raise DataError(
            f"{folder}: found images both in the folder and in subfolders ({class_dirs[0].name}/...); "
            "put every image in a class subfolder, or none"
        )
    if top:
        return top, None, None
    if not class_dirs:
        raise DataError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, also one subfolder deep)")
    per_class = [_images_in(d) for d in class_dirs]
    labels = np.repeat(np.arange(len(class_dirs)), [len(files) for files in per_class])
    return [f for files in per_class for f in files], labels, [d.name for d in class_dirs]


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name, hidden files skipped."""
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _read_images(files: list[Path], folder: Path) -> np.ndarray:
    """Decode image files into one (N, C, H, W) uint8 array; C is 1 when every image is grey.

    Each image is decoded as RGB (alpha dropped, palettes expanded); when all three channels are
    equal in every image, the data set is grey and one channel is kept.
    """
    from PIL import Image  # only needed for image folders

    decoded: list[np.ndarray] = []
    for path in files:  # file I/O, once at load; not a hot path
        try:
            with warnings.catch_warnings():  # the size check below refuses such images, with a clearer message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
            with image:
                width, height = image.size  # from the header: nothing is decoded yet
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: image is {width}x{height}, more than the {MAX_IMAGE_PIXELS} pixels "
                                    "vaelab reads from one image file")
                rgb = np.asarray(image.convert("RGB"))  # (H, W, 3)
        except DataError:
            raise
        except Exception as e:  # a damaged file: Pillow's decoders raise OSError, SyntaxError, ValueError, ...
            raise DataError(f"{path}: cannot read image: {type(e).__name__}: {_one_line(e)}") from e
        if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise DataError(f"{path}: image has no pixels (size {rgb.shape[1::-1]})")
        if decoded and rgb.shape != decoded[0].shape:
            (height, width), (first_height, first_width) = rgb.shape[:2], decoded[0].shape[:2]
            raise DataError(
                f"{path}: image is {width}x{height} but {files[0].name} is {first_width}x{first_height}; "
                f"all images in {folder} must have the same size"
            )
        decoded.append(rgb)
    pixels = np.stack(decoded)  # (N, H, W, 3)
    is_grey = (pixels[..., :1] == pixels[..., 1:]).all()
    pixels = pixels[..., :1] if is_grey else pixels
    return pixels.transpose(0, 3, 1, 2)  # (N, C, H, W)


def describe(dataset: ImageDataset) -> str:
    """A few lines about `dataset`, for `vaelab data NAME`."""
    channels, height, width = dataset.image_shape
    classes = "none (unlabelled)" if dataset.num_classes is None else str(dataset.num_classes)
    if dataset.class_names:
        classes += ": " + ", ".join(dataset.class_names)
    lines = [
        f"data set:   {dataset.name}",
        f"source:     {dataset.source or 'unknown'}",
        f"train:      {len(dataset.train)} images",
        f"test:       {len(dataset.test)} images",
        f"image:      {channels} x {height} x {width} (C x H x W)",
        f"levels:     {dataset.levels if dataset.levels is not None else 'continuous (float data)'}",
        f"classes:    {classes}",
        f"pixel mean: {dataset.train.images.mean().item():.4f} (train)",
    ]
    return "\n".join(lines)
