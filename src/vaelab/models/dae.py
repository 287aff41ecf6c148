"""The denoising autoencoder (DAE; Vincent et al. 2008, "Extracting and Composing Robust Features
with Denoising Autoencoders"; Vincent et al. 2010, "Stacked Denoising Autoencoders").

    x_tilde ~ q_D(x_tilde | x)     stochastic corruption of the input
    h       = f(x_tilde)           encoder
    x_hat   = g(h)                 decoder
    cost    = L(x, x_hat)          against the CLEAN x (2008, section 2.3 and Figure 1)

It is the AE (vaelab.models.ae) with one addition, the corruption q_D, drawn afresh for every
example at every step. The corruptions of Vincent et al. (2010, section 4, "types of corruption
considered"), with nu = noise_level:

    gaussian          x_tilde = x + nu * eps, eps ~ N(0, I), clamped to [0, 1] (additive isotropic noise)
    masking           a fixed number round(nu * d) of the d pixels, chosen at random per example, set to 0
    salt_and_pepper   as many pixels, chosen the same way, set to 0 or 1 by a fair coin flip

Corruption happens only in the training cost: encode, reconstruct and the fitted latent density
(after_training) use the clean input, as the learned representation is f(x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vaelab.data.loader import Batch
from vaelab.errors import ConfigError
from vaelab.models.ae import AE, AEConfig
from vaelab.models.training_graph import Node
from vaelab.noise import draw_normal, draw_uniform


@dataclass
class DAEConfig(AEConfig):
    corruption: Literal["gaussian", "masking", "salt_and_pepper"] = "masking"
    noise_level: float = 0.25  # gaussian: std of the added noise; masking, salt_and_pepper: fraction of pixels


def chosen_pixels(x: Tensor, fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Flat indices of round(fraction * d) distinct pixels per example, uniformly at random:
    x (B, C, H, W) -> (B, count). The first `count` entries of a random permutation of each row."""
    batch, pixels = x.shape[0], math.prod(x.shape[1:])
    count = round(fraction * pixels)
    scores = draw_uniform((batch, pixels), generator, like=x)  # (B, d)
    return scores.argsort(dim=1)[:, :count]  # (B, count)


class DAE(AE):
    config_class = DAEConfig
    reconstruction_description = "clean pass: decoder output g(f(x)) on the uncorrupted input"

    def __init__(self, config: DAEConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        level = self.config.noise_level
        if level < 0 or (self.config.corruption != "gaussian" and level > 1):
            raise ConfigError(f"noise_level must be a fraction in [0, 1] for {self.config.corruption} "
                              f"corruption (a std >= 0 for gaussian), got {level}")

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_tilde ~ q_D(x_tilde | x): x (B, C, H, W) -> (B, C, H, W). Draws from `generator`, or
        from the global torch RNG (which the trainer seeds and checkpoints) when it is None."""
        level, kind = self.config.noise_level, self.config.corruption
        if kind == "gaussian":
            return (x + level * draw_normal(x.shape, generator, like=x)).clamp(0.0, 1.0)
        index = chosen_pixels(x, level, generator)  # (B, count)
        if kind == "masking":
            values = torch.zeros(index.shape, device=x.device, dtype=x.dtype)
        else:  # salt_and_pepper: 0 or 1 with equal probability
            values = (draw_uniform(index.shape, generator, like=x) < 0.5).to(x.dtype)
        return x.flatten(start_dim=1).scatter(1, index, values).view_as(x)

    @classmethod
    def _graph_corruption(cls, config: AEConfig) -> tuple[tuple[Node, ...], tuple[tuple[str, str], ...], str]:
        """The training graph's one addition: x -> corrupt -> x_tilde -> encoder (the cost still sees x)."""
        if not isinstance(config, DAEConfig):
            raise ConfigError(f"the {cls.__name__} training graph needs a DAEConfig, got {type(config).__name__}")
        nodes = (Node("corrupt", f"corrupt q_D\n{config.corruption}, nu={config.noise_level:g}", "noise"),
                 Node("x_tilde", "x_tilde", "sampled"))
        return nodes, (("x", "corrupt"), ("corrupt", "x_tilde")), "x_tilde"

    def loss(self, batch: Batch, step: int | None = None,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The denoising criterion: reconstruct the clean x from the code of a corrupted x_tilde."""
        x = batch.x
        cost = self.reconstruction_cost(self.corrupt(x, generator), x).mean()
        return {"loss": cost, "reconstruction": cost}
