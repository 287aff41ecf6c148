"""The RBM: the partition function and conditionals against enumeration of a small RBM, the CD
gradient against the textbook formula, persistent chains, learning a tiny data set, sampling,
and save/load/resume through the CLI."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from tiny_runs import read_metrics, read_tensors, same_tensors, write_images

import vaelab
from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.rbm import RBM, RBMConfig, binary_states
from vaelab.optim import Updater, build_optimizer
from vaelab.registry import MODELS

SMALL_SHAPE = (1, 2, 3)  # 6 visible units


def make_rbm(image_shape=SMALL_SHAPE, num_hidden: int = 4, seed: int = 0, init_std: float = 0.01,
             **overrides) -> RBM:
    torch.manual_seed(seed)
    return RBM(RBMConfig(num_hidden=num_hidden, init_std=init_std, **overrides), image_shape)


def random_rbm(num_hidden: int = 4, image_shape=SMALL_SHAPE, seed: int = 0, **overrides) -> RBM:
    """Large random weights and biases, so the exact checks below are far from trivial."""
    model = make_rbm(image_shape, num_hidden, seed=seed, **overrides)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(1.5 * torch.randn(param.shape, generator=generator))
    return model


def joint_log_weights(model: RBM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (v, h) pair with -E(v, h), float64: v (2^D, 2^H, D), h (2^D, 2^H, H), -E (2^D, 2^H)."""
    model = copy.deepcopy(model).double()
    v = binary_states(model.num_visible)  # (2^D, D)
    h = binary_states(model.config.num_hidden)  # (2^H, H)
    pairs_v = v[:, None].expand(-1, len(h), -1)
    pairs_h = h[None].expand(len(v), -1, -1)
    with torch.no_grad():
        neg_energy = -model.energy(pairs_v.reshape(-1, v.shape[1]), pairs_h.reshape(-1, h.shape[1]))
    return pairs_v, pairs_h, neg_energy.view(len(v), len(h))


# -- the energy, the free energy and the exact partition function ---------------------------------

def test_energy_is_the_bilinear_form_by_hand():
    model = random_rbm()
    v, h = torch.tensor([[1.0, 0, 1, 1, 0, 1]]), torch.tensor([[0.0, 1, 1, 0]])
    W, b, c = model.weight.detach(), model.visible_bias.detach(), model.hidden_bias.detach()
    by_hand = -sum(b[i] * v[0, i] for i in range(6)) - sum(c[j] * h[0, j] for j in range(4)) \
        - sum(v[0, i] * W[i, j] * h[0, j] for i in range(6) for j in range(4))
    torch.testing.assert_close(model.energy(v, h).detach(), by_hand.view(1))


@pytest.mark.parametrize("num_hidden", [4, 8])  # enumerate the hidden layer (4 < 6) or the visible one
def test_log_partition_agrees_with_the_joint_enumeration_and_normalizes(num_hidden):
    model = random_rbm(num_hidden)
    _, _, neg_energy = joint_log_weights(model)
    log_z_joint = torch.logsumexp(neg_energy.flatten(), 0)  # sum over all 2^6 * 2^H pairs
    log_z = model.log_partition_exact()
    assert log_z.dtype == torch.float64
    torch.testing.assert_close(log_z, log_z_joint)
    # the free energy is the hidden layer summed out: -F(v) = log sum_h exp(-E(v, h))
    v = binary_states(6)
    free = model.double().free_energy(v).detach()
    torch.testing.assert_close(-free, torch.logsumexp(neg_energy, 1))
    torch.testing.assert_close(torch.logsumexp(-free - log_z, 0), torch.tensor(0.0, dtype=torch.float64))
    assert abs(log_z.item() - 10 * math.log(2)) > 1.0  # far from the W = 0 value: the check is not vacuous


def test_log_partition_of_a_zero_rbm_and_in_chunks():
    model = make_rbm(init_std=0.0, num_hidden=5)
    assert model.log_partition_exact().item() == pytest.approx(11 * math.log(2))
    model = random_rbm(num_hidden=8)
    torch.testing.assert_close(model.log_partition_exact(chunk=5), model.log_partition_exact())


def test_log_partition_refuses_large_rbms():
    model = make_rbm(image_shape=(1, 5, 5), num_hidden=25)
    with pytest.raises(VaelabError, match="2\\^25"):
        model.log_partition_exact()
    assert torch.isfinite(make_rbm(image_shape=(1, 28, 28), num_hidden=3).log_partition_exact())


