"""The Variational Autoencoder (Kingma & Welling 2013, "Auto-Encoding Variational Bayes", section 3).

    q(z|x) = N(mu(x), diag(sigma^2(x)))      encoder
    p(z)   = N(0, I)                          prior (or the VampPrior, prior=vamp: vaelab.models.priors)
    p(x|z) = Bernoulli or Gaussian            decoder (the likelihood)

Training maximizes the ELBO, E_q[log p(x|z)] - KL(q(z|x) || p(z)), with the KL in closed form and the
expectation estimated by `mc_samples` reparameterized draws (eq. 10 of the paper), or the
importance-weighted bound L_k of Burda et al. (2015, eq. 8) with `objective=iwae`.
`beta` weights the KL (Higgins et al. 2017); `kl_warmup_steps` ramps it up linearly from 0.
With the VampPrior the KL has no closed form and is estimated from the same draws of z as the
reconstruction term, E_q[log q(z|x) - log p(z)] (Tomczak & Welling 2018, eq. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vaelab.data.loader import Batch
from vaelab.distributions import (
    BernoulliLikelihood,
    GaussianLikelihood,
    diag_gaussian_log_prob,
    diag_gaussian_mixture_log_prob,
    gaussian_kl_standard,
    log_mean_exp,
    reparameterize,
    standard_normal_log_prob,
)
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.base import GenerativeModel, StandardNormalPrior
from vaelab.models.blocks import build_decoder, build_encoder
from vaelab.models.priors import PseudoInputs
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.noise import draw_categorical


@dataclass
class VAEConfig:
    architecture: Literal["mlp", "conv", "linear"] = "mlp"  # linear: affine encoder and decoder
    hidden: tuple[int, ...] = (400,)  # encoder widths; the decoder mirrors them
    channels: tuple[int, ...] = (32, 64)  # conv widths (architecture=conv)
    activation: str = "relu"
    latent_dim: int = 20
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    variance: Literal["fixed", "learned"] = "fixed"  # Gaussian likelihood only
    fixed_std: float = 0.1  # sigma of the fixed-variance Gaussian likelihood
    min_std: float = 0.01  # soft lower bound on a learned sigma
    gaussian_mean: Literal["sigmoid", "identity"] = "sigmoid"  # identity + linear: the linear-Gaussian VAE
    objective: Literal["elbo", "iwae"] = "elbo"
    mc_samples: int = 1  # L: samples of z per data point for the ELBO
    k: int = 5  # importance samples for objective=iwae
    beta: float = 1.0  # weight on the KL term (beta-VAE)
    kl_warmup_steps: int = 0  # linear ramp of the KL weight from 0 to beta over this many steps
    prior: Literal["standard", "vamp"] = "standard"  # N(0, I), or the VampPrior (Tomczak & Welling 2018)
    pseudo_inputs: int = 500  # K, the VampPrior's learned pseudo-inputs


def build_likelihood(config: VAEConfig) -> BernoulliLikelihood | GaussianLikelihood:
    if config.likelihood == "bernoulli":
        return BernoulliLikelihood()
    return GaussianLikelihood(learned_variance=config.variance == "learned", fixed_std=config.fixed_std,
                              min_std=config.min_std, sigmoid_mean=config.gaussian_mean == "sigmoid")


class VAE(GenerativeModel, StandardNormalPrior):
    """The VAE. Every density, sampler and reconstruction takes an optional class `label` and
    feeds it to the networks through `encoder_input` / `decoder_input`, which pass the input
    through unchanged here: the CVAE (vaelab.models.cvae) overrides only those and the input sizes."""

    config_class = VAEConfig
    decoder_output = "logits"  # LatentDecoder: a Gaussian mean goes through a sigmoid too by default
    reconstruction_description = "posterior mean: decoder mean at mu(x) (no sampling of z)"
    stochastic_reconstruction = False

    def __init__(self, config: VAEConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        config = self.config
        if config.latent_dim < 1 or config.mc_samples < 1 or config.k < 1 or config.pseudo_inputs < 1:
            raise ConfigError("latent_dim, mc_samples, k and pseudo_inputs must be at least 1")
        self.likelihood: BernoulliLikelihood | GaussianLikelihood = build_likelihood(config)
        if config.likelihood == "gaussian" and config.gaussian_mean == "identity":
            self.decoder_output = "mean"
        self.encoder = build_encoder(config.architecture, self.encoder_input_shape(), config.hidden,
                                     config.activation, config.channels)
        # One linear head emits mu and log sigma^2 side by side.
        self.posterior_head = nn.Linear(self.encoder.out_features, 2 * config.latent_dim)
        out_channels = self.image_shape[0] * self.likelihood.params_per_pixel
        self.decoder = build_decoder(config.architecture, config.latent_dim + self.label_features(),
                                     self.image_shape, out_channels, config.hidden, config.activation,
                                     config.channels)
        self.pseudo_inputs: PseudoInputs | None = None
        if config.prior == "vamp":
            if self.label_features():
                raise ConfigError(f"prior=vamp is for the unconditional VAE, not the {type(self).__name__}")
            self.pseudo_inputs = PseudoInputs(config.pseudo_inputs, self.image_shape)

    @classmethod
    def prefers_binary_pixels(cls, config: VAEConfig) -> bool:
        return config.likelihood == "bernoulli"

    # -- what the networks see: the CVAE adds the label here ----------------------------------

    def encoder_input_shape(self) -> tuple[int, ...]:
        return self.image_shape

    def label_features(self) -> int:
        """Inputs the decoder takes besides z (the CVAE's one-hot label)."""
        return 0

    def encoder_input(self, x: Tensor, label: Tensor | None) -> Tensor:
        self.check_label(label)
        return x

    def decoder_input(self, z: Tensor, label: Tensor | None) -> Tensor:
        self.check_label(label)
        return z

    # -- the three pieces of pytorch/examples' VAE --------------------------------------------

    def encode(self, x: Tensor, label: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x): x (B, C, H, W) -> mu, log_var, each (B, D)."""
        mu, log_var = self.posterior_head(self.encoder(self.encoder_input(x, label))).chunk(2, dim=-1)
        return mu, log_var

    def reparameterize(self, mu: Tensor, log_var: Tensor, num_samples: int | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        return reparameterize(mu, log_var, num_samples, generator)

    def decode(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        """z (..., B, D) -> the likelihood's parameters (..., B, C * params_per_pixel, H, W); one
        label per example (B,), shared by every sample of z drawn for it."""
        z = self.decoder_input(z, label)
        batch_shape = z.shape[:-1]
        decoded = self.decoder(z.reshape(-1, z.shape[-1]))
        return decoded.view(*batch_shape, *decoded.shape[1:])

    # -- the prior: N(0, I) (StandardNormalPrior) or the VampPrior ----------------------------

    def prior_components(self) -> tuple[Tensor, Tensor]:
        """The VampPrior's components q(z|u_k): means and log-variances (K, D)."""
        assert self.pseudo_inputs is not None, "prior_components is the VampPrior's"
        return self.encode(self.pseudo_inputs())

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z): z (..., D) -> (...); the VampPrior's is (1/K) sum_k q(z|u_k) (eq. 9)."""
        if self.pseudo_inputs is None:
            return standard_normal_log_prob(z)
        return diag_gaussian_mixture_log_prob(z, *self.prior_components())

    @torch.no_grad()
    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """(num_samples, D) draws of z ~ p(z); the VampPrior's pick a pseudo-input uniformly, then z ~ q(z|u_k)."""
        if self.pseudo_inputs is None:
            return super().sample_prior(num_samples, generator)
        means, log_vars = self.prior_components()
        picked = draw_categorical(torch.full((len(means),), 1.0 / len(means), device=means.device),
                                  num_samples, generator)
        return self.reparameterize(means[picked], log_vars[picked], generator=generator)

    def prior_moments(self) -> tuple[Tensor, Tensor] | None:
        """None for N(0, I); the VampPrior's overall mean m (D,) and the Cholesky factor of its
        covariance (1/K) sum_k (diag(v_k) + (mu_k - m)(mu_k - m)^T), for samplers that whiten z."""
        if self.pseudo_inputs is None:
            return None
        with torch.no_grad():
            means, log_vars = (value.double() for value in self.prior_components())
            mean = means.mean(0)
            centred = means - mean
            covariance = torch.diag(log_vars.exp().mean(0)) + centred.T @ centred / len(means)
            return mean.to(self.reference_tensor()), torch.linalg.cholesky(covariance).to(self.reference_tensor())

    # -- densities ----------------------------------------------------------------------------

    def log_likelihood(self, x: Tensor, z: Tensor, label: Tensor | None = None) -> Tensor:
        """log p(x|z): x (B, C, H, W), z (S, B, D) -> (S, B)."""
        return self.likelihood.log_prob(x, self.decode(z, label))

    def log_weights(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                    posterior: tuple[Tensor, Tensor] | None = None, label: Tensor | None = None,
                    log_likelihood: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None) -> Tensor:
        """Importance log-weights log p(x, z_s) - log q(z_s|x) for z_s ~ q(z|x): (S, B).

        `posterior` lets a caller that draws many chunks of samples encode x only once;
        `log_likelihood` (default self.log_likelihood) lets it pass a compiled one (vaelab.compiled)."""
        mu, log_var = posterior if posterior is not None else self.encode(x, label)
        z = self.reparameterize(mu, log_var, num_samples, generator)  # (S, B, D)
        log_likelihood = log_likelihood or self.log_likelihood
        return (log_likelihood(x, z, label) + self.log_prior(z)
                - diag_gaussian_log_prob(z, mu, log_var))

    def elbo_terms(self, x: Tensor, num_samples: int = 1, generator: torch.Generator | None = None,
                   label: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example reconstruction E_q[log p(x|z)] (MC, num_samples draws) and closed-form KL: (B,)."""
        mu, log_var = self.encode(x, label)
        z = self.reparameterize(mu, log_var, num_samples, generator)  # (S, B, D)
        reconstruction = self.log_likelihood(x, z, label).mean(0)
        if self.pseudo_inputs is None:
            kl = gaussian_kl_standard(mu, log_var).sum(-1)
        else:  # no closed form: the Monte Carlo estimate from the same draws (eq. 3)
            kl = (diag_gaussian_log_prob(z, mu, log_var) - self.log_prior(z)).mean(0)
        return {"reconstruction": reconstruction, "kl": kl}

    def iw_bound(self, x: Tensor, k: int, generator: torch.Generator | None = None,
                 label: Tensor | None = None) -> Tensor:
        """L_k = E[log (1/k) sum_s w_s] (Burda et al. 2015, eq. 8), one k-sample estimate per example: (B,)."""
        return log_mean_exp(self.log_weights(x, k, generator, label=label), dim=0)

    # -- training -----------------------------------------------------------------------------

    def kl_weight(self, step: int | None) -> float:
        """beta, ramped linearly from 0 over kl_warmup_steps; the full beta when step is None (evaluation)."""
        warmup = self.config.kl_warmup_steps
        if step is None or warmup <= 0:
            return self.config.beta
        return self.config.beta * min(1.0, step / warmup)

    def training_label(self, batch: Batch) -> Tensor | None:
        """The label every density of the loss takes: none for the VAE (the CVAE: batch.label)."""
        return None

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        x, label = batch.x, self.training_label(batch)
        if self.config.objective == "iwae":
            bound = self.iw_bound(x, self.config.k, label=label)
            return {"loss": -bound.mean(), "iw_bound": bound.mean()}
        terms = self.elbo_terms(x, self.config.mc_samples, label=label)
        weight = self.kl_weight(step)
        reconstruction, kl = terms["reconstruction"].mean(), terms["kl"].mean()
        return {"loss": weight * kl - reconstruction, "reconstruction": -reconstruction, "kl": kl,
                "elbo": reconstruction - kl}

    # -- the training graph -------------------------------------------------------------------

    @classmethod
    def training_graph(cls, config: VAEConfig | None = None) -> TrainingGraph:
        config = config or cls.config_class()
        cost = "-log p(x|z)\n(BCE)" if config.likelihood == "bernoulli" else "-log p(x|z)\n(L2)"
        # Nodes are declared top-down within each layer of the drawing.
        nodes = [Node("x", "x", "input"), Node("encoder", "encoder\nq(z|x)", "network"),
                 Node("posterior", "mu, log sigma^2", "output"), Node("eps", "eps ~ N(0, I)", "noise")]
        edges = [("x", "encoder"), ("encoder", "posterior"), ("posterior", "z"), ("eps", "z"), ("z", "decoder")]
        prior = "N(0, I)" if config.prior == "standard" else "VampPrior"
        if config.objective == "elbo":
            kl = f"KL(q(z|x) || {prior})" + (f"\nx beta={config.beta:g}" if config.beta != 1 else "")
            nodes.append(Node("kl", kl, "cost", highlight=True))
            edges.append(("posterior", "kl"))
        nodes += [Node("z", "z = mu + sigma * eps", "sampled"), Node("decoder", "decoder\np(x|z)", "network")]
        if config.objective == "iwae":
            nodes.append(Node("cost", f"-log 1/k sum_k w_k\n(k={config.k})", "cost"))
            edges += [("decoder", "cost"), ("x", "cost"), ("posterior", "cost")]
        else:
            nodes.append(Node("reconstruction", cost, "cost"))
            edges += [("decoder", "reconstruction"), ("x", "reconstruction")]
        return TrainingGraph(f"{cls.__name__} ({config.architecture})", tuple(nodes), tuple(edges))

    # -- generation ---------------------------------------------------------------------------

    def sample_labels(self, num_samples: int, label: int | Tensor | None) -> Tensor | None:
        """The labels sample() decodes with: none for the VAE (the CVAE draws classes)."""
        if label is not None:
            raise VaelabError(f"a {type(self).__name__} is not class-conditional: it takes no label")
        return None

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               label: int | Tensor | None = None, mean: bool = True, **kwargs: Any) -> Tensor:
        """z ~ p(z), then the decoder alone (for the requested class(es), see sample_labels).
        Returns the likelihood's mean (mean=True, the usual picture) or a draw from p(x|z):
        (num_samples, C, H, W) in [0, 1]."""
        labels = self.sample_labels(num_samples, label)  # checked before any draw
        decoded = self.decode(self.sample_prior(num_samples, generator), labels)
        images = self.likelihood.mean(decoded) if mean else self.likelihood.sample(decoded, generator)
        return images.clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, label: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """Decode the posterior mean: x (B, C, H, W) -> the likelihood's mean (B, C, H, W)."""
        mu, _ = self.encode(x, label)
        return self.likelihood.mean(self.decode(mu, label)).clamp(0.0, 1.0)
