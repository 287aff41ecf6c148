"""The Conditional VAE (Sohn et al. 2015) on tiny configs: the label really conditions both networks,
the ELBO against torch.distributions, the VAE's maths reused exactly, L_k, class-conditional
sampling, save/load, --resume and the CLI (train, sample --label, eval)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_runs import adam_step, read_tensors, same_tensors, write_images
from torch.distributions import Bernoulli, Normal, kl_divergence

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.cli import main
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.experiment import evaluation_split, load_data
from vaelab.models.cvae import CVAE, CVAEConfig
from vaelab.models.vae import VAE, VAEConfig
from vaelab.registry import MODELS

IMAGE_SHAPE = (1, 6, 6)
CLASSES = 3
LATENT_DIM = 3
BATCH = 6
ARCHITECTURES = ("mlp", "conv", "linear")
LIKELIHOODS = {
    "bernoulli": {"likelihood": "bernoulli"},
    "gaussian_fixed": {"likelihood": "gaussian", "variance": "fixed"},
    "gaussian_learned": {"likelihood": "gaussian", "variance": "learned"},
}
TINY = ["hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false"]


def tiny_config(architecture="mlp", likelihood="bernoulli", config_class=CVAEConfig, **overrides):
    fields = {"hidden": (16,), "channels": (4, 8), "latent_dim": LATENT_DIM, **LIKELIHOODS[likelihood]}
    return config_class(architecture=architecture, **{**fields, **overrides})


def make_cvae(architecture="mlp", likelihood="bernoulli", seed=0, **overrides) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(tiny_config(architecture, likelihood, **overrides), IMAGE_SHAPE, CLASSES)


def make_batch(likelihood="bernoulli", n=BATCH, seed=1) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *IMAGE_SHAPE, generator=generator)  # (B, C, H, W)
    y = torch.arange(n) % CLASSES  # (B,)
    return Batch((x > 0.5).float() if likelihood == "bernoulli" else x, y)


def first_layers(model: CVAE) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights the label enters through: (encoder's first layer, decoder's first layer)."""
    weights = [(name, p) for name, p in model.named_parameters() if name.endswith("weight")]
    encoder = next(p for name, p in weights if name.startswith(("encoder.", "posterior_head.")))
    decoder = next(p for name, p in weights if name.startswith("decoder."))
    return encoder, decoder


def zero_label_weights(model: CVAE, encoder=True, decoder=True) -> None:
    """Zero the label's input columns: the last K inputs (mlp, linear) or channels (conv)."""
    enc, dec = first_layers(model)
    with torch.no_grad():
        if encoder:
            enc[:, -CLASSES:] = 0.0
        if decoder:
            dec[:, -CLASSES:] = 0.0


def log_likelihood_by_hand(model: CVAE, x, decoded):
    """log p(x|z, y) from torch.distributions, given the decoder's output (S, B, C*params, H, W)."""
    config = model.config
    if config.likelihood == "bernoulli":
        return Bernoulli(logits=decoded).log_prob(x.expand_as(decoded)).flatten(2).sum(-1)
    if config.variance == "fixed":
        return Normal(torch.sigmoid(decoded), config.fixed_std).log_prob(x.expand_as(decoded)).flatten(2).sum(-1)
    raw_mean, _ = decoded.chunk(2, dim=-3)
    std = torch.exp(0.5 * model.likelihood._mean_and_log_var(decoded)[1])
    return Normal(torch.sigmoid(raw_mean), std).log_prob(x.expand_as(raw_mean)).flatten(2).sum(-1)


# -- construction ---------------------------------------------------------------------------------

def test_registry_config_and_flags():
    assert MODELS["cvae"] is CVAE and CVAE.config_class is CVAEConfig and CVAE.conditional
    assert issubclass(CVAE, VAE) and issubclass(CVAEConfig, VAEConfig)
    assert set(CVAEConfig.__dataclass_fields__) == set(VAEConfig.__dataclass_fields__)


