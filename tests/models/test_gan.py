"""The GAN on tiny configs: shapes and sampling, both players' losses against hand-computed values,
which weights each update touches, the d_steps schedule, the two optimizers, the CLI end to end
(save/load, --resume with both optimizers and BatchNorm statistics) and a two-pattern sanity check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_runs import assert_same_state, error_lines, read_metrics, read_tensors, same_tensors, write_images

import vaelab
from vaelab.checkpoint import load_training_state
from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError
from vaelab.models.gan import GAN, GANConfig
from vaelab.optim import Updater, build_optimizer
from vaelab.registry import MODELS

IMAGE_SHAPE = (1, 6, 6)
LATENT_DIM = 3
BATCH = 5
ARCHITECTURES = ("mlp", "dcgan")
TINY = {"latent_dim": LATENT_DIM, "g_hidden": (16,), "d_hidden": (16,), "channels": (4, 8)}


def make_gan(architecture: str = "mlp", image_shape=IMAGE_SHAPE, seed: int = 0, **overrides) -> GAN:
    torch.manual_seed(seed)
    return GAN(GANConfig(architecture=architecture, **{**TINY, **overrides}), image_shape)


def make_images(n: int = BATCH, image_shape=IMAGE_SHAPE, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *image_shape, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


def adam_pair(model: GAN, lr: float = 1e-2) -> list[torch.optim.Optimizer]:
    return model.make_optimizers(lambda params: torch.optim.Adam(params, lr=lr))


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def optimized(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not torch.equal(before[name], p)}


def by_hand(model: GAN, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both players' losses written out: -mean log D(x) - mean log(1 - D(G(z))) and -mean log D(G(z))."""
    with torch.no_grad():
        d_real = torch.sigmoid(model.discriminator(x))  # (B,)
        d_fake = torch.sigmoid(model.discriminator(torch.sigmoid(model.generator(z))))  # (B,)
    return {"d_loss": -torch.log(d_real).mean() - torch.log(1 - d_fake).mean(),
            "g_loss": -torch.log(d_fake).mean(), "d_real": d_real.mean(), "d_fake": d_fake.mean()}


