"""The VAE on tiny configs: shapes, the loss terms against hand-computed values, sampling, the
KL weight, the IWAE objective, Monte Carlo averaging, gradient flow and config errors."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_runs import adam_step
from torch.distributions import Bernoulli, Normal

from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.vae import VAE, VAEConfig
from vaelab.registry import MODELS, get_model_class

IMAGE_SHAPE = (1, 6, 6)
LATENT_DIM = 3
BATCH = 5

ARCHITECTURES = ("mlp", "conv", "linear")
LIKELIHOODS = {  # name -> config overrides
    "bernoulli": {"likelihood": "bernoulli"},
    "gaussian_fixed": {"likelihood": "gaussian", "variance": "fixed"},
    "gaussian_learned": {"likelihood": "gaussian", "variance": "learned"},
}
COMBINATIONS = [(a, lik) for a in ARCHITECTURES for lik in LIKELIHOODS]


def make_vae(architecture: str = "mlp", likelihood: str = "bernoulli", image_shape=IMAGE_SHAPE,
             seed: int = 0, **overrides) -> VAE:
    fields = {"hidden": (16,), "channels": (4, 8), "latent_dim": LATENT_DIM, **LIKELIHOODS[likelihood]}
    config = VAEConfig(architecture=architecture, **{**fields, **overrides})
    torch.manual_seed(seed)
    return VAE(config, image_shape)


def make_images(likelihood: str = "bernoulli", n: int = BATCH, image_shape=IMAGE_SHAPE, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *image_shape, generator=generator)  # (B, C, H, W)
    return (x > 0.5).float() if likelihood == "bernoulli" else x


def log_likelihood_by_hand(model: VAE, x, z):
    """log p(x|z) from torch.distributions: x (B, C, H, W), z (S, B, D) -> (S, B)."""
    decoded = model.decode(z)  # (S, B, C * params, H, W)
    config = model.config
    if config.likelihood == "bernoulli":
        return Bernoulli(logits=decoded).log_prob(x.expand_as(decoded)).flatten(2).sum(-1)
    if config.variance == "fixed":
        return Normal(torch.sigmoid(decoded), config.fixed_std).log_prob(x.expand_as(decoded)).flatten(2).sum(-1)
    raw_mean, raw_log_var = decoded.chunk(2, dim=-3)
    floor = 2 * math.log(config.min_std)
    # the learned variance is floored softly at min_std: whatever the exact map, sigma >= min_std
    log_var = model.likelihood._mean_and_log_var(decoded)[1]
    assert torch.all(log_var >= floor - 1e-5)
    std = torch.exp(0.5 * log_var)
    return Normal(torch.sigmoid(raw_mean), std).log_prob(x.expand_as(raw_mean)).flatten(2).sum(-1)


# -- shapes and the basic interface ------------------------------------------------------------

@pytest.mark.parametrize("architecture,likelihood", COMBINATIONS)
def test_encode_decode_shapes(architecture, likelihood):
    model = make_vae(architecture, likelihood)
    x = make_images(likelihood)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (BATCH, LATENT_DIM)
    params = 2 if likelihood == "gaussian_learned" else 1
    assert model.decode(mu).shape == (BATCH, params, 6, 6)
    z = model.reparameterize(mu, log_var, num_samples=4)
    assert z.shape == (4, BATCH, LATENT_DIM)
    assert model.decode(z).shape == (4, BATCH, params, 6, 6)
    assert model.log_likelihood(x, z).shape == (4, BATCH)
    reconstructions = model.reconstruct(x)
    assert reconstructions.shape == x.shape
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1


@pytest.mark.parametrize("image_shape", [(1, 5, 7), (3, 8, 8), (1, 28, 28)])
def test_conv_decoder_gives_back_the_exact_image_shape(image_shape):
    model = make_vae("conv", "gaussian_learned", image_shape=image_shape)
    x = make_images("gaussian", n=2, image_shape=image_shape)
    mu, _ = model.encode(x)
    channels, height, width = image_shape
    assert model.decode(mu).shape == (2, 2 * channels, height, width)
    assert model.sample(3).shape == (3, *image_shape)


@pytest.mark.parametrize("architecture,likelihood", COMBINATIONS)
def test_loss_terms_are_finite_and_match_the_likelihood(architecture, likelihood):
    model = make_vae(architecture, likelihood)
    x = make_images(likelihood)
    torch.manual_seed(3)
    terms = model.loss(Batch(x))
    assert {"loss", "reconstruction", "kl"} <= set(terms)
    for name, value in terms.items():
        assert value.shape == () and torch.isfinite(value), name
    assert terms["kl"] > 0
    torch.testing.assert_close(terms["loss"], terms["kl"] + terms["reconstruction"])
    # the reconstruction term is -log p(x|z) at the reparameterized draw, by torch.distributions
    torch.manual_seed(3)
    mu, log_var = model.encode(x)
    z = mu + torch.exp(0.5 * log_var) * torch.randn(1, BATCH, LATENT_DIM)
    torch.testing.assert_close(terms["reconstruction"], -log_likelihood_by_hand(model, x, z).mean())
    kl = torch.distributions.kl_divergence(Normal(mu, torch.exp(0.5 * log_var)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(terms["kl"], kl.mean())


@pytest.mark.parametrize("architecture,likelihood", COMBINATIONS)
def test_one_adam_step_changes_the_weights_and_lowers_the_loss(architecture, likelihood):
    model = make_vae(architecture, likelihood)
    batch = Batch(make_images(likelihood))
    loss_before, changed = adam_step(model, batch, seed=5)
    for part in ("posterior_head", "decoder", *(("encoder",) if architecture != "linear" else ())):
        assert any(name.startswith(part + ".") for name in changed), (part, changed)
    torch.manual_seed(5)  # the same noise: the step went downhill
    assert model.loss(batch)["loss"] < loss_before


# -- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture,likelihood", COMBINATIONS)
def test_sample_shape_range_and_seeding(architecture, likelihood):
    model = make_vae(architecture, likelihood)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, *IMAGE_SHAPE)
    assert samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    again = model.sample(7, generator=torch.Generator().manual_seed(0))
    other = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(samples, again)
    assert not torch.allclose(samples, other)
    drawn = model.sample(7, generator=torch.Generator().manual_seed(0), mean=False)
    assert drawn.shape == (7, *IMAGE_SHAPE) and drawn.min() >= 0 and drawn.max() <= 1
    if likelihood == "bernoulli":
        assert set(drawn.unique().tolist()) <= {0.0, 1.0}


def test_sample_does_not_touch_the_global_rng_when_given_a_generator():
    model = make_vae()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.sample(4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), expected)


class _Forbidden(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("generation must not call the encoder")


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_generation_uses_the_decoder_alone(likelihood):
    model = make_vae("mlp", likelihood)
    expected = model.sample(6, generator=torch.Generator().manual_seed(4))
    model.encoder = _Forbidden()
    model.posterior_head = _Forbidden()
    samples = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(samples, expected)
    # and it is the likelihood's mean at z ~ N(0, I) drawn from that generator
    z = torch.randn(6, LATENT_DIM, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(samples, model.likelihood.mean(model.decode(z)).clamp(0, 1))
    model.encoder = model.posterior_head = None
    assert torch.equal(model.sample(6, generator=torch.Generator().manual_seed(4)), expected)


# -- the KL weight -----------------------------------------------------------------------------

def test_kl_warmup_ramps_linearly_from_zero_to_beta():
    model = make_vae(beta=2.0, kl_warmup_steps=10)
    assert model.kl_weight(0) == 0.0
    assert model.kl_weight(5) == pytest.approx(1.0)
    assert model.kl_weight(7) == pytest.approx(1.4)
    assert model.kl_weight(10) == pytest.approx(2.0)
    assert model.kl_weight(1000) == pytest.approx(2.0)
    assert model.kl_weight(None) == 2.0
    assert make_vae(beta=0.5).kl_weight(0) == 0.5  # no warm-up: beta from the first step
    batch = Batch(make_images())
    for step, weight in [(0, 0.0), (5, 1.0), (None, 2.0)]:
        torch.manual_seed(2)
        terms = model.loss(batch, step=step)
        torch.testing.assert_close(terms["loss"], weight * terms["kl"] + terms["reconstruction"])
    # validation scores the full objective, whatever the warm-up
    torch.manual_seed(2)
    validation = model.validation_loss(batch)
    torch.testing.assert_close(validation["loss"], 2.0 * validation["kl"] + validation["reconstruction"])


@pytest.mark.parametrize("beta", [0.0, 0.25, 4.0])
def test_beta_scales_the_kl_term_exactly(beta):
    reference = make_vae(beta=1.0)
    weighted = make_vae(beta=beta)
    weighted.load_state_dict(reference.state_dict())
    batch = Batch(make_images())
    torch.manual_seed(11)
    plain = reference.loss(batch)
    torch.manual_seed(11)
    terms = weighted.loss(batch)
    assert torch.equal(terms["reconstruction"], plain["reconstruction"])
    assert torch.equal(terms["kl"], plain["kl"])
    torch.testing.assert_close(terms["loss"], beta * terms["kl"] + terms["reconstruction"])
    torch.testing.assert_close(terms["loss"] - plain["loss"], (beta - 1.0) * plain["kl"])
    # the reported ELBO does not depend on beta
    torch.testing.assert_close(terms["elbo"], plain["elbo"])


# -- IWAE and Monte Carlo averaging ------------------------------------------------------------

@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_iwae_loss_is_minus_the_mean_importance_weighted_bound(likelihood):
    k = 7
    model = make_vae("mlp", likelihood, objective="iwae", k=k)
    x = make_images(likelihood)
    torch.manual_seed(8)
    terms = model.loss(Batch(x))
    torch.manual_seed(8)
    with torch.no_grad():
        mu, log_var = model.encode(x)
        std = torch.exp(0.5 * log_var)
        z = mu + std * torch.randn(k, BATCH, LATENT_DIM)  # (k, B, D)
        log_w = (log_likelihood_by_hand(model, x, z) + Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - Normal(mu, std).log_prob(z).sum(-1))  # (k, B)
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # (B,)
    torch.testing.assert_close(terms["loss"], -bound.mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["iw_bound"], bound.mean(), rtol=1e-5, atol=1e-4)


def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    elbo_model = make_vae("mlp", "bernoulli")
    iwae_model = make_vae("mlp", "bernoulli", objective="iwae", k=1)
    iwae_model.load_state_dict(elbo_model.state_dict())
    # one image repeated: each loss is then an average over that many independent draws
    copies = 20000
    x = make_images(n=1).repeat(copies, 1, 1, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo_loss = elbo_model.loss(Batch(x))["loss"].item()
        iwae_loss = iwae_model.loss(Batch(x))["loss"].item()
        spread = iwae_model.log_weights(x, 1).std().item()  # (1, copies) one-sample log-weights
        iwae_50 = make_vae("mlp", "bernoulli", objective="iwae", k=50)
        iwae_50.load_state_dict(elbo_model.state_dict())
        tighter = iwae_50.loss(Batch(x[:2000]))["loss"].item()
    stderr = spread / math.sqrt(copies)
    assert abs(iwae_loss - elbo_loss) < 5 * stderr + 1e-3, (iwae_loss, elbo_loss, stderr)
    assert spread > 0.01  # the check above is not vacuous: the two estimators do differ per draw
    assert tighter < elbo_loss - 5 * stderr  # L_50 is a tighter bound than the ELBO


def test_mc_samples_averages_that_many_draws():
    samples = 16
    model = make_vae(mc_samples=samples)
    x = make_images()
    torch.manual_seed(21)
    terms = model.loss(Batch(x))
    torch.manual_seed(21)
    with torch.no_grad():
        mu, log_var = model.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(samples, BATCH, LATENT_DIM)
        expected = -log_likelihood_by_hand(model, x, z).mean(0).mean()
    torch.testing.assert_close(terms["reconstruction"], expected)


def test_more_mc_samples_shrink_the_variance_of_the_reconstruction_term():
    single, many = make_vae(mc_samples=1), make_vae(mc_samples=16)
    many.load_state_dict(single.state_dict())
    batch = Batch(make_images(n=2))

    def spread(model):
        values = []
        with torch.no_grad():
            for seed in range(200):
                torch.manual_seed(seed)
                values.append(model.loss(batch)["reconstruction"])
        return torch.stack(values).var().item()

    single_var, many_var = spread(single), spread(many)
    assert single_var > 0
    assert many_var < single_var / 6, (single_var, many_var)  # 1/16 in expectation


# -- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_reconstruction_gradients_reach_the_encoder_through_the_sample(architecture):
    model = make_vae(architecture, beta=0.0)
    x = make_images()
    torch.manual_seed(0)
    terms = model.loss(Batch(x))
    torch.testing.assert_close(terms["loss"], terms["reconstruction"])  # beta=0: no KL in the loss
    terms["loss"].backward()
    head = model.posterior_head.weight.grad  # rows 0..D-1: mu, rows D..2D-1: log sigma^2
    # log sigma^2 reaches the loss only through z = mu + sigma * eps
    assert head[LATENT_DIM:].abs().sum() > 0
    assert head[:LATENT_DIM].abs().sum() > 0
    for name, param in model.encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_the_kl_gradient_alone_reaches_only_the_encoder():
    model = make_vae()
    x = make_images()
    torch.manual_seed(0)
    model.loss(Batch(x))["kl"].backward()
    assert model.posterior_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())


# -- configuration errors ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"mc_samples": 0}, "mc_samples"),
    ({"k": 0}, "k"),
    ({"architecture": "resnet"}, "resnet"),
    ({"activation": "swish"}, "swish"),
    ({"hidden": ()}, "hidden"),
    ({"architecture": "conv", "channels": ()}, "channels"),
])
def test_bad_configs_raise_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key) as raised:
        make_vae(**{"architecture": "mlp", **overrides})
    assert isinstance(raised.value, VaelabError)


@pytest.mark.parametrize("field,value", [("likelihood", "poisson"), ("objective", "vimco"),
                                         ("variance", "diagonal")])
def test_unknown_choices_are_errors_not_silent_defaults(field, value):
    """A config built in Python is checked like one from YAML or KEY=VALUE: a misspelt likelihood
    must not quietly become a Gaussian, nor an unknown objective the ELBO."""
    config = VAEConfig(hidden=(8,), latent_dim=2, **{field: value})
    with pytest.raises(ConfigError, match=field):
        VAE(config, IMAGE_SHAPE)


def test_registry_names_the_vae_and_rejects_unknown_models():
    assert MODELS["vae"] is VAE and VAE.config_class is VAEConfig
    with pytest.raises(VaelabError, match="unknown model 'vea'.*vae"):
        get_model_class("vea")


def test_gated_units_are_value_times_sigmoid_gate_and_train():
    """activation="gated": each hidden layer is h = (W x + b) * sigmoid(V x + c), W and V the two
    halves of one Linear layer (the VampPrior reference code's GatedDense)."""
    from vaelab.models.blocks import GatedLinear

    torch.manual_seed(0)
    layer = GatedLinear(5, 3)
    x = torch.randn(4, 5)
    weight, bias = layer.both.weight, layer.both.bias
    expected = (x @ weight[:3].T + bias[:3]) * torch.sigmoid(x @ weight[3:].T + bias[3:])
    torch.testing.assert_close(layer(x), expected)
    model = VAE(VAEConfig(hidden=(16, 8), activation="gated", latent_dim=2), (1, 4, 4))
    assert sum(isinstance(module, GatedLinear) for module in model.modules()) == 4  # 2 encoder + 2 decoder layers
    x = (torch.rand(8, 1, 4, 4) > 0.5).float()
    _, changed = adam_step(model, Batch(x))
    assert {name for name in changed if "both" in name} == {name for name, _ in model.named_parameters()
                                                            if "both" in name}  # every gated layer learns
    with pytest.raises(ConfigError, match="gated: MLP layers only"):
        VAE(VAEConfig(architecture="conv", activation="gated"), (1, 8, 8))
