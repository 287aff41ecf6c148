"""The evaluation protocol through the path `vaelab eval` takes (EvalContext + evaluate): which split
each choice is made on and which view of the data is scored.

- Parzen: sigma is chosen on the validation split, never on the test split it then scores.
- Decoder AIS: a GAN's (or MSE autoencoder's) observation sigma is chosen on the validation split.
- RBM AIS: the base-rate model is fitted to the training split.
- The evaluation split is the seeded binarization of the raw split under binarize=dynamic/fixed (the
  same binary images on every call), and the raw split under binarize=none; the ELBO of a
  dynamic-binarization run is that of the binary images.

Each data set below is built so that the right split and the test split lead to different choices,
so scoring on the wrong split cannot pass unnoticed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vaelab.config import DataConfig, RunConfig
from vaelab.data.datasets import ImageDataset, Split
from vaelab.data.pixels import fixed_view
from vaelab.eval.likelihood import elbo
from vaelab.eval.metrics import EvalContext, EvalOptions, evaluate
from vaelab.eval.parzen import choose_sigma as parzen_choose_sigma
from vaelab.eval.rbm_ais import base_log_partition, base_rate_visible_bias, rbm_log_partition_ais
from vaelab.experiment import evaluation_split, raw_split
from vaelab.models.gan import GAN, GANConfig
from vaelab.models.rbm import RBM, RBMConfig
from vaelab.models.vae import VAE, VAEConfig

SHAPE = (1, 4, 4)
EVAL_SEED_OFFSET = {"train": 1, "val": 2, "test": 3}  # documented in experiment.py


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_context(model, train: torch.Tensor, test: torch.Tensor, binarize: str = "none", split_seed: int = 0,
                 val_size: float = 0.25, levels: int | None = None, labels: bool = False,
                 **options) -> EvalContext:
    """An EvalContext as `vaelab eval` builds it, on a data set made in memory."""
    train_labels = torch.arange(len(train)) % 3 if labels else None
    test_labels = torch.arange(len(test)) % 3 if labels else None
    dataset = ImageDataset("protocol", Split(train, train_labels), Split(test, test_labels), levels=levels)
    data = DataConfig(name="protocol", binarize=binarize, val_size=val_size, split_seed=split_seed)
    run_config = RunConfig(model_name="vae", model=VAEConfig(), data=data, image_shape=SHAPE)
    return EvalContext(model, run_config, dataset, "test", EvalOptions(**options))


def view(ctx: EvalContext, name: str) -> Split:
    return evaluation_split(ctx.dataset, ctx.run_config.data, name)


def pick(results: dict, prefix: str, exclude: tuple[str, ...] = ()):
    """The one result named `prefix` or `prefix_...` (a Bernoulli score of grey pixels may be named
    a cross-entropy), leaving out the names in `exclude`."""
    found = [value for name, value in results.items()
             if (name == prefix or name.startswith(prefix + "_")) and name not in exclude]
    assert len(found) == 1, sorted(results)
    return found[0]


# -- Parzen: sigma on the validation split ------------------------------------------------------

class RecordingSampler(nn.Module):
    """Samples tightly packed around grey 0.5 (pixel sd 0.02); keeps what it returned."""

    conditional = False

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.drawn: list[torch.Tensor] = []

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def sample(self, n, generator=None, **kwargs):
        images = 0.5 + 0.02 * torch.randn(n, *SHAPE, generator=generator)
        self.drawn.append(images)
        return images


def test_parzen_sigma_is_chosen_on_the_validation_split():
    # Train (and so validation) images lie close to the samples; test images are uniform noise.
    # The best sigma on validation is the grid's smallest (0.1), on test a much wider one.
    train = (0.5 + 0.03 * torch.randn(40, *SHAPE, generator=gen(0))).clamp(0, 1)
    test = torch.rand(20, *SHAPE, generator=gen(1))
    model = RecordingSampler()
    ctx = make_context(model, train, test, num_samples=60, seed=4)
    estimate = pick(evaluate(ctx, ["parzen"]), "parzen")
    samples = torch.cat(model.drawn)
    assert samples.shape == (60, *SHAPE)

    validation = view(ctx, "val").images
    assert len(validation) == 10
    on_validation, table = parzen_choose_sigma(samples, validation)
    on_test, _ = parzen_choose_sigma(samples, test)
    assert (on_validation, round(on_test, 3)) == (0.1, 0.278)  # the data really tell the two apart
    assert estimate.settings["sigma"] == on_validation
    for got, expected in zip(estimate.settings["validation_log_likelihoods"], table, strict=True):
        assert got == pytest.approx(expected, abs=1e-9)
    assert estimate.settings["validation_size"] == 10
    assert estimate.settings["examples"] == 20  # and the test split is what gets scored


# -- decoder AIS: a GAN's observation sigma on the validation split -------------------------------

def constant_gan() -> GAN:
    """A GAN whose generator ignores z: every parameter 0, so G(z) = sigmoid(0) = 0.5 everywhere.
    Then p(x|z) does not depend on z, every AIS weight is exactly p(x) = N(x; 0.5, sigma^2 I), and
    the sigma with the highest mean log p(x) follows from the data alone."""
    model = GAN(GANConfig(latent_dim=2, g_hidden=(4,), d_hidden=(4,)), SHAPE)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def signs(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2, (count, *SHAPE), generator=gen(seed)).float() * 2 - 1


def closed_form_log_px(images: torch.Tensor, sigma: float) -> float:
    """Mean over the images of log N(x; 0.5, sigma^2 I), written out."""
    squared = (images.double() - 0.5).pow(2).flatten(1).sum(1)  # (N,)
    pixels = images[0].numel()
    return (-0.5 * squared / sigma**2 - pixels * math.log(sigma * math.sqrt(2 * math.pi))).mean().item()


def test_decoder_ais_sigma_is_chosen_on_the_validation_split():
    # Validation pixels are 0.5 +- 0.02 (best sigma 0.02), test pixels 0.5 +- 0.2 (best sigma 0.2).
    train = 0.5 + 0.02 * signs(40, 0)
    test = 0.5 + 0.2 * signs(12, 1)
    ctx = make_context(constant_gan(), train, test, ais_steps=3, ais_runs=2)
    estimate = pick(evaluate(ctx, ["decoder_ais"]), "decoder_ais")

    table = estimate.settings["sigma_chosen_on_validation"]  # {str(sigma): mean log p(x)} over the grid
    grid = [float(s) for s in table]
    assert {0.02, 0.2} <= set(grid)
    validation = view(ctx, "val").images[:10]  # choose_sigma scores the first 10 validation images
    on_validation = {s: closed_form_log_px(validation, s) for s in grid}
    on_test = {s: closed_form_log_px(test[:10], s) for s in grid}
    best_validation, best_test = max(on_validation, key=on_validation.get), max(on_test, key=on_test.get)
    assert (best_validation, best_test) == (0.02, 0.2)

    assert estimate.settings["sigma"] == best_validation
    for s in grid:
        assert table[str(s)] == pytest.approx(on_validation[s], rel=1e-5)
    # The test split is then scored with that sigma: exactly N(x; 0.5, 0.02^2 I) here.
    assert estimate.value == pytest.approx(closed_form_log_px(test, best_validation), rel=1e-5)
    assert estimate.settings["examples"] == 12


def test_a_given_sigma_is_used_as_it_is():
    train = 0.5 + 0.02 * signs(40, 0)
    test = 0.5 + 0.2 * signs(6, 1)
    ctx = make_context(constant_gan(), train, test, ais_steps=2, ais_runs=2, sigma=0.05)
    estimate = pick(evaluate(ctx, ["decoder_ais"]), "decoder_ais")
    assert estimate.settings["sigma"] == 0.05 and "sigma_chosen_on_validation" not in estimate.settings
    assert estimate.value == pytest.approx(closed_form_log_px(test, 0.05), rel=1e-5)


# -- RBM AIS: the base-rate model fitted to the training split -----------------------------------

def test_rbm_base_rate_model_is_fitted_to_the_training_split():
    # Dark training images (pixel means ~0.2), bright test images (~0.8), binarized as an RBM is
    # evaluated; random per image so that the training part alone (without the validation images)
    # has pixel means of its own.
    train = 0.4 * torch.rand(40, *SHAPE, generator=gen(0))
    test = 0.6 + 0.4 * torch.rand(10, *SHAPE, generator=gen(1))
    torch.manual_seed(0)
    rbm = RBM(RBMConfig(num_hidden=5, init_std=0.3), SHAPE)
    ctx = make_context(rbm, train, test, binarize="dynamic", ais_runs=4, ais_steps=6, seed=7)
    results = evaluate(ctx, ["rbm_ais"])
    log_z = results["rbm_log_z"]

    training = view(ctx, "train")
    assert len(training) == 30
    base = base_rate_visible_bias(training)
    validation = view(ctx, "val")
    wrong = {"test": base_rate_visible_bias(view(ctx, "test")),
             "val": base_rate_visible_bias(validation),
             "train+val": base_rate_visible_bias(torch.cat([training.images, validation.images]))}
    mean = log_z.settings["base_visible_bias_mean"]
    assert mean == pytest.approx(base.double().mean().item(), abs=1e-7)
    for name, bias in wrong.items():
        assert abs(mean - bias.double().mean().item()) > 1e-3, name
    assert log_z.settings["log_z_base"] == pytest.approx(base_log_partition(base, 5), abs=1e-9)
    # and the whole AIS run is the one from that base model, seeded with the options' seed
    expected = rbm_log_partition_ais(rbm, base, 4, 6, gen(7))
    assert log_z.value == pytest.approx(expected.value, abs=1e-9)
    log_likelihood = pick(results, "rbm", exclude=("rbm_log_z",))
    assert log_likelihood.settings["log_z"] == log_z.value and log_likelihood.settings["examples"] == 10


# -- the evaluation split: binarized once from a seed, or raw -------------------------------------

def grey_dataset_context(binarize: str, split_seed: int = 0, model=None, **options) -> EvalContext:
    """8-bit-like grey images, mostly strictly between 0 and 1, with labels."""
    train = torch.rand(24, *SHAPE, generator=gen(10)).mul(255).round().div(255)
    test = torch.rand(8, *SHAPE, generator=gen(11)).mul(255).round().div(255)
    return make_context(model, train, test, binarize=binarize, split_seed=split_seed, levels=256,
                        labels=True, **options)


@pytest.mark.parametrize("binarize", ["dynamic", "fixed"])
@pytest.mark.parametrize("split_seed", [0, 5])
def test_binarized_evaluation_split_is_one_seeded_draw(binarize, split_seed):
    ctx = grey_dataset_context(binarize, split_seed)
    data, dataset = ctx.run_config.data, ctx.dataset
    raw = dataset.test
    assert not set(raw.images.unique().tolist()) <= {0.0, 1.0}  # grey to begin with
    first, second = (evaluation_split(dataset, data, "test") for _ in range(2))
    assert set(first.images.unique().tolist()) == {0.0, 1.0}  # binary
    assert first.images.shape == raw.images.shape and not torch.equal(first.images, raw.images)
    assert torch.equal(first.images, second.images)  # the same draw every time
    expected = fixed_view(raw, binarize, dataset.levels, seed=split_seed + EVAL_SEED_OFFSET["test"])
    assert torch.equal(first.images, expected.images)
    assert torch.equal(first.labels, raw.labels)
    # pixels are on roughly as often as their grey values say (not all 0 or a constant draw)
    assert abs(first.images.mean().item() - raw.images.mean().item()) < 0.1
    # what a metric scores is that view
    assert torch.equal(ctx.split.images, expected.images)
    assert torch.equal(grey_dataset_context(binarize, split_seed).split.images, expected.images)


@pytest.mark.parametrize("binarize", ["dynamic", "fixed"])
def test_every_split_is_binarized_from_its_own_seed(binarize):
    ctx = grey_dataset_context(binarize, split_seed=2)
    views = {}
    for name, offset in EVAL_SEED_OFFSET.items():
        raw = raw_split(ctx.dataset, ctx.run_config.data, name)
        views[name] = evaluation_split(ctx.dataset, ctx.run_config.data, name)
        expected = fixed_view(raw, binarize, 256, seed=2 + offset)
        assert torch.equal(views[name].images, expected.images), name
        assert set(views[name].images.unique().tolist()) == {0.0, 1.0}, name
        assert torch.equal(ctx.view(name).images, expected.images), name


def test_without_binarization_the_evaluation_split_is_the_raw_split():
    ctx = grey_dataset_context("none")
    test = evaluation_split(ctx.dataset, ctx.run_config.data, "test")
    assert torch.equal(test.images, ctx.dataset.test.images)
    assert torch.equal(ctx.split.images, ctx.dataset.test.images)


def test_elbo_of_a_dynamic_binarization_run_is_that_of_the_binary_test_images():
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden=(8,), latent_dim=2), SHAPE).eval()
    ctx = grey_dataset_context("dynamic", model=model, seed=3)
    got = pick(evaluate(ctx, ["elbo"]), "elbo")
    raw = ctx.dataset.test
    binary = fixed_view(raw, "dynamic", 256, seed=0 + EVAL_SEED_OFFSET["test"])
    on_binary = pick(elbo(model, binary, seed=3), "elbo").value
    on_raw = pick(elbo(model, raw, seed=3), "elbo").value
    assert abs(on_binary - on_raw) > 1e-3  # the two differ for this model
    assert got.value == pytest.approx(on_binary, abs=1e-6)
    assert math.isfinite(got.value) and got.settings["examples"] == len(raw)
    again = pick(evaluate(grey_dataset_context("dynamic", model=model, seed=3), ["elbo"]), "elbo")
    assert again.value == got.value
