"""Context managers that switch a module's mode for one block and restore it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` take no gradient inside the block (the other player's update)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode (BatchNorm running statistics, no dropout), then restore its mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
