"""The plain autoencoder (AE), and the fitted latent density that lets it generate.

    h     = f(x)      encoder: MLP or conv features, then a linear head to latent_dim (the code)
    x_hat = g(h)      decoder
    cost  = BCE(x, x_hat) = -sum_i [x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)]   (cost=bce)
         or ||x - x_hat||^2                                                     (cost=mse)

summed over pixels and averaged over the minibatch: the cross-entropy L_H and squared-error
reconstruction losses of the basic autoencoder in Vincent et al. (2008, "Extracting and Composing
Robust Features with Denoising Autoencoders", section 2.2). For bce the decoder emits
logits and x_hat = sigmoid(logits); for mse x_hat is the decoder's output itself.

An AE has no prior, so it cannot generate on its own. After training (MISSION.md section 2) a
density is fitted to the codes of the training set -- one full-covariance Gaussian, or a mixture
of them as in the "ex-post density estimation" of Ghosh et al. (2020, "From Variational to
Deterministic Autoencoders", section 4) -- and generation is h ~ p(h), x = g(h). The density's
parameters are buffers, so they are saved in model.safetensors and restored by vaelab.load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.distributions import BernoulliLikelihood
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.base import GenerativeModel
from vaelab.models.blocks import build_decoder, build_encoder
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.noise import draw_categorical, draw_normal

ENCODE_BATCH_SIZE = 1000  # images encoded at a time when fitting the latent density
GMM_RANDOM_STATE = 0  # scikit-learn's k-means initialisation of the mixture: fixed, so fits repeat
COVARIANCE_JITTER = 1e-6  # added to every covariance's diagonal (scikit-learn's default reg_covar)


@dataclass
class AEConfig:
    architecture: Literal["mlp", "conv", "linear"] = "mlp"  # linear: affine encoder and decoder (PCA-like)
    hidden: tuple[int, ...] = (400,)  # encoder widths; the decoder mirrors them
    channels: tuple[int, ...] = (32, 64)  # conv widths (architecture=conv)
    activation: str = "relu"
    latent_dim: int = 20
    cost: Literal["bce", "mse"] = "bce"  # cross-entropy with a sigmoid decoder, or squared error
    latent_density: Literal["gaussian", "gmm"] = "gaussian"  # fitted to the training codes for sampling
    gmm_components: int = 10  # mixture components for latent_density=gmm


# -- fitting the latent density (numpy, float64) -------------------------------------------------

def fit_gaussian(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One full-covariance Gaussian: numpy's mean and (unbiased) covariance of the codes (N, D).
    Returns weights (1,), means (1, D), covariances (1, D, D)."""
    if len(codes) < 2:
        raise VaelabError(f"a Gaussian latent density needs at least 2 training codes, got {len(codes)}")
    mean = codes.mean(axis=0)  # (D,)
    covariance = np.atleast_2d(np.cov(codes, rowvar=False))  # (D, D)
    covariance = covariance + COVARIANCE_JITTER * np.eye(codes.shape[1])
    return np.ones(1), mean[None], covariance[None]


