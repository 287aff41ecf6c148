"""Random tensors drawn from an explicit torch.Generator, wherever the generator lives.

A torch.Generator belongs to one device, and torch.rand(..., generator=g, device=d) fails when d
is not g's device. Every model and estimator draws through these helpers instead: the numbers are
drawn on the generator's device (on the reference tensor's device when no generator is given, from
the global RNG) and then moved to the reference tensor's device. So a CPU generator drives a CUDA
model, and the same seed gives the same numbers on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _draw_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def draw_uniform(shape: Sequence[int], generator: torch.Generator | None, like: Tensor,
            dtype: torch.dtype | None = None) -> Tensor:
    """U[0, 1) draws of `shape` on like's device, in `dtype` (default like's)."""
    dtype = dtype or like.dtype
    values = torch.rand(tuple(shape), generator=generator, device=_draw_device(generator, like), dtype=dtype)
    return values.to(like.device)


def draw_normal(shape: Sequence[int], generator: torch.Generator | None, like: Tensor,
           dtype: torch.dtype | None = None) -> Tensor:
    """N(0, 1) draws of `shape` on like's device, in `dtype` (default like's)."""
    dtype = dtype or like.dtype
    values = torch.randn(tuple(shape), generator=generator, device=_draw_device(generator, like), dtype=dtype)
    return values.to(like.device)


def draw_bernoulli(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Binary draws (u < probs), u ~ U[0, 1), in probs' dtype and device."""
    return (draw_uniform(probs.shape, generator, probs) < probs).to(probs.dtype)


def draw_categorical(probs: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """num_samples class indices drawn with replacement from probs (K,): (num_samples,) int64."""
    drawn = torch.multinomial(probs.to(_draw_device(generator, probs)), num_samples, replacement=True,
                              generator=generator)
    return drawn.to(probs.device)


def fill_uniform(buffer: Tensor, generator: torch.Generator | None) -> Tensor:
    """Fill `buffer` with U[0, 1) draws in place (no allocation when the generator is on buffer's
    device, as in a sampler's hot loop) and return it."""
    if generator is None or generator.device == buffer.device:
        return buffer.uniform_(generator=generator)
    return buffer.copy_(torch.rand(buffer.shape, generator=generator, device=generator.device, dtype=buffer.dtype))
