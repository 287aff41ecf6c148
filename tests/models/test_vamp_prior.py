"""The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z|u_k) over learned pseudo-inputs u_k."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab.data.loader import Batch
from vaelab.distributions import diag_gaussian_mixture_log_prob, log_mean_exp
from vaelab.errors import ConfigError, VaelabError
from vaelab.export import describe_prior
from vaelab.models.cvae import CVAE, CVAEConfig
from vaelab.models.vae import VAE, VAEConfig

IMAGE_SHAPE = (1, 4, 4)


def vamp_vae(**overrides) -> VAE:
    torch.manual_seed(0)
    settings = dict(hidden=(16,), latent_dim=3, prior="vamp", pseudo_inputs=7) | overrides
    return VAE(VAEConfig(**settings), IMAGE_SHAPE).eval()


def torch_mixture(means: torch.Tensor, log_vars: torch.Tensor) -> MixtureSameFamily:
    components = Independent(Normal(means, (0.5 * log_vars).exp()), 1)
    return MixtureSameFamily(Categorical(torch.ones(len(means))), components)


def test_mixture_log_prob_matches_torch_distributions_far_out_and_in_bf16_autocast():
    generator = torch.Generator().manual_seed(1)
    means = 3 * torch.randn(5, 4, generator=generator)
    log_vars = torch.randn(5, 4, generator=generator) - 2  # narrow components: the expansion's hard case
    z = 4 * torch.randn(6, 3, 4, generator=generator)
    expected = torch_mixture(means, log_vars).log_prob(z)
    torch.testing.assert_close(diag_gaussian_mixture_log_prob(z, means, log_vars), expected, rtol=1e-5, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = diag_gaussian_mixture_log_prob(z.bfloat16(), means, log_vars)
    assert in_autocast.dtype == torch.float32
    torch.testing.assert_close(in_autocast, torch_mixture(means, log_vars).log_prob(z.bfloat16().float()),
                               rtol=1e-5, atol=1e-3)


def test_the_prior_is_the_encoders_posterior_averaged_over_the_pseudo_inputs():
    model = vamp_vae()
    with torch.no_grad():
        means, log_vars = model.encode(model.pseudo_inputs())
        z = torch.randn(4, 2, 3)
        torch.testing.assert_close(model.log_prior(z), torch_mixture(means, log_vars).log_prob(z))
    # pseudo-inputs are images in (0, 1) and get gradients
    pixels = model.pseudo_inputs().detach()
    assert float(pixels.min()) > 0 and float(pixels.max()) < 1
    model.log_prior(z).sum().backward()
    assert model.pseudo_inputs.logits.grad.abs().sum() > 0


def test_a_standard_prior_vae_is_unchanged():
    model = VAE(VAEConfig(hidden=(16,), latent_dim=3), IMAGE_SHAPE)
    assert model.pseudo_inputs is None and model.prior_moments() is None
    z = torch.randn(5, 3)
    torch.testing.assert_close(model.log_prior(z), Normal(0.0, 1.0).log_prob(z).sum(-1))


def test_samples_of_the_prior_follow_its_moments_and_the_seed():
    model = vamp_vae()
    draws = model.sample_prior(40_000, torch.Generator().manual_seed(3))
    again = model.sample_prior(40_000, torch.Generator().manual_seed(3))
    assert torch.equal(draws, again)
    mean, scale_tril = model.prior_moments()
    covariance = scale_tril @ scale_tril.T
    torch.testing.assert_close(draws.mean(0), mean, atol=4 * float(covariance.diag().max().sqrt()) / 200, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), covariance, atol=0.05 * float(covariance.diag().max()), rtol=0)


def test_the_elbo_kl_is_the_monte_carlo_estimate_and_l_k_uses_the_mixture():
    model = vamp_vae()
    x = torch.rand(3, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(4)).bernoulli()
    with torch.no_grad():
        # many draws: the MC KL converges to KL(q || p), checked against a torch.distributions estimate
        kl = model.elbo_terms(x, num_samples=20_000, generator=torch.Generator().manual_seed(5))["kl"]
        mu, log_var = model.encode(x)
        q = Independent(Normal(mu, (0.5 * log_var).exp()), 1)
        z = q.sample((20_000,))
        means, log_vars = model.prior_components()
        reference = (q.log_prob(z) - torch_mixture(means, log_vars).log_prob(z)).mean(0)
        torch.testing.assert_close(kl, reference, atol=0.05, rtol=0)
        # L_k's weights: log p(x|z) + log p_vamp(z) - log q(z|x), exactly
        generator = torch.Generator().manual_seed(6)
        weights = model.log_weights(x, 8, generator)
        z = model.reparameterize(mu, log_var, 8, torch.Generator().manual_seed(6))
        expected = model.log_likelihood(x, z) + torch_mixture(means, log_vars).log_prob(z) - q.log_prob(z)
        torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model.iw_bound(x, 8, torch.Generator().manual_seed(6)), log_mean_exp(expected, 0))


def test_training_moves_the_pseudo_inputs():
    model = vamp_vae(objective="iwae", k=4).train()
    before = model.pseudo_inputs().detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(8, *IMAGE_SHAPE).bernoulli()
    loss = model.loss(Batch(x=x))["loss"]
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.pseudo_inputs().detach())


def test_set_images_starts_the_pseudo_inputs_from_given_images():
    model = vamp_vae()
    images = torch.rand(7, *IMAGE_SHAPE)
    model.pseudo_inputs.set_images(images, margin=1e-3)
    torch.testing.assert_close(model.pseudo_inputs().detach(), images.clamp(1e-3, 1 - 1e-3))
    with pytest.raises(ValueError, match="pseudo-inputs are"):
        model.pseudo_inputs.set_images(torch.rand(3, *IMAGE_SHAPE))


def test_bad_vamp_configs_are_config_errors():
    with pytest.raises(ConfigError, match="pseudo_inputs"):
        vamp_vae(pseudo_inputs=0)
    with pytest.raises(ConfigError, match="unconditional"):
        CVAE(CVAEConfig(hidden=(16,), latent_dim=3, prior="vamp"), IMAGE_SHAPE, num_classes=3)


def test_an_exported_decoder_cannot_describe_a_vamp_prior_and_says_so():
    with pytest.raises(VaelabError, match="neither N"):
        describe_prior(vamp_vae(), "vae")