def test_the_gibbs_conditionals_are_the_ratios_of_the_enumerated_joint():
    model = random_rbm()
    pairs_v, pairs_h, neg_energy = joint_log_weights(model)
    joint = torch.softmax(neg_energy.flatten(), 0).view_as(neg_energy)  # p(v, h) (2^6, 2^4)
    v, h = pairs_v[:, 0], pairs_h[0]  # (2^6, 6), (2^4, 4)
    # p(h_j = 1 | v) = sum_h p(v, h) h_j / p(v)
    expected_h = (joint[..., None] * pairs_h).sum(1) / joint.sum(1, keepdim=True)  # (2^6, 4)
    expected_v = (joint[..., None] * pairs_v).sum(0) / joint.sum(0)[:, None]  # (2^4, 6)
    model = model.double()
    torch.testing.assert_close(model.hidden_probs(v).detach(), expected_h)
    torch.testing.assert_close(model.visible_probs(h).detach(), expected_v)


# -- the contrastive divergence gradient ------------------------------------------------------------

def test_the_surrogate_gradient_is_the_textbook_cd_update():
    """d/d theta [mean F(v_data) - mean F(v_model)] = -(<v h'>_data - <v h'>_model), with h at
    its conditional probabilities (Hinton 2010, sections 2 and 3)."""
    model = random_rbm(num_hidden=5)
    generator = torch.Generator().manual_seed(3)
    v_data = (torch.rand(7, 6, generator=generator) < 0.5).float()
    v_model = (torch.rand(9, 6, generator=generator) < 0.5).float()  # a different number of particles
    terms = model._terms(v_data, v_model)
    terms["free_energy_gap"].backward()
    with torch.no_grad():
        h_data, h_model = model.hidden_probs(v_data), model.hidden_probs(v_model)
        positive, negative = v_data.t() @ h_data / 7, v_model.t() @ h_model / 9  # (6, 5)
        torch.testing.assert_close(model.weight.grad, -(positive - negative))
        torch.testing.assert_close(model.visible_bias.grad, -(v_data.mean(0) - v_model.mean(0)))
        torch.testing.assert_close(model.hidden_bias.grad, -(h_data.mean(0) - h_model.mean(0)))
    assert model.weight.grad.abs().max() > 0.05


def test_cd1_particles_are_one_gibbs_sweep_from_the_data():
    model = random_rbm()
    v_data = binary_states(6)[::3].float()  # (22, 6)
    torch.manual_seed(4)
    particles = model.negative_particles(v_data)
    torch.manual_seed(4)
    h = (torch.rand(22, 4) < model.hidden_probs(v_data)).float()
    v = (torch.rand(22, 6) < model.visible_probs(h)).float()
    assert torch.equal(particles, v)


def test_cdk_runs_k_sweeps():
    model = random_rbm(cd_k=3)
    v_data = binary_states(6)[::5].float()
    torch.manual_seed(6)
    particles = model.negative_particles(v_data)
    torch.manual_seed(6)
    assert torch.equal(particles, model.run_chains(v_data, 3))
    torch.manual_seed(6)
    assert not torch.equal(particles, model.run_chains(v_data, 1))


def test_pcd_chains_persist_across_updates():
    model = random_rbm(persistent=True, num_chains=5)
    data = Batch(binary_states(6)[:8].float().view(8, *SMALL_SHAPE))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):
        chains_before = model.persistent_chains.clone()
        weights_before = copy.deepcopy(model.state_dict())
        torch.manual_seed(step)
        model.train_step(data, step, Updater([optimizer]))
        # the update's particles were one sweep from where the previous update left the chains
        reference = copy.deepcopy(model)
        reference.load_state_dict(weights_before)
        torch.manual_seed(step)
        assert torch.equal(model.persistent_chains, reference.run_chains(chains_before, 1))
    assert not torch.equal(model.persistent_chains, chains_before)


def test_pcd_needs_no_data_shaped_chains_and_validation_leaves_them_alone():
    model = make_rbm(persistent=True, num_chains=3)
    assert model.persistent_chains.shape == (3, 6)
    assert set(model.persistent_chains.unique().tolist()) <= {0.0, 1.0}
    chains = model.persistent_chains.clone()
    terms = model.validation_loss(Batch(torch.rand(10, *SMALL_SHAPE)))
    assert torch.equal(model.persistent_chains, chains)
    assert {"loss", "free_energy_gap", "free_energy"} <= set(terms)
    torch.manual_seed(0)
    model.loss(Batch(torch.rand(10, *SMALL_SHAPE)))
    assert not torch.equal(model.persistent_chains, chains)
    assert "persistent_chains" not in make_rbm().state_dict()  # plain CD keeps no chains


