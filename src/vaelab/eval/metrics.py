"""The metrics `vaelab eval --metrics` can select: name -> Metric(estimator, applicability, description).

Each estimator takes an EvalContext (the model, its data and the options) and returns
{result name: Estimate}. A metric that does not apply to a model says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from vaelab.checkpoint import RunConfig
from vaelab.data.datasets import ImageDataset, Split
from vaelab.errors import VaelabError
from vaelab.eval.latent import latent_diagnostics
from vaelab.eval.likelihood import Estimate, elbo, importance_weighted_bound
from vaelab.eval.parzen import parzen_estimate
from vaelab.eval.rbm_ais import base_rate_visible_bias, rbm_log_likelihood, rbm_log_partition_ais
from vaelab.eval.reconstruction import reconstruction_error
from vaelab.experiment import evaluation_split


@dataclass
class EvalOptions:
    k: int = 5000  # importance samples for L_k
    seed: int = 0
    progress: bool = False
    limit: int | None = None  # score only the first N images of the split
    num_samples: int = 10000  # model samples for the sample-based metrics (Parzen, Frechet distance, ...)
    ais_runs: int | None = None  # AIS chains (None: each estimator's published default)
    ais_steps: int | None = None  # AIS intermediate distributions (None: the published default)


@dataclass
class EvalContext:
    """What an estimator may use: the model, the run's data and the options."""

    model: object
    run_config: RunConfig
    dataset: ImageDataset
    split_name: str = "test"
    options: EvalOptions = field(default_factory=EvalOptions)

    def view(self, name: str) -> Split:
        """The deterministic evaluation view of the train, val or test split (limited by options.limit)."""
        split = evaluation_split(self.dataset, self.run_config.data, name)
        return split.subset(slice(0, self.options.limit)) if self.options.limit else split

    @cached_property
    def split(self) -> Split:
        """The split being scored."""
        return self.view(self.split_name)


@dataclass(frozen=True)
class Metric:
    estimate: Callable[[EvalContext], dict[str, Estimate]]
    applies: Callable[[object], bool]  # whether the metric can score this model
    description: str


def _has(method: str) -> Callable[[object], bool]:
    return lambda model: callable(getattr(model, method, None))


def _elbo(ctx: EvalContext) -> dict[str, Estimate]:
    return elbo(ctx.model, ctx.split, seed=ctx.options.seed, progress=ctx.options.progress)


def _iw(ctx: EvalContext) -> dict[str, Estimate]:
    o = ctx.options
    return {"iw_bound": importance_weighted_bound(ctx.model, ctx.split, k=o.k, seed=o.seed, progress=o.progress)}


def _parzen(ctx: EvalContext) -> dict[str, Estimate]:
    o = ctx.options
    return {"parzen": parzen_estimate(ctx.model, ctx.view("val"), ctx.split, num_samples=o.num_samples,
                                      seed=o.seed, progress=o.progress)}


def _reconstruction(ctx: EvalContext) -> dict[str, Estimate]:
    return reconstruction_error(ctx.model, ctx.split, seed=ctx.options.seed, progress=ctx.options.progress)


def _latent(ctx: EvalContext) -> dict[str, Estimate]:
    return latent_diagnostics(ctx.model, ctx.split, seed=ctx.options.seed, progress=ctx.options.progress)


def _rbm_ais(ctx: EvalContext) -> dict[str, Estimate]:
    """log Z by AIS from the base-rate RBM fitted to the training split, then the split's mean log p(v)."""
    o, model = ctx.options, ctx.model
    base = base_rate_visible_bias(ctx.view("train"))
    generator = torch.Generator(next(model.parameters()).device).manual_seed(o.seed)
    log_z = rbm_log_partition_ais(model, base, o.ais_runs or 100, o.ais_steps or 14500, generator, o.progress)
    return {"rbm_log_z": log_z, "rbm_log_likelihood": rbm_log_likelihood(model, ctx.split, log_z)}


METRICS: dict[str, Metric] = {
    "elbo": Metric(_elbo, _has("elbo_terms"), "evidence lower bound, with its reconstruction and KL terms"),
    "iw": Metric(_iw, _has("log_weights"), "importance-weighted bound L_k (Burda et al. 2015); -L_5000 is the test NLL"),
    "rbm_ais": Metric(_rbm_ais, _has("free_energy"), "RBM test log-likelihood with log Z by annealed "
                      "importance sampling (Salakhutdinov & Murray 2008)"),
    "parzen": Metric(_parzen, _has("sample"), "Gaussian Parzen-window log-likelihood of model samples, sigma "
                     "chosen on the validation split (Goodfellow et al. 2014); biased"),
    "reconstruction": Metric(_reconstruction, _has("reconstruct"), "reconstruction MSE and BCE per image"),
    "latent": Metric(_latent, _has("elbo_terms"), "KL per latent dimension and active units (Burda et al. 2015)"),
}


def check_metrics(names: list[str], model) -> None:
    """Raise a one-line VaelabError for an unknown metric or one the model cannot be scored with."""
    if not names:
        raise VaelabError(f"no metric given; available: {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise VaelabError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
        if not METRICS[name].applies(model):
            raise VaelabError(f"metric {name!r} does not apply to a {type(model).__name__}")


def evaluate(ctx: EvalContext, names: list[str]) -> dict[str, Estimate]:
    check_metrics(names, ctx.model)
    results: dict[str, Estimate] = {}
    for name in names:
        results.update(METRICS[name].estimate(ctx))
    return results
