"""The metrics `vaelab eval --metrics` can select: name -> (estimator, the model method it needs).

Each estimator takes (model, split, options) and returns {result name: Estimate}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.likelihood import Estimate, elbo, importance_weighted_bound


@dataclass
class EvalOptions:
    k: int = 5000  # importance samples for L_k
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class Metric:
    estimate: Callable[..., dict[str, Estimate]]
    requires: str  # a model method the estimator calls
    description: str


def _elbo(model, split: Split, options: EvalOptions) -> dict[str, Estimate]:
    return elbo(model, split, seed=options.seed, progress=options.progress)


def _iw(model, split: Split, options: EvalOptions) -> dict[str, Estimate]:
    return {"iw_bound": importance_weighted_bound(model, split, k=options.k, seed=options.seed,
                                                  progress=options.progress)}


METRICS: dict[str, Metric] = {
    "elbo": Metric(_elbo, "elbo_terms", "evidence lower bound, with its reconstruction and KL terms"),
    "iw": Metric(_iw, "log_weights", "importance-weighted bound L_k (Burda et al. 2015); -L_5000 is the test NLL"),
}


def check_metrics(names: list[str], model) -> None:
    """Raise a one-line VaelabError for an unknown metric or one the model cannot be scored with."""
    if not names:
        raise VaelabError(f"no metric given; available: {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise VaelabError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
        if not hasattr(model, METRICS[name].requires):
            raise VaelabError(f"metric {name!r} does not apply to a {type(model).__name__}")


def evaluate(model, split: Split, names: list[str], options: EvalOptions) -> dict[str, Estimate]:
    check_metrics(names, model)
    results: dict[str, Estimate] = {}
    for name in names:
        results.update(METRICS[name].estimate(model, split, options))
    return results
