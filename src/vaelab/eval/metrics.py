"""The metrics `vaelab eval --metrics` can select: name -> Metric(estimator, applicability, description).

Each estimator takes an EvalContext (the model, its data and the options) and returns
{result name: Estimate}. A metric that does not apply to a model says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from vaelab.config import RunConfig
from vaelab.data.datasets import ImageDataset, Split
from vaelab.errors import VaelabError
from vaelab.eval.classifier import load_or_train_classifier
from vaelab.eval.decoder_ais import choose_sigma, decoder_ais
from vaelab.eval.estimate import Estimate
from vaelab.eval.latent import latent_diagnostics
from vaelab.eval.likelihood import elbo, importance_weighted_bound, is_log_likelihood
from vaelab.eval.parzen import parzen_estimate
from vaelab.eval.rbm_ais import base_rate_visible_bias, rbm_log_likelihood, rbm_log_partition_ais
from vaelab.eval.reconstruction import reconstruction_error
from vaelab.eval.sample_quality import inception_fid, sample_quality
from vaelab.eval.sampling import draw_model_samples
from vaelab.experiment import evaluation_split, raw_split
from vaelab.models.capabilities import BinaryRBM, LatentDecoder, Reconstructor, VariationalPosterior, require


@dataclass
class EvalOptions:
    k: int = 5000  # importance samples for L_k
    seed: int = 0
    progress: bool = False
    limit: int | None = None  # score only the first N images of the split
    num_samples: int = 10000  # model samples for the sample-based metrics (Parzen, Frechet distance, ...)
    ais_runs: int | None = None  # AIS chains (None: each estimator's published default)
    ais_steps: int | None = None  # AIS intermediate distributions (None: the published default)
    sigma: float | None = None  # decoder AIS: std of a Gaussian observation model (GAN, AE with cost=mse)
    # One protocol across models (vaelab compare): Parzen, decoder AIS and reconstruction score the
    # data set's continuous pixels, and decoder AIS scores every model under a Gaussian observation
    # model (observation="gaussian", sigma chosen on validation) as Wu et al. (2017) did.
    continuous: bool = False
    observation: str | None = None
    convergence_check: bool = False  # AIS estimates are also made with half the steps
    iw_precision: str = "fp32"  # L_k's matmuls: fp32, bf16 autocast (an approximation: measure it) or auto
    iw_compile: bool = False  # L_k's log p(x|z) through torch.compile (eager fallback): pays at large k
    ais_gradients: str = "fp32"  # decoder AIS: the leapfrog gradients' precision (fp32, bf16 or auto; exact in each)


@dataclass
class EvalContext:
    """What an estimator may use: the model, the run's data and the options."""

    model: Any
    run_config: RunConfig
    dataset: ImageDataset
    split_name: str = "test"
    options: EvalOptions = field(default_factory=EvalOptions)

    def view(self, name: str, raw: bool = False) -> Split:
        """The deterministic evaluation view of the train, val or test split (limited by options.limit);
        raw=True: the continuous pixels as the data set holds them (what a classifier was trained on)."""
        split = (raw_split if raw else evaluation_split)(self.dataset, self.run_config.data, name)
        return split.subset(slice(0, self.options.limit)) if self.options.limit else split

    @cached_property
    def split(self) -> Split:
        """The split being scored."""
        return self.view(self.split_name)

    def scored(self, name: str | None = None) -> Split:
        """A split for the metrics that follow options.continuous (Parzen, decoder AIS,
        reconstruction): the continuous pixels under it, else the evaluation view."""
        name = name or self.split_name
        return self.view(name, raw=True) if self.options.continuous else (self.split if name == self.split_name
                                                                          else self.view(name))


@dataclass(frozen=True)
class Metric:
    estimate: Callable[[EvalContext], dict[str, Estimate]]
    requires: tuple[type, ...]  # the capabilities (vaelab.models.capabilities) the model must have
    description: str


def _elbo(ctx: EvalContext) -> dict[str, Estimate]:
    return elbo(ctx.model, ctx.split, seed=ctx.options.seed, progress=ctx.options.progress)