def test_train_step_reports_the_reconstruction_error_and_descends_the_gap():
    model = random_rbm()
    x = binary_states(6)[::4].float().view(-1, *SMALL_SHAPE)  # (16, 1, 2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    terms = model.train_step(Batch(x), 0, Updater([optimizer]))
    with torch.no_grad():
        reference = copy.deepcopy(model)
        reference.load_state_dict(before)
        mse = ((reference.visible_probs(reference.hidden_probs(x)) - x.view(16, 6)) ** 2).mean()
        torch.testing.assert_close(terms["loss"], mse)
        torch.testing.assert_close(terms["free_energy"], reference.free_energy(x).mean())
    for name, value in terms.items():
        assert value.shape == () and torch.isfinite(value) and not value.requires_grad, name
    assert all(not torch.equal(before[name], value) for name, value in model.state_dict().items())


def test_weight_decay_applies_to_the_weights_only():
    model = make_rbm()
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.01)
    (optimizer,) = model.make_optimizers(lambda params: build_optimizer(params, cfg))
    groups = {tuple(id(p) for p in g["params"]): g for g in optimizer.param_groups}
    assert groups[(id(model.weight),)]["weight_decay"] == 0.01
    assert groups[(id(model.visible_bias), id(model.hidden_bias))]["weight_decay"] == 0.0
    assert all(g["momentum"] == 0.5 and g["lr"] == 0.1 for g in optimizer.param_groups)


def test_one_pcd_update_through_the_trainers_optimizer_is_sklearns_bernoulli_rbm_update():
    """scikit-learn's BernoulliRBM._fit and vaelab's train_step with the trainer's plain SGD
    (optimizer=sgd momentum=0 lr=0.05) make the same update from the same parameters and data:
    W += lr/B (v'p(h|v) - v~'p(h|v~)), b += lr mean(v - v~), c += lr mean(p(h|v) - p(h|v~)), all from
    the parameters before the update. Visible biases of +-40 make the negative particles v~ the same
    deterministic state in both (sklearn draws them from its stored hidden sample, vaelab from its
    stored visible state), so the two updates can be compared exactly."""
    sklearn_rbm = pytest.importorskip("sklearn.neural_network").BernoulliRBM
    model = make_rbm(num_hidden=4, persistent=True, num_chains=5)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.weight.copy_(0.3 * torch.randn(6, 4, generator=generator))
        model.hidden_bias.copy_(torch.randn(4, generator=generator))
        model.visible_bias.copy_(torch.tensor([40.0, -40, 40, 40, -40, -40]))
    x = (torch.rand(5, 6, generator=generator) < 0.5).float()
    reference = sklearn_rbm(n_components=4, learning_rate=0.05, batch_size=5)
    reference.components_ = model.weight.detach().double().numpy().T.copy()
    reference.intercept_hidden_ = model.hidden_bias.detach().double().numpy().copy()
    reference.intercept_visible_ = model.visible_bias.detach().double().numpy().copy()
    reference.h_samples_ = np.zeros((5, 4))
    before = copy.deepcopy(model)
    reference._fit(x.double().numpy(), np.random.RandomState(0))

    cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.0)
    model.train_step(Batch(x.view(5, *SMALL_SHAPE)), 0,
                     Updater(model.make_optimizers(lambda params: build_optimizer(params, cfg))))
    v_model = torch.tensor([1.0, 0, 1, 1, 0, 0]).expand(5, 6)
    assert torch.equal(model.persistent_chains, v_model)
    np.testing.assert_allclose(model.weight.detach().numpy(), reference.components_.T, atol=1e-6)
    np.testing.assert_allclose(model.hidden_bias.detach().numpy(), reference.intercept_hidden_, atol=1e-6)
    np.testing.assert_allclose(model.visible_bias.detach().numpy(), reference.intercept_visible_, atol=1e-5)
    # and both are the formula, by hand in float64
    with torch.no_grad():
        W, b, c = before.weight.double(), before.visible_bias.double(), before.hidden_bias.double()
        v, v_neg = x.double(), v_model.double()
        h, h_neg = torch.sigmoid(v @ W + c), torch.sigmoid(v_neg @ W + c)
        by_hand = W + 0.05 / 5 * (v.t() @ h - v_neg.t() @ h_neg)
        np.testing.assert_allclose(model.weight.detach().numpy(), by_hand.numpy(), atol=1e-6)
        np.testing.assert_allclose(model.hidden_bias.detach().numpy(), (c + 0.05 * (h - h_neg).mean(0)).numpy(),
                                   atol=1e-6)
        np.testing.assert_allclose(model.visible_bias.detach().numpy(), (b + 0.05 * (v - v_neg).mean(0)).numpy(),
                                   atol=1e-5)
    assert (model.weight - before.weight).abs().max() > 1e-3  # the update is not negligible


