"""Learned priors for the VAE.

The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior", eq. 9) is the encoder's own
posterior averaged over K learned pseudo-inputs u_k:

    p(z) = (1/K) sum_k q(z | u_k)

so the prior moves towards the aggregate posterior the encoder makes, which is what the KL term of
the ELBO pulls towards anyway. This module holds the pseudo-inputs; the VAE encodes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# The reference code starts its pseudo-inputs near-black: pixels of mean 0.05 and std 0.01.
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01


class PseudoInputs(nn.Module):
    """K learned images in [0, 1], kept as logits so that every pixel stays inside the range and keeps
    a gradient (the reference code's hardtanh has none at the bounds, where Fashion-MNIST's background
    sits)."""

    def __init__(self, count: int, image_shape: Sequence[int]):
        super().__init__()
        pixels = (PSEUDO_INPUT_MEAN + PSEUDO_INPUT_STD * torch.randn(count, *image_shape)).clamp(0.01, 0.99)
        self.logits = nn.Parameter(torch.logit(pixels))

    def forward(self) -> Tensor:
        """The pseudo-inputs (K, C, H, W)."""
        return torch.sigmoid(self.logits)

    @torch.no_grad()
    def set_images(self, images: Tensor, margin: float = 0.01) -> None:
        """Start from given images (K, C, H, W) in [0, 1], e.g. training images for a warm start;
        pixels are kept `margin` inside (0, 1) so that their logits are finite."""
        if images.shape != self.logits.shape:
            raise ValueError(f"pseudo-inputs are {tuple(self.logits.shape)}, got {tuple(images.shape)}")
        self.logits.copy_(torch.logit(images.to(self.logits).clamp(margin, 1.0 - margin)))