# -- shapes and sampling -----------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("image_shape", [(1, 6, 6), (1, 8, 8), (1, 28, 28), (3, 5, 7)])
def test_shapes_sample_range_and_seeding(architecture, image_shape):
    model = make_gan(architecture, image_shape)
    x = make_images(4, image_shape)
    assert model.discriminate(x).shape == (4,)
    assert model.generate(torch.randn(4, LATENT_DIM)).shape == (4, *image_shape)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, *image_shape) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, model.sample(7, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(samples, model.sample(7, generator=torch.Generator().manual_seed(1)))


def test_dcgan_layout_follows_the_paper():
    """BatchNorm in both nets except D's input layer and G's output layer; N(0, 0.02) weights."""
    model = make_gan("dcgan", (1, 28, 28), channels=(16, 32))
    d_layers, g_layers = list(model.discriminator.conv), list(model.generator.deconv)
    assert not isinstance(d_layers[1], torch.nn.BatchNorm2d)  # conv, LeakyReLU: no BN on the input layer
    assert isinstance(d_layers[3], torch.nn.BatchNorm2d)
    assert all(layer.negative_slope == 0.2 for layer in d_layers if isinstance(layer, torch.nn.LeakyReLU))
    assert isinstance(g_layers[-1], torch.nn.ConvTranspose2d)  # the output layer has no BN
    assert sum(isinstance(layer, torch.nn.BatchNorm2d) for layer in g_layers) == 2
    assert model.generator.start_shape == (32, 7, 7)
    weights = torch.cat([m.weight.flatten() for m in model.modules()
                         if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_sample_is_g_of_z_in_eval_mode_and_leaves_the_model_as_it_was(architecture):
    model = make_gan(architecture)
    optimizers = adam_pair(model)
    for step in range(3):  # move the BatchNorm running statistics away from their initial values
        model.train_step(Batch(make_images(seed=step)), step, Updater(optimizers))
    state = copy.deepcopy(model.state_dict())
    samples = model.sample(6, generator=torch.Generator().manual_seed(4))
    assert model.training  # the mode is restored
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # running stats untouched
    z = torch.randn(6, LATENT_DIM, generator=torch.Generator().manual_seed(4))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(samples, torch.sigmoid(model.generator(z)))
    assert torch.equal(model.sample(6, generator=torch.Generator().manual_seed(4)), samples)


def test_sample_does_not_touch_the_global_rng_when_given_a_generator():
    model = make_gan()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.sample(4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), expected)


# -- the losses ----------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_loss_terms_match_the_minimax_value_and_the_non_saturating_loss(architecture):
    model = make_gan(architecture)
    x = make_images()
    torch.manual_seed(3)
    terms = model.loss(Batch(x))
    assert set(terms) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    for name, value in terms.items():
        assert value.shape == () and torch.isfinite(value), name
    torch.manual_seed(3)
    expected = by_hand(model, x, torch.randn(BATCH, LATENT_DIM))
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)
    torch.testing.assert_close(terms["loss"], terms["d_loss"] + terms["g_loss"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_train_step_losses_are_those_of_algorithm_1(architecture):
    """The D step's loss uses D and G before any update; the G step's non-saturating loss uses the
    updated D, the not-yet-updated G and a fresh draw of z (two draws per step, in that order)."""
    model = make_gan(architecture)
    before = copy.deepcopy(model)
    x = make_images()
    torch.manual_seed(7)
    terms = model.train_step(Batch(x), 0, Updater(adam_pair(model)))
    torch.manual_seed(7)
    z_d, z_g = torch.randn(BATCH, LATENT_DIM), torch.randn(BATCH, LATENT_DIM)
    expected = by_hand(before, x, z_d)
    for name in ("d_loss", "d_real", "d_fake"):
        torch.testing.assert_close(terms[name], expected[name], msg=name)
    mid = copy.deepcopy(before)  # D after its update, G before its own
    mid.discriminator.load_state_dict(model.discriminator.state_dict())
    torch.testing.assert_close(terms["g_loss"], by_hand(mid, x, z_g)["g_loss"])
    torch.testing.assert_close(terms["loss"], terms["d_loss"] + terms["g_loss"])
    assert all(not value.requires_grad for value in terms.values())


def test_the_non_saturating_loss_is_minus_mean_log_sigmoid():
    logits = torch.tensor([-30.0, -2.0, 0.0, 1.5, 40.0])
    expected = -torch.log(torch.sigmoid(logits.double())).mean().float()
    torch.testing.assert_close(GAN.generator_loss(logits), expected)
    # it does not saturate: a confident D (D(G(z)) -> 0) still gives G a gradient of about -1 per logit
    logits.requires_grad_(True)
    GAN.generator_loss(logits).backward()
    assert logits.grad[0].item() == pytest.approx(-1 / 5, rel=1e-6)


# -- which weights each update touches -------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_discriminator_step_changes_only_d(architecture):
    model = make_gan(architecture)
    d_opt, _ = adam_pair(model)
    d_before, g_before = params(model.discriminator), params(model.generator)
    model.discriminator_step(make_images(), Updater([d_opt, None]))
    assert changed(d_before, model.discriminator) == set(d_before)  # every tensor of D moved
    assert not changed(g_before, model.generator)
    assert all(p.grad is None for p in model.generator.parameters())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_generator_step_changes_only_g_and_leaves_no_gradient_in_d(architecture):
    model = make_gan(architecture)
    _, g_opt = adam_pair(model)
    d_before, g_before = params(model.discriminator), params(model.generator)
    model.generator_step(BATCH, Updater([None, g_opt]))
    assert changed(g_before, model.generator) == set(g_before)
    assert not changed(d_before, model.discriminator)
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.requires_grad for p in model.discriminator.parameters())  # unfrozen afterwards
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def test_d_steps_updates_g_once_every_d_steps_steps():
    model = make_gan(d_steps=3)
    optimizers = adam_pair(model)
    g_moved = []
    for step in range(6):
        g_before, d_before = params(model.generator), params(model.discriminator)
        terms = model.train_step(Batch(make_images(seed=step)), step, Updater(optimizers))
        g_moved.append(bool(changed(g_before, model.generator)))
        assert changed(d_before, model.discriminator)  # D moves every step
        assert set(terms) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    assert g_moved == [False, False, True, False, False, True]


def test_training_on_a_fixed_batch_makes_d_tell_real_from_fake():
    model = make_gan()
    optimizers = adam_pair(model, lr=1e-2)
    x = (make_images(16) > 0.5).float()
    torch.manual_seed(0)
    first = model.train_step(Batch(x), 0, Updater(optimizers))
    for step in range(1, 15):
        model.discriminator_step(x, Updater(optimizers))
    torch.manual_seed(1)
    last = model.loss(Batch(x))
    assert last["d_loss"] < first["d_loss"] - 0.3 and last["d_real"] > last["d_fake"] + 0.2


# -- optimizers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_two_optimizers_split_the_parameters_and_follow_the_train_config(optimizer):
    model = make_gan("dcgan", betas=(0.3, 0.9))
    cfg = TrainConfig(optimizer=optimizer, lr=2e-4, weight_decay=1e-5)
    d_opt, g_opt = model.make_optimizers(lambda p: build_optimizer(p, cfg))
    assert optimized(d_opt) == {id(p) for p in model.discriminator.parameters()}
    assert optimized(g_opt) == {id(p) for p in model.generator.parameters()}
    for opt in (d_opt, g_opt):
        group = opt.param_groups[0]
        assert group["lr"] == 2e-4 and group["weight_decay"] == 1e-5
        if optimizer != "sgd":
            assert group["betas"] == (0.3, 0.9) and opt.state_dict()["param_groups"][0]["betas"] == (0.3, 0.9)
        else:
            assert "betas" not in group


def test_the_configured_betas_are_the_ones_adam_steps_with():
    """Two Adam steps with betas set after construction equal two steps of Adam built with them."""
    model = make_gan(betas=(0.5, 0.999))
    reference = copy.deepcopy(model)
    (d_opt, _) = adam_pair(model, lr=1e-2)
    ref_opt = torch.optim.Adam(reference.discriminator.parameters(), lr=1e-2, betas=(0.5, 0.999))
    for seed in range(2):
        torch.manual_seed(seed)
        model.discriminator_step(make_images(seed=seed), Updater([d_opt, None]))
        torch.manual_seed(seed)
        reference.discriminator_step(make_images(seed=seed), Updater([ref_opt, None]))
    assert same_tensors(model.state_dict(), reference.state_dict())


# -- validation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_validation_loss_is_finite_and_changes_nothing(architecture):
    model = make_gan(architecture, dropout=0.3)
    model.eval()
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(0)
    terms = model.validation_loss(Batch(make_images()))
    assert set(terms) == {"loss", "d_loss", "g_loss", "d_real", "d_fake"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in terms.values())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# -- configuration, registry, graph ----------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"d_steps": 0}, "d_steps"),
    ({"betas": (0.5,)}, "betas"),
    ({"betas": (0.5, 1.0)}, "betas"),
    ({"dropout": 1.0}, "dropout"),
    ({"g_hidden": ()}, "g_hidden"),
    ({"architecture": "dcgan", "channels": ()}, "channels"),
    ({"architecture": "dcgan", "channels": (4, 8, 16)}, "channels"),  # 6 -> 3 -> 1 -> nothing
    ({"architecture": "wgan"}, "architecture"),
    ({"g_activation": "swish"}, "swish"),
    ({"generator_average_decay": 1.0}, "generator_average_decay"),
    ({"generator_average_decay": -0.1}, "generator_average_decay"),
])
def test_bad_configs_raise_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_gan(**overrides)


