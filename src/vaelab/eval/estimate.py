"""What every estimator returns, and the statistics they share: the mean over examples with its
standard error, and the statistics of a set of importance weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Estimate:
    """A dataset-mean estimate with the standard error of that mean over examples."""

    value: Any  # a float, or a list of floats for per-dimension results
    stderr: Any
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_and_stderr(per_example: Tensor) -> tuple[float, float]:
    """The mean of per-example values and its standard error std / sqrt(N) (NaN for one value)."""
    values = per_example.double()
    stderr = values.std(unbiased=True).item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), stderr


@dataclass
class WeightStatistics:
    """Of K importance weights w_k = exp(log_w_k) per column (AIS runs, chains): each (...)."""

    log_mean: Tensor  # log (1/K) sum_k w_k
    stderr: Tensor  # delta-method standard error of log_mean: std_k(w_k / w_bar) / sqrt(K)
    ess: Tensor  # effective sample size (sum_k w_k)^2 / sum_k w_k^2, in [1, K]


def importance_weight_statistics(log_w: Tensor) -> WeightStatistics:
    """Statistics of log-weights (K, ...), over the first axis, computed stably in log space.

    Var(log w_bar) ~ Var(w) / (K w_bar^2) (the delta method), so the standard error of log w_bar is
    the standard deviation of the normalized weights w_k / w_bar over sqrt(K); it understates the
    error when the weights are heavy-tailed, which a small effective sample size warns of. NaN
    stderr for K = 1."""
    num = log_w.shape[0]
    log_mean = torch.logsumexp(log_w, dim=0) - math.log(num)
    relative = torch.exp(log_w - log_mean)  # w_k / w_bar, mean 1 over k
    stderr = relative.std(dim=0, unbiased=True) / math.sqrt(num) if num > 1 else torch.full_like(log_mean, math.nan)
    ess = torch.exp(2 * torch.logsumexp(log_w, dim=0) - torch.logsumexp(2 * log_w, dim=0))
    return WeightStatistics(log_mean, stderr, ess)
