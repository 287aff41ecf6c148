"""Minibatches from an in-memory Split: seeded, resumable mid-epoch, no per-sample Python.

Every random draw of an epoch comes from `derive_seed`:
- the epoch's order is `torch.randperm(N)` with a generator seeded by `derive_seed(seed, epoch)`;
- batch b's transform (binarization, dequantization) gets a generator seeded by
  `derive_seed(seed, epoch, b)`.
So batch b of epoch e is a pure function of (seed, e, b): starting at `start_batch=b` after a
restart gives exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vaelab.data.datasets import Split
from vaelab.errors import DataError


def derive_seed(*values: int) -> int:
    """A 64-bit seed mixed from non-negative ints by numpy's SeedSequence.

    The tuple's length is appended before mixing, because SeedSequence ignores trailing zeros
    (SeedSequence([1, 0]) == SeedSequence([1])); with it, different tuples give different seeds.
    """
    if any(v < 0 for v in values):
        raise DataError(f"seeds must be non-negative integers, found {values}")
    state = np.random.SeedSequence([*values, len(values)]).generate_state(1, dtype=np.uint64)
    return int(state[0])


@dataclass
class Batch:
    """One minibatch."""

    x: torch.Tensor  # (B, C, H, W)
    label: torch.Tensor | None = None  # (B,) int64 class labels

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """This batch on `device`."""
        label = None if self.label is None else self.label.to(device, non_blocking=non_blocking)
        return Batch(self.x.to(device, non_blocking=non_blocking), label)

    def __len__(self) -> int:
        return self.x.shape[0]


class BatchIterator:
    """Iterate over one epoch of `split` in minibatches, starting at batch `start_batch`.

    shuffle=False keeps the split's order (evaluation). `transform(x, generator)` is applied to
    each batch with that batch's own generator (see the module docstring), made on the device of
    the split's images, so a split moved to the GPU once is batched and binarized there. The
    order is always drawn on the CPU, so it is the same on every device. The last batch is
    smaller unless `drop_last`.

    `shard=(rank, processes)` (distributed training) yields only this process's contiguous share
    of every batch, cut after the transform: the processes' shards together are exactly the batches
    of a one-process run, binarization included.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        drop_last: bool = False,
        start_batch: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, found {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.transform = transform
        self.drop_last = drop_last
        if not 0 <= start_batch <= len(self):
            raise DataError(f"start_batch {start_batch} is outside 0..{len(self)} (batches in an epoch)")
        self.start_batch = start_batch
        rank, processes = shard
        if not 0 <= rank < processes:
            raise DataError(f"shard {shard} is not (rank, processes) with 0 <= rank < processes")
        self.shard = shard

    def __len__(self) -> int:
        """Batches in a whole epoch, counted from batch 0 whatever `start_batch` is."""
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        """The epoch's order of sample indices, (N,) int64."""
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        device = self.split.images.device
        order = self.order().to(device)  # (N,)
        for b in range(self.start_batch, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]  # (B,)
            # (B, C, H, W), a copy: safe to modify. index_select copies whole rows; advanced
            # indexing's general gather was slower for a batch of 128 images.
            x = torch.index_select(self.split.images, 0, index)
            label = None if self.split.labels is None else torch.index_select(self.split.labels, 0, index)
            if self.transform is not None:
                generator = torch.Generator(device=device).manual_seed(derive_seed(self.seed, self.epoch, b))
                x = self.transform(x, generator)
            rows = contiguous_share(len(x), *self.shard)
            yield Batch(x[rows], None if label is None else label[rows])


def contiguous_share(count: int, part: int, parts: int) -> slice:
    """Part `part` of 0..count-1 cut into `parts` contiguous pieces whose sizes differ by at most
    one (the earlier parts take the extra items); the pieces in order cover every item once."""
    base, extra = divmod(count, parts)
    start = part * base + min(part, extra)
    return slice(start, start + base + (part < extra))
