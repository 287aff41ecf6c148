"""The one interface every vaelab model implements.

A model is an nn.Module built from (config dataclass, image shape, number of classes). The trainer
only calls `loss` through `train_step`; models with unusual updates (a GAN's two optimizers, an
RBM's contrastive divergence) override `make_optimizers` and `train_step` instead of copying the
loop. Models never import estimators or plots.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vaelab.config import config_from_dict, config_to_dict
from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.errors import VaelabError
from vaelab.models.training_graph import TrainingGraph


class GenerativeModel(nn.Module, abc.ABC):
    """Base class: subclasses set `config_class` and implement `loss` and `sample`."""

    config_class: ClassVar[type]
    conditional: ClassVar[bool] = False  # True for models whose sample() takes a class label

    def __init__(self, config: Any, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__()
        # A config built in Python gets the checks a YAML file or KEY=VALUE gets: a misspelt
        # choice is an error, not a silent fallback.
        self.config = config_from_dict(self.config_class, config_to_dict(config))
        self.image_shape = tuple(image_shape)  # (C, H, W)
        self.num_classes = num_classes

    @abc.abstractmethod
    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """Per-batch training objective: a dict whose "loss" entry is minimized; the rest are logged."""

    @abc.abstractmethod
    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """Draw num_samples images (num_samples, C, H, W) with values in [0, 1]."""

    @classmethod
    def training_graph(cls, config: Any = None) -> TrainingGraph:
        """The model's training graph (inputs, networks, noise, sampled variables, cost terms) for
        `vaelab graph`; nodes are declared top-down within each layer of the drawing."""
        raise VaelabError(f"{cls.__name__} does not describe its training graph")

    # -- training hooks the trainer calls; override for unusual updates --------------------------

    def make_optimizers(self, build_optimizer) -> list[torch.optim.Optimizer]:
        """The optimizers this model trains with; `build_optimizer(params)` applies the train config."""
        return [build_optimizer(self.parameters())]

    def train_step(self, batch: Batch, optimizers: list[torch.optim.Optimizer], step: int,
                   grad_clip: float = 0.0, autocast=None) -> dict[str, Tensor]:
        """One optimizer step on one batch; returns the detached loss terms for logging."""
        (optimizer,) = optimizers
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            terms = self.loss(batch, step=step)
        terms["loss"].backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(self.parameters(), grad_clip)
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    def after_training(self, train_split: Split) -> None:
        """Called once training ends, in eval mode, with the training split in a deterministic pixel
        view: the place for post-hoc fitting (an AE's latent density). Whatever it fits must live
        in buffers so it is saved with the weights. Nothing by default."""

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The loss terms on held-out data (no update); by default the training loss."""
        return {name: value.detach() for name, value in self.loss(batch).items()}