def test_missing_labels_are_a_config_error():
    with pytest.raises(ConfigError, match="labelled data"):
        CVAE(CVAEConfig(), IMAGE_SHAPE, None)
    with pytest.raises(ConfigError, match="num_classes"):
        CVAE(CVAEConfig(), IMAGE_SHAPE, 0)
    with pytest.raises(ConfigError, match="objective"):  # the VAE's config checks still apply
        CVAE(tiny_config(objective="vimco"), IMAGE_SHAPE, CLASSES)
    model = make_cvae()
    with pytest.raises(VaelabError, match="labelled batches"):
        model.loss(Batch(make_batch().x))
    with pytest.raises(VaelabError, match="label="):
        model.encode(make_batch().x)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes(architecture, likelihood):
    model, batch = make_cvae(architecture, likelihood), make_batch(likelihood)
    mu, log_var = model.encode(batch.x, batch.label)
    assert mu.shape == log_var.shape == (BATCH, LATENT_DIM)
    params = 2 if likelihood == "gaussian_learned" else 1
    z = model.reparameterize(mu, log_var, num_samples=4)  # (4, B, D)
    assert model.decode(mu, batch.label).shape == (BATCH, params, 6, 6)
    assert model.decode(z, batch.label).shape == (4, BATCH, params, 6, 6)
    assert model.log_likelihood(batch.x, z, batch.label).shape == (4, BATCH)
    assert model.log_weights(batch.x, 5, label=batch.label).shape == (5, BATCH)
    assert model.iw_bound(batch.x, 5, label=batch.label).shape == (BATCH,)
    reconstructions = model.reconstruct(batch.x, batch.label)
    assert reconstructions.shape == batch.x.shape and 0 <= reconstructions.min() <= reconstructions.max() <= 1


def test_conv_encoder_sees_the_label_as_constant_channels():
    model, batch = make_cvae("conv"), make_batch()
    inputs = model.encoder_input(batch.x, batch.label)  # (B, C + K, H, W)
    assert inputs.shape == (BATCH, 1 + CLASSES, 6, 6)
    assert torch.equal(inputs[:, :1], batch.x)
    expected = F.one_hot(batch.label, CLASSES).float()[:, :, None, None].expand(-1, -1, 6, 6)
    assert torch.equal(inputs[:, 1:], expected)


# -- conditioning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_label_changes_both_networks_unless_its_weights_are_zero(architecture):
    model, batch = make_cvae(architecture), make_batch()
    z = torch.randn(BATCH, LATENT_DIM, generator=torch.Generator().manual_seed(0))
    other = (batch.label + 1) % CLASSES
    with torch.no_grad():
        assert not torch.allclose(model.decode(z, batch.label), model.decode(z, other))
        assert not torch.allclose(model.encode(batch.x, batch.label)[0], model.encode(batch.x, other)[0])
        zero_label_weights(model)
        assert torch.equal(model.decode(z, batch.label), model.decode(z, other))
        assert torch.equal(model.encode(batch.x, batch.label)[0], model.encode(batch.x, other)[0])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_with_label_weights_zeroed_it_is_exactly_the_vae(architecture, likelihood):
    """The VAE's maths, reused: a CVAE holding a VAE's weights (and zero label weights) gives the
    VAE's loss terms, bounds and samples draw for draw, for every objective and KL schedule."""
    overrides = {"beta": 2.0, "kl_warmup_steps": 4, "mc_samples": 3}
    torch.manual_seed(0)
    vae = VAE(tiny_config(architecture, likelihood, VAEConfig, **overrides), IMAGE_SHAPE)
    cvae = make_cvae(architecture, likelihood, **overrides)
    embedded = {}
    for name, value in cvae.state_dict().items():
        source = vae.state_dict()[name]
        embedded[name] = torch.cat([source, torch.zeros_like(value)[:, source.shape[1]:]], 1) \
            if value.shape != source.shape else source
    cvae.load_state_dict(embedded)
    batch = make_batch(likelihood)

    def same(a, b):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)

    for step in (1, None):
        torch.manual_seed(3)
        expected = vae.loss(batch, step=step)
        torch.manual_seed(3)
        for name, value in cvae.loss(batch, step=step).items():
            same(value, expected[name])
    with torch.no_grad():
        same(cvae.iw_bound(batch.x, 7, torch.Generator().manual_seed(2), label=batch.label),
             vae.iw_bound(batch.x, 7, torch.Generator().manual_seed(2)))
        iwae = make_cvae(architecture, likelihood, objective="iwae", k=4)
        iwae.load_state_dict(embedded)
        torch.manual_seed(4)
        terms = iwae.loss(batch)
        torch.manual_seed(4)
        same(terms["loss"], -vae.iw_bound(batch.x, 4).mean())
        same(cvae.sample(5, torch.Generator().manual_seed(1), label=2),
             vae.sample(5, torch.Generator().manual_seed(1)))


