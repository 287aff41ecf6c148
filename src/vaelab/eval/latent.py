"""Latent diagnostics of the VAE family (models whose encode(x) returns the Gaussian posterior's
(mu, log_var)): the KL of each latent dimension and the number of active units (Burda, Grosse &
Salakhutdinov 2015, "Importance Weighted Autoencoders", section 5.2).

KL per dimension: the mean over the split of the closed-form
    KL_j(x) = KL(N(mu_j(x), sigma_j^2(x)) || N(0, 1)) = -1/2 (1 + log sigma_j^2 - mu_j^2 - sigma_j^2),
whose sum over j is the KL term of the ELBO. A dimension with KL_j ~ 0 carries no information
about x (posterior collapse).

Active units: unit u is active when A_u = Cov_x(E_{u ~ q(u|x)}[u]) > 0.01 (Burda et al.), i.e. when
the posterior mean mu_u(x) varies across the data; the variance over the split is the unbiased one
(divisor N - 1). The count is a statistic of the whole split, so its standard error comes from a
bootstrap over examples (resampling the split's images with replacement, recomputing the count).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vaelab.data.datasets import Split
from vaelab.distributions import gaussian_kl_standard
from vaelab.errors import VaelabError
from vaelab.eval.batches import evaluation_batches
from vaelab.eval.estimate import Estimate, mean_and_stderr
from vaelab.models.capabilities import VariationalPosterior, require

ACTIVITY_THRESHOLD = 0.01  # Burda et al. 2015, section 5.2
BOOTSTRAP_SAMPLES = 200  # resamples of the split for the active-unit count's standard error
_BOOTSTRAP_CHUNK = 50  # resamples weighed at a time: (chunk, N) counts in memory


@torch.no_grad()
def posterior_parameters(model, split: Split, batch_size: int = 500,
                         progress: bool = False) -> tuple[Tensor, Tensor]:
    """mu and log_var of q(z|x) (a CVAE's q(z|x, y), given the split's labels) for every image of
    the split: two (N, D) float64 tensors on the CPU."""
    require(model, VariationalPosterior, "latent")
    if len(split) == 0:
        raise VaelabError("latent diagnostics of an empty split")
    mus, log_vars = [], []
    for x, label in evaluation_batches(model, split, batch_size, desc="latent", progress=progress):
        mu, log_var = model.encode(x, label=label)
        mus.append(mu.double().cpu())
        log_vars.append(log_var.double().cpu())
    return torch.cat(mus), torch.cat(log_vars)


def _kl_estimates(mu: Tensor, log_var: Tensor, settings: dict) -> dict[str, Estimate]:
    kl = gaussian_kl_standard(mu, log_var)  # (N, D), float64
    n = len(kl)
    stderr = kl.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full((kl.shape[1],), math.nan)
    kl_settings = {**settings, "latent_dim": kl.shape[1], "stderr": "over examples",
                   "kl": "closed form KL(q(z_j|x) || N(0, 1)), mean over the split"}
    return {"kl_total": Estimate(*mean_and_stderr(kl.sum(1)), dict(kl_settings)),
            "kl_per_dim": Estimate(kl.mean(0).tolist(), stderr.tolist(), dict(kl_settings))}


def _activities(mu: Tensor, counts: Tensor | None = None) -> Tensor:
    """Unbiased variance over examples of each column of mu (N, D) -> (D,); with `counts` (R, N),
    the variance of each of R resamples holding example n counts[r, n] times -> (R, D)."""
    n = len(mu)
    centred = mu - mu.mean(0)  # centring first keeps E[m^2] - E[m]^2 from cancelling
    if counts is None:
        return centred.pow(2).sum(0) / (n - 1)
    mean = counts @ centred / n  # (R, D)
    return (counts @ centred.pow(2) / n - mean.pow(2)) * (n / (n - 1))


def _active_units_estimate(mu: Tensor, threshold: float, bootstrap_samples: int, seed: int,
                           settings: dict) -> Estimate:
    n = len(mu)
    if n < 2:
        raise VaelabError(f"active units need at least 2 examples to measure a variance, got {n}")
    activities = _activities(mu)  # (D,)
    active = activities > threshold  # (D,)
    stderr = float("nan")
    if bootstrap_samples > 1:
        generator = torch.Generator().manual_seed(seed)
        counts = []
        for start in range(0, bootstrap_samples, _BOOTSTRAP_CHUNK):
            rows = min(_BOOTSTRAP_CHUNK, bootstrap_samples - start)
            index = torch.randint(n, (rows, n), generator=generator)  # (R, N) resampled example indices
            ones = torch.ones(rows, n, dtype=mu.dtype)
            weights = torch.zeros(rows, n, dtype=mu.dtype).scatter_add_(1, index, ones)  # times each example is drawn
            counts.append((_activities(mu, weights) > threshold).sum(1).double())
        stderr = torch.cat(counts).std(unbiased=True).item()
    settings = {**settings, "threshold": threshold, "latent_dim": mu.shape[1],
                "activities": activities.tolist(), "active_dims": torch.nonzero(active).flatten().tolist(),
                "variance": "unbiased (divisor N - 1) of mu_u(x) over the split",
                "bootstrap_samples": bootstrap_samples, "bootstrap_seed": seed,
                "stderr": (f"bootstrap over examples ({bootstrap_samples} resamples)" if bootstrap_samples > 1
                           else "not computed (bootstrap_samples < 2): NaN")}
    return Estimate(float(active.sum()), stderr, settings)


def kl_per_dimension(model, split: Split, batch_size: int = 500, *, progress: bool = False) -> Estimate:
    """The mean over the split of each latent dimension's closed-form KL: an Estimate whose value and
    stderr are lists of length latent_dim (stderr over examples)."""
    mu, log_var = posterior_parameters(model, split, batch_size, progress)
    return _kl_estimates(mu, log_var, _settings(model, split, batch_size))["kl_per_dim"]


def active_units(model, split: Split, threshold: float = ACTIVITY_THRESHOLD, batch_size: int = 500, *,
                 bootstrap_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, progress: bool = False) -> Estimate:
    """The number of units u with A_u = Var_x mu_u(x) > threshold (Burda et al. 2015, section 5.2),
    the variance unbiased over the split. stderr: the standard deviation of the count over
    `bootstrap_samples` resamples of the split's examples (seeded by `seed`); NaN when
    bootstrap_samples < 2. settings["activities"] lists A_u for every unit, settings["active_dims"]
    the active ones."""
    mu, _ = posterior_parameters(model, split, batch_size, progress)
    return _active_units_estimate(mu, threshold, bootstrap_samples, seed, _settings(model, split, batch_size))


def latent_diagnostics(model, split: Split, threshold: float = ACTIVITY_THRESHOLD, batch_size: int = 500, *,
                       bootstrap_samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                       progress: bool = False) -> dict[str, Estimate]:
    """{"kl_total", "kl_per_dim", "active_units"} from one pass of the encoder over the split:
    kl_total is the mean summed KL (the ELBO's KL term, stderr over examples), kl_per_dim as in
    kl_per_dimension, active_units as in active_units."""
    mu, log_var = posterior_parameters(model, split, batch_size, progress)
    settings = _settings(model, split, batch_size)
    return {**_kl_estimates(mu, log_var, settings),
            "active_units": _active_units_estimate(mu, threshold, bootstrap_samples, seed, settings)}


def _settings(model, split: Split, batch_size: int) -> dict:
    return {"model": type(model).__name__, "conditional": bool(model.conditional), "examples": len(split),
            "batch_size": batch_size}
