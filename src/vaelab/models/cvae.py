"""The Conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models", section 4), conditioned on a class label y:

    q(z|x, y) = N(mu(x, y), diag(sigma^2(x, y)))   recognition network (encoder)
    p(z)      = N(0, I)                             prior, independent of y (MISSION.md section 1)
    p(x|z, y) = Bernoulli or Gaussian               generation network (decoder)

In the paper's notation the input is our label and the structured output is our image; with the
prior network fixed to N(0, I) the bound of section 4 reads

    log p(x|y) >= E_{q(z|x,y)}[log p(x|z, y)] - KL(q(z|x, y) || p(z)),

the VAE's ELBO with y given to both networks. Everything else is the VAE's (vaelab.models.vae):
the likelihoods, the closed-form KL, reparameterization, beta / KL warm-up, `mc_samples` draws for
the expectation (the paper's L samples) and the importance-weighted bound L_k (Burda et al. 2015,
eq. 8), which for k samples is the paper's importance-sampling estimate of the conditional
likelihood (section 4.1) made a bound by the log outside the mean.

The label enters as a one-hot vector: concatenated to the flattened image (MLP and linear
encoders) or appended as K constant channels (conv encoder), and concatenated to z in the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.data.loader import Batch
from vaelab.distributions import (diag_gaussian_log_prob, gaussian_kl_standard, log_mean_exp,
                                  standard_normal_log_prob)
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.blocks import build_decoder, build_encoder
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.models.vae import VAE, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    """The VAE's fields, unchanged: `beta=`, `objective=iwae`, `likelihood=` ... mean the same here."""


