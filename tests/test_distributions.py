"""The probability pieces against exact answers: torch.distributions and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.distributions import (BernoulliLikelihood, GaussianLikelihood, diag_gaussian_log_prob,
                                  gaussian_kl_standard, log_mean_exp, log1p_exp_neg_abs_sum, reparameterize,
                                  standard_normal_log_prob)


@pytest.fixture
def posterior():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=generator)
    log_var = torch.randn(5, 3, generator=generator) * 0.5
    return mu, log_var


def test_kl_closed_form_matches_torch_distributions(posterior):
    mu, log_var = posterior
    q = Normal(mu, torch.exp(0.5 * log_var))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl_standard(mu, log_var), kl_divergence(q, p))


def test_kl_closed_form_matches_monte_carlo(posterior):
    mu, log_var = posterior
    z = reparameterize(mu, log_var, num_samples=200_000, generator=torch.Generator().manual_seed(1))
    log_ratio = diag_gaussian_log_prob(z, mu, log_var) - standard_normal_log_prob(z)  # (S, B)
    mc_mean = log_ratio.mean(0)
    mc_stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    exact = gaussian_kl_standard(mu, log_var).sum(-1)
    assert torch.all((mc_mean - exact).abs() < 4 * mc_stderr + 1e-6), (mc_mean, exact, mc_stderr)


def test_diag_gaussian_log_prob_matches_torch(posterior):
    mu, log_var = posterior
    z = torch.randn(7, *mu.shape, generator=torch.Generator().manual_seed(2))
    expected = Independent(Normal(mu, torch.exp(0.5 * log_var)), 1).log_prob(z)
    torch.testing.assert_close(diag_gaussian_log_prob(z, mu, log_var), expected)
    torch.testing.assert_close(standard_normal_log_prob(z), Independent(Normal(0.0, torch.ones_like(z)), 1).log_prob(z))


def test_bernoulli_likelihood_matches_torch_for_binary_pixels():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, 1, 5, 5, generator=generator) * 3  # (S, B, C, H, W)
    x = (torch.rand(6, 1, 5, 5, generator=generator) < 0.4).float()
    expected = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    torch.testing.assert_close(BernoulliLikelihood().log_prob(x, logits), expected)


def _extreme_logits(shape, seed):
    """Logits from about -200 to 200, with exact zeros and both extremes."""
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 60
    logits.view(-1)[::7] = 0.0
    logits.view(-1)[1], logits.view(-1)[2] = -200.0, 200.0
    return logits


@pytest.mark.parametrize("event", [(1, 28, 28), (1, 5, 5), (7,), (16,)])
def test_grouped_log1p_sum_matches_float64(event):
    """One log per 16 factors against float64 log1p, to fp32 rounding; a remainder group and an
    event shorter than one group are covered by the shapes."""
    logits = _extreme_logits((50, 3, *event), 5)
    exact = torch.log1p(torch.exp(-logits.double().abs())).flatten(2).sum(-1)
    got = log1p_exp_neg_abs_sum(logits, len(event))
    assert got.dtype == torch.float32 and got.shape == (50, 3)
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)


def test_grouped_log1p_sum_of_bf16_logits_is_computed_in_fp32():
    """bf16 logits (a decoder under autocast) are summed in fp32: exact for the bf16 values."""
    logits = (torch.randn(20, 784, generator=torch.Generator().manual_seed(6)) * 8).bfloat16()
    exact = torch.log1p(torch.exp(-logits.double().abs())).sum(-1)
    got = log1p_exp_neg_abs_sum(logits, 1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_log_prob_without_autograd_matches_float64(binary):
    """Evaluation's path (no autograd: the grouped log1p sum) against float64 on extreme logits,
    and the training path (autograd: plain softplus) against the same numbers with its gradient
    x - sigmoid(l)."""
    logits = _extreme_logits((40, 6, 1, 28, 28), 8)
    generator = torch.Generator().manual_seed(9)
    x = torch.rand(6, 1, 28, 28, generator=generator)
    x = (x < 0.4).float() if binary else x
    exact = (x.double() * logits.double() - F.softplus(logits.double())).flatten(2).sum(-1)
    with torch.no_grad():
        evaluated = BernoulliLikelihood().log_prob(x, logits)
    torch.testing.assert_close(evaluated.double(), exact, rtol=1e-6, atol=1e-3)
    trained = logits.clone().requires_grad_()
    value = BernoulliLikelihood().log_prob(x, trained)
    value.sum().backward()
    torch.testing.assert_close(value.detach().double(), exact, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(trained.grad, (x - torch.sigmoid(logits)).expand_as(logits))


def test_bernoulli_likelihood_is_negative_bce_for_grey_pixels():
    generator = torch.Generator().manual_seed(4)
    logits, x = torch.randn(6, 1, 4, 4, generator=generator), torch.rand(6, 1, 4, 4, generator=generator)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)
    torch.testing.assert_close(BernoulliLikelihood().log_prob(x, logits), -bce)


def test_gaussian_fixed_variance_matches_torch():
    generator = torch.Generator().manual_seed(5)
    decoded, x = torch.randn(3, 2, 1, 4, 4, generator=generator), torch.rand(2, 1, 4, 4, generator=generator)
    likelihood = GaussianLikelihood(fixed_std=0.3)
    expected = Normal(torch.sigmoid(decoded), 0.3).log_prob(x.expand_as(decoded)).flatten(2).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(x, decoded), expected)


def test_gaussian_learned_variance_matches_torch():
    generator = torch.Generator().manual_seed(6)
    decoded = torch.randn(2, 2, 6, 4, 4, generator=generator)  # 2 params for each of 3 channels
    x = torch.rand(2, 3, 4, 4, generator=generator)
    likelihood = GaussianLikelihood(learned_variance=True, min_std=0.05)
    raw_mean, raw_log_var = decoded.chunk(2, dim=-3)
    floor = 2 * math.log(0.05)
    std = torch.exp(0.5 * (floor + F.softplus(raw_log_var - floor)))
    expected = Normal(torch.sigmoid(raw_mean), std).log_prob(x.expand_as(raw_mean)).flatten(2).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(x, decoded), expected)
    assert torch.all(std >= 0.05)
    # far above the floor the decoder's raw output is log sigma^2 itself
    torch.testing.assert_close(likelihood._mean_and_log_var(torch.full((1, 2, 1, 1), 1.0))[1],
                               torch.full((1, 1, 1, 1), 1.0), atol=2e-3, rtol=0)


def test_identity_mean_gaussian_is_the_linear_model():
    decoded, x = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    likelihood = GaussianLikelihood(fixed_std=0.5, sigmoid_mean=False)
    expected = Normal(decoded, 0.5).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(x, decoded), expected)


def test_gradients_flow_through_the_reparameterized_sample(posterior):
    mu, log_var = (t.clone().requires_grad_(True) for t in posterior)
    generator = torch.Generator().manual_seed(7)
    z = reparameterize(mu, log_var, generator=generator)
    z.sum().backward()
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(log_var.grad, 0.5 * torch.exp(0.5 * log_var.detach()) * eps)


def test_samples_from_likelihoods_have_the_right_moments():
    generator = torch.Generator().manual_seed(8)
    logits = torch.full((20000, 1, 1, 1), 0.7)
    draws = BernoulliLikelihood().sample(logits, generator)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert abs(draws.mean().item() - torch.sigmoid(torch.tensor(0.7)).item()) < 0.02
    gaussian = GaussianLikelihood(fixed_std=0.2).sample(torch.zeros(20000, 1, 1, 1), generator)
    assert abs(gaussian.mean().item() - 0.5) < 0.01 and abs(gaussian.std().item() - 0.2) < 0.01


def test_log_mean_exp_is_stable_and_exact():
    values = torch.tensor([[1000.0, 1000.0], [1000.0, 998.0]])
    expected = torch.tensor([1000.0, 1000.0 + math.log((1 + math.exp(-2)) / 2)])
    torch.testing.assert_close(log_mean_exp(values, dim=0), expected)
