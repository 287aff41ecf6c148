"""The one tiny config of every registered model, shared by the registry, reconstruction and CLI
tests: adding a model to vaelab.registry means adding its line here (test_registry checks that)."""

from __future__ import annotations

import torch

from vaelab.config import DataConfig, TrainConfig, apply_overrides, parse_overrides
from vaelab.models.base import GenerativeModel
from vaelab.registry import MODELS

# KEY=VALUE settings that make each model tiny (6x6 images, 3 classes, 5 steps an epoch).
TINY_CONFIGS: dict[str, list[str]] = {
    "vae": ["hidden=[16]", "latent_dim=3"],
    "ae": ["hidden=[16]", "latent_dim=3", "latent_density=gmm", "gmm_components=2"],
    "cvae": ["hidden=[16]", "latent_dim=3"],
    "dae": ["hidden=[16]", "latent_dim=3", "corruption=salt_and_pepper"],
    "gan": ["architecture=dcgan", "latent_dim=3", "channels=[4,8]", "d_steps=2"],
    "gsn": ["hidden=[12,8]", "sample_burn_in=5", "binarize=dynamic"],
    "rbm": ["num_hidden=8", "burn_in=20", "persistent=true", "num_chains=8", "binarize=dynamic"],
}
COMMON = ["batch_size=8", "tensorboard=false"]
IMAGE_SHAPE, NUM_CLASSES = (1, 6, 6), 3


def build_tiny(name: str, seed: int = 0) -> tuple[GenerativeModel, TrainConfig]:
    """The tiny model `name` (initial weights from `seed`) and its train config."""
    model_class = MODELS[name]
    configs = {"model": model_class.config_class(), "data": DataConfig(), "train": TrainConfig()}
    configs = apply_overrides(configs, parse_overrides(TINY_CONFIGS[name] + COMMON))
    torch.manual_seed(seed)
    return model_class(configs["model"], IMAGE_SHAPE, NUM_CLASSES), configs["train"]
