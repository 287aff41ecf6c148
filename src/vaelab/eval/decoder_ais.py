"""log p(x) of decoder-based models by annealed importance sampling over the latent, with
Hamiltonian Monte Carlo transitions (Wu, Burda, Salakhutdinov & Grosse 2017, "On the Quantitative
Analysis of Decoder-Based Generative Models", section 3; their code: github.com/tonywu95/eval_gen).

A decoder-based model is a prior p(z) and an observation model p(x|z). For one image x, AIS walks
K chains from the prior to the posterior through

    f_t(z) = p(z) p(x|z)^beta_t,      0 = beta_0 < beta_1 < ... < beta_T = 1,

(Neal 2001): z_0 ~ p(z); at step t the log-weight gains (beta_t - beta_{t-1}) log p(x|z_{t-1}) and
z_t follows one HMC transition that leaves f_t invariant. The weight w = prod_t f_t(z_{t-1}) /
f_{t-1}(z_{t-1}) is an unbiased estimate of p(x) = integral of f_T, so

    log p_hat(x) = log (1/K) sum_k w_k

is a stochastic lower bound: E[log p_hat(x)] <= log p(x) by Jensen, with a gap that shrinks as the
annealing gets slower (more steps) or K grows.

Every model is seen through a `LatentModel` (prior, sampler, likelihood, and a line saying which
observation model it is); `latent_model_for` builds one for the vaelab VAE, CVAE, AE, DAE and GAN.
All examples x chains run as one (K, B, D) tensor; examples are processed in chunks of at most
`max_rows` chains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vaelab.data.datasets import Split
from vaelab.distributions import LOG_2PI, standard_normal_log_prob
from vaelab.errors import VaelabError
from vaelab.eval.likelihood import Estimate, labelled_batches, mean_and_stderr, model_device
from vaelab.models.ae import AE
from vaelab.models.gan import GAN, eval_mode
from vaelab.models.vae import VAE

# Step-size adaptation of Wu et al.'s code (sampling/samplers.py, AISPath.build, and
# algorithms/hmc.py, hmc_updates): after every transition the step grows by STEP_SIZE_INC when the
# running acceptance rate is above the target, else shrinks by STEP_SIZE_DEC, clipped to
# [STEP_SIZE_MIN, STEP_SIZE_MAX]; the running rate is an exponential average with weight
# ACCEPTANCE_SLOWNESS on the past.
STEP_SIZE_INC = 1.02
STEP_SIZE_DEC = 0.98
STEP_SIZE_MIN = 1e-4
STEP_SIZE_MAX = 0.5
ACCEPTANCE_SLOWNESS = 0.9
SIGMOID_RADIUS = 4.0  # the sigmoid schedule's half-width (Wu et al.'s algorithms/ais.py, rad=4)
DEFAULT_MAX_ROWS = 4096  # chains (examples x num_chains) per chunk; each keeps a decoder graph alive
DEFAULT_SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2)  # choose_sigma's grid (pixel units, data in [0, 1])


@dataclass(frozen=True)
class LatentModel:
    """What AIS needs of a decoder-based model.

    log_prior(z): z (..., D) -> log p(z) (...), differentiable in z.
    sample_prior(n, generator): n draws from p(z), (n, D).
    log_likelihood(x, z, labels): log p(x|z) for x (B, C, H, W), z (S, B, D) -> (S, B),
        differentiable in z; `labels` (B,) is the class of each example for a conditional model
        (None otherwise), so labels always travel with their images.
    observation: the observation model in words ("bernoulli ...", "gaussian sigma=0.1 ...").
    conditional: True when log_likelihood needs labels.
    """

    latent_dim: int
    log_prior: Callable[[Tensor], Tensor]
    sample_prior: Callable[[int, torch.Generator | None], Tensor]
    log_likelihood: Callable[..., Tensor]
    observation: str
    conditional: bool = False


# -- observation models ---------------------------------------------------------------------------

def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """sum over pixels of x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) = x l - softplus(l):
    x (B, C, H, W), logits (S, B, C, H, W) -> (S, B)."""
    return (x * logits - F.softplus(logits)).flatten(start_dim=2).sum(-1)


def gaussian_log_prob(x: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """log N(x; mean, sigma^2 I) summed over pixels: x (B, C, H, W), mean (S, B, C, H, W) -> (S, B)."""
    squared = (x - mean).pow(2).flatten(start_dim=2).sum(-1)
    pixels = x[0].numel()
    return -0.5 * squared / sigma**2 - pixels * (math.log(sigma) + 0.5 * LOG_2PI)


def _check_sigma(sigma: float | None, who: str) -> float:
    if sigma is None:
        raise VaelabError(f"a Gaussian observation model for {who} needs sigma (its standard deviation "
                          "in pixel units); choose it on validation data with choose_sigma")
    if not sigma > 0:
        raise VaelabError(f"sigma must be positive, got {sigma}")
    return float(sigma)


def _no_labels(labels: Tensor | None) -> None:
    if labels is not None:
        raise VaelabError("this model is not class-conditional: pass no labels")


# -- adapters for the vaelab models ---------------------------------------------------------------

def _standard_normal_sampler(latent_dim: int, device: torch.device, dtype: torch.dtype):
    def sample_prior(n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, latent_dim, generator=generator, device=device, dtype=dtype)
    return sample_prior


def _vae_latent_model(model: VAE, observation: str | None, sigma: float | None) -> LatentModel:
    """p(z) = N(0, I) and the VAE's (or CVAE's) own likelihood, Bernoulli or Gaussian."""
    config = model.config
    if observation not in (None, config.likelihood):
        raise VaelabError(f"a {type(model).__name__} is scored with its own {config.likelihood} likelihood, "
                          f"not {observation!r}")
    if sigma is not None:
        raise VaelabError(f"a {type(model).__name__} is scored with its own likelihood: sigma does not apply")
    if config.likelihood == "bernoulli":
        words = "bernoulli on the decoder's logits"
    elif config.variance == "learned":
        words = f"gaussian with the decoder's learned per-pixel sigma (min_std={config.min_std:g})"
    else:
        words = f"gaussian sigma={config.fixed_std:g} (the model's fixed sigma)"
    if config.likelihood == "gaussian":
        words += ", mean = sigmoid(decoder output)" if config.gaussian_mean == "sigmoid" else \
            ", mean = decoder output"
    weight = next(model.parameters())

    if model.conditional:
        def log_likelihood(x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
            if labels is None:
                raise VaelabError(f"the {type(model).__name__} is class-conditional: pass the labels of x")
            return model.log_likelihood(x, z, y=labels)
    else:
        def log_likelihood(x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
            _no_labels(labels)
            return model.log_likelihood(x, z)

    return LatentModel(config.latent_dim, standard_normal_log_prob,
                       _standard_normal_sampler(config.latent_dim, weight.device, weight.dtype),
                       log_likelihood, f"{words} (prior N(0, I))", conditional=model.conditional)


def _whitening(model: AE) -> tuple[Tensor, Tensor]:
    """Mean m (D,) and Cholesky factor C (D, D) of the fitted latent mixture's overall covariance
    sum_k w_k (S_k + (mu_k - m)(mu_k - m)^T)."""
    weights, means, scale_tril = model.density_weights, model.density_means, model.density_scale_tril
    mean = weights @ means  # (D,)
    centred = means - mean  # (K, D)
    within = scale_tril @ scale_tril.transpose(-1, -2)  # (K, D, D)
    covariance = (weights[:, None, None] * (within + centred[:, :, None] * centred[:, None, :])).sum(0)
    return mean, torch.linalg.cholesky(covariance)


def _ae_latent_model(model: AE, observation: str | None, sigma: float | None) -> LatentModel:
    """The AE's (or DAE's) fitted latent density as the prior, and Bernoulli on the decoder's logits
    (cost=bce) or N(decoder output, sigma^2 I) (cost=mse; or N(sigmoid(logits), sigma^2 I) when a
    bce model is asked for observation="gaussian").

    HMC runs on whitened codes u, h = m + C u, with m and C C^T the mean and covariance of the
    fitted density, so that the step sizes fit whatever scale the codes have. The prior density of u
    is p_h(m + C u) |det C|: the marginal p(x) is the same integral."""
    model._require_density()
    name = type(model).__name__
    observation = observation or ("bernoulli" if model.config.cost == "bce" else "gaussian")
    if observation == "bernoulli":
        if model.config.cost != "bce":
            raise VaelabError(f"a {name} trained with cost=mse has no logits: score it with observation="
                              "'gaussian' and a sigma")
        if sigma is not None:
            raise VaelabError("sigma applies to the Gaussian observation model only")
        words = "bernoulli on the decoder's logits"

        def observe(x: Tensor, decoded: Tensor) -> Tensor:
            return bernoulli_log_prob(x, decoded)
    elif observation == "gaussian":
        sigma = _check_sigma(sigma, f"a {name}")
        if model.config.cost == "bce":
            words = f"gaussian sigma={sigma:g} around sigmoid(decoder logits)"

            def observe(x: Tensor, decoded: Tensor) -> Tensor:
                return gaussian_log_prob(x, torch.sigmoid(decoded), sigma)
        else:
            words = f"gaussian sigma={sigma:g} around the decoder's output"

            def observe(x: Tensor, decoded: Tensor) -> Tensor:
                return gaussian_log_prob(x, decoded, sigma)
    else:
        raise VaelabError(f"observation must be 'bernoulli' or 'gaussian' for a {name}, got {observation!r}")

    mean, scale = _whitening(model)
    log_det = torch.log(torch.diagonal(scale)).sum()

    def to_code(u: Tensor) -> Tensor:  # (..., D) -> h (..., D)
        return mean + u @ scale.T

    def log_prior(u: Tensor) -> Tensor:
        return model.log_prob_latent(to_code(u)) + log_det

    def sample_prior(n: int, generator: torch.Generator | None = None) -> Tensor:
        centred = (model.sample_latent(n, generator) - mean).T  # (D, n)
        return torch.linalg.solve_triangular(scale, centred, upper=False).T  # (n, D)

    def log_likelihood(x: Tensor, u: Tensor, labels: Tensor | None = None) -> Tensor:
        _no_labels(labels)
        return observe(x, model.decode(to_code(u)))

    density = model.config.latent_density + (f" ({model.config.gmm_components} components)"
                                             if model.config.latent_density == "gmm" else "")
    return LatentModel(model.config.latent_dim, log_prior, sample_prior, log_likelihood,
                       f"{words} (prior: the fitted {density} latent density, whitened)")


def _gan_latent_model(model: GAN, observation: str | None, sigma: float | None) -> LatentModel:
    """p(z) = N(0, I) and N(x; G(z), sigma^2 I) (Wu et al. 2017, section 3), or Bernoulli with
    probabilities G(z) for binary data (their 'binary' setting). G runs in eval mode (BatchNorm
    running statistics)."""
    observation = observation or "gaussian"
    if observation == "gaussian":
        sigma = _check_sigma(sigma, "a GAN")
        words = f"gaussian sigma={sigma:g} around G(z)"
    elif observation == "bernoulli":
        if sigma is not None:
            raise VaelabError("sigma applies to the Gaussian observation model only")
        words = "bernoulli with probabilities G(z)"
    else:
        raise VaelabError(f"observation must be 'gaussian' or 'bernoulli' for a GAN, got {observation!r}")

    def log_likelihood(x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        _no_labels(labels)
        with eval_mode(model.generator):
            logits = model.generator(z.reshape(-1, z.shape[-1]))  # G(z) = sigmoid(logits)
        logits = logits.view(*z.shape[:-1], *logits.shape[1:])  # (S, B, C, H, W)
        if observation == "bernoulli":
            return bernoulli_log_prob(x, logits)
        return gaussian_log_prob(x, torch.sigmoid(logits), sigma)

    weight = next(model.parameters())
    dim = model.config.latent_dim
    return LatentModel(dim, standard_normal_log_prob, _standard_normal_sampler(dim, weight.device, weight.dtype),
                       log_likelihood, f"{words} (prior N(0, I))")


def latent_model_for(model, observation: str | None = None, sigma: float | None = None) -> LatentModel:
    """The LatentModel of a vaelab VAE, CVAE, AE, DAE or GAN.

    VAE/CVAE: prior N(0, I) and the model's own likelihood (observation must be None or match it;
        sigma does not apply). A CVAE's labels are passed with x to ais_log_likelihood.
    AE/DAE: prior = the fitted latent density; Bernoulli on the logits for cost=bce (the default),
        Gaussian N(output, sigma^2) for cost=mse (sigma required).
    GAN: prior N(0, I) and N(x; G(z), sigma^2 I) (sigma required), or observation="bernoulli".
    """
    if isinstance(model, VAE):  # CVAE included
        return _vae_latent_model(model, observation, sigma)
    if isinstance(model, AE):  # DAE included
        return _ae_latent_model(model, observation, sigma)
    if isinstance(model, GAN):
        return _gan_latent_model(model, observation, sigma)
    raise VaelabError(f"decoder AIS applies to the vae, cvae, ae, dae and gan, not a {type(model).__name__}")


# -- annealing schedule ---------------------------------------------------------------------------

def annealing_schedule(num_steps: int, kind: str = "sigmoid") -> Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_T = 1, T = num_steps: (T + 1,) float64.

    linear: evenly spaced. sigmoid: gamma_t = sigmoid(r (2t/T - 1)), beta_t = (gamma_t - gamma_0) /
    (gamma_T - gamma_0) with r = 4 (Wu et al.'s algorithms/ais.py, after Grosse et al.'s BDMC code):
    more distributions near 0 and 1, where the distribution changes fastest."""
    if num_steps < 1:
        raise VaelabError(f"num_steps must be at least 1, got {num_steps}")
    if kind == "linear":
        return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if kind == "sigmoid":
        gamma = torch.sigmoid(torch.linspace(-SIGMOID_RADIUS, SIGMOID_RADIUS, num_steps + 1, dtype=torch.float64))
        return (gamma - gamma[0]) / (gamma[-1] - gamma[0])
    raise VaelabError(f"schedule must be 'sigmoid' or 'linear', got {kind!r}")


