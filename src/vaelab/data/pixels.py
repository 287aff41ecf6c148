"""Pixel models: how images in [0, 1] are presented to a model.

- continuous: the values as they are (Gaussian likelihoods).
- dequantize: uniform dequantization of the `levels` grey levels, (k + u) / levels with u ~ U[0, 1),
  a fresh u every minibatch (Theis, van den Oord & Bethge 2016, section 3.1), so a continuous density
  on [0, 1] bounds the discrete likelihood.
- dynamic: dynamic binarization, a fresh Bernoulli draw of every pixel at every minibatch with the
  grey value as probability (the protocol of Burda et al. 2015 and most VAE likelihood tables).
- fixed: one Bernoulli draw, made once from a seed and then kept (`fixed_view`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vaelab.data.datasets import Split
from vaelab.errors import DataError
from vaelab.noise import draw_uniform

PIXEL_MODELS = ("continuous", "dequantize", "dynamic", "fixed")

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def check_pixel_model(pixel_model: str) -> None:
    """DataError unless `pixel_model` is one of PIXEL_MODELS."""
    if pixel_model not in PIXEL_MODELS:
        raise DataError(f"unknown pixel model {pixel_model!r} (valid: {', '.join(PIXEL_MODELS)})")


def binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli draw per pixel with probability x: (u < x) with u ~ U[0, 1). x: (B, C, H, W) in [0, 1]."""
    u = draw_uniform(x.shape, generator, like=x)  # (B, C, H, W)
    return (u < x).to(x.dtype)


def dequantizer(levels: int) -> Transform:
    """Uniform dequantization of `levels` grey levels: x = k / (levels - 1) -> (k + u) / levels, in [0, 1)."""

    def dequantize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = torch.round(x * (levels - 1))  # (B, C, H, W) integer grey levels 0 .. levels-1
        u = draw_uniform(x.shape, generator, like=x)
        return (k + u) / levels

    return dequantize


def batch_transform(pixel_model: str, levels: int | None) -> Transform | None:
    """The per-minibatch transform of `pixel_model`, or None when batches are used as they are.

    continuous and fixed: None (fixed data is drawn once by `fixed_view`). dequantize: uniform
    dequantization, or None when `levels` is None (float data has no grey levels to dequantize).
    dynamic: a fresh binarization per call. The transform draws its noise from the generator it
    is given, on the tensor's device, so the generator must live on that device.
    """
    check_pixel_model(pixel_model)
    if pixel_model == "dynamic":
        return binarize
    if pixel_model == "dequantize" and levels is not None:
        return dequantizer(levels)
    return None


def fixed_view(split: Split, pixel_model: str, levels: int | None, seed: int) -> Split:
    """A deterministic version of `split` under `pixel_model`, drawn once from `seed`.

    fixed and dynamic: one seeded binarization (training data under `fixed`; validation and test
    data under `dynamic`, so every evaluation sees the same binary images). dequantize: one seeded
    dequantization. continuous: `split` itself. Labels are kept.
    """
    check_pixel_model(pixel_model)
    if pixel_model == "continuous":
        return split
    transform = binarize if pixel_model in ("fixed", "dynamic") else batch_transform(pixel_model, levels)
    if transform is None:
        return split
    generator = torch.Generator(device=split.images.device).manual_seed(seed)
    return Split(transform(split.images, generator), split.labels)
