"""The data layer: data sets as tensors, pixel models and seeded, resumable minibatches."""

from vaelab.data.datasets import (
    DEFAULT_DATASET,
    ImageDataset,
    Split,
    describe,
    holdout_validation,
    load_dataset,
)
from vaelab.data.idx import read_idx, write_idx
from vaelab.data.loader import Batch, BatchIterator, derive_seed
from vaelab.data.pixels import PIXEL_MODELS, batch_transform, fixed_view
from vaelab.data.sources import KNOWN_DATASETS, cache_dir, resolve_dataset_dir

__all__ = [
    "DEFAULT_DATASET",
    "KNOWN_DATASETS",
    "PIXEL_MODELS",
    "Batch",
    "BatchIterator",
    "ImageDataset",
    "Split",
    "batch_transform",
    "cache_dir",
    "derive_seed",
    "describe",
    "fixed_view",
    "holdout_validation",
    "load_dataset",
    "read_idx",
    "resolve_dataset_dir",
    "write_idx",
]
