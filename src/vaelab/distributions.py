"""The probability pieces every latent-variable model shares: reparameterization, the closed-form
Gaussian KL, diagonal-Gaussian densities and the observation models p(x|z).

All log-densities are summed over the event dimensions and keep the batch dimensions, so a
(S, B, C, H, W) input gives a (S, B) output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.noise import draw_normal, draw_uniform

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mu: Tensor, log_var: Tensor, num_samples: int | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2013, eq. 10), differentiable in mu, sigma.

    mu, log_var: (B, D). Returns (B, D), or (num_samples, B, D) when num_samples is given.
    """
    shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
    eps = draw_normal(shape, generator, like=mu)
    return mu + torch.exp(0.5 * log_var) * eps


def gaussian_kl_standard(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag(sigma^2)) || N(0, I)) per latent dimension, closed form (Kingma & Welling 2013,
    appendix B): -1/2 (1 + log sigma^2 - mu^2 - sigma^2). Shape of mu; sum over the last axis for the
    total."""
    return -0.5 * (1.0 + log_var - mu.pow(2) - log_var.exp())


def diag_gaussian_log_prob(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(log_var))), summed over the last axis."""
    return -0.5 * (LOG_2PI + log_var + (z - mu).pow(2) * torch.exp(-log_var)).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * (LOG_2PI + z.pow(2)).sum(-1)


def _sum_event(values: Tensor, event_dims: int) -> Tensor:
    return values.flatten(start_dim=values.dim() - event_dims).sum(-1)


LOG1P_GROUP = 16  # factors in [1, 2] multiplied before one log: at most 2^16, far from overflow


def log1p_exp_neg_abs_sum(logits: Tensor, event_dims: int) -> Tensor:
    """sum_i log(1 + exp(-|l_i|)) over the last event_dims axes, with one log per 16 values, in at
    least fp32: the part of sum_i softplus(l_i) = sum_i [max(l_i, 0) + log(1 + exp(-|l_i|))] that
    needs a logarithm.

    A sum of logs is the log of a product. Every factor 1 + exp(-|l|) lies in [1, 2], so a product
    of 16 stays in [1, 2^16] (no overflow or underflow in any float type), and its rounding (16
    multiplications, about 1e-6 relative) is of the order of the fp32 sum's over the event. log1p
    is the costliest step of softplus: on 5,000 x 784 logits of a trained decoder (2 threads), the
    compiled log p(x|z) took 2.2 times less time in bf16 this way (benchmarks/log_density_speed.py).
    Its backward is slower than softplus's, so the likelihoods use it only without autograd."""
    flat = logits.flatten(start_dim=logits.dim() - event_dims)
    flat = flat.to(torch.promote_types(flat.dtype, torch.float32))  # a product of 16 needs fp32's mantissa
    factors = torch.exp(-flat.abs()) + 1.0
    whole = flat.shape[-1] - flat.shape[-1] % LOG1P_GROUP
    logs = factors[..., :whole].unflatten(-1, (-1, LOG1P_GROUP)).prod(-1).log().sum(-1)
    if whole < flat.shape[-1]:
        logs = logs + factors[..., whole:].prod(-1).log()
    return logs


def _at_least_as_precise_as(decoded: Tensor, x: Tensor) -> Tensor:
    """decoded in the more precise of its dtype and x's: a decoder run under bf16 autocast emits
    bf16, and its per-pixel terms and their sum over 784 pixels should not be rounded to 8 bits."""
    return decoded.to(torch.promote_types(decoded.dtype, x.dtype))


