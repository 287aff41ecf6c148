"""The Parzen-window estimate against a direct log-sum-exp over the full (N, M, D) tensor, an
exact Gaussian mixture, and scipy's gaussian_kde; sigma selection and the model-level estimate."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, multivariate_normal
from torch import nn

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.parzen import (
    DEFAULT_SIGMAS,
    choose_sigma,
    draw_model_samples,
    parzen_estimate,
    parzen_log_likelihood,
)


def direct_parzen(samples: np.ndarray, images: np.ndarray, sigma: float) -> np.ndarray:
    """The GAN paper's formula on the whole (N, M, D) tensor, in float64."""
    samples, images = samples.reshape(len(samples), -1), images.reshape(len(images), -1)
    a = (images[:, None, :] - samples[None, :, :]) / sigma  # (N, M, D)
    d = samples.shape[1]
    log_norm = math.log(len(samples)) + d * math.log(sigma * math.sqrt(2 * math.pi))
    return logsumexp(-0.5 * (a**2).sum(2), axis=1) - log_norm


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
@pytest.mark.parametrize("batch_size, sample_chunk", [(1000, 4096), (3, 7), (1, 1), (4, 22), (11, 23)])
def test_matches_the_direct_log_sum_exp(sigma, batch_size, sample_chunk):
    rng = np.random.default_rng(0)
    samples = rng.random((23, 1, 2, 3))  # (M, C, H, W): flattened to D = 6
    images = rng.random((10, 1, 2, 3))
    expected = direct_parzen(samples, images, sigma)
    got = parzen_log_likelihood(torch.from_numpy(samples), torch.from_numpy(images), sigma,
                                batch_size=batch_size, sample_chunk=sample_chunk)
    assert got.dtype == torch.float64 and got.shape == (10,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def test_float32_inputs_are_accumulated_in_float64():
    rng = np.random.default_rng(1)
    samples = rng.random((300, 784)).astype(np.float32)
    images = rng.random((5, 784)).astype(np.float32)
    expected = direct_parzen(samples.astype(np.float64), images.astype(np.float64), 0.1)  # values ~ -4e4
    got = parzen_log_likelihood(torch.from_numpy(samples), torch.from_numpy(images), 0.1, sample_chunk=64)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)


def mixture(seed=0, components=4, dim=5, tau=0.3, count=3000):
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((components, dim))  # well separated against tau
    which = rng.integers(components, size=count)
    data = centres[which] + tau * rng.standard_normal((count, dim))
    return centres, data


def test_kernels_on_the_centres_give_the_exact_mixture_density():
    tau = 0.3
    centres, data = mixture(tau=tau, count=200)
    samples = np.repeat(centres, 25, axis=0)  # M = 100, each centre 25 times: weights 1/4
    components = [multivariate_normal(c, tau**2 * np.eye(5)).logpdf(data) for c in centres]
    exact = logsumexp(components, axis=0) - math.log(4)
    got = parzen_log_likelihood(torch.from_numpy(samples), torch.from_numpy(data), tau,
                                batch_size=64, sample_chunk=30)
    np.testing.assert_allclose(got.numpy(), exact, rtol=0, atol=1e-6)


def test_choose_sigma_finds_the_mixture_width():
    # Kernels on the centres reproduce the true mixture exactly at sigma = tau, so the expected
    # validation log-likelihood peaks there (Gibbs' inequality): the grid's neighbours of 0.3 win.
    tau = 0.3
    centres, data = mixture(tau=tau)
    samples = torch.from_numpy(np.repeat(centres, 25, axis=0))
    sigma, table = choose_sigma(samples, torch.from_numpy(data))
    assert [row["sigma"] for row in table] == pytest.approx(list(DEFAULT_SIGMAS))
    assert sigma == pytest.approx(DEFAULT_SIGMAS[4])  # 0.278: the grid point nearest 0.3 in log scale
    values = [row["log_likelihood"] for row in table]
    assert max(values) == values[4] and all(row["stderr"] > 0 for row in table)
    # and for a wider mixture the chosen sigma moves up with it
    centres, data = mixture(tau=0.75)
    wide, _ = choose_sigma(torch.from_numpy(np.repeat(centres, 25, axis=0)), torch.from_numpy(data))
    assert wide == pytest.approx(DEFAULT_SIGMAS[8])  # 0.774