def _iw(ctx: EvalContext) -> dict[str, Estimate]:
    o = ctx.options
    estimate = importance_weighted_bound(ctx.model, ctx.split, k=o.k, seed=o.seed, progress=o.progress,
                                         precision=o.iw_precision, compile=o.iw_compile)
    return {"iw_bound" if is_log_likelihood(estimate.settings["bound_of"]) else "iw_cross_entropy": estimate}


def _parzen(ctx: EvalContext) -> dict[str, Estimate]:
    o = ctx.options
    return {"parzen": parzen_estimate(ctx.model, ctx.scored("val"), ctx.scored(), num_samples=o.num_samples,
                                      seed=o.seed, progress=o.progress)}


def _reconstruction(ctx: EvalContext) -> dict[str, Estimate]:
    return reconstruction_error(ctx.model, ctx.scored(), seed=ctx.options.seed, progress=ctx.options.progress)


def _latent(ctx: EvalContext) -> dict[str, Estimate]:
    return latent_diagnostics(ctx.model, ctx.split, seed=ctx.options.seed, progress=ctx.options.progress)


def _rbm_ais(ctx: EvalContext) -> dict[str, Estimate]:
    """log Z by AIS from the base-rate RBM fitted to the training split, then the split's mean log p(v)."""
    o, model = ctx.options, ctx.model
    base = base_rate_visible_bias(ctx.view("train"))
    generator = torch.Generator(model.device).manual_seed(o.seed)
    log_z = rbm_log_partition_ais(model, base, o.ais_runs or 100, o.ais_steps or 14500, generator, o.progress)
    log_likelihood = rbm_log_likelihood(model, ctx.split, log_z)
    name = "rbm_log_likelihood" if log_likelihood.settings["binary"] else "rbm_cross_entropy"
    return {"rbm_log_z": log_z, name: log_likelihood}


def _needs_sigma(ctx: EvalContext) -> bool:
    """A Gaussian observation model whose sigma is chosen on validation data: for a decoder with no
    observation model of its own (a GAN, an MSE autoencoder), or for every model under
    options.observation="gaussian"."""
    return ctx.options.sigma is None and (ctx.model.likelihood is None or ctx.options.observation == "gaussian")