@dataclass(frozen=True)
class BernoulliLikelihood:
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)); the binary cross-entropy cost.

    The decoder emits one logit per pixel. log p = x * l - softplus(l), which is exact for
    x in {0, 1} and is the (negative) BCE for x in [0, 1]: on grey pixels it is a cross-entropy,
    not the log-probability of anything (`binary_support`), and estimators say so.
    """

    kind: ClassVar[str] = "bernoulli"
    params_per_pixel: int = 1
    binary_support: bool = True  # a density of binary images only

    @property
    def description(self) -> str:
        return "bernoulli on the decoder's logits"

    def log_prob(self, x: Tensor, decoded: Tensor, event_dims: int = 3) -> Tensor:
        logits = _at_least_as_precise_as(decoded, x)  # bf16 logits (autocast) are scored in x's precision
        if torch.is_grad_enabled() and logits.requires_grad:
            return _sum_event(x * logits - F.softplus(logits), event_dims)
        # the same sum without autograd (evaluation): softplus(l) = max(l, 0) + log1p(exp(-|l|)), the
        # log1p part summed with one log per 16 pixels, 2.2 times faster in a compiled bf16 L_k
        return _sum_event(x * logits - logits.clamp(min=0), event_dims) - log1p_exp_neg_abs_sum(logits, event_dims)

    def mean(self, decoded: Tensor) -> Tensor:
        return torch.sigmoid(decoded)

    def sample(self, decoded: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.sigmoid(decoded)
        return (draw_uniform(probs.shape, generator, like=probs, dtype=torch.float32) < probs).to(probs.dtype)


@dataclass(frozen=True)
class GaussianLikelihood:
    """p(x|z) = N(x; mu(z), diag(sigma^2)), the L2 cost.

    Fixed variance: the decoder emits the mean only and sigma = fixed_std.
    Learned variance: the decoder also emits a per-pixel log-variance (Kingma & Welling 2013,
    appendix C.2), log sigma^2 = raw output, bounded below softly at min_std so that constant pixels
    (MNIST's black border) cannot drive the density to infinity.
    The mean goes through a sigmoid by default, as pixel intensities live in [0, 1]; with
    sigmoid_mean=False it is the decoder's output itself (the linear-Gaussian model).
    """

    kind: ClassVar[str] = "gaussian"
    learned_variance: bool = False
    sigmoid_mean: bool = True
    fixed_std: float = 0.1
    min_std: float = 1e-2
    binary_support: bool = False

    @property
    def params_per_pixel(self) -> int:
        return 2 if self.learned_variance else 1

    @property
    def description(self) -> str:
        if self.learned_variance:
            words = f"gaussian with the decoder's learned per-pixel sigma (min_std={self.min_std:g})"
        else:
            words = f"gaussian sigma={self.fixed_std:g}"
        return words + (", mean = sigmoid(decoder output)" if self.sigmoid_mean else ", mean = decoder output")

    def _mean_and_log_var(self, decoded: Tensor, channel_dim: int = -3) -> tuple[Tensor, Tensor]:
        if not self.learned_variance:
            mean = torch.sigmoid(decoded) if self.sigmoid_mean else decoded
            return mean, torch.full_like(mean, 2.0 * math.log(self.fixed_std))
        raw_mean, raw_log_var = decoded.chunk(2, dim=channel_dim)
        # log sigma^2 = raw where raw is well above the floor, smoothly bounded below by log min_std^2.
        floor = 2.0 * math.log(self.min_std)
        log_var = floor + F.softplus(raw_log_var - floor)
        return (torch.sigmoid(raw_mean) if self.sigmoid_mean else raw_mean), log_var

    def log_prob(self, x: Tensor, decoded: Tensor, event_dims: int = 3) -> Tensor:
        decoded = _at_least_as_precise_as(decoded, x)
        if not self.learned_variance:
            # One constant sigma: -1/2 [D log(2 pi sigma^2) + |x - mean|^2 / sigma^2], with two
            # image-sized temporaries instead of a full log-variance tensor and its exp. Scoring
            # k=5000 samples an image allocates these 5,000 x 784 floats chunk after chunk, and the
            # extra temporaries fragmented the heap to 7.8 GB over 1,000 test images.
            mean = torch.sigmoid(decoded) if self.sigmoid_mean else decoded
            squared = _sum_event((x - mean).square(), event_dims)
            pixels = math.prod(mean.shape[mean.dim() - event_dims:])
            return -0.5 * (squared / self.fixed_std ** 2 + pixels * (LOG_2PI + 2.0 * math.log(self.fixed_std)))
        mean, log_var = self._mean_and_log_var(decoded)
        log_density = -0.5 * (LOG_2PI + log_var + (x - mean).pow(2) * torch.exp(-log_var))
        return _sum_event(log_density, event_dims)

    def mean(self, decoded: Tensor) -> Tensor:
        return self._mean_and_log_var(decoded)[0]

    def sample(self, decoded: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_var = self._mean_and_log_var(decoded)
        return mean + torch.exp(0.5 * log_var) * draw_normal(mean.shape, generator, like=mean)


Likelihood = BernoulliLikelihood | GaussianLikelihood


def log_mean_exp(values: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) sum_k exp(values_k), stably."""
    return torch.logsumexp(values, dim=dim) - math.log(values.shape[dim])


def diag_gaussian_mixture_log_prob(z: Tensor, means: Tensor, log_vars: Tensor) -> Tensor:
    """log (1/K) sum_k N(z; means_k, diag(exp(log_vars_k))): z (..., D), means and log_vars (K, D) -> (...).

    The K component densities come from one matmul instead of a (..., K, D) broadcast (a VampPrior
    with K = 500 at k = 50 importance samples would need 400 MB for it), by expanding the square:
    sum_d (z_d - m_d)^2 / v_d = z^2 . (1/v) - 2 z . (m/v) + m^2 . (1/v). Always in float32, outside
    any autocast, since the expansion cancels terms of the size of z^2 / v."""
    shape = z.shape[:-1]
    with torch.autocast(device_type=z.device.type, enabled=False):
        flat = z.reshape(-1, z.shape[-1]).float()
        means, log_vars = means.float(), log_vars.float()
        precisions = torch.exp(-log_vars)  # (K, D)
        squared = (flat * flat) @ precisions.T - 2.0 * flat @ (means * precisions).T  # (N, K)
        constant = (means * means * precisions + log_vars + LOG_2PI).sum(-1)  # (K,)
        component = -0.5 * (squared + constant)
        return log_mean_exp(component, dim=-1).view(shape)
