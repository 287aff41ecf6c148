"""Pixel models: dequantization, dynamic and fixed binarization."""

from __future__ import annotations

import pytest
import torch

from vaelab.data import PIXEL_MODELS, BatchIterator, Split, batch_transform, fixed_view
from vaelab.errors import DataError


def _grey_split(n: int = 64, levels: int = 256) -> Split:
    """Images whose pixels are k / (levels - 1) for a spread of k, with labels."""
    g = torch.Generator().manual_seed(0)
    k = torch.randint(0, levels, (n, 1, 4, 4), generator=g)
    return Split(k.float() / (levels - 1), torch.arange(n))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_models_without_batch_transform() -> None:
    assert PIXEL_MODELS == ("continuous", "dequantize", "dynamic", "fixed")
    assert batch_transform("continuous", 256) is None
    assert batch_transform("fixed", 256) is None
    assert batch_transform("dequantize", None) is None  # float data: nothing to dequantize


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantize_stays_in_its_bin(levels: int) -> None:
    x = _grey_split(levels=levels).images
    y = batch_transform("dequantize", levels)(x, _gen(1))
    assert 0 <= y.min() and y.max() < 1
    assert torch.equal(torch.floor(y * levels), torch.round(x * (levels - 1)))  # (k + u) / levels
    assert torch.equal(y, batch_transform("dequantize", levels)(x, _gen(1)))
    assert not torch.equal(y, batch_transform("dequantize", levels)(x, _gen(2)))


def test_dynamic_binarization_draws() -> None:
    x = torch.full((4000, 1, 5, 5), 0.3)
    binarize = batch_transform("dynamic", 256)
    a, b = binarize(x, _gen(1)), binarize(x, _gen(2))
    assert set(a.unique().tolist()) == {0.0, 1.0} and a.dtype == torch.float32
    assert abs(a.mean().item() - 0.3) < 0.01
    assert not torch.equal(a, b) and torch.equal(a, binarize(x, _gen(1)))
    assert torch.equal(binarize(torch.zeros(3, 1, 2, 2), _gen(0)), torch.zeros(3, 1, 2, 2))
    assert torch.equal(binarize(torch.ones(3, 1, 2, 2), _gen(0)), torch.ones(3, 1, 2, 2))


def test_dynamic_through_batches() -> None:
    split = _grey_split(n=2048)
    transform = batch_transform("dynamic", 256)

    def batches(epoch: int) -> list[torch.Tensor]:
        return [b.x for b in BatchIterator(split, 256, shuffle=False, epoch=epoch, seed=5, transform=transform)]

    first, again, next_epoch = batches(0), batches(0), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # same seed/epoch/batch: same draw
    assert all(not torch.equal(a, b) for a, b in zip(first, next_epoch))  # same pixels, fresh draw
    drawn = torch.cat(first)
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert abs(drawn.mean().item() - split.images.mean().item()) < 0.01


@pytest.mark.parametrize("model", ["fixed", "dynamic", "dequantize"])
def test_fixed_view_is_deterministic(model: str) -> None:
    split = _grey_split()
    view = fixed_view(split, model, 256, seed=7)
    assert torch.equal(view.images, fixed_view(split, model, 256, seed=7).images)
    assert not torch.equal(view.images, fixed_view(split, model, 256, seed=8).images)
    assert torch.equal(view.labels, split.labels) and view.images.shape == split.images.shape
    if model != "dequantize":
        assert set(view.images.unique().tolist()) == {0.0, 1.0}


def test_fixed_view_continuous_is_unchanged_and_names_are_checked() -> None:
    split = _grey_split()
    assert fixed_view(split, "continuous", 256, seed=0) is split
    assert fixed_view(split, "dequantize", None, seed=0) is split
    with pytest.raises(DataError, match="unknown pixel model 'binary' \\(valid: continuous, dequantize, dynamic, fixed\\)"):
        fixed_view(split, "binary", 256, seed=0)
    with pytest.raises(DataError, match="unknown pixel model"):
        batch_transform("binary", 256)
