"""What estimators may ask of a model: one small protocol per capability.

An estimator never asks which model it scores, only whether the model can do what the estimator
needs: `require(model, LatentDecoder, "decoder_ais")` either returns or raises one line,
"metric decoder_ais does not apply to model GAN: it has no ...". A new model gets every metric
whose capabilities it implements, with no change under eval/.

| capability          | what it is                                              | metrics                     |
|---------------------|---------------------------------------------------------|-----------------------------|
| (every model)       | sample(n, generator=, label=)                           | parzen, sample_quality      |
| VariationalPosterior| Gaussian encoder q(z|x) and the bound's terms           | elbo, iw, latent            |
| LatentDecoder       | a prior p(z) to sample and score, and a decoder p(x|z)  | decoder_ais                 |
| Reconstructor       | an encode-decode (or up-down) pass                      | reconstruction              |
| BinaryRBM           | a binary RBM's energy parameters and free energy        | rbm_ais                     |
| MarkovChainSampler  | consecutive states of its sampling chain                | `vaelab sample --chain`     |
| GaussianMixturePrior| a LatentDecoder's prior as mixture parameters           | `vaelab export` (metadata)  |

Every method that takes images takes the class label as `label=` ((B,) int64, or None for an
unconditional model), and every draw comes from the `generator` it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vaelab.distributions import Likelihood
from vaelab.errors import VaelabError


@runtime_checkable
class VariationalPosterior(Protocol):
    """q(z|x) = N(mu(x), diag exp(log_var(x))) with the pieces of the ELBO and of L_k."""

    def encode(self, x: Tensor, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> mu, log_var, each (B, D)."""

    def elbo_terms(self, x: Tensor, num_samples: int = 1, generator: torch.Generator | None = None,
                   label: Tensor | None = None) -> dict[str, Tensor]:
        """{"reconstruction": E_q log p(x|z) (B,), "kl": KL(q(z|x) || p(z)) (B,)}."""

    def log_weights(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                    posterior: tuple[Tensor, Tensor] | None = None, label: Tensor | None = None,
                    log_likelihood: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None) -> Tensor:
        """log p(x, z_s) - log q(z_s|x) for z_s ~ q(z|x): (num_samples, B); log p(x|z) through
        `log_likelihood` when given (a compiled version of the model's own)."""


@runtime_checkable
class LatentDecoder(Protocol):
    """A prior p(z) over latent_dim dimensions and a decoder whose output parametrizes p(x|z).

    decoder_output says what decode() emits: "logits" (the image is sigmoid(output)) or "mean"
    (the image itself). likelihood is the model's own observation model on that output, or None
    for a model that defines none (a GAN, a squared-error autoencoder): estimators then ask for a
    Gaussian observation noise sigma. prior_moments() is the prior's mean (D,) and a Cholesky
    factor (D, D) of its covariance, for samplers that precondition on it, or None for N(0, I)."""

    latent_dim: int
    decoder_output: str
    likelihood: Likelihood | None
    conditional: bool  # whether decode() needs each example's label

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z): (..., D) -> (...), differentiable in z."""

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """num_samples draws of p(z): (num_samples, D) on the model's device."""

    def prior_moments(self) -> tuple[Tensor, Tensor] | None:
        """(mean (D,), Cholesky factor of the covariance (D, D)), or None for N(0, I)."""

    def decode(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        """z (..., D) -> decoder output (..., C * params, H, W)."""


@runtime_checkable
class Reconstructor(Protocol):
    """x -> the model's reconstruction of it, images in [0, 1]."""

    reconstruction_description: str  # what reconstruct computes, in words (reported in settings)
    stochastic_reconstruction: bool  # whether reconstruct draws from its generator

    def reconstruct(self, x: Tensor, label: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W) in [0, 1]."""


@runtime_checkable
class BinaryRBM(Protocol):
    """E(v, h) = -b.v - c.h - v'Wh over binary v (D,) and h (H,)."""

    weight: Tensor  # W (D, H)
    visible_bias: Tensor  # b (D,)
    hidden_bias: Tensor  # c (H,)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v), with p(v) = exp(-F(v)) / Z: (B, ...) -> (B,)."""


@runtime_checkable
class MarkovChainSampler(Protocol):
    """A model that samples by running a Markov chain."""

    def sample_chain(self, num_chains: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Consecutive chain states: (steps, num_chains, C, H, W) in [0, 1]."""


@runtime_checkable
class GaussianMixturePrior(Protocol):
    """A LatentDecoder whose prior p(z) = sum_k w_k N(z; mu_k, L_k L_k^T) is a fitted mixture (the AE's
    latent density): its numbers, so that an exported decoder says how to draw z without vaelab."""

    def mixture_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """(weights w (K,), means mu (K, D), Cholesky factors L of the covariances (K, D, D))."""


WHAT_IT_LACKS: dict[type, str] = {
    VariationalPosterior: "variational posterior q(z|x) (a Gaussian encoder with the ELBO's terms)",
    LatentDecoder: "latent decoder (a prior p(z) to sample and score, and a decoder for p(x|z))",
    Reconstructor: "reconstruction pass (reconstruct(x))",
    BinaryRBM: "binary RBM energy (weight, visible_bias, hidden_bias, free_energy)",
    MarkovChainSampler: "Markov chain to sample with (sample_chain)",
    GaussianMixturePrior: "Gaussian mixture prior (mixture_parameters)",
}


def require(model: object, capability: type, metric: str) -> None:
    """Raise one VaelabError line unless `model` has `capability`."""
    if not isinstance(model, capability):
        raise VaelabError(f"metric {metric} does not apply to model {type(model).__name__}: "
                          f"it has no {WHAT_IT_LACKS[capability]}")