# -- Hamiltonian Monte Carlo ----------------------------------------------------------------------

@dataclass
class _Point:
    """Chains at z with the two log-densities and their gradients: z (K, B, D), values (K, B)."""

    z: Tensor
    log_prior: Tensor
    log_likelihood: Tensor
    grad_prior: Tensor
    grad_likelihood: Tensor

    def energy(self, beta: float) -> Tensor:  # U = -log f_beta, (K, B)
        return -(self.log_prior + beta * self.log_likelihood)

    def energy_grad(self, beta: float) -> Tensor:  # dU/dz, (K, B, D)
        return -(self.grad_prior + beta * self.grad_likelihood)


def _evaluate(latent_model: LatentModel, x: Tensor, z: Tensor, labels: Tensor | None) -> _Point:
    """log p(z), log p(x|z) and their separate gradients in z, so that the gradient of any
    log p(z) + beta log p(x|z) is at hand without another decoder pass. One backward pass: the two
    terms see two leaf copies of z, and the gradient of their sum splits into the two gradients."""
    with torch.enable_grad():
        z_prior = z.detach().requires_grad_(True)
        z_likelihood = z.detach().requires_grad_(True)
        log_prior = latent_model.log_prior(z_prior)  # (K, B)
        log_likelihood = latent_model.log_likelihood(x, z_likelihood, labels)  # (K, B)
        grad_prior, grad_likelihood = torch.autograd.grad(log_prior.sum() + log_likelihood.sum(),
                                                          (z_prior, z_likelihood))
    return _Point(z.detach(), log_prior.detach(), log_likelihood.detach(), grad_prior, grad_likelihood)