class CVAE(VAE):
    """A VAE whose encoder and decoder both see the one-hot class label y (Sohn et al. 2015)."""

    config_class = CVAEConfig
    conditional = True

    def __init__(self, config: CVAEConfig, image_shape: Sequence[int], num_classes: int | None = None):
        if num_classes is None:
            raise ConfigError("the cvae is class-conditional and needs labelled data "
                              "(num_classes is None: this data set has no labels)")
        if num_classes < 1:
            raise ConfigError(f"the cvae needs at least one class, got num_classes={num_classes}")
        # The VAE's checks, likelihood and networks; the networks are then rebuilt with the label's
        # inputs, which keeps every VAE method that does not need y (kl_weight, reparameterize) as is.
        super().__init__(config, image_shape, num_classes)
        self._build_conditional_networks()

    def _build_conditional_networks(self) -> None:
        """Replace the VAE's networks by ones with room for the label: the encoder takes the image
        with K more inputs (conv: K more channels), the decoder takes [z, one-hot y]."""
        config, (channels, height, width), classes = self.config, self.image_shape, self.num_classes
        if config.architecture == "conv":
            encoder_input = (channels + classes, height, width)
        else:  # mlp, linear: the flattened image with the one-hot label appended
            encoder_input = (channels * height * width + classes,)
        self.encoder = build_encoder(config.architecture, encoder_input, config.hidden,
                                     config.activation, config.channels)
        self.posterior_head = nn.Linear(self.encoder.out_features, 2 * config.latent_dim)
        out_channels = channels * self.likelihood.params_per_pixel
        self.decoder = build_decoder(config.architecture, config.latent_dim + classes, self.image_shape,
                                     out_channels, config.hidden, config.activation, config.channels)

    # -- the label ----------------------------------------------------------------------------

    def one_hot(self, y: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Labels y (B,) int64 -> one-hot (B, K)."""
        if y is None:
            raise VaelabError("the cvae is class-conditional: pass the labels as y=LongTensor (B,)")
        return F.one_hot(y.long(), self.num_classes).to(dtype)

    def _encoder_input(self, x: Tensor, y: Tensor) -> Tensor:
        """x (B, C, H, W) with its label: (B, C + K, H, W) for a conv encoder, else (B, C*H*W + K)."""
        label = self.one_hot(y, x.dtype)  # (B, K)
        if self.config.architecture == "conv":
            planes = label[:, :, None, None].expand(-1, -1, *x.shape[-2:])  # (B, K, H, W), constant per class
            return torch.cat([x, planes], dim=1)
        return torch.cat([x.flatten(start_dim=1), label], dim=1)

    # -- encode / decode, now given y ---------------------------------------------------------

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q(z|x, y): x (B, C, H, W), y (B,) -> mu, log_var, each (B, D)."""
        return super().encode(self._encoder_input(x, y))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """p(x|z, y): z (..., B, D), y (B,) -> the likelihood's parameters (..., B, C * params, H, W).
        One label per example, shared by every sample of z drawn for it."""
        label = self.one_hot(y, z.dtype)  # (B, K)
        zy = torch.cat([z, label.expand(*z.shape[:-1], label.shape[-1])], dim=-1)  # (..., B, D + K)
        return super().decode(zy)

    # -- densities: the VAE's, with y passed through -------------------------------------------

    def log_likelihood(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x|z, y): x (B, C, H, W), z (S, B, D), y (B,) -> (S, B)."""
        return self.likelihood.log_prob(x, self.decode(z, y))

    def log_weights(self, x: Tensor, num_samples: int, generator: torch.Generator | None = None,
                    posterior: tuple[Tensor, Tensor] | None = None, *, y: Tensor | None = None) -> Tensor:
        """log p(x, z_s | y) - log q(z_s|x, y) for z_s ~ q(z|x, y): (S, B) (Sohn et al. 2015, section 4.1)."""
        mu, log_var = posterior if posterior is not None else self.encode(x, y)
        z = self.reparameterize(mu, log_var, num_samples, generator)  # (S, B, D)
        return (self.log_likelihood(x, z, y) + standard_normal_log_prob(z)
                - diag_gaussian_log_prob(z, mu, log_var))

    def elbo_terms(self, x: Tensor, num_samples: int = 1, generator: torch.Generator | None = None,
                   *, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example E_q[log p(x|z, y)] (num_samples draws) and closed-form KL(q(z|x, y) || p(z)): (B,)."""
        mu, log_var = self.encode(x, y)
        z = self.reparameterize(mu, log_var, num_samples, generator)  # (S, B, D)
        return {"reconstruction": self.log_likelihood(x, z, y).mean(0),
                "kl": gaussian_kl_standard(mu, log_var).sum(-1)}

    def iw_bound(self, x: Tensor, k: int, generator: torch.Generator | None = None, *,
                 y: Tensor | None = None) -> Tensor:
        """L_k of log p(x|y), one k-sample estimate per example: (B,)."""
        return log_mean_exp(self.log_weights(x, k, generator, y=y), dim=0)

    # -- training -----------------------------------------------------------------------------

    def condition(self, batch: Batch) -> dict[str, Tensor]:
        """The VAE's loss runs on log p(x|y): every density gets y = batch.y."""
        if batch.y is None:
            raise VaelabError("the cvae trains on labelled batches; this batch has no labels")
        return {"y": batch.y}

    # -- the training graph -------------------------------------------------------------------

    @classmethod
    def training_graph(cls, config: CVAEConfig | None = None) -> TrainingGraph:
        """The VAE's graph with the label y fed to the encoder and the decoder (drawn twice, once
        beside each network, so its arrows do not cross the graph)."""
        graph = super().training_graph(config)
        nodes = []
        for node in graph.nodes:
            label = node.label.replace("q(z|x)", "q(z|x,y)").replace("p(x|z)", "p(x|z,y)")
            nodes.append(replace(node, label=label))
            if node.name == "x":  # declared just below x, in the inputs' layer
                nodes.append(Node("y", "y (one-hot label)", "input"))
            if node.name == "z":  # just below z, in the layer before the decoder
                nodes.append(Node("y_decoder", "y (one-hot label)", "input"))
        edges = (*graph.edges, ("y", "encoder"), ("y_decoder", "decoder"))
        return TrainingGraph(graph.title, tuple(nodes), edges)

    # -- generation ---------------------------------------------------------------------------

    def sample_labels(self, num_samples: int, label: int | Tensor | None = None,
                      device: torch.device | str = "cpu") -> Tensor:
        """The labels sample() draws for: (num_samples,) int64. `label` is a class index (every
        sample of that class), a (num_samples,) tensor, or None (0, 1, ..., K-1, 0, 1, ...)."""
        if label is None:
            return torch.arange(num_samples, device=device) % self.num_classes
        if isinstance(label, Tensor):
            if label.shape != (num_samples,) or label.is_floating_point() or label.dtype == torch.bool:
                raise VaelabError(f"label must be an int or an integer tensor of shape ({num_samples},), "
                                  f"got {label.dtype} of shape {tuple(label.shape)}")
            labels = label.to(device=device, dtype=torch.long)
        elif isinstance(label, int) and not isinstance(label, bool):
            labels = torch.full((num_samples,), label, device=device, dtype=torch.long)
        else:
            raise VaelabError(f"label must be an int, an integer tensor or None, got {type(label).__name__}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise VaelabError(f"label must be a class in 0..{self.num_classes - 1}, got "
                              f"{label if isinstance(label, int) else labels.unique().tolist()}")
        return labels

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None,
               label: int | Tensor | None = None, mean: bool = True, **kwargs) -> Tensor:
        """z ~ N(0, I), then p(x|z, y) alone, for the requested class(es) (see sample_labels).
        Returns the likelihood's mean (mean=True) or a draw from it: (num_samples, C, H, W) in [0, 1]."""
        device = next(self.parameters()).device
        labels = self.sample_labels(num_samples, label, device)  # checked before any draw
        z = torch.randn(num_samples, self.config.latent_dim, generator=generator, device=device)
        decoded = self.decode(z, labels)
        images = self.likelihood.mean(decoded) if mean else self.likelihood.sample(decoded, generator)
        return images.clamp(0.0, 1.0)

    @torch.no_grad()
    def class_grid(self, per_class: int, generator: torch.Generator | None = None,
                   mean: bool = True) -> Tensor:
        """per_class samples of each class, class by class: (K * per_class, C, H, W); saved with
        nrow=per_class it is a grid with one row per class."""
        device = next(self.parameters()).device
        labels = torch.arange(self.num_classes, device=device).repeat_interleave(per_class)  # (K * per_class,)
        return self.sample(len(labels), generator, label=labels, mean=mean)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Decode the posterior mean with the same label: x (B, C, H, W), y (B,) -> (B, C, H, W)."""
        mu, _ = self.encode(x, y)
        return self.likelihood.mean(self.decode(mu, y)).clamp(0.0, 1.0)
