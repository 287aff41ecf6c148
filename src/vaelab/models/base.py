"""The one interface every vaelab model implements.

A model is an nn.Module built from (config dataclass, image shape, number of classes). The trainer
calls `train_step`, whose default computes `loss` and hands the term named by `objective` to the
trainer's Updater, which owns zero-grad, backward, clipping, the optimizer step and the precision.
A model with an unusual update (a GAN's two players) overrides `train_step` and still steps through
the Updater. What estimators may ask of a model beyond this is in vaelab.models.capabilities.
Models never import estimators or plots.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vaelab.config import config_from_dict, config_to_dict
from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.distributions import standard_normal_log_prob
from vaelab.errors import VaelabError
from vaelab.models.training_graph import TrainingGraph
from vaelab.noise import draw_normal
from vaelab.optim import Updater

OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]


class GenerativeModel(nn.Module, abc.ABC):
    """Base class: subclasses set `config_class` and implement `loss` and `sample`."""

    config_class: ClassVar[type]
    conditional: ClassVar[bool] = False  # True for models whose densities and samples take a class label
    objective: ClassVar[str] = "loss"  # the entry of loss() the trainer minimizes; "loss" is what it logs

    def __init__(self, config: Any, image_shape: Sequence[int], num_classes: int | None = None):
        super().__init__()
        # A config built in Python gets the checks a YAML file or KEY=VALUE gets: a misspelt
        # choice is an error, not a silent fallback.
        self.config = config_from_dict(self.config_class, config_to_dict(config))
        self.image_shape = tuple(image_shape)  # (C, H, W)
        self.num_classes = num_classes

    @property
    def device(self) -> torch.device:
        """Where the model's parameters (or, without any, its buffers) live."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def reference_tensor(self) -> Tensor:
        """A tensor of the model's device and floating dtype (its first parameter or buffer)."""
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor
        return torch.empty(0)

    @classmethod
    def prefers_binary_pixels(cls, config: Any) -> bool:
        """Whether this model's density is one of binary images (a Bernoulli likelihood, binary
        units): then data with binarize=auto is dynamically binarized, the published protocol."""
        return False

    @abc.abstractmethod
    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """Per-batch training terms: `objective` is minimized, "loss" is logged and validated."""

    @abc.abstractmethod
    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        """Draw num_samples images (num_samples, C, H, W) with values in [0, 1]."""

    @classmethod
    def training_graph(cls, config: Any = None) -> TrainingGraph:
        """The model's training graph (inputs, networks, noise, sampled variables, cost terms) for
        `vaelab graph`; nodes are declared top-down within each layer of the drawing."""
        raise VaelabError(f"{cls.__name__} does not describe its training graph")

    # -- training hooks the trainer calls ------------------------------------------------------

    def make_optimizers(self, build_optimizer: OptimizerFactory) -> list[torch.optim.Optimizer]:
        """The optimizers this model trains with; `build_optimizer(params)` applies the train config."""
        return [build_optimizer(self.parameters())]

    def train_step(self, batch: Batch, step: int, updater: Updater) -> dict[str, Tensor]:
        """One update on one batch: minimize loss()[objective]; returns the detached terms."""
        with updater.autocast():
            terms = updater.loss(self, batch, step)  # through DistributedDataParallel when distributed
        updater.minimize(terms[self.objective], terms=terms, name=self.objective)
        return detached(terms)

    def after_training(self, train_split: Split) -> None:
        """Called once training ends, in eval mode, with the training split in its deterministic
        pixel view: the place for post-hoc fitting (an AE's latent density). Whatever it fits must
        live in buffers so it is saved with the weights. Nothing by default."""

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The loss terms on held-out data (no update); by default the training loss."""
        return detached(self.loss(batch))

    def check_label(self, label: Tensor | None) -> None:
        """An unconditional model takes no label."""
        if label is not None and not self.conditional:
            raise VaelabError(f"a {type(self).__name__} is not class-conditional: pass no label")


class StandardNormalPrior:
    """p(z) = N(0, I) over config.latent_dim dimensions: the LatentDecoder prior of the VAE and GAN."""

    config: Any
    reference_tensor: Callable[[], Tensor]

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)

    def log_prior(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """(num_samples, D) draws on the model's device, in its parameters' dtype."""
        return draw_normal((num_samples, self.latent_dim), generator, like=self.reference_tensor())

    def prior_moments(self) -> tuple[Tensor, Tensor] | None:
        return None


def detached(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in terms.items()}
