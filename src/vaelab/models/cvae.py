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
from torch import Tensor

from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.training_graph import Node, TrainingGraph
from vaelab.models.vae import VAE, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    """The VAE's fields, unchanged: `beta=`, `objective=iwae`, `likelihood=` ... mean the same here."""


class CVAE(VAE):
    """A VAE whose encoder and decoder both see the one-hot class label (Sohn et al. 2015)."""

    config_class = CVAEConfig
    conditional = True
    reconstruction_description = ("posterior mean: decoder mean at mu(x, y) with the image's own label "
                                  "(no sampling of z)")

    def __init__(self, config: CVAEConfig, image_shape: Sequence[int], num_classes: int | None = None):
        if num_classes is None:
            raise ConfigError("the cvae is class-conditional and needs labelled data "
                              "(num_classes is None: this data set has no labels)")
        if num_classes < 1:
            raise ConfigError(f"the cvae needs at least one class, got num_classes={num_classes}")
        super().__init__(config, image_shape, num_classes)

    # -- the label: K more encoder inputs (conv: K more channels), K more decoder inputs --------

    def encoder_input_shape(self) -> tuple[int, ...]:
        channels, height, width = self.image_shape
        if self.config.architecture == "conv":
            return (channels + self.classes, height, width)
        return (channels * height * width + self.classes,)  # mlp, linear: the flat image and the label

    def label_features(self) -> int:
        return self.classes

    @property
    def classes(self) -> int:
        assert self.num_classes is not None  # checked in __init__
        return self.num_classes

    def one_hot(self, label: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Labels (B,) int64 -> one-hot (B, K)."""
        if label is None:
            raise VaelabError("the cvae is class-conditional: pass the labels as label=LongTensor (B,)")
        return F.one_hot(label.long(), self.classes).to(dtype)

    def encoder_input(self, x: Tensor, label: Tensor | None) -> Tensor:
        """x (B, C, H, W) with its label: (B, C + K, H, W) for a conv encoder, else (B, C*H*W + K)."""
        one_hot = self.one_hot(label, x.dtype)  # (B, K)
        if self.config.architecture == "conv":
            planes = one_hot[:, :, None, None].expand(-1, -1, *x.shape[-2:])  # (B, K, H, W), constant per class
            return torch.cat([x, planes], dim=1)
        return torch.cat([x.flatten(start_dim=1), one_hot], dim=1)

    def decoder_input(self, z: Tensor, label: Tensor | None) -> Tensor:
        """[z, one-hot label]: z (..., B, D), label (B,) -> (..., B, D + K)."""
        one_hot = self.one_hot(label, z.dtype)  # (B, K)
        return torch.cat([z, one_hot.expand(*z.shape[:-1], one_hot.shape[-1])], dim=-1)

    # -- training -----------------------------------------------------------------------------

    def training_label(self, batch: Batch) -> Tensor:
        """The VAE's loss runs on log p(x|y): every density gets batch.label."""
        if batch.label is None:
            raise VaelabError("the cvae trains on labelled batches; this batch has no labels")
        return batch.label

    # -- the training graph -------------------------------------------------------------------

    @classmethod
    def training_graph(cls, config: VAEConfig | None = None) -> TrainingGraph:
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

    def sample_labels(self, num_samples: int, label: int | Tensor | None) -> Tensor:
        """The labels sample() draws for: (num_samples,) int64. `label` is a class index (every
        sample of that class), a (num_samples,) tensor, or None (0, 1, ..., K-1, 0, 1, ...)."""
        device = self.device
        if label is None:
            return torch.arange(num_samples, device=device) % self.classes
        if isinstance(label, Tensor):
            if label.shape != (num_samples,) or label.is_floating_point() or label.dtype == torch.bool:
                raise VaelabError(f"label must be an int or an integer tensor of shape ({num_samples},), "
                                  f"got {label.dtype} of shape {tuple(label.shape)}")
            labels = label.to(device=device, dtype=torch.long)
        elif isinstance(label, int) and not isinstance(label, bool):
            labels = torch.full((num_samples,), label, device=device, dtype=torch.long)
        else:
            raise VaelabError(f"label must be an int, an integer tensor or None, got {type(label).__name__}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.classes):
            raise VaelabError(f"label must be a class in 0..{self.classes - 1}, got "
                              f"{label if isinstance(label, int) else labels.unique().tolist()}")
        return labels

    @torch.no_grad()
    def class_grid(self, per_class: int, generator: torch.Generator | None = None,
                   mean: bool = True) -> Tensor:
        """per_class samples of each class, class by class: (K * per_class, C, H, W); saved with
        nrow=per_class it is a grid with one row per class."""
        labels = torch.arange(self.classes, device=self.device).repeat_interleave(per_class)  # (K * per_class,)
        return self.sample(len(labels), generator, label=labels, mean=mean)
