"""Optimizers and learning-rate schedules by name, configured from TrainConfig."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vaelab.config import TrainConfig
from vaelab.errors import ConfigError


def _adam(params, cfg: TrainConfig):
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _adamw(params, cfg: TrainConfig):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _sgd(params, cfg: TrainConfig):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _rmsprop(params, cfg: TrainConfig):
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd, "rmsprop": _rmsprop}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule (the trainer calls .step() after every optimizer step)."""
    S = torch.optim.lr_scheduler
    schedules = {
        "constant": lambda: S.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "cosine": lambda: S.CosineAnnealingLR(optimizer, T_max=max(1, total_steps)),
        "step": lambda: S.StepLR(optimizer, step_size=max(1, cfg.lr_step_size * steps_per_epoch),
                                 gamma=cfg.lr_gamma),
        # lr_gamma per epoch, applied smoothly per step
        "exponential": lambda: S.ExponentialLR(optimizer, gamma=cfg.lr_gamma ** (1.0 / max(1, steps_per_epoch))),
    }
    if cfg.schedule not in schedules:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(schedules)}")
    return schedules[cfg.schedule]()
