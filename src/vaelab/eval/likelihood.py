"""Log-likelihood estimators for latent-variable models with an encoder: the ELBO and the
importance-weighted bound L_k (Burda et al. 2015, eq. 8), batched and chunked.

L_k = E[log (1/k) sum_{s=1..k} p(x, z_s) / q(z_s|x)],  z_s ~ q(z|x).
L_1 is the ELBO; L_k rises with k and tends to log p(x) (Burda et al. 2015, theorem 1). The
published test negative log-likelihood is -L_5000 averaged over the test set.

Memory is bounded by the chunk size, never by k: the k samples of a batch are drawn in chunks of
at most `max_rows` decoder rows and folded into a running log-sum-exp.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaelab.data.datasets import Split
from vaelab.data.loader import BatchIterator
from vaelab.errors import VaelabError

DEFAULT_MAX_ROWS = 8192  # decoder rows per chunk: ~26 MB of logits at 784 pixels; larger chunks ran slower (benchmarks/eval_speed.py)


@dataclass
class Estimate:
    """A dataset-mean estimate with the standard error of that mean over examples."""

    value: float
    stderr: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_and_stderr(per_example: Tensor) -> tuple[float, float]:
    values = per_example.double()
    stderr = values.std(unbiased=True).item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), stderr


def labelled_batches(split: Split, batch_size: int, device: torch.device, conditional: bool):
    """(x, conditioning) pairs: conditioning is {"y": labels} for a class-conditional model, else {}."""
    for batch in BatchIterator(split, batch_size, shuffle=False):
        batch = batch.to(device)
        if conditional and batch.y is None:
            raise VaelabError("a class-conditional model needs labelled data to be evaluated")
        yield batch.x, ({"y": batch.y} if conditional else {})


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def elbo(model, split: Split, *, num_samples: int = 1, batch_size: int = 500, seed: int = 0,
         progress: bool = False) -> dict[str, Estimate]:
    """Test ELBO, its reconstruction and KL terms (nats per example, means over the split)."""
    device = model_device(model)
    generator = torch.Generator(device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {"reconstruction": [], "kl": []}
    for x, condition in tqdm(labelled_batches(split, batch_size, device, model.conditional),
                             total=math.ceil(len(split) / batch_size), disable=not progress, desc="elbo", leave=False):
        terms = model.elbo_terms(x, num_samples, generator, **condition)
        for name in parts:
            parts[name].append(terms[name].cpu())
    reconstruction, kl = torch.cat(parts["reconstruction"]), torch.cat(parts["kl"])
    settings = {"num_samples": num_samples, "seed": seed, "examples": len(split)}
    return {"elbo": Estimate(*mean_and_stderr(reconstruction - kl), settings),
            "reconstruction_log_prob": Estimate(*mean_and_stderr(reconstruction), settings),
            "kl": Estimate(*mean_and_stderr(kl), settings)}


@torch.no_grad()
def importance_weighted_bound_per_example(model, x: Tensor, k: int, generator: torch.Generator,
                                          max_rows: int = DEFAULT_MAX_ROWS, **condition) -> Tensor:
    """L_k for each example of x (B, C, H, W) -> (B,), drawing the k samples in chunks.
    `condition` (y=labels) is passed on to a class-conditional model."""
    posterior = model.encode(x, **condition)
    samples_per_chunk = max(1, min(k, max_rows // len(x)))
    running = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float64)
    drawn = 0
    while drawn < k:
        chunk = min(samples_per_chunk, k - drawn)
        log_w = model.log_weights(x, chunk, generator, posterior=posterior, **condition)  # (chunk, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w.double(), dim=0))
        drawn += chunk
    return (running - math.log(k)).float()


@torch.no_grad()
def importance_weighted_bound(model, split: Split, *, k: int = 5000, batch_size: int | None = None,
                              max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0,
                              progress: bool = False) -> Estimate:
    """Mean L_k over the split (Burda et al. 2015). The batch size defaults so that one chunk of
    samples covers a batch at small k and a handful of examples at large k."""
    device = model_device(model)
    generator = torch.Generator(device).manual_seed(seed)
    batch_size = batch_size or max(1, min(500, max_rows // min(k, max_rows)))
    bounds = []
    with tqdm(total=len(split), disable=not progress, desc=f"L_{k}", leave=False, unit="img") as bar:
        for x, condition in labelled_batches(split, batch_size, device, model.conditional):
            bounds.append(importance_weighted_bound_per_example(model, x, k, generator, max_rows, **condition).cpu())
            bar.update(len(x))
    settings = {"k": k, "seed": seed, "examples": len(split), "batch_size": batch_size, "max_rows": max_rows}
    return Estimate(*mean_and_stderr(torch.cat(bounds)), settings)