def test_registry_and_training_graph():
    assert MODELS["gan"] is GAN and GAN.config_class is GANConfig and not GAN.conditional
    graph = GAN.training_graph(GANConfig(architecture="dcgan"))
    assert {n.kind for n in graph.nodes} >= {"input", "noise", "network", "cost"}
    assert ("fake", "discriminator") in graph.edges and ("x", "discriminator") in graph.edges


# -- the command line end to end --------------------------------------------------------------------

CLI_MODEL = ["architecture=dcgan", "latent_dim=3", "channels=[4,8]", "batch_size=8", "d_steps=2",
             "tensorboard=false"]


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray default --out would land here, not in the repo
    return write_images(tmp_path / "tiny.npz")


def train(run_dir, data, *args: str) -> int:
    return main(["train", "gan", *CLI_MODEL, "--data", str(data), "--out", str(run_dir), *args])


def resume(run_dir, *args: str) -> int:
    torch.manual_seed(987654321)  # a real resume starts in a fresh process: scramble the global RNG
    torch.rand(1000)
    return main(["train", "gan", "--out", str(run_dir), "--resume", *args])


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, data):
    """Both optimizers, the BatchNorm running statistics and the d_steps phase survive --resume:
    7 steps then 6 more (5 steps an epoch, G updated on odd steps) equal 13 in one go."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(whole, data, "--epochs", "5", "--max-steps", "13") == 0
    assert train(resumed, data, "--epochs", "5", "--max-steps", "7") == 0
    assert not same_tensors(read_tensors(resumed / "model.safetensors"), read_tensors(whole / "model.safetensors"))
    assert resume(resumed, "--max-steps", "13") == 0

    final = read_tensors(resumed / "model.safetensors")
    assert same_tensors(final, read_tensors(whole / "model.safetensors"))
    assert any(key.endswith("running_mean") for key in final)  # the BatchNorm statistics were compared
    assert read_metrics(resumed) == read_metrics(whole)
    state, whole_state = load_training_state(resumed), load_training_state(whole)
    for s in (state, whole_state):
        s["progress"].pop("epoch_seconds")
    assert_same_state(state, whole_state)
    d_state, g_state = state["optimizers"]
    model = vaelab.load(resumed)
    assert len(d_state["state"]) == len(list(model.discriminator.parameters()))
    assert len(g_state["state"]) == len(list(model.generator.parameters()))
    assert d_state["state"][0]["step"] == 13 and g_state["state"][0]["step"] == 6  # G every 2nd step
    assert d_state["param_groups"][0]["betas"] == [0.5, 0.999]


def test_train_sample_load_and_reconstruct_through_the_cli(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2", "architecture=mlp", "g_hidden=[16]", "d_hidden=[16]",
                 "dropout=0.2") == 0
    metrics = read_metrics(run)
    assert len(metrics) == 2
    for key in ("train_loss", "train_d_loss", "train_g_loss", "train_d_real", "train_d_fake",
                "val_loss", "val_d_loss", "val_g_loss"):
        assert np.isfinite(metrics[-1][key]), key
    model = vaelab.load(run)
    assert isinstance(model, GAN) and not model.training
    assert same_tensors(model.state_dict(), read_tensors(run / "model.safetensors"))
    assert main(["sample", str(run), "-n", "6", "--seed", "3", "--out", str(tmp_path / "s.npy")]) == 0
    saved = torch.from_numpy(np.load(tmp_path / "s.npy"))
    assert torch.equal(saved, model.sample(6, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(saved, vaelab.load(run).sample(6, generator=torch.Generator().manual_seed(3)))
    assert main(["sample", str(run), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    assert main(["reconstruct", str(run)]) == 2
    assert error_lines(capsys.readouterr().err)


# -- a sanity check on two patterns ------------------------------------------------------------------

def test_a_tiny_gan_learns_both_of_two_patterns():
    """Data: two 4x4 binary patterns (left half on, top half on), equally often. After 400 steps
    (about a second) nearly every sample is close to one of them and both are produced: no
    collapse onto one. At initialization the samples are grey, far from both."""
    left, top = torch.zeros(4, 4), torch.zeros(4, 4)
    left[:, :2], top[:2, :] = 1.0, 1.0
    patterns = torch.stack([left, top]).unsqueeze(1)  # (2, 1, 4, 4)
    torch.manual_seed(0)
    model = GAN(GANConfig(latent_dim=2, g_hidden=(32,), d_hidden=(32,)), (1, 4, 4))
    optimizers = model.make_optimizers(lambda p: torch.optim.Adam(p, lr=2e-3))

    def nearest(samples):
        distance = torch.cdist(samples.flatten(1), patterns.flatten(1))  # (N, 2)
        return distance.min(1).values, distance.argmin(1)

    distance, _ = nearest(model.sample(1000, generator=torch.Generator().manual_seed(0)))
    assert (distance < 1.0).float().mean() < 0.05
    picks = torch.Generator().manual_seed(0)
    for step in range(400):
        model.train_step(Batch(patterns[torch.randint(0, 2, (64,), generator=picks)]), step, Updater(optimizers))
    distance, which = nearest(model.sample(1000, generator=torch.Generator().manual_seed(0)))
    assert (distance < 1.0).float().mean() > 0.85  # within RMS 0.25 a pixel of a pattern
    share = (which == 0).float().mean().item()
    assert 0.3 < share < 0.7, share


# -- the averaged generator ------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_generator_average_is_the_exponential_moving_average_of_gs_weights(architecture):
    decay = 0.9
    model = make_gan(architecture, generator_average_decay=decay)
    _, g_opt = adam_pair(model)
    expected = {name: p.detach().clone() for name, p in model.generator.named_parameters()}  # starts at G's init
    for _ in range(3):
        model.generator_step(BATCH, Updater([None, g_opt]))
        for name, p in model.generator.named_parameters():
            expected[name] = decay * expected[name] + (1 - decay) * p.detach()
    averaged = model.averaged_generator_weights()
    assert set(averaged) == set(expected)
    for name in expected:
        torch.testing.assert_close(averaged[name], expected[name], rtol=1e-6, atol=1e-7)
        assert not torch.equal(averaged[name], dict(model.generator.named_parameters())[name])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_samples_and_decodes_use_the_averaged_weights_and_no_decay_uses_g_itself(architecture):
    model = make_gan(architecture, generator_average_decay=0.5)
    _, g_opt = adam_pair(model)
    model.generator_step(BATCH, Updater([None, g_opt]))
    z = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(3))
    reference = copy.deepcopy(model.generator).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(model.averaged_generator_weights()[name])
        expected_logits = reference(z)
    torch.testing.assert_close(model.decode(z), expected_logits)
    samples = model.sample(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(samples, torch.sigmoid(expected_logits).clamp(0, 1))
    plain = make_gan(architecture)  # decay 0: the last iterate, and no buffer
    assert "generator_average" not in dict(plain.named_buffers())
    with torch.no_grad():
        torch.testing.assert_close(plain.decode(z), plain.generator.eval()(z))


def test_recalibrated_statistics_are_the_cumulative_batch_statistics_of_the_averaged_weights():
    model = make_gan("dcgan", generator_average_decay=0.5)
    _, g_opt = adam_pair(model)
    model.generator_step(BATCH, Updater([None, g_opt]))  # the average now differs from G
    assert not bool(model.generator_average_statistics_ready)
    reference = copy.deepcopy(model.generator)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(model.averaged_generator_weights()[name])
    layers = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    generator = torch.Generator().manual_seed(7)
    reference.train()
    with torch.no_grad():
        for _ in range(3):
            reference(model.sample_prior(4, generator))
    model.recalibrate_averaged_statistics(num_batches=3, batch_size=4, seed=7)
    assert bool(model.generator_average_statistics_ready)
    averaged = model.averaged_generator_weights()
    for name, buffer in reference.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(averaged[name], buffer)
            assert not torch.equal(buffer, dict(model.generator.named_buffers())[name])  # G's own are untouched
    z = torch.randn(4, LATENT_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), reference.eval()(z))