def test_training_graph_feeds_the_label_to_both_networks():
    for objective in ("elbo", "iwae"):
        graph = CVAE.training_graph(CVAEConfig(objective=objective))
        labels = {node.name: node.label for node in graph.nodes}
        assert "q(z|x,y)" in labels["encoder"] and "p(x|z,y)" in labels["decoder"]
        assert {("x", "encoder"), ("y", "encoder"), ("y_decoder", "decoder")} <= set(graph.edges)
        assert labels["y"] == labels["y_decoder"]
    assert [node.name for node in graph.nodes if node.highlight] == []  # iwae: no separate KL term
    graph = CVAE.training_graph()
    assert [node.label for node in graph.nodes if node.highlight] == ["KL(q(z|x,y) || N(0, I))"]


# -- the objective against torch.distributions ------------------------------------------------------

@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_elbo_matches_a_hand_computation(architecture, likelihood):
    """With y fixed: ELBO = E_q(z|x,y)[log p(x|z,y)] - KL(q(z|x,y) || N(0, I)), the networks fed
    [x, one-hot y] and [z, one-hot y] by hand."""
    model, batch = make_cvae(architecture, likelihood), make_batch(likelihood)
    x, y, samples = batch.x, batch.label, 4
    model.config.mc_samples = samples
    torch.manual_seed(7)
    terms = model.loss(batch)
    label = F.one_hot(y, CLASSES).float()  # (B, K)
    with torch.no_grad():
        if architecture == "conv":
            encoder_input = torch.cat([x, label[:, :, None, None] * torch.ones(BATCH, CLASSES, 6, 6)], 1)
        else:
            encoder_input = torch.cat([x.reshape(BATCH, -1), label], 1)
        mu, log_var = model.posterior_head(model.encoder(encoder_input)).chunk(2, -1)
        q = Normal(mu, torch.exp(0.5 * log_var))
        torch.manual_seed(7)
        z = mu + q.scale * torch.randn(samples, BATCH, LATENT_DIM)  # (S, B, D)
        decoder_input = torch.cat([z, label.expand(samples, -1, -1)], -1).reshape(samples * BATCH, -1)
        decoded = model.decoder(decoder_input).reshape(samples, BATCH, -1, 6, 6)
        reconstruction = log_likelihood_by_hand(model, x, decoded).mean(0)  # (B,)
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)  # (B,)
    torch.testing.assert_close(terms["reconstruction"], -reconstruction.mean())
    torch.testing.assert_close(terms["kl"], kl.mean())
    torch.testing.assert_close(terms["elbo"], (reconstruction - kl).mean())
    torch.testing.assert_close(terms["loss"], (kl - reconstruction).mean())


def test_importance_weighted_bound_is_above_the_elbo_and_rises_with_k():
    model = make_cvae("mlp", "bernoulli")
    with torch.no_grad():
        model.posterior_head.bias[LATENT_DIM:] = 1.0  # a too-broad q: a visible gap to close
    batch = make_batch(n=1)
    copies = 400
    x, y = batch.x.expand(copies, -1, -1, -1), batch.label.expand(copies)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        terms = model.elbo_terms(x, 1, generator, label=y)
        elbo = (terms["reconstruction"] - terms["kl"]).mean().item()
        bounds = {k: model.iw_bound(x, k, generator, label=y) for k in (1, 5, 50)}
    means = {k: value.mean().item() for k, value in bounds.items()}
    stderr = bounds[1].std().item() / math.sqrt(copies)
    assert abs(means[1] - elbo) < 4 * stderr  # L_1 is an unbiased estimate of the ELBO
    assert means[5] > means[1] + 4 * stderr and means[50] > means[5]
    assert torch.all(bounds[50] >= elbo - 10 * bounds[50].std())
    assert means[50] >= elbo - 1e-3


