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


def paired_difference(first: dict[str, Any], second: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, stderr) of first - second over the same examples, from the per-example values two
    estimates (as dicts, the `eval --json` form) keep in settings["per_example"]; None when either
    lacks them or they differ in number. Scored on the same images, two models' values share the
    images' spread, so the paired stderr is far smaller than the two stderrs combined."""
    values = [estimate.get("settings", {}).get("per_example") for estimate in (first, second)]
    if values[0] is None or values[1] is None or len(values[0]) != len(values[1]) or len(values[0]) < 2:
        return None
    return mean_and_stderr(torch.tensor(values[0], dtype=torch.float64) - torch.tensor(values[1], dtype=torch.float64))


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
