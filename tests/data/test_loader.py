"""BatchIterator: coverage, seeded order, and exact mid-epoch resumption."""

from __future__ import annotations

import pytest
import torch

from vaelab.data import Batch, BatchIterator, Split, batch_transform, derive_seed
from vaelab.errors import DataError


def _split(n: int = 103) -> Split:
    """Image i has every pixel equal to i / n, label i: a batch tells which samples it holds."""
    return Split((torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).expand(n, 1, 3, 3).contiguous(), torch.arange(n))


def _labels(iterator: BatchIterator) -> list[torch.Tensor]:
    return [batch.label for batch in iterator]


def test_every_index_once_per_epoch() -> None:
    split = _split()
    iterator = BatchIterator(split, 10, shuffle=True, seed=1)
    batches = list(iterator)
    assert len(iterator) == len(batches) == 11 and [len(b) for b in batches][-1] == 3
    labels = torch.cat([b.label for b in batches])
    assert sorted(labels.tolist()) == list(range(103))
    assert torch.equal(torch.cat([b.x for b in batches]), split.images[labels])  # images match labels


def test_drop_last_and_no_shuffle() -> None:
    iterator = BatchIterator(_split(), 10, shuffle=False, drop_last=True)
    labels = _labels(iterator)
    assert len(iterator) == len(labels) == 10
    assert torch.equal(torch.cat(labels), torch.arange(100))


def test_epochs_and_seeds_change_the_order() -> None:
    split = _split()
    epoch0 = torch.cat(_labels(BatchIterator(split, 16, shuffle=True, seed=3, epoch=0)))
    assert torch.equal(epoch0, torch.cat(_labels(BatchIterator(split, 16, shuffle=True, seed=3, epoch=0))))
    assert not torch.equal(epoch0, torch.cat(_labels(BatchIterator(split, 16, shuffle=True, seed=3, epoch=1))))
    assert not torch.equal(epoch0, torch.cat(_labels(BatchIterator(split, 16, shuffle=True, seed=4, epoch=0))))
    expected = torch.randperm(103, generator=torch.Generator().manual_seed(derive_seed(3, 0)))
    assert torch.equal(epoch0, expected)  # the documented derivation


@pytest.mark.parametrize("start", [0, 1, 4, 7])
def test_resume_at_start_batch_reproduces_the_run(start: int) -> None:
    split = _split()
    transform = batch_transform("dynamic", 256)
    options = dict(shuffle=True, seed=11, epoch=2, transform=transform)
    full = list(BatchIterator(split, 15, **options))
    resumed_iterator = BatchIterator(split, 15, start_batch=start, **options)
    resumed = list(resumed_iterator)
    assert len(resumed_iterator) == len(full) == 7
    assert len(resumed) == len(full) - start
    for a, b in zip(full[start:], resumed):
        assert torch.equal(a.x, b.x) and torch.equal(a.label, b.label)


def test_resume_at_end_and_bad_arguments() -> None:
    assert list(BatchIterator(_split(), 50, shuffle=True, start_batch=3)) == []
    with pytest.raises(DataError, match="start_batch 4 is outside 0..3"):
        BatchIterator(_split(), 50, shuffle=True, start_batch=4)
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        BatchIterator(_split(), 0, shuffle=True)
    with pytest.raises(DataError, match="non-negative"):
        derive_seed(-1)


def test_batches_are_copies_and_unlabelled_splits_work() -> None:
    split = Split(torch.rand(8, 1, 2, 2))
    before = split.images.clone()
    for batch in BatchIterator(split, 3, shuffle=False):
        assert batch.label is None
        batch.x.zero_()
    assert torch.equal(split.images, before)


def test_batch_to_device() -> None:
    batch = Batch(torch.zeros(2, 1, 3, 3), torch.tensor([0, 1]))
    moved = batch.to("cpu")
    assert moved.x.device.type == "cpu" and torch.equal(moved.label, batch.label)
    assert Batch(torch.zeros(2, 1, 3, 3)).to("cpu").label is None


def test_derive_seed_tells_tuples_apart() -> None:
    assert derive_seed(1, 0) != derive_seed(1)  # SeedSequence alone would give these the same state
    assert derive_seed(5, 2, 0) != derive_seed(5, 2)
    assert derive_seed(5, 2, 0) == derive_seed(5, 2, 0)
    assert 0 <= derive_seed(2**40, 3) < 2**64