# -- training -------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_adam_step_changes_the_weights_including_the_label_columns(architecture):
    model, batch = make_cvae(architecture), make_batch()
    encoder_labels, decoder_labels = (w[:, -CLASSES:].detach().clone() for w in first_layers(model))
    loss, changed = adam_step(model, batch, seed=5)
    assert torch.isfinite(loss)
    assert changed == set(model.state_dict())
    encoder_after, decoder_after = (w[:, -CLASSES:] for w in first_layers(model))
    assert not torch.equal(encoder_labels, encoder_after) and not torch.equal(decoder_labels, decoder_after)
    torch.manual_seed(5)
    assert model.loss(batch)["loss"] < loss


# -- sampling -------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_sample_shape_range_and_seeding(architecture, likelihood):
    model = make_cvae(architecture, likelihood)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, *IMAGE_SHAPE) and samples.dtype == torch.float32
    assert 0 <= samples.min() <= samples.max() <= 1
    assert torch.equal(samples, model.sample(7, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(samples, model.sample(7, generator=torch.Generator().manual_seed(1)))
    drawn = model.sample(7, generator=torch.Generator().manual_seed(0), mean=False)
    assert drawn.shape == (7, *IMAGE_SHAPE) and 0 <= drawn.min() <= drawn.max() <= 1


def decoded_means(model: CVAE, num_samples: int, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """What sample() must return: the likelihood's mean at z ~ N(0, I) from that seed, for labels."""
    z = torch.randn(num_samples, LATENT_DIM, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.likelihood.mean(model.decode(z, labels)).clamp(0, 1)


def test_sample_draws_the_requested_labels():
    model = make_cvae()
    for k in range(CLASSES):
        samples = model.sample(5, torch.Generator().manual_seed(3), label=k)
        torch.testing.assert_close(samples, decoded_means(model, 5, torch.full((5,), k), 3))
    cycling = torch.tensor([0, 1, 2, 0, 1, 2, 0])  # label=None: every class in turn
    torch.testing.assert_close(model.sample(7, torch.Generator().manual_seed(3)), decoded_means(model, 7, cycling, 3))
    chosen = torch.tensor([2, 2, 0, 1])
    torch.testing.assert_close(model.sample(4, torch.Generator().manual_seed(3), label=chosen),
                               decoded_means(model, 4, chosen, 3))
    assert not torch.allclose(model.sample(5, torch.Generator().manual_seed(3), label=0),
                              model.sample(5, torch.Generator().manual_seed(3), label=1))


@pytest.mark.parametrize("label", [3, -1, torch.tensor([0, 3]), torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 2]),
                                   "1", True])
def test_bad_labels_are_usage_errors(label):
    with pytest.raises(VaelabError, match="label"):
        make_cvae().sample(2, label=label)


def test_class_grid_is_ordered_class_by_class():
    model = make_cvae()
    grid = model.class_grid(4, torch.Generator().manual_seed(5))
    labels = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    assert grid.shape == (CLASSES * 4, *IMAGE_SHAPE)
    torch.testing.assert_close(grid, decoded_means(model, 12, labels, 5))
    # a decoder that ignores z: every image of a row is its class's one image, and the rows differ
    with torch.no_grad():
        first_layers(model)[1][:, :LATENT_DIM] = 0.0
    rows = model.class_grid(4, torch.Generator().manual_seed(5)).view(CLASSES, 4, -1)
    torch.testing.assert_close(rows, rows[:, :1].expand_as(rows))  # equal up to BLAS rounding
    for k in range(CLASSES):
        torch.testing.assert_close(rows[k, 0], model.sample(1, label=k).flatten())
    assert not torch.allclose(rows[0, 0], rows[1, 0]) and not torch.allclose(rows[1, 0], rows[2, 0])


def test_sample_does_not_touch_the_global_rng():
    model = make_cvae()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.class_grid(2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), expected)


# -- runs through the command line -------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Labelled tiny images (3 classes): 40 train (36 + 4 validation) and 10 test."""
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz", labels=True)


def train(run_dir: Path, data: Path, *args: str) -> int:
    return main(["train", "cvae", *TINY, "--data", str(data), "--out", str(run_dir), *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "cvae"
    assert train(run_dir, data, "--epochs", "2", "lr=1e-2") == 0
    return run_dir


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_training_on_unlabelled_data_is_a_usage_error(tmp_path, capsys):
    unlabelled = write_images(tmp_path / "plain.npz")
    assert train(tmp_path / "run", unlabelled, "--epochs", "1") == 2
    assert "needs labelled data" in capsys.readouterr().err


def test_save_and_load_round_trip(run):
    model = vaelab.load(run)
    again = vaelab.load(run)
    assert isinstance(model, CVAE) and model.num_classes == CLASSES
    assert torch.equal(model.class_grid(2, torch.Generator().manual_seed(0)),
                       again.class_grid(2, torch.Generator().manual_seed(0)))
    batch = make_batch()
    torch.manual_seed(1)
    expected = model.loss(batch)["loss"]
    torch.manual_seed(1)
    assert torch.equal(again.loss(batch)["loss"], expected)
    state = read_tensors(run / "model.safetensors")
    assert same_tensors(state, {k: v.contiguous() for k, v in model.state_dict().items()})


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, data):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert train(reference, data, "--epochs", "3", "binarize=dynamic") == 0
    assert train(resumed, data, "--epochs", "1", "binarize=dynamic") == 0
    torch.manual_seed(987654321)  # a real resume starts in a fresh process
    assert main(["train", "cvae", "--out", str(resumed), "--resume", "--epochs", "3"]) == 0
    assert same_tensors(read_tensors(resumed / "model.safetensors"), read_tensors(reference / "model.safetensors"))


def test_eval_through_the_cli_scores_with_the_labels(run, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "elbo,iw", "--k", "50", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    elbo, iw = results["elbo"]["value"], results["iw_bound"]["value"]
    assert math.isfinite(elbo) and iw >= elbo - 0.05
    # the estimator fed the test labels to the model: the same number, computed here by hand
    model, run_config = vaelab.load(run), load_run_config(run)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test")
    terms = model.elbo_terms(split.images, 1, torch.Generator().manual_seed(0), label=split.labels)
    assert elbo == pytest.approx((terms["reconstruction"] - terms["kl"]).mean().item(), rel=1e-5)
    wrong = model.elbo_terms(split.images, 1, torch.Generator().manual_seed(0), label=(split.labels + 1) % CLASSES)
    assert (wrong["reconstruction"] - wrong["kl"]).mean().item() != pytest.approx(elbo, rel=1e-5)


def test_sample_label_through_the_cli(run, tmp_path, capsys):
    out = tmp_path / "two.npy"
    assert main(["sample", str(run), "-n", "5", "--label", "2", "--seed", "4", "--out", str(out)]) == 0
    expected = vaelab.load(run).sample(5, generator=torch.Generator().manual_seed(4), label=2)
    np.testing.assert_allclose(np.load(out), expected.numpy())
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "5", "--label", str(CLASSES), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"vaelab: error: label must be a class in 0..{CLASSES - 1}, got {CLASSES}"]


def test_reconstruct_uses_the_labels():
    model, batch = make_cvae(), make_batch()
    mu, _ = model.encode(batch.x, batch.label)
    with torch.no_grad():
        expected = model.likelihood.mean(model.decode(mu, batch.label))
    torch.testing.assert_close(model.reconstruct(batch.x, batch.label), expected)
    with pytest.raises(VaelabError, match="label="):
        model.reconstruct(batch.x)


def test_reconstruct_through_the_cli(run, tmp_path, capsys):
    out = tmp_path / "reconstructions.png"
    assert main(["reconstruct", str(run), "-n", "4", "--nrow", "4", "--out", str(out)]) == 0, capsys.readouterr().err
    model, run_config = vaelab.load(run), load_run_config(run)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test")
    expected = np.round(model.reconstruct(split.images[:4], split.labels[:4]).numpy() * 255).astype(np.uint8)
    grid = np.asarray(Image.open(out).convert("L"))
    for i in range(4):  # row 0: originals, row 1: their reconstructions (6x6 tiles, 2-pixel padding)
        tile = grid[2 + 8:2 + 8 + 6, 2 + i * 8:2 + i * 8 + 6]
        assert np.abs(tile.astype(int) - expected[i, 0]).max() <= 1