def fit_gmm(codes: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full-covariance Gaussian mixture fitted by EM (scikit-learn, fixed random_state).
    Returns weights (K,), means (K, D), covariances (K, D, D)."""
    from sklearn.mixture import GaussianMixture  # slow import: only when fitting

    if len(codes) < components:
        raise VaelabError(f"a {components}-component latent mixture needs at least {components} training "
                          f"codes, got {len(codes)}; lower gmm_components")
    mixture = GaussianMixture(components, covariance_type="full", reg_covar=COVARIANCE_JITTER,
                              random_state=GMM_RANDOM_STATE).fit(codes)
    return mixture.weights_, mixture.means_, mixture.covariances_


class AE(GenerativeModel):
    """The autoencoder, with the LatentDecoder capability once its latent density is fitted: the
    prior is that density, the decoder g, and the observation model Bernoulli on g's logits for
    cost=bce (the cross-entropy cost is that likelihood's negative log) or none for cost=mse."""

    config_class = AEConfig
    reconstruction_description = "clean pass: decoder output g(f(x))"
    stochastic_reconstruction = False
    # The fitted latent density's buffers (_register_density_buffers), declared for the type checker.
    density_weights: Tensor  # (K,)
    density_means: Tensor  # (K, D)
    density_scale_tril: Tensor  # (K, D, D)
    density_fitted: Tensor  # () bool

    def __init__(self, config: AEConfig, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__(config, image_shape, num_classes)
        config = self.config
        if config.latent_dim < 1 or config.gmm_components < 1:
            raise ConfigError("latent_dim and gmm_components must be at least 1")
        self.encoder = build_encoder(config.architecture, self.image_shape, config.hidden,
                                     config.activation, config.channels)
        self.code_head = nn.Linear(self.encoder.out_features, config.latent_dim)
        self.decoder = build_decoder(config.architecture, config.latent_dim, self.image_shape,
                                     self.image_shape[0], config.hidden, config.activation, config.channels)
        self._register_density_buffers()
        self.likelihood = BernoulliLikelihood() if config.cost == "bce" else None
        self.decoder_output = "logits" if config.cost == "bce" else "mean"

    def _register_density_buffers(self) -> None:
        """The fitted density p(h) = sum_k w_k N(h; mu_k, L_k L_k^T), shaped from the config so that
        saved weights load into a freshly built model. Placeholders until after_training."""
        components = self.config.gmm_components if self.config.latent_density == "gmm" else 1
        dim = self.config.latent_dim
        self.register_buffer("density_weights", torch.full((components,), 1.0 / components))  # (K,)
        self.register_buffer("density_means", torch.zeros(components, dim))  # (K, D)
        self.register_buffer("density_scale_tril", torch.eye(dim).repeat(components, 1, 1))  # (K, D, D)
        self.register_buffer("density_fitted", torch.tensor(False))

    # -- the network --------------------------------------------------------------------------

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    def encode(self, x: Tensor, label: Tensor | None = None) -> Tensor:
        """The deterministic code: x (B, C, H, W) -> h (B, D)."""
        self.check_label(label)
        return self.code_head(self.encoder(x))

    def decode(self, h: Tensor, label: Tensor | None = None) -> Tensor:
        """h (..., D) -> the decoder's raw output (..., C, H, W): logits for bce, x_hat for mse."""
        self.check_label(label)
        batch_shape = h.shape[:-1]
        decoded = self.decoder(h.reshape(-1, h.shape[-1]))
        return decoded.view(*batch_shape, *decoded.shape[1:])

    def decoder_mean(self, decoded: Tensor) -> Tensor:
        """The reconstruction as an image in [0, 1]: sigmoid of the logits (bce) or the clamped output (mse)."""
        if self.config.cost == "bce":
            return torch.sigmoid(decoded)
        return decoded.clamp(0.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, label: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """x (B, C, H, W) -> g(f(x)) as images (B, C, H, W) in [0, 1]."""
        return self.decoder_mean(self.decode(self.encode(x)))

    # -- training -----------------------------------------------------------------------------

    def reconstruction_cost(self, x_input: Tensor, target: Tensor) -> Tensor:
        """Per-example cost of reconstructing `target` from the code of `x_input`, summed over
        pixels: (B,). The AE passes x twice; the DAE passes its corrupted x_tilde and the clean x."""
        decoded = self.decode(self.encode(x_input))  # (B, C, H, W)
        if self.config.cost == "bce":  # L_H, with x_hat = sigmoid(decoded)
            per_pixel = F.binary_cross_entropy_with_logits(decoded.float(), target, reduction="none")
        else:  # L_2
            per_pixel = (decoded.float() - target).pow(2)
        return per_pixel.flatten(start_dim=1).sum(-1)

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        cost = self.reconstruction_cost(batch.x, batch.x).mean()
        return {"loss": cost, "reconstruction": cost}

    @classmethod
    def training_graph(cls, config: AEConfig | None = None) -> TrainingGraph:
        """x -> encoder -> h -> decoder -> cost against x; no noise and no KL term."""
        config = config or cls.config_class()
        corruption_nodes, corruption_edges, encoder_input = cls._graph_corruption(config)
        # Nodes are declared top-down within each layer of the drawing.
        nodes = (Node("x", "x", "input"), *corruption_nodes, Node("encoder", "encoder\nf", "network"),
                 Node("h", f"h = f({encoder_input})", "output"), Node("decoder", "decoder\ng", "network"),
                 Node("cost", f"{config.cost.upper()}(x, x_hat)", "cost"))
        edges = (*corruption_edges, (encoder_input, "encoder"), ("encoder", "h"), ("h", "decoder"),
                 ("decoder", "cost"), ("x", "cost"))
        return TrainingGraph(f"{cls.__name__} ({config.architecture})", nodes, edges)

    @classmethod
    def _graph_corruption(cls, config: AEConfig) -> tuple[tuple[Node, ...], tuple[tuple[str, str], ...], str]:
        """(nodes, edges, name of the encoder's input): the AE feeds x itself; the DAE overrides this."""
        return (), (), "x"

    # -- the latent density -------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: Tensor, batch_size: int = ENCODE_BATCH_SIZE) -> Tensor:
        """Codes of a whole image set (N, C, H, W) -> (N, D), a batch at a time on the model's device."""
        codes = [self.encode(images[start:start + batch_size].to(self.device))
                 for start in range(0, len(images), batch_size)]
        return torch.cat(codes)

    @torch.no_grad()
    def after_training(self, train_split: Split) -> None:
        """Fit the latent density (latent_density=gaussian or gmm) to the codes of the training set."""
        codes = self.encode_images(train_split.images).double().cpu().numpy()  # (N, D)
        if not np.isfinite(codes).all():
            raise VaelabError("the training codes are not all finite; cannot fit a latent density")
        if self.config.latent_density == "gmm":
            weights, means, covariances = fit_gmm(codes, self.config.gmm_components)
        else:
            weights, means, covariances = fit_gaussian(codes)
        self.set_latent_density(weights, means, covariances)

    def set_latent_density(self, weights, means, covariances) -> None:
        """Store a mixture (weights (K,), means (K, D), covariances (K, D, D)) in the buffers, each
        covariance as its Cholesky factor (computed in float64)."""
        weights, means, covariances = (torch.as_tensor(np.asarray(value), dtype=torch.float64)
                                       for value in (weights, means, covariances))
        if means.shape != self.density_means.shape:
            raise VaelabError(f"latent density of shape {tuple(means.shape)} does not fit "
                              f"{tuple(self.density_means.shape)}")
        scale_tril, info = torch.linalg.cholesky_ex(covariances)  # (K, D, D)
        if info.any():
            raise VaelabError("a fitted latent covariance is not positive definite")
        for buffer, value in [(self.density_weights, weights / weights.sum()),
                              (self.density_means, means), (self.density_scale_tril, scale_tril)]:
            buffer.copy_(value)
        self.density_fitted.fill_(True)

    def _require_density(self) -> None:
        if not bool(self.density_fitted):
            raise VaelabError(f"this {type(self).__name__} has no fitted latent density: let training "
                              "finish (it fits one) or call model.after_training(train_split)")

    def latent_distribution(self) -> MixtureSameFamily:
        """The fitted p(h) as a torch distribution (a mixture with one component for the Gaussian)."""
        self._require_density()
        return MixtureSameFamily(Categorical(probs=self.density_weights),
                                 MultivariateNormal(self.density_means, scale_tril=self.density_scale_tril))

    def mixture_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        """GaussianMixturePrior: the fitted density's weights (K,), means (K, D) and Cholesky factors (K, D, D)."""
        self._require_density()
        return self.density_weights, self.density_means, self.density_scale_tril

    def log_prior(self, h: Tensor) -> Tensor:
        """log p(h) under the fitted density, differentiable in h: (..., D) -> (...)."""
        return self.latent_distribution().log_prob(h)

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """h ~ p(h): a component k ~ Categorical(w), then h = mu_k + L_k eps, eps ~ N(0, I): (n, D)."""
        self._require_density()
        component = draw_categorical(self.density_weights, num_samples, generator)  # (n,)
        eps = draw_normal((num_samples, self.config.latent_dim), generator, like=self.density_means)  # (n, D)
        scale = self.density_scale_tril[component]  # (n, D, D)
        return self.density_means[component] + (scale @ eps.unsqueeze(-1)).squeeze(-1)

    def prior_moments(self) -> tuple[Tensor, Tensor]:
        """Mean m (D,) and Cholesky factor C (D, D) of the fitted mixture's overall covariance
        sum_k w_k (S_k + (mu_k - m)(mu_k - m)^T): samplers precondition on it, since the codes
        have whatever scale training gave them."""
        self._require_density()
        weights, means, scale_tril = self.density_weights, self.density_means, self.density_scale_tril
        mean = weights @ means  # (D,)
        centred = means - mean  # (K, D)
        within = scale_tril @ scale_tril.transpose(-1, -2)  # (K, D, D)
        covariance = (weights[:, None, None] * (within + centred[:, :, None] * centred[:, None, :])).sum(0)
        return mean, torch.linalg.cholesky(covariance)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        """h ~ the fitted p(h), then the decoder: images (n, C, H, W) in [0, 1]."""
        self.check_label(kwargs.get("label"))
        return self.decoder_mean(self.decode(self.sample_prior(num_samples, generator)))
