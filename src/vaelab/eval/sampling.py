"""Drawing model samples for the sample-based estimators (Parzen window, feature-space metrics)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vaelab.errors import VaelabError


def draw_model_samples(model, num_samples: int, seed: int = 0, batch_size: int = 1000,
                       sample_kwargs: dict[str, Any] | None = None) -> tuple[Tensor, list[int] | None]:
    """num_samples images from model.sample(n, generator=...), batch_size at a time, from one
    torch.Generator on the model's device seeded with `seed`. A class-conditional model gets the
    labels 0, 1, ..., K-1, 0, 1, ... through label= (equal counts per class when K divides
    num_samples, else counts differing by one). Returns ((M, C, H, W) on the model's device,
    per-class counts or None)."""
    if num_samples < 1 or batch_size < 1:
        raise VaelabError(f"num_samples and batch_size must be at least 1, got {num_samples}, {batch_size}")
    generator = torch.Generator(model.device).manual_seed(seed)
    kwargs = dict(sample_kwargs or {})
    labels = requested_labels(model, num_samples)
    drawn = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        if labels is not None:
            kwargs["label"] = labels[start:start + n]
        drawn.append(model.sample(n, generator=generator, **kwargs))
    counts = None if labels is None else torch.bincount(labels, minlength=model.num_classes).tolist()
    return torch.cat(drawn), counts


def requested_labels(model, num_samples: int) -> Tensor | None:
    """The classes 0, 1, ..., K-1, 0, 1, ... a class-conditional model is asked for; None otherwise."""
    if not getattr(model, "conditional", False):
        return None
    return torch.arange(num_samples, device=model.device) % model.num_classes
