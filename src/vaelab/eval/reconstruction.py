"""Reconstruction error of every model with a `reconstruct(x)` (MISSION.md section 3): how well an
image comes back through the model's own encode-decode (or Gibbs up-down) pass.

Per image, summed over pixels, with x the image and p = model.reconstruct(x) in [0, 1]:

    squared error   sum_i (x_i - p_i)^2
    cross-entropy   -sum_i [x_i log p_i + (1 - x_i) log(1 - p_i)],  p clamped to [1e-6, 1 - 1e-6]

reported as means over the split with the standard error of the mean over images. The
cross-entropy is 0 only for binary x reconstructed exactly; for grey-level x its minimum is the
entropy sum_i H(x_i), so compare it between models on the same pixel view only. Neither number is a
log-likelihood: the VAE's is the decoder mean at the posterior mean (no sampling of z), the RBM's a
mean-field pass, so they say nothing about the density; they say what the code keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.batches import evaluation_batches
from vaelab.eval.estimate import Estimate, mean_and_stderr
from vaelab.models.capabilities import Reconstructor, require

PROBABILITY_CLAMP = 1e-6  # p is clamped to [eps, 1 - eps] in the cross-entropy


def reconstruction_errors(x: Tensor, reconstruction: Tensor, eps: float = PROBABILITY_CLAMP) -> dict[str, Tensor]:
    """Per-image squared error and cross-entropy, summed over pixels, in float64: (B, ...) -> (B,) each."""
    if reconstruction.shape != x.shape:
        raise VaelabError(f"reconstruct returned shape {tuple(reconstruction.shape)} for images of "
                          f"shape {tuple(x.shape)}")
    x, p = x.double().flatten(start_dim=1), reconstruction.double().flatten(start_dim=1)
    p_clamped = p.clamp(eps, 1.0 - eps)
    bce = -(x * p_clamped.log() + (1.0 - x) * torch.log1p(-p_clamped))
    return {"mse": (x - p).pow(2).sum(1), "bce": bce.sum(1)}


@torch.no_grad()
def reconstruction_error(model, split: Split, batch_size: int = 500, *, seed: int = 0,
                         progress: bool = False) -> dict[str, Estimate]:
    """{"reconstruction_mse", "reconstruction_bce"}: the split's mean per-image squared error and
    cross-entropy of model.reconstruct(x) (summed over pixels, nats for the cross-entropy), each with
    the standard error of the mean over images. A class-conditional model gets each image's label;
    a model whose reconstruction is stochastic (the GSN's) draws from one torch.Generator on the
    model's device seeded with `seed`, used batch after batch (so results depend on batch_size)."""
    require(model, Reconstructor, "reconstruction")
    if len(split) == 0:
        raise VaelabError("reconstruction error of an empty split")
    generator = torch.Generator(model.device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {"mse": [], "bce": []}
    for x, label in evaluation_batches(model, split, batch_size, desc="reconstruction", progress=progress):
        errors = reconstruction_errors(x, model.reconstruct(x, label=label, generator=generator))
        for name, values in parts.items():
            values.append(errors[name].cpu())
    settings = _settings(model, split, batch_size, seed)
    return {f"reconstruction_{name}": Estimate(*mean_and_stderr(torch.cat(values)), dict(settings))
            for name, values in parts.items()}


def _settings(model, split: Split, batch_size: int, seed: int) -> dict:
    stochastic = bool(model.stochastic_reconstruction)
    return {"model": type(model).__name__, "reconstruction": model.reconstruction_description,
            "stochastic": stochastic, "seed": seed if stochastic else None,
            "conditional": bool(model.conditional), "examples": len(split), "batch_size": batch_size,
            "probability_clamp": PROBABILITY_CLAMP, "per_image": "summed over pixels", "stderr": "over images"}
