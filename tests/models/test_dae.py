"""The denoising autoencoder: the statistics of each corruption, the cost against the clean input
(by hand on a tiny linear model), no corruption outside training, seeding, and the CLI."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tiny_runs import read_tensors, same_tensors, write_images

import vaelab
from vaelab.cli import main
from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError
from vaelab.models.ae import AE, AEConfig
from vaelab.models.dae import DAE, DAEConfig
from vaelab.optim import Updater
from vaelab.registry import MODELS

IMAGE_SHAPE = (1, 6, 6)
PIXELS = 36
LATENT_DIM = 3
CORRUPTIONS = ("gaussian", "masking", "salt_and_pepper")
TINY = ["hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false"]


def make_dae(corruption: str = "masking", noise_level: float = 0.25, architecture: str = "mlp",
             seed: int = 0, **overrides) -> DAE:
    fields = {"hidden": (16,), "channels": (4, 8), "latent_dim": LATENT_DIM, **overrides}
    config = DAEConfig(architecture=architecture, corruption=corruption, noise_level=noise_level, **fields)
    torch.manual_seed(seed)
    return DAE(config, IMAGE_SHAPE)


def make_images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the corruptions ------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0.1, 0.25, 0.5])
def test_masking_zeroes_a_fixed_fraction_of_pixels_chosen_uniformly(level):
    model = make_dae("masking", level)
    x = torch.full((4000, *IMAGE_SHAPE), 0.7)
    x_tilde = model.corrupt(x, seeded(0))
    zeroed = x_tilde == 0  # (N, C, H, W)
    assert torch.equal(x_tilde[~zeroed], x[~zeroed])  # the other pixels are untouched
    # exactly round(nu * d) pixels per example (Vincent et al. 2008: a fixed number nu * d) ...
    assert (zeroed.flatten(1).sum(1) == round(level * PIXELS)).all()
    # ... and every pixel is as likely as any other to be chosen
    per_pixel = zeroed.float().mean(0).flatten()
    assert (per_pixel - round(level * PIXELS) / PIXELS).abs().max() < 4 * math.sqrt(level * (1 - level) / 4000)


@pytest.mark.parametrize("level", [0.2, 0.5])
def test_salt_and_pepper_sets_a_fixed_fraction_to_zero_or_one_in_equal_parts(level):
    model = make_dae("salt_and_pepper", level)
    x = torch.full((4000, *IMAGE_SHAPE), 0.5)
    x_tilde = model.corrupt(x, seeded(0))
    salt, pepper = (x_tilde == 1).flatten(1), (x_tilde == 0).flatten(1)
    changed = salt | pepper
    assert torch.equal(x_tilde.flatten(1)[~changed], x.flatten(1)[~changed])
    assert (changed.sum(1) == round(level * PIXELS)).all()
    total = changed.sum().item()
    assert abs(salt.sum().item() / total - 0.5) < 4 * 0.5 / math.sqrt(total)  # a fair coin
    # the coin is fair per pixel too, not just overall: each example's split varies
    assert salt.sum(1).float().std() > 0


def test_gaussian_corruption_adds_noise_of_the_given_std_then_clamps():
    model = make_dae("gaussian", 0.1)
    x = torch.full((2000, *IMAGE_SHAPE), 0.5)
    noise = model.corrupt(x, seeded(0)) - x
    assert abs(noise.mean().item()) < 4 * 0.1 / math.sqrt(noise.numel())
    assert abs(noise.std().item() - 0.1) < 0.002
    # exactly x + nu * eps with eps from the generator (no clamping this far from the edges)
    eps = torch.randn(x.shape, generator=seeded(0))
    torch.testing.assert_close(model.corrupt(x, seeded(0)), (x + 0.1 * eps).clamp(0, 1))
    wide = make_dae("gaussian", 1.0).corrupt(x, seeded(1))
    assert wide.min() == 0 and wide.max() == 1  # clamped to the pixel range
    assert (wide == 0).float().mean().item() == pytest.approx(0.3085, abs=0.01)  # P(0.5 + eps < 0)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corruption_is_seeded_by_the_generator_or_the_global_rng(corruption):
    model = make_dae(corruption)
    x = make_images(n=50)
    first = model.corrupt(x, seeded(3))
    assert torch.equal(first, model.corrupt(x, seeded(3)))
    assert not torch.equal(first, model.corrupt(x, seeded(4)))
    assert not torch.equal(first, x)
    torch.manual_seed(7)
    from_global = model.corrupt(x)
    torch.manual_seed(7)
    assert torch.equal(from_global, model.corrupt(x))
    # with a generator the global stream is untouched
    torch.manual_seed(7)
    model.corrupt(x, seeded(3))
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_zero_noise_is_the_plain_autoencoder(corruption):
    model = make_dae(corruption, 0.0)
    plain = AE(AEConfig(hidden=(16,), latent_dim=LATENT_DIM), IMAGE_SHAPE)
    plain.load_state_dict(model.state_dict())
    batch = Batch(make_images())
    assert torch.equal(model.corrupt(batch.x, seeded(0)), batch.x)
    torch.testing.assert_close(model.loss(batch)["loss"], plain.loss(batch)["loss"])


# -- the denoising cost --------------------------------------------------------------------------

@pytest.mark.parametrize("cost", ["bce", "mse"])
def test_cost_compares_the_reconstruction_of_the_corrupted_input_with_the_clean_input(cost):
    """By hand on a tiny affine DAE: 2x2 images, one latent unit, known weights."""
    model = DAE(DAEConfig(architecture="linear", latent_dim=1, cost=cost, corruption="masking",
                          noise_level=0.5), (1, 2, 2))
    encoder_weight = torch.tensor([[1.0, -2.0, 0.5, 1.5]])
    decoder_weight = torch.tensor([[0.5], [-1.0], [2.0], [1.0]])
    with torch.no_grad():
        model.code_head.weight.copy_(encoder_weight)
        model.code_head.bias.fill_(0.25)
        model.decoder.net.weight.copy_(decoder_weight)
        model.decoder.net.bias.copy_(torch.tensor([0.0, 0.1, -0.2, 0.3]))
    x = torch.tensor([[0.9, 0.2, 0.6, 0.4], [0.3, 0.8, 0.1, 0.7]]).view(2, 1, 2, 2)
    x_tilde = model.corrupt(x, seeded(5))
    kept = (x_tilde != 0).flatten(1)  # x has no zeros: the zeros of x_tilde are the mask
    assert (kept.sum(1) == 2).all()  # half of the 4 pixels masked
    assert torch.equal(x_tilde.flatten(1), x.flatten(1) * kept)

    clean = x.flatten(1).double()  # (2, 4)
    h = x_tilde.flatten(1).double() @ encoder_weight.double().T + 0.25  # (2, 1)
    out = h @ decoder_weight.double().T + torch.tensor([0.0, 0.1, -0.2, 0.3], dtype=torch.float64)  # (2, 4)

    def by_hand(target):
        if cost == "bce":
            p = torch.sigmoid(out)
            return (-(target * p.log() + (1 - target) * (1 - p).log())).sum(1).mean()
        return ((target - out) ** 2).sum(1).mean()

    terms = model.loss(Batch(x), generator=seeded(5))
    torch.testing.assert_close(terms["loss"].double(), by_hand(clean), rtol=1e-6, atol=1e-6)
    assert not torch.isclose(terms["loss"].double(), by_hand(x_tilde.flatten(1).double()), rtol=1e-3)
    # the training path (global RNG) corrupts the same way from the same seed
    torch.manual_seed(5)
    corrupted = model.corrupt(x)
    torch.manual_seed(5)
    torch.testing.assert_close(model.loss(Batch(x))["loss"], model.reconstruction_cost(corrupted, x).mean())


def test_reconstruct_encode_and_validation_do_not_corrupt():
    model = make_dae("salt_and_pepper", 0.5).eval()
    plain = AE(AEConfig(hidden=(16,), latent_dim=LATENT_DIM), IMAGE_SHAPE)
    plain.load_state_dict(model.state_dict())
    x = make_images()
    torch.manual_seed(0)
    expected_rng = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(model.reconstruct(x), plain.reconstruct(x))
    assert torch.equal(model.encode(x), plain.encode(x))
    model.after_training(Split(make_images(n=20)))
    plain.after_training(Split(make_images(n=20)))
    for name, buffer in plain.named_buffers():
        assert torch.equal(buffer, dict(model.named_buffers())[name]), name
    assert torch.equal(torch.rand(3), expected_rng)  # none of that drew from the global RNG


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_training_step_changes_the_weights(architecture, corruption):
    model = make_dae(corruption, architecture=architecture)
    batch = Batch(make_images())
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    terms = model.train_step(batch, 0, Updater([optimizer]))
    assert set(terms) == {"loss", "reconstruction"} and torch.isfinite(terms["loss"])
    after = model.state_dict()
    for part in ("encoder", "code_head", "decoder"):
        assert any(not torch.equal(before[name], after[name]) for name in before if name.startswith(part + ".")), part
    model.eval().after_training(Split(make_images(n=20)))
    images = model.sample(4, generator=seeded(0))
    assert images.shape == (4, *IMAGE_SHAPE) and images.min() >= 0 and images.max() <= 1


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    ({"noise_level": -0.1}, "noise_level"),
    ({"corruption": "masking", "noise_level": 1.5}, "noise_level"),
    ({"corruption": "salt_and_pepper", "noise_level": 2.0}, "noise_level"),
    ({"corruption": "dropout"}, "corruption"),
])
def test_bad_configs_raise_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_dae(**overrides)


def test_gaussian_noise_level_is_a_std_and_may_exceed_one():
    assert make_dae("gaussian", 2.0).config.noise_level == 2.0


def test_training_graph_corrupts_the_encoder_input_and_costs_against_the_clean_x():
    graph = DAE.training_graph(DAEConfig(corruption="salt_and_pepper", noise_level=0.3))
    edges = set(graph.edges)
    assert {("x", "corrupt"), ("corrupt", "x_tilde"), ("x_tilde", "encoder"), ("x", "cost")} <= edges
    assert ("x", "encoder") not in edges and ("x_tilde", "cost") not in edges
    kinds = {node.name: node.kind for node in graph.nodes}
    assert kinds["corrupt"] == "noise" and kinds["x_tilde"] == "sampled"
    assert "salt_and_pepper, nu=0.3" in {node.name: node for node in graph.nodes}["corrupt"].label


def test_registry_names_the_dae():
    assert MODELS["dae"] is DAE and DAE.config_class is DAEConfig and issubclass(DAE, AE)


# -- end to end through the CLI -----------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz")


def train(out, data, *args):
    return main(["train", "dae", *TINY, "--data", str(data), "--out", str(out), *args])


def test_cli_train_sample_reconstruct_and_load(data, tmp_path):
    run = tmp_path / "dae"
    assert train(run, data, "--epochs", "2", "corruption=salt_and_pepper", "noise_level=0.3",
                 "latent_density=gmm", "gmm_components=2") == 0
    model = vaelab.load(run)
    assert isinstance(model, DAE) and model.density_fitted
    assert model.config.corruption == "salt_and_pepper" and model.config.noise_level == 0.3
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "-n", "6", "--seed", "2", "--out", str(out)]) == 0
    samples = np.load(out)
    assert samples.shape == (6, *IMAGE_SHAPE) and samples.min() >= 0 and samples.max() <= 1
    assert np.array_equal(samples, vaelab.load(run).sample(6, generator=seeded(2)).numpy())
    assert main(["reconstruct", str(run), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file()


def test_resume_restores_the_corruption_noise_stream(data, tmp_path):
    """The corruption draws from the global RNG, which the checkpoint carries: a resumed run must
    corrupt the same pixels as an uninterrupted one and end with the same weights and density."""
    assert train(tmp_path / "full", data, "--epochs", "3") == 0
    assert train(tmp_path / "part", data, "--epochs", "1") == 0
    torch.manual_seed(987654321)
    torch.rand(1000)
    assert main(["train", "dae", "--out", str(tmp_path / "part"), "--resume", "--epochs", "3"]) == 0
    full, part = (read_tensors(tmp_path / name / "model.safetensors") for name in ("full", "part"))
    assert same_tensors(full, part)
    assert bool(full["density_fitted"])
