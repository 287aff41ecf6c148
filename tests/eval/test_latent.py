"""KL per dimension and active units against closed forms: an encoder whose outputs we set by hand,
the exact linear-Gaussian VAE, and the CVAE's labels."""

import math

import numpy as np
import pytest
import torch
from linear_gaussian import make_linear_gaussian_vae, sample_data

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.latent import (
    _activities,
    active_units,
    kl_per_dimension,
    latent_diagnostics,
)
from vaelab.eval.likelihood import elbo
from vaelab.models.ae import AE, AEConfig
from vaelab.models.cvae import CVAE, CVAEConfig
from vaelab.models.vae import VAE, VAEConfig

N = 40
# Target unbiased variances of mu_u(x) over the split, around the 0.01 threshold. 0.0101 is active
# with the unbiased variance but not with the biased one (0.0101 * 39/40 = 0.00985).
TARGET_VARIANCES = [0.0101, 0.0099, 0.5, 0.0, 0.02, 0.00999]
ACTIVE = [0, 2, 4]


def hand_set_vae(mu: np.ndarray, log_var: np.ndarray) -> tuple[VAE, Split]:
    """A VAE whose encoder returns mu and log_var written into the images themselves: image n holds
    mu[n] in row 0 and log_var[n] in row 1, so encode is exact and independent of batching."""
    dim = mu.shape[1]
    model = VAE(VAEConfig(hidden=(4,), latent_dim=dim), (1, 2, dim))
    model.encode = lambda x, label=None: (x[:, 0, 0, :], x[:, 0, 1, :])
    images = torch.from_numpy(np.stack([mu, log_var], axis=1)[:, None]).float()  # (N, 1, 2, D)
    return model, Split(images)


def designed_means(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(N)
    base = (base - base.mean()) / base.std(ddof=1)  # unbiased variance exactly 1
    return np.stack([math.sqrt(v) * base + 0.3 * j for j, v in enumerate(TARGET_VARIANCES)], axis=1)  # (N, D)


def test_kl_per_dimension_is_the_closed_form_of_the_hand_set_posterior():
    rng = np.random.default_rng(1)
    mu = designed_means()
    log_var = rng.normal(-1.0, 0.7, mu.shape)
    model, split = hand_set_vae(mu, log_var)
    mu32, lv32 = (split.images[:, 0, row].double().numpy() for row in (0, 1))  # the float32 values the model sees
    kl = 0.5 * (mu32**2 + np.exp(lv32) - lv32 - 1.0)  # (N, D)
    per_dim = kl_per_dimension(model, split, batch_size=7)
    np.testing.assert_allclose(per_dim.value, kl.mean(0), rtol=1e-12)
    np.testing.assert_allclose(per_dim.stderr, kl.std(0, ddof=1) / math.sqrt(N), rtol=1e-9)
    results = latent_diagnostics(model, split, batch_size=13)
    assert results["kl_total"].value == pytest.approx(kl.sum(1).mean(), rel=1e-12)
    assert results["kl_total"].stderr == pytest.approx(kl.sum(1).std(ddof=1) / math.sqrt(N), rel=1e-9)
    np.testing.assert_allclose(results["kl_per_dim"].value, kl.mean(0), rtol=1e-12)


def test_active_units_counts_the_dimensions_above_the_threshold():
    mu = designed_means()
    model, split = hand_set_vae(mu, np.zeros_like(mu))
    estimate = active_units(model, split, batch_size=9)
    assert estimate.value == len(ACTIVE)
    assert estimate.settings["active_dims"] == ACTIVE
    np.testing.assert_allclose(estimate.settings["activities"], TARGET_VARIANCES, rtol=1e-5, atol=1e-12)
    assert estimate.settings["threshold"] == 0.01 and estimate.settings["examples"] == N
    assert active_units(model, split, threshold=0.015).value == 2  # 0.5 and 0.02
    everything = active_units(model, split, threshold=0.0)  # all but the constant unit: 0.0 is not > 0
    assert everything.value == 5 and everything.settings["active_dims"] == [0, 1, 2, 4, 5]


def test_the_count_stderr_is_a_seeded_bootstrap():
    mu = designed_means()
    model, split = hand_set_vae(mu, np.zeros_like(mu))
    near = active_units(model, split, seed=0)  # 0.0101, 0.0099, 0.00999 sit on the threshold: counts vary
    assert 0 < near.stderr < 3 and near.settings["bootstrap_samples"] == 200
    assert active_units(model, split, seed=0).stderr == near.stderr
    far_model, far_split = hand_set_vae(mu[:, [2, 3]], np.zeros((N, 2)))  # 0.5 and 0.0: always one unit
    assert active_units(far_model, far_split).stderr == 0.0
    assert math.isnan(active_units(model, split, bootstrap_samples=0).stderr)


def test_resampled_activities_are_the_variances_of_the_resamples():
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(30, 4, generator=generator, dtype=torch.float64) * 3 + 100  # a large mean: no cancellation
    index = torch.randint(30, (5, 30), generator=generator)
    counts = torch.zeros(5, 30, dtype=torch.float64).scatter_add_(1, index, torch.ones(5, 30, dtype=torch.float64))
    expected = torch.stack([mu[i].var(0, unbiased=True) for i in index])
    torch.testing.assert_close(_activities(mu, counts), expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(_activities(mu), mu.var(0, unbiased=True), rtol=1e-12, atol=0)


def test_linear_gaussian_vae_kl_matches_the_exact_posterior_and_the_elbo():
    model = make_linear_gaussian_vae()
    x = sample_data(model, 200)
    head = model.posterior_head
    A, mu_bias = head.weight[:2].detach().double(), head.bias[:2].detach().double()
    log_var = head.bias[2:].detach().double()  # the exact posterior's variances do not depend on x
    mu = x.view(200, -1).double() @ A.T + mu_bias
    kl = 0.5 * (mu**2 + log_var.exp() - log_var - 1.0)  # (N, 2)
    results = latent_diagnostics(model, Split(x), batch_size=64)
    np.testing.assert_allclose(results["kl_per_dim"].value, kl.mean(0).numpy(), rtol=1e-5)
    assert results["kl_total"].value == pytest.approx(elbo(model, Split(x))["kl"].value, rel=1e-5)
    activities = mu.var(0, unbiased=True)  # both units carry signal
    np.testing.assert_allclose(results["active_units"].settings["activities"], activities.numpy(), rtol=1e-5)
    assert results["active_units"].value == int((activities > 0.01).sum()) == 2


def test_cvae_is_encoded_with_the_labels():
    torch.manual_seed(0)
    model = CVAE(CVAEConfig(hidden=(8,), latent_dim=3), (1, 4, 4), num_classes=3).eval()
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.rand(12, 1, 4, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator))
    with torch.no_grad():
        mu, log_var = model.encode(split.images, split.labels)
    kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp())).double()
    per_dim = kl_per_dimension(model, split, batch_size=5)
    np.testing.assert_allclose(per_dim.value, kl.mean(0).numpy(), rtol=1e-5)
    with pytest.raises(VaelabError, match="labelled"):
        kl_per_dimension(model, Split(split.images))


def test_models_without_a_gaussian_encoder_are_refused():
    split = Split(torch.rand(4, 1, 4, 4))
    with pytest.raises(VaelabError, match="Gaussian encoder"):
        latent_diagnostics(AE(AEConfig(hidden=(4,), latent_dim=2), (1, 4, 4)), split)
    model, one = hand_set_vae(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(VaelabError, match="at least 2 examples"):
        active_units(model, one)