def _hmc_transition(latent_model: LatentModel, x: Tensor, point: _Point, beta: float, step_size: Tensor,
                    leapfrog_steps: int, generator: torch.Generator | None,
                    labels: Tensor | None) -> tuple[_Point, Tensor]:
    """One HMC transition leaving p(z) p(x|z)^beta invariant (Neal 2011, "MCMC using Hamiltonian
    dynamics", section 5.2): momentum p ~ N(0, I), `leapfrog_steps` leapfrog steps of size
    step_size (B,) (one per example), Metropolis accept/reject on H = U(z) + |p|^2 / 2.
    Returns the new point and the acceptances (K, B) bool."""
    eps = step_size[None, :, None].to(point.z.dtype)  # (1, B, 1)
    momentum0 = torch.randn(point.z.shape, generator=generator, device=point.z.device, dtype=point.z.dtype)
    momentum = momentum0 - 0.5 * eps * point.energy_grad(beta)  # half step
    z = point.z + eps * momentum
    for _ in range(leapfrog_steps - 1):
        proposal = _evaluate(latent_model, x, z, labels)
        momentum = momentum - eps * proposal.energy_grad(beta)
        z = z + eps * momentum
    proposal = _evaluate(latent_model, x, z, labels)
    momentum = momentum - 0.5 * eps * proposal.energy_grad(beta)  # final half step

    current = point.energy(beta) + 0.5 * momentum0.pow(2).sum(-1)  # (K, B)
    proposed = proposal.energy(beta) + 0.5 * momentum.pow(2).sum(-1)
    log_u = torch.rand(current.shape, generator=generator, device=current.device, dtype=current.dtype).log()
    accept = (log_u < current - proposed) & torch.isfinite(proposed)  # NaN/inf proposals are rejected
    return _choose(accept, proposal, point), accept