@pytest.mark.parametrize("optimizer, momentum, warns", [("sgd", 0.9, True), ("sgd", None, True),
                                                       ("rmsprop", 0.9, True), ("sgd", 0.0, False),
                                                       ("sgd", 0.5, False), ("adam", 0.9, False)])
def test_high_momentum_warns_because_trainconfig_defaults_to_0_9(optimizer, momentum, warns):
    model = make_rbm()
    cfg = TrainConfig(optimizer=optimizer, lr=0.05) if momentum is None else \
        TrainConfig(optimizer=optimizer, lr=0.05, momentum=momentum)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.make_optimizers(lambda params: build_optimizer(params, cfg))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == int(warns), messages
    if warns:
        assert "momentum=0.9" in messages[0] and "momentum=0 for plain SGD" in messages[0]


# -- learning a tiny data set -----------------------------------------------------------------------

PATTERNS = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 1],  # stripes
                         [1, 0, 1, 0, 1, 0, 1, 0, 1],  # a cross
                         [0, 1, 0, 1, 1, 1, 0, 1, 0]], dtype=torch.float32)  # a plus


def exact_log_likelihood(model: RBM) -> float:
    """Mean exact log p(v) of the three patterns."""
    with torch.no_grad():
        return (-model.double().free_energy(PATTERNS.double()) - model.log_partition_exact()).mean().item()


@pytest.mark.parametrize("persistent,num_hidden,lr,steps", [(False, 8, 0.2, 500), (True, 16, 0.05, 1000)])
def test_training_on_three_patterns_raises_the_exact_likelihood_and_samples_reproduce_them(
        persistent, num_hidden, lr, steps):
    """CD-1 and PCD-1 (with the learning rate decayed linearly to 0, as in Tieleman 2008)."""
    model = make_rbm(image_shape=(1, 3, 3), num_hidden=num_hidden, init_std=0.1, persistent=persistent,
                     num_chains=100, sample_start="uniform")
    initial = exact_log_likelihood(copy.deepcopy(model))
    data = Batch(PATTERNS.repeat(10, 1).view(30, 1, 3, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    torch.manual_seed(0)
    for step in range(steps):
        model.train_step(data, step, Updater([optimizer]))
        schedule.step()
    final = exact_log_likelihood(copy.deepcopy(model))
    assert initial < -6.0  # about 9 log(1/2) = -6.24 at small weights
    assert final > -2.5, (initial, final)  # the best any model can do is log(1/3) = -1.10
    samples = model.sample(300, generator=torch.Generator().manual_seed(0), burn_in=50, mean=False).view(300, 9)
    matches = (samples[:, None] == PATTERNS[None]).all(-1)  # (300, 3)
    assert matches.any(1).float().mean() > 0.6  # 3 of the 512 states hold most of the samples
    assert (matches.float().mean(0) > 0.1).all()  # all three patterns, not one mode


# -- sampling and reconstruction ---------------------------------------------------------------------

def test_sample_shape_range_seeding_and_the_global_rng():
    model = random_rbm()
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    torch.manual_seed(0)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0), burn_in=20)
    assert torch.equal(torch.rand(3), expected_global)
    assert samples.shape == (7, *SMALL_SHAPE) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1 and not set(samples.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(samples, model.sample(7, generator=torch.Generator().manual_seed(0), burn_in=20))
    assert not torch.equal(samples, model.sample(7, generator=torch.Generator().manual_seed(1), burn_in=20))
    drawn = model.sample(7, generator=torch.Generator().manual_seed(0), burn_in=20, mean=False)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(VaelabError, match="burn_in"):
        model.sample(2, burn_in=0)


def test_sample_is_the_last_state_of_gibbs_chain_from_the_starting_states():
    model = random_rbm()
    samples = model.sample(5, generator=torch.Generator().manual_seed(2), burn_in=7)
    generator = torch.Generator().manual_seed(2)
    start = model.initial_visible(5, generator)
    chain = model.gibbs_chain(start.view(5, *SMALL_SHAPE), 7, generator, thin=1)
    assert chain.shape == (7, 5, *SMALL_SHAPE)
    assert torch.equal(chain[-1], samples)
    generator = torch.Generator().manual_seed(2)
    start = model.initial_visible(5, generator)
    thinned = model.gibbs_chain(start.view(5, *SMALL_SHAPE), 7, generator, thin=3)
    assert thinned.shape == (2, 5, *SMALL_SHAPE)
    assert torch.equal(thinned, chain[[2, 5]])


def test_the_gibbs_chain_reaches_the_exact_marginal():
    model = random_rbm()
    log_p = (-model.double().free_energy(binary_states(6)) - model.log_partition_exact()).detach()
    model = model.float()
    states = model.sample(4000, generator=torch.Generator().manual_seed(0), burn_in=30, mean=False).view(4000, 6)
    index = (states * 2 ** torch.arange(6)).sum(1).long()  # binary_states' numbering
    empirical = torch.bincount(index, minlength=64).double() / 4000
    total_variation = 0.5 * (empirical - log_p.exp()).abs().sum().item()
    assert total_variation < 0.06, total_variation


def test_reconstruct_is_the_mean_field_up_down_pass():
    model = random_rbm()
    x = torch.rand(4, *SMALL_SHAPE)
    with torch.no_grad():
        expected = torch.sigmoid(torch.sigmoid(x.view(4, 6) @ model.weight + model.hidden_bias) @ model.weight.t()
                                 + model.visible_bias)
    torch.testing.assert_close(model.reconstruct(x), expected.view(4, *SMALL_SHAPE))


@pytest.mark.parametrize("overrides,key", [({"num_hidden": 0}, "num_hidden"), ({"cd_k": 0}, "cd_k"),
                                           ({"burn_in": 0}, "burn_in"), ({"init_std": -1.0}, "init_std"),
                                           ({"sample_start": "data"}, "sample_start")])
def test_bad_configs_raise_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        RBM(RBMConfig(**overrides), SMALL_SHAPE)


def test_registry_names_the_rbm():
    assert MODELS["rbm"] is RBM and RBM.config_class is RBMConfig


# -- the command line: train, sample, reconstruct, load, resume --------------------------------------

TINY = ["num_hidden=12", "batch_size=8", "binarize=dynamic", "tensorboard=false", "burn_in=20",
        "optimizer=sgd", "momentum=0.5", "weight_decay=2e-4", "lr=0.05"]


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "tiny.npz")


