"""Glue between configs and data: which splits a run trains, validates and evaluates on."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.data.datasets import ImageDataset, Split, holdout_validation, load_dataset
from vaelab.data.pixels import fixed_view
from vaelab.errors import DataError

# Evaluation data under a stochastic pixel model is drawn once from this offset of split_seed, so
# every model evaluated on the same data config sees the very same binarized test images.
_EVAL_SEED_OFFSET = {"train": 1, "val": 2, "test": 3}


def load_data(data: DataConfig) -> ImageDataset:
    return load_dataset(data.name, data.data_dir)


def _validation_size(data: DataConfig) -> int | float:
    """val_size below 1 is a fraction of the training split, otherwise a count of images."""
    return data.val_size if data.val_size < 1 else int(data.val_size)


def training_splits(dataset: ImageDataset, data: DataConfig) -> tuple[Split, Split]:
    """(train, validation): the validation split is held out of the training split (the test split
    is untouched until evaluation) and fixed once; under binarize=fixed the training split is
    binarized once as well (the same draw as its evaluation view)."""
    train, val = raw_split(dataset, data, "train"), raw_split(dataset, data, "val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"val_size={data.val_size} leaves an empty split of {len(dataset.train)} training images")
    if data.pixel_model == "fixed":
        train = deterministic_view(train, data, "train", dataset.levels)
    return train, deterministic_view(val, data, "val", dataset.levels)


def raw_split(dataset: ImageDataset, data: DataConfig, split: str) -> Split:
    """The train, val or test split as the data set holds it (continuous pixels, no pixel model)."""
    if split == "test":
        return dataset.test
    if split in ("train", "val"):
        train, val = holdout_validation(dataset.train, _validation_size(data), seed=data.split_seed)
        return train if split == "train" else val
    raise DataError(f"split must be train, val or test, got {split!r}")


def deterministic_view(split: Split, data: DataConfig, name: str, levels: int | None) -> Split:
    """`split` (the train, val or test split named `name`) under the run's pixel model, drawn once
    from split_seed + the split's offset: the one definition of what evaluation, validation and
    post-training fits (an AE's latent density) see. Binary images stay as they are, so applying it
    to an already binarized training split changes nothing."""
    return fixed_view(split, data.pixel_model, levels, seed=data.split_seed + _EVAL_SEED_OFFSET[name])


def evaluation_split(dataset: ImageDataset, data: DataConfig, split: str) -> Split:
    """The deterministic view of `split` (train, val or test) that evaluation scores."""
    return deterministic_view(raw_split(dataset, data, split), data, split, dataset.levels)


def sha256_of_tensor(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (C order, on the CPU)."""
    array = np.ascontiguousarray(tensor.detach().cpu().numpy())
    return hashlib.sha256(array.view(np.uint8).reshape(-1).data).hexdigest()


def data_identity(dataset: ImageDataset) -> dict[str, Any]:
    """What makes a data set the same data set wherever it is found: its name, image shape, grey
    levels and the SHA-256 of every split's images and labels (saved with a run, checked on resume)."""
    identity: dict[str, Any] = {"name": dataset.name, "image_shape": list(dataset.image_shape),
                                "levels": dataset.levels}
    for name, split in (("train", dataset.train), ("test", dataset.test)):
        identity[f"{name}_images_sha256"] = sha256_of_tensor(split.images)
        identity[f"{name}_labels_sha256"] = None if split.labels is None else sha256_of_tensor(split.labels)
    return identity