def _choose(accept: Tensor, proposal: _Point, point: _Point) -> _Point:
    """The proposal where accept (K, B) holds, else the current point, field by field."""
    fields = ("z", "log_prior", "log_likelihood", "grad_prior", "grad_likelihood")
    chosen = {}
    for name in fields:
        new, old = getattr(proposal, name), getattr(point, name)
        chosen[name] = torch.where(accept.view(*accept.shape, *([1] * (new.dim() - 2))), new, old)
    return _Point(**chosen)


@torch.no_grad()
def hmc_sample(latent_model: LatentModel, x: Tensor, z: Tensor, *, beta: float = 1.0, num_transitions: int = 100,
               step_size: float = 0.1, leapfrog_steps: int = 10, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Run `num_transitions` HMC transitions with a fixed step size on p(z) p(x|z)^beta from
    z (K, B, D) (K chains for each example of x (B, C, H, W)). Returns the final z (K, B, D) and
    the acceptance rate per example (B,). beta=1 samples the posterior p(z|x)."""
    point = _evaluate(latent_model, x, z, labels)
    step = torch.full((x.shape[0],), float(step_size), device=z.device, dtype=torch.float64)
    accepted = torch.zeros(x.shape[0], device=z.device, dtype=torch.float64)
    for _ in range(num_transitions):
        point, accept = _hmc_transition(latent_model, x, point, beta, step, leapfrog_steps, generator, labels)
        accepted += accept.double().mean(0)
    return point.z, accepted / max(num_transitions, 1)


# -- AIS --------------------------------------------------------------------------------------------

def _ais_chunk(latent_model: LatentModel, x: Tensor, labels: Tensor | None, betas: Tensor, num_chains: int,
               leapfrog_steps: int, initial_step_size: float, target_acceptance: float,
               generator: torch.Generator | None) -> dict[str, Tensor]:
    """AIS for the examples of one chunk, all chains at once: log-weights (K, B) float64, mean
    acceptance (B,), final step sizes (B,)."""
    batch = x.shape[0]
    z = latent_model.sample_prior(num_chains * batch, generator).view(num_chains, batch, -1)  # row k*B + b
    point = _evaluate(latent_model, x, z, labels)
    log_w = torch.zeros(num_chains, batch, device=x.device, dtype=torch.float64)
    step = torch.full((batch,), float(initial_step_size), device=x.device, dtype=torch.float64)
    average = torch.full((batch,), float(target_acceptance), device=x.device, dtype=torch.float64)
    accepted = torch.zeros(batch, device=x.device, dtype=torch.float64)
    num_steps = len(betas) - 1
    for t in range(1, num_steps + 1):
        # w *= f_t(z_{t-1}) / f_{t-1}(z_{t-1}) = p(x|z_{t-1})^(beta_t - beta_{t-1})
        log_w += (betas[t] - betas[t - 1]) * point.log_likelihood.double()
        if t == num_steps:
            break  # a transition at beta_T = 1 would not change the weights
        point, accept = _hmc_transition(latent_model, x, point, float(betas[t]), step, leapfrog_steps,
                                        generator, labels)
        rate = accept.double().mean(0)  # (B,)
        accepted += rate
        # Wu et al.'s hmc_updates: the new step follows the running rate before this transition's update.
        step = torch.where(average > target_acceptance, step * STEP_SIZE_INC, step * STEP_SIZE_DEC)
        step = step.clamp(STEP_SIZE_MIN, STEP_SIZE_MAX)
        average = ACCEPTANCE_SLOWNESS * average + (1.0 - ACCEPTANCE_SLOWNESS) * rate
    return {"log_weights": log_w, "acceptance_rate": accepted / max(num_steps - 1, 1), "step_size": step}


def _chain_statistics(log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From log-weights (K, B): log p_hat = log mean_k w_k (B,), its delta-method standard error
    (B,) and the effective sample size (sum w)^2 / sum w^2 (B,)."""
    num_chains = log_w.shape[0]
    log_px = torch.logsumexp(log_w, dim=0) - math.log(num_chains)
    relative = torch.exp(log_w - log_px)  # w_k / w_bar, (K, B)
    # Var(log w_bar) ~ Var(w) / (K w_bar^2) (delta method): the std of w_k / w_bar over sqrt(K).
    stderr = (relative.std(dim=0, unbiased=True) / math.sqrt(num_chains) if num_chains > 1
              else torch.full_like(log_px, math.nan))
    ess = relative.sum(0).pow(2) / relative.pow(2).sum(0)
    return log_px, stderr, ess


@torch.no_grad()
def ais_log_likelihood(latent_model: LatentModel, x: Tensor, num_steps: int = 1000, num_chains: int = 16,
                       leapfrog_steps: int = 10, initial_step_size: float = 0.05,
                       target_acceptance: float = 0.65, generator: torch.Generator | None = None,
                       schedule: str = "sigmoid", labels: Tensor | None = None,
                       max_rows: int = DEFAULT_MAX_ROWS) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """AIS estimate of log p(x) for each image of x (B, C, H, W) (Wu et al. 2017).

    num_chains chains per example start from the prior; num_steps annealing increments follow
    `schedule` ("sigmoid" or "linear"); between increments one HMC transition with
    `leapfrog_steps` leapfrog steps leaves p(z) p(x|z)^beta_t invariant. Each example's step size
    starts at initial_step_size and is adapted towards target_acceptance as in Wu et al.'s code
    (x1.02 / x0.98 per transition on a running acceptance rate, clipped to [1e-4, 0.5]); their
    code shares one step size across the batch, here each example has its own.

    labels (B,): the classes of x, for a conditional latent model; chunked with x.
    Examples run in chunks of max(1, max_rows // num_chains) examples; all chains of a chunk form
    one (num_chains, chunk, D) tensor.

    Returns (log_px (B,), stderr (B,), diagnostics). log_px = log mean_k w_k, a stochastic lower
    bound on log p(x). stderr is the delta-method standard error over the K independent chains,
    std_k(w_k / w_bar) / sqrt(K) -- itself a noisy estimate that understates the error when the
    weights are heavy-tailed (few chains, too-fast annealing). diagnostics: "log_weights" (K, B)
    float64, "ess" (B,) effective sample size of the weights, "acceptance_rate" (B,) mean over
    transitions, "step_size" (B,) final adapted step sizes.
    """
    if num_chains < 1 or leapfrog_steps < 1:
        raise VaelabError("num_chains and leapfrog_steps must be at least 1")
    if not 0.0 < target_acceptance < 1.0:
        raise VaelabError(f"target_acceptance must be in (0, 1), got {target_acceptance}")
    if latent_model.conditional and labels is None:
        raise VaelabError("this latent model is class-conditional: pass the labels of x")
    if labels is not None and labels.shape != (x.shape[0],):
        raise VaelabError(f"{x.shape[0]} images but labels of shape {tuple(labels.shape)}")
    betas = annealing_schedule(num_steps, schedule)
    chunk = max(1, max_rows // num_chains)
    parts: list[dict[str, Tensor]] = []
    for start in range(0, x.shape[0], chunk):
        chunk_labels = None if labels is None else labels[start:start + chunk]
        parts.append(_ais_chunk(latent_model, x[start:start + chunk], chunk_labels, betas, num_chains,
                                leapfrog_steps, initial_step_size, target_acceptance, generator))
    diagnostics = {name: torch.cat([part[name] for part in parts], dim=-1) for name in parts[0]}
    log_px, stderr, ess = _chain_statistics(diagnostics["log_weights"])
    diagnostics["ess"] = ess
    return log_px, stderr, diagnostics


def _ais_settings(num_steps: int, num_chains: int, leapfrog_steps: int, initial_step_size: float,
                  target_acceptance: float, schedule: str) -> dict[str, Any]:
    return {"num_steps": num_steps, "num_chains": num_chains, "leapfrog_steps": leapfrog_steps,
            "initial_step_size": initial_step_size, "target_acceptance": target_acceptance,
            "schedule": schedule, "chains_start": "prior",
            "step_size_adaptation": {"per": "example", "inc": STEP_SIZE_INC, "dec": STEP_SIZE_DEC,
                                     "min": STEP_SIZE_MIN, "max": STEP_SIZE_MAX,
                                     "acceptance_slowness": ACCEPTANCE_SLOWNESS}}


def decoder_ais(model, split: Split, *, num_steps: int = 1000, num_chains: int = 16, leapfrog_steps: int = 10,
                initial_step_size: float = 0.05, target_acceptance: float = 0.65, schedule: str = "sigmoid",
                batch_size: int = 100, max_rows: int = DEFAULT_MAX_ROWS, observation: str | None = None,
                sigma: float | None = None, seed: int = 0, progress: bool = False) -> Estimate:
    """Mean AIS log p(x) over the split (nats per example) for a VAE, CVAE, AE, DAE or GAN
    (Wu et al. 2017), with the model in eval mode; a CVAE gets each batch's labels.

    stderr is the standard error of that mean over examples (the spread of log p(x) across images;
    the per-example Monte Carlo error over chains is far smaller at the published settings and is
    reported in settings["diagnostics"]["chain_stderr_of_mean"]). settings hold every knob, the
    observation model in words, and a few diagnostics (mean acceptance rate, mean effective
    sample size of the weights)."""
    latent_model = latent_model_for(model, observation, sigma)
    device = model_device(model)
    generator = torch.Generator(device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {"log_px": [], "stderr": [], "ess": [], "acceptance_rate": []}
    with eval_mode(model), tqdm(total=len(split), disable=not progress, desc="decoder AIS", leave=False,
                                unit="img") as bar:
        for x, condition in labelled_batches(split, batch_size, device, model.conditional):
            log_px, stderr, diagnostics = ais_log_likelihood(
                latent_model, x, num_steps, num_chains, leapfrog_steps, initial_step_size, target_acceptance,
                generator, schedule, labels=condition.get("y"), max_rows=max_rows)
            for name, value in (("log_px", log_px), ("stderr", stderr), ("ess", diagnostics["ess"]),
                                ("acceptance_rate", diagnostics["acceptance_rate"])):
                parts[name].append(value.cpu())
            bar.update(len(x))
    values = {name: torch.cat(chunks).double() for name, chunks in parts.items()}
    settings = {**_ais_settings(num_steps, num_chains, leapfrog_steps, initial_step_size, target_acceptance,
                                schedule),
                "observation": latent_model.observation, "sigma": sigma, "seed": seed, "examples": len(split),
                "batch_size": batch_size, "max_rows": max_rows,
                "diagnostics": {
                    "chain_stderr_of_mean": values["stderr"].pow(2).sum().sqrt().item() / len(split),
                    "mean_ess": values["ess"].mean().item(),
                    "mean_acceptance_rate": values["acceptance_rate"].mean().item()}}
    return Estimate(*mean_and_stderr(values["log_px"]), settings)


# -- choosing the observation noise ---------------------------------------------------------------

@torch.no_grad()
def prior_importance_log_likelihood(latent_model: LatentModel, x: Tensor, num_samples: int = 1000,
                                    generator: torch.Generator | None = None, labels: Tensor | None = None,
                                    max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """The cheap estimate log (1/S) sum_s p(x|z_s), z_s ~ p(z), per example (B,): importance
    sampling with the prior as proposal (AIS with one step). A stochastic lower bound, loose in
    high dimension; memory bounded by drawing at most max_rows samples per example at a time."""
    running = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=torch.float64)
    per_chunk = max(1, max_rows // x.shape[0])
    drawn = 0
    while drawn < num_samples:
        count = min(per_chunk, num_samples - drawn)
        z = latent_model.sample_prior(count * x.shape[0], generator).view(count, x.shape[0], -1)
        running = torch.logaddexp(running, torch.logsumexp(latent_model.log_likelihood(x, z, labels).double(), 0))
        drawn += count
    return running - math.log(num_samples)


def choose_sigma(model, validation: Split, sigmas: Sequence[float] = DEFAULT_SIGMAS, *, num_examples: int = 20,
                 method: str = "ais", num_steps: int = 200, num_chains: int = 4, num_samples: int = 1000,
                 observation: str = "gaussian", seed: int = 0, **ais_options) -> tuple[float, dict[float, Estimate]]:
    """Pick the Gaussian observation noise sigma of a GAN (or an mse AE) from a grid, as Wu et al.
    did on validation data: the sigma with the highest mean log p(x) on the first `num_examples`
    validation images. method="ais": decoder_ais with num_steps / num_chains (cheap settings;
    the same seed for every sigma, so the comparison shares its randomness); method="is": the
    prior-importance-sampling estimate with num_samples draws, much cheaper and much looser.
    Returns (best sigma, {sigma: Estimate}); every Estimate's settings records the method."""
    if not sigmas:
        raise VaelabError("choose_sigma needs at least one sigma")
    subset = validation.subset(torch.arange(min(num_examples, len(validation))))
    estimates: dict[float, Estimate] = {}
    for sigma in sigmas:
        if method == "ais":
            estimate = decoder_ais(model, subset, num_steps=num_steps, num_chains=num_chains,
                                   observation=observation, sigma=sigma, seed=seed, **ais_options)
        elif method == "is":
            estimate = _prior_is_estimate(model, subset, observation, sigma, num_samples, seed)
        else:
            raise VaelabError(f"method must be 'ais' or 'is', got {method!r}")
        estimate.settings["method"] = method
        estimates[float(sigma)] = estimate
    best = max(estimates, key=lambda s: estimates[s].value)
    return best, estimates


def _prior_is_estimate(model, split: Split, observation: str, sigma: float, num_samples: int,
                       seed: int) -> Estimate:
    latent_model = latent_model_for(model, observation, sigma)
    device = model_device(model)
    generator = torch.Generator(device).manual_seed(seed)
    values = []
    with eval_mode(model):
        for x, condition in labelled_batches(split, 100, device, model.conditional):
            values.append(prior_importance_log_likelihood(latent_model, x, num_samples, generator,
                                                          condition.get("y")).cpu())
    settings = {"num_samples": num_samples, "observation": latent_model.observation, "sigma": sigma,
                "seed": seed, "examples": len(split)}
    return Estimate(*mean_and_stderr(torch.cat(values)), settings)