def test_one_dimension_matches_scipy_gaussian_kde():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal(200)
    points = np.linspace(-4, 4, 50)
    bandwidth = 0.3
    kde = gaussian_kde(samples, bw_method=bandwidth / samples.std(ddof=1))  # kernel std = bandwidth
    got = parzen_log_likelihood(torch.from_numpy(samples[:, None]), torch.from_numpy(points[:, None]), bandwidth,
                                batch_size=7, sample_chunk=33)
    np.testing.assert_allclose(got.numpy(), kde.logpdf(points), rtol=0, atol=1e-8)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(VaelabError, match="values each"):
        parzen_log_likelihood(torch.zeros(3, 4), torch.zeros(2, 5), 0.1)
    with pytest.raises(VaelabError, match="positive"):
        parzen_log_likelihood(torch.zeros(3, 4), torch.zeros(2, 4), 0.0)
    with pytest.raises(VaelabError, match="finite"):
        parzen_log_likelihood(torch.full((3, 4), math.nan), torch.zeros(2, 4), 0.1)


class BoxModel(nn.Module):
    """A stand-in generative model: uniform noise images, optionally recording the labels it is asked for."""

    def __init__(self, conditional=False, num_classes=None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.conditional, self.num_classes, self.labels = conditional, num_classes, []

    @property
    def device(self):
        return self.anchor.device

    def sample(self, n, generator=None, label=None, **kwargs):
        if self.conditional:
            self.labels.append(label.clone())
        return torch.rand(n, 1, 2, 2, generator=generator)


def test_parzen_estimate_is_the_documented_pipeline():
    generator = torch.Generator().manual_seed(5)
    validation = Split(torch.rand(40, 1, 2, 2, generator=generator))
    test = Split(torch.rand(30, 1, 2, 2, generator=generator))
    model = BoxModel()
    estimate = parzen_estimate(model, validation, test, num_samples=250, seed=3, validation_size=25,
                               sample_batch_size=64, sample_chunk=50)
    # drawing in batches of 64 from one generator gives the same stream as one draw of 250
    samples = torch.rand(250, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    sigma, table = choose_sigma(samples, validation.images[:25])
    per_image = parzen_log_likelihood(samples, test.images, sigma)
    assert estimate.settings["sigma"] == sigma
    for got, expected in zip(estimate.settings["validation_log_likelihoods"], table, strict=True):
        assert got == pytest.approx(expected, abs=1e-9)
    assert estimate.value == pytest.approx(per_image.mean().item(), abs=1e-9)
    assert estimate.stderr == pytest.approx(per_image.std().item() / math.sqrt(30), abs=1e-9)
    settings = estimate.settings
    assert settings["biased"] is True and "Theis" in settings["note"]
    counts = (settings["num_samples"], settings["validation_size"], settings["examples"], settings["seed"])
    assert counts == (250, 25, 30, 3)
    assert settings["sigmas"] == pytest.approx(list(DEFAULT_SIGMAS))
    again = parzen_estimate(model, validation, test, num_samples=250, seed=3, validation_size=25)
    assert again.value == pytest.approx(estimate.value, abs=1e-9)


def test_a_conditional_model_gets_equal_numbers_per_class():
    model = BoxModel(conditional=True, num_classes=3)
    samples, counts = draw_model_samples(model, 30, seed=0, batch_size=7)
    assert samples.shape == (30, 1, 2, 2) and counts == [10, 10, 10]
    labels = torch.cat(model.labels)
    assert [len(chunk) for chunk in model.labels] == [7, 7, 7, 7, 2]
    assert torch.bincount(labels).tolist() == [10, 10, 10]


def test_a_tiny_cvae_runs_through_the_estimate():
    from vaelab.models.cvae import CVAE, CVAEConfig

    torch.manual_seed(0)
    model = CVAE(CVAEConfig(hidden=(8,), latent_dim=2), (1, 4, 4), num_classes=3).eval()
    images = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    estimate = parzen_estimate(model, Split(images[:10]), Split(images[10:]), num_samples=30, sigmas=[0.2, 0.5])
    assert math.isfinite(estimate.value) and estimate.settings["samples_per_class"] == [10, 10, 10]
