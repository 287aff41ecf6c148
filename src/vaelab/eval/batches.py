"""The one evaluation batch loop: a split in order, batch by batch, on the model's device, with
each batch's labels for a class-conditional model and a progress bar counting images."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaelab.data.datasets import Split
from vaelab.data.loader import BatchIterator
from vaelab.errors import VaelabError
from vaelab.memory import HeapTrimmer


def evaluation_batches(model: torch.nn.Module, split: Split, batch_size: int, *, desc: str,
                       progress: bool = False) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(x (B, C, H, W), label (B,) or None) for every batch of `split`, in order, on model.device.
    label is the batch's labels when the model is class-conditional and None otherwise, so a
    model's densities always receive the labels of the images they score."""
    conditional = bool(getattr(model, "conditional", False))
    if conditional and split.labels is None:
        raise VaelabError(f"a class-conditional {type(model).__name__} needs labelled data to be evaluated")
    device = getattr(model, "device", torch.device("cpu"))
    trimmer = HeapTrimmer()  # a long evaluation's resident memory stays bounded (vaelab.memory)
    with tqdm(total=len(split), disable=not progress, desc=desc, leave=False, unit="img") as bar:
        for batch in BatchIterator(split, batch_size, shuffle=False):
            batch = batch.to(device)
            yield batch.x, (batch.label if conditional else None)
            bar.update(len(batch))
            trimmer.maybe_trim()
