"""Random tensors drawn from an explicit torch.Generator, wherever the generator lives.

A torch.Generator belongs to one device, and torch.rand(..., generator=g, device=d) fails when d
is not g's device. Every model and estimator draws through these helpers instead: the numbers are
drawn on the generator's device (on the reference tensor's device when no generator is given, from
the global RNG) and then moved to the reference tensor's device. So a CPU generator drives a CUDA
model, and the same seed gives the same numbers on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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


UNIFORM_BITS = 24  # torch's float32 uniform_ is k / 2^24 with k uniform on {0, ..., 2^24 - 1}


class BernoulliBits:
    """Bernoulli draws for a CPU hot loop (an AIS chain's Gibbs sweeps), from numpy's PCG64.

    Each draw is k < p * 2^24 with k a uniform 24-bit integer: the same decision as u < p for the
    float32 uniform u = k / 2^24 that `torch.rand` would give, since k and p * 2^24 are exact in
    float32. PCG64 hands out 64 bits at a time (two draws), without torch's per-number float
    conversion, and the comparison runs on whole tensors: a 100 x 784 draw took 157 us against
    torch's uniform_ and compare 281 us (benchmarks/rbm_ais_speed.py measures the estimator).
    The stream is seeded by one draw from `generator` (the global RNG when None), so a run is
    reproducible from its seed on every device; the draws are made on the CPU and moved to probs'."""

    def __init__(self, generator: torch.Generator | None):
        device = generator.device if generator is not None else torch.device("cpu")
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
        self.bits = np.random.PCG64(seed)

    def draw(self, probs: Tensor) -> Tensor:
        """Binary draws (1 with probability probs), in probs' shape, dtype and device."""
        count = probs.numel()
        words = torch.from_numpy(self.bits.random_raw((count + 1) // 2))  # uint64, two draws each
        low_bits = words.view(torch.int32)[:count].view(probs.shape).bitwise_and_((1 << UNIFORM_BITS) - 1)
        below = torch.lt(low_bits.to(device=probs.device, dtype=torch.float32), probs * float(1 << UNIFORM_BITS))
        return below.to(probs.dtype)