def _decoder_ais(ctx: EvalContext) -> dict[str, Estimate]:
    """AIS over the latent with HMC (Wu et al. 2017). A GAN's or MSE autoencoder's observation noise
    sigma is --sigma, or else chosen on the validation split as Wu et al. did."""
    o, model = ctx.options, ctx.model
    sigma, sigma_table, steps = o.sigma, None, o.ais_steps or 1000
    if _needs_sigma(ctx):
        sigma, candidates = choose_sigma(model, ctx.scored("val"), num_examples=10, num_steps=min(100, steps),
                                         refine_steps=steps, seed=o.seed, gradient_precision=o.ais_gradients)
        sigma_table = {str(s): estimate.value for s, estimate in candidates.items()}
        sigma_screen = {str(s): estimate.settings["screen"]["value"] for s, estimate in candidates.items()
                         if "screen" in estimate.settings}
    estimate = _decoder_ais_at(ctx, steps, sigma, o.seed)
    if sigma_table is not None:
        # mean log p(x) of 10 val images per sigma: a 100-step screen, then the best two at the estimate's steps
        estimate.settings["sigma_chosen_on_validation"] = sigma_table
        estimate.settings["sigma_screen_values"] = sigma_screen  # the screen's values of the two refined sigmas
    if o.convergence_check:
        add_convergence_check(estimate, _decoder_ais_at(ctx, max(1, steps // 2), sigma, o.seed + 1))
    name = "decoder_ais" if is_log_likelihood(estimate.settings["bound_of"]) else "decoder_ais_cross_entropy"
    return {name: estimate}


def _decoder_ais_at(ctx: EvalContext, steps: int, sigma: float | None, seed: int) -> Estimate:
    o = ctx.options
    observation = "gaussian" if sigma is not None else None
    return decoder_ais(ctx.model, ctx.scored(), num_steps=steps, num_chains=o.ais_runs or 16,
                       observation=observation, sigma=sigma, seed=seed, progress=o.progress,
                       gradient_precision=o.ais_gradients)


def add_convergence_check(estimate: Estimate, half: Estimate) -> None:
    """Record the same estimate made with half the annealing steps, and whether the full one moved
    from it by no more than its own stderr (an AIS that has converged should not move)."""
    estimate.settings["half_steps"] = {"num_steps": half.settings.get("num_steps"), "value": half.value,
                                       "stderr": half.stderr}
    estimate.settings["converged"] = bool(abs(estimate.value - half.value) <= estimate.stderr)


def _sample_quality(ctx: EvalContext) -> dict[str, Estimate]:
    """Frechet distance, precision and recall (and a CVAE's class consistency) in the feature space of
    a classifier trained on this data set's training split (cached per data set); not Inception FID."""
    o = ctx.options
    if ctx.dataset.num_classes is None:
        raise VaelabError("sample_quality needs a labelled data set to train its feature classifier")
    classifier, info = load_or_train_classifier(ctx.dataset, progress=o.progress)
    results = sample_quality(ctx.model, ctx.dataset, ctx.view(ctx.split_name, raw=True), classifier,
                             num_samples=o.num_samples, seed=o.seed, progress=o.progress)
    for estimate in results.values():
        estimate.settings["classifier_test_accuracy"] = info["test_accuracy"]
    return results


def _inception_fid(ctx: EvalContext) -> dict[str, Estimate]:
    """The real Inception FID, only where torch-fidelity and local Inception weights are installed
    (vaelab never downloads them); otherwise one line saying how to enable it."""
    o = ctx.options
    reference = ctx.view(ctx.split_name, raw=True).images[: o.num_samples]
    samples, _ = draw_model_samples(ctx.model, len(reference), o.seed)
    return {"inception_fid": inception_fid(samples.cpu(), reference, seed=o.seed)}


METRICS: dict[str, Metric] = {
    "elbo": Metric(_elbo, (VariationalPosterior,), "evidence lower bound, with its reconstruction and KL terms"),
    "iw": Metric(_iw, (VariationalPosterior,), "importance-weighted bound L_k (Burda et al. 2015); -L_5000 is the "
                 "test NLL"),
    "rbm_ais": Metric(_rbm_ais, (BinaryRBM,), "RBM test log-likelihood with log Z by annealed importance sampling "
                      "(Salakhutdinov & Murray 2008)"),
    "decoder_ais": Metric(_decoder_ais, (LatentDecoder,), "log-likelihood by AIS over the latent with HMC (Wu et al. "
                          "2017), observation model in the settings"),
    "parzen": Metric(_parzen, (), "Gaussian Parzen-window log-likelihood of model samples, sigma chosen on the "
                     "validation split (Goodfellow et al. 2014); biased"),
    "sample_quality": Metric(_sample_quality, (), "Frechet distance, precision/recall and CVAE class consistency in a "
                             "locally trained classifier's feature space (not Inception FID)"),
    "inception_fid": Metric(_inception_fid, (), "Frechet Inception Distance with torch-fidelity and local Inception "
                            "weights ($VAELAB_INCEPTION_WEIGHTS), if installed"),
    "reconstruction": Metric(_reconstruction, (Reconstructor,), "reconstruction MSE and BCE per image"),
    "latent": Metric(_latent, (VariationalPosterior,), "KL per latent dimension and active units (Burda et al. 2015)"),
}


def check_metrics(names: list[str], model: Any) -> None:
    """Raise a one-line VaelabError for an unknown metric or one the model lacks a capability for."""
    if not names:
        raise VaelabError(f"no metric given; available: {', '.join(METRICS)}")
    for name in names:
        if name not in METRICS:
            raise VaelabError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
        for capability in METRICS[name].requires:
            require(model, capability, name)


def evaluate(ctx: EvalContext, names: list[str]) -> dict[str, Estimate]:
    check_metrics(names, ctx.model)
    results: dict[str, Estimate] = {}
    for name in names:
        results.update(METRICS[name].estimate(ctx))
    return results