def train_rbm(run_dir, data, *args):
    return main(["train", "rbm", *TINY, "--data", str(data), "--out", str(run_dir), *args])


def resume_rbm(run_dir, *args):
    torch.manual_seed(987654321)  # a fresh process: the checkpoint must restore the RNG
    torch.rand(1000)
    return main(["train", "rbm", "--out", str(run_dir), "--resume", *args])


def test_cli_train_sample_reconstruct_and_load(tmp_path, data):
    run = tmp_path / "run"
    assert train_rbm(run, data, "--epochs", "2", "persistent=true", "num_chains=6") == 0
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["val_loss"]) and "val_free_energy_gap" in m for m in metrics)
    model = vaelab.load(run)
    weights = read_tensors(run / "model.safetensors")
    assert same_tensors(weights, {k: v.contiguous() for k, v in model.state_dict().items()})
    assert weights["persistent_chains"].shape == (6, 36)
    again = vaelab.load(run)
    assert torch.equal(model.sample(4, torch.Generator().manual_seed(5)),
                       again.sample(4, torch.Generator().manual_seed(5)))
    x = torch.rand(3, 1, 6, 6)
    assert torch.equal(model.reconstruct(x), again.reconstruct(x))
    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.npy")]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (9, 1, 6, 6) and samples.min() >= 0 and samples.max() <= 1
    assert np.array_equal(samples, model.sample(9, torch.Generator().manual_seed(0)).numpy())
    assert main(["reconstruct", str(run), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0


@pytest.mark.parametrize("persistent", ["false", "true"])
def test_cli_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, data, persistent):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    extra = ["--epochs", "3", f"persistent={persistent}", "num_chains=5"]
    assert train_rbm(whole, data, *extra, "--max-steps", "12") == 0
    assert train_rbm(resumed, data, *extra, "--max-steps", "7") == 0
    assert not same_tensors(read_tensors(resumed / "model.safetensors"), read_tensors(whole / "model.safetensors"))
    assert resume_rbm(resumed, "--max-steps", "12") == 0
    final = read_tensors(resumed / "model.safetensors")
    assert same_tensors(final, read_tensors(whole / "model.safetensors"))
    assert ("persistent_chains" in final) == (persistent == "true")
    assert read_metrics(resumed) == read_metrics(whole)
