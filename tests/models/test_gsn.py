"""The GSN on tiny configs: the walkback cost against a hand-unrolled chain, where the noise enters
(input corruption, hidden pre- and post-activation noise), the Markov chain sampler, training on
three 3x3 patterns, and the CLI (train, sample, reconstruct, load, --resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_runs import adam_step, read_tensors, same_tensors, write_images

import vaelab
from vaelab.cli import main
from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.models.gsn import GSN, GSNConfig, fit_clusters
from vaelab.registry import MODELS

IMAGE_SHAPE = (1, 4, 4)
PIXELS = 16
BATCH = 5
NOISELESS = {"input_noise_level": 0.0, "hidden_noise_std": 0.0, "sample_visible": False}


def make_gsn(hidden=(8, 6), seed: int = 0, image_shape=IMAGE_SHAPE, **overrides) -> GSN:
    torch.manual_seed(seed)
    return GSN(GSNConfig(hidden=hidden, **overrides), image_shape)


def make_images(n: int = BATCH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *IMAGE_SHAPE, generator=generator) > 0.5).float()  # (B, C, H, W)


def bce(logits, target):
    """Binary cross-entropy summed over pixels: (B, D) -> (B,)."""
    p = torch.sigmoid(logits)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum(-1)


# -- the walkback cost ------------------------------------------------------------------------------

def test_registry_and_default_walkbacks():
    assert MODELS["gsn"] is GSN and GSN.config_class is GSNConfig
    assert GSNConfig().hidden == (1500, 1500) and make_gsn(hidden=(8, 6)).num_walkbacks == 4  # 2K
    assert make_gsn(hidden=(8, 6, 4)).num_walkbacks == 6
    assert make_gsn(walkbacks=3).num_walkbacks == 3


def test_loss_matches_a_hand_unrolled_three_layer_chain():
    """K=3 without noise or sampling: odd layers (h1 from x and h2, h3 from h2), then even layers
    (x from h1, h2 from h1 and h3), tied weights, summed over walkbacks=3 BCE terms against x."""
    model = make_gsn(hidden=(7, 6, 5), walkbacks=3, **NOISELESS)
    x = make_images()
    terms = model.loss(Batch(x))
    W0, W1, W2 = (w.detach() for w in model.weights)
    b0, b1, b2, b3 = (b.detach() for b in model.biases)
    target = x.flatten(1)
    v, h1, h2, h3 = target, torch.zeros(BATCH, 7), torch.zeros(BATCH, 6), torch.zeros(BATCH, 5)
    costs = []
    for _ in range(3):
        h1 = torch.tanh(v @ W0 + h2 @ W1.T + b1)
        h3 = torch.tanh(h2 @ W2 + b3)
        logits = h1 @ W0.T + b0
        v = torch.sigmoid(logits)
        h2 = torch.tanh(h1 @ W1 + h3 @ W2.T + b2)
        costs.append(bce(logits, target))
    expected = torch.stack(costs)  # (3, B)
    torch.testing.assert_close(model.walkback_costs(x).detach(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["loss"].detach(), expected.sum(0).mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["reconstruction"].detach(), expected[0].mean(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms["last_reconstruction"].detach(), expected[-1].mean(), rtol=1e-5, atol=1e-4)


def test_noisy_walkback_matches_a_hand_unrolled_chain_drawing_from_the_same_generator():
    """One hidden layer, all noise on: x~ = salt-and-pepper(x); then per step
    h = tanh(x~ W + b_1 + s eps) + s eps', P = sigmoid(h W^T + b_0), x ~ Bernoulli(P), x~ = S&P(x);
    the cost is BCE(x, P) of the clean x at every step. Draws in that order from one generator."""
    level, std = 0.3, 0.8
    model = make_gsn(hidden=(8,), walkbacks=3, input_noise_level=level, hidden_noise_std=std,
                     noiseless_first_hidden=False)
    x = make_images()
    target = x.flatten(1)
    costs = model.walkback_costs(x, generator=torch.Generator().manual_seed(6)).detach()
    generator = torch.Generator().manual_seed(6)

    def uniform(*shape):
        return torch.rand(*shape, generator=generator)

    def salt_and_pepper(v):
        hit, salt = uniform(BATCH, PIXELS) < level, (uniform(BATCH, PIXELS) < 0.5).float()
        return torch.where(hit, salt, v)

    W, b0, b1 = model.weights[0].detach(), model.biases[0].detach(), model.biases[1].detach()
    v, expected = salt_and_pepper(target), []
    for _ in range(3):
        pre = v @ W + b1 + std * torch.randn(BATCH, 8, generator=generator)
        h = torch.tanh(pre) + std * torch.randn(BATCH, 8, generator=generator)
        logits = h @ W.T + b0
        expected.append(bce(logits, target))
        v = salt_and_pepper((uniform(BATCH, PIXELS) < torch.sigmoid(logits)).float())
    torch.testing.assert_close(costs, torch.stack(expected), rtol=1e-5, atol=1e-4)


def test_one_walkback_is_the_first_term_of_three_and_each_step_reconstructs_once(monkeypatch):
    """With the same noise, walkbacks=1 is the first of walkbacks=3's terms, and the loss has exactly
    `walkbacks` BCE terms: one visible reconstruction per step."""
    one, three = make_gsn(walkbacks=1), make_gsn(walkbacks=3)
    assert same_tensors(one.state_dict(), three.state_dict())
    x = make_images()
    torch.manual_seed(3)
    single = one.loss(Batch(x))
    calls = []
    original = GSN._update_visible
    monkeypatch.setattr(GSN, "_update_visible", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(3)
    triple = three.loss(Batch(x))
    assert len(calls) == 3
    torch.manual_seed(3)
    costs = three.walkback_costs(x)
    assert costs.shape == (3, BATCH)
    torch.testing.assert_close(costs[0].mean(), single["loss"])
    torch.testing.assert_close(triple["loss"], costs.sum(0).mean())
    assert triple["loss"] > 2 * single["loss"]  # three positive terms of similar size, not one


def test_finite_loss_and_a_gradient_step_changes_every_weight_and_lowers_the_loss():
    model = make_gsn()
    batch = Batch(make_images())
    loss, changed = adam_step(model, batch, lr=1e-2, seed=5)
    assert torch.isfinite(loss)
    assert changed == {"weights.0", "weights.1", "biases.0", "biases.1", "biases.2"}  # pixel_means: fitted, not trained
    torch.manual_seed(5)  # the same noise: the step went downhill
    assert model.loss(batch)["loss"] < loss


def test_gradients_reach_the_top_layer_only_through_later_walkback_steps():
    """x is reconstructed from h^1 alone; W_1 (h^1-h^2) enters the cost from the second step on."""
    for walkbacks, reaches_top in [(1, False), (2, True)]:
        model = make_gsn(walkbacks=walkbacks)
        torch.manual_seed(0)
        model.loss(Batch(make_images()))["loss"].backward()
        top = model.weights[1].grad
        assert (top is not None and top.abs().sum() > 0) == reaches_top, walkbacks
        assert model.weights[0].grad.abs().sum() > 0


# -- noise -------------------------------------------------------------------------------------------

def losses_under_two_seeds(model):
    batch = Batch(make_images())
    values = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        values.append(model.loss(batch)["loss"])
    return values


@pytest.mark.parametrize("noiseless_first_hidden", [True, False])
def test_without_noise_the_forward_pass_is_deterministic_and_hidden_noise_makes_it_random(noiseless_first_hidden):
    quiet = {"input_noise_level": 0.0, "sample_visible": False, "noiseless_first_hidden": noiseless_first_hidden}
    first, second = losses_under_two_seeds(make_gsn(hidden_noise_std=0.0, **quiet))
    assert torch.equal(first, second)
    first, second = losses_under_two_seeds(make_gsn(hidden_noise_std=0.5, **quiet))
    assert not torch.allclose(first, second)


def test_noiseless_first_hidden_keeps_h1_clean():
    """One hidden layer, one step: with noiseless_first_hidden no noise can enter; without, it does."""
    quiet = {"input_noise_level": 0.0, "hidden_noise_std": 2.0, "walkbacks": 1}
    first, second = losses_under_two_seeds(make_gsn(hidden=(8,), noiseless_first_hidden=True, **quiet))
    assert torch.equal(first, second)
    first, second = losses_under_two_seeds(make_gsn(hidden=(8,), noiseless_first_hidden=False, **quiet))
    assert not torch.allclose(first, second)


def test_hidden_noise_is_added_before_and_after_the_activation():
    """h^2 <- tanh(h^1 W_1 + b_2 + s eps_1) + s eps_2, the two draws in that order."""
    std = 0.7
    model = make_gsn(hidden_noise_std=std)
    h1 = torch.randn(BATCH, 8)
    layers = [torch.zeros(BATCH, PIXELS), h1, torch.zeros(BATCH, 6)]
    with torch.no_grad():
        model._update_hidden(layers, 2, torch.Generator().manual_seed(4))
        generator = torch.Generator().manual_seed(4)
        pre_noise, post_noise = torch.randn(BATCH, 6, generator=generator), torch.randn(BATCH, 6, generator=generator)
        expected = torch.tanh(h1 @ model.weights[1] + model.biases[2] + std * pre_noise) + std * post_noise
    torch.testing.assert_close(layers[2], expected)
    assert layers[2].abs().max() > 1  # the post-activation noise leaves tanh's range


def test_salt_and_pepper_replaces_a_fraction_of_pixels_by_zeros_and_ones():
    model = make_gsn(input_noise_level=0.4)
    x = torch.full((400, 500), 0.5)
    corrupted = model.corrupt(x, torch.Generator().manual_seed(0))
    hit = corrupted != 0.5
    assert abs(hit.float().mean().item() - 0.4) < 0.005
    assert set(corrupted[hit].unique().tolist()) == {0.0, 1.0}
    assert abs(corrupted[hit].mean().item() - 0.5) < 0.01
    again = model.corrupt(x, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, again)


def test_masking_and_gaussian_input_noise():
    x = torch.full((400, 500), 0.5)
    masked = make_gsn(input_noise="masking", input_noise_level=0.25).corrupt(x, torch.Generator().manual_seed(0))
    assert abs((masked == 0).float().mean().item() - 0.25) < 0.005
    assert set(masked.unique().tolist()) == {0.0, 0.5}
    noisy = make_gsn(input_noise="gaussian", input_noise_level=0.3).corrupt(x, torch.Generator().manual_seed(0))
    assert abs((noisy - x).std().item() - 0.3) < 0.005 and abs((noisy - x).mean().item()) < 0.005


# -- sampling ---------------------------------------------------------------------------------------

def test_sample_shape_range_seeding_and_the_global_rng():
    model = make_gsn()
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    torch.manual_seed(0)
    samples = model.sample(7, generator=torch.Generator().manual_seed(0), burn_in=5)
    assert torch.equal(torch.rand(3), expected_global)  # sampling drew only from the given generator
    assert samples.shape == (7, *IMAGE_SHAPE) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, model.sample(7, generator=torch.Generator().manual_seed(0), burn_in=5))
    assert not torch.allclose(samples, model.sample(7, generator=torch.Generator().manual_seed(1), burn_in=5))
    # sample() is the chain's state after burn_in steps
    chain = model.sample_chain(7, 1, generator=torch.Generator().manual_seed(0), burn_in=5)
    assert torch.equal(samples, chain[0])
    drawn = model.sample(7, generator=torch.Generator().manual_seed(0), mean=False)
    assert set(drawn.unique().tolist()) <= {0.0, 1.0}


def test_sample_chain_shape_determinism_start_and_movement():
    model = make_gsn()
    chain = model.sample_chain(3, 12, generator=torch.Generator().manual_seed(2), burn_in=10)
    assert chain.shape == (12, 3, *IMAGE_SHAPE)
    assert chain.min() >= 0 and chain.max() <= 1
    assert torch.equal(chain, model.sample_chain(3, 12, generator=torch.Generator().manual_seed(2), burn_in=10))
    assert not torch.equal(chain, model.sample_chain(3, 12, generator=torch.Generator().manual_seed(3), burn_in=10))
    moves = (chain[1:] - chain[:-1]).flatten(2).abs().amax(-1)  # (11, 3) largest pixel change per step
    assert (moves > 1e-3).all()  # every chain moves at every step
    start = make_images(3)
    from_start = model.sample_chain(3, 4, generator=torch.Generator().manual_seed(2), start=start)
    assert from_start.shape == (4, 3, *IMAGE_SHAPE)
    with pytest.raises(ValueError, match="3 images for 2 chains"):
        model.sample_chain(2, 4, start=start)


def test_chains_start_from_the_fitted_pixel_means():
    """after_training fits the marginal pixel means (a buffer, saved with the weights); chains start
    from Bernoulli draws of them, here all-ones and all-zeros pixels."""
    model = make_gsn(**NOISELESS)
    images = torch.zeros(6, *IMAGE_SHAPE)
    images[:, :, :2] = 1.0  # top half on
    model.after_training(Split(images))
    torch.testing.assert_close(model.pixel_means, images[0].flatten())
    assert "pixel_means" in model.state_dict()
    start = model._chain_start(4, torch.Generator().manual_seed(0))
    assert torch.equal(start, images[:4].flatten(1))
    # without noise the first state is one deterministic pass from that start
    first = model.sample_chain(4, 1, generator=torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(first, model.reconstruct(images[:4]))


def test_fit_clusters_recovers_separated_groups_and_their_shares():
    """k-means of three groups of images far apart finds each group's mean and its share of the images."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.1] * 8, [0.9] * 8, [0.1] * 4 + [0.9] * 4])  # (3, 8)
    counts = (30, 50, 20)
    images = torch.cat([centre + 0.02 * torch.randn(count, 8, generator=generator)
                        for centre, count in zip(centres, counts, strict=True)])  # (100, 8)
    means, weights = fit_clusters(images, 3)
    # the fit's cluster order is arbitrary: sort by the first and last pixel
    found = sorted(zip(means.tolist(), weights.tolist(), strict=True), key=lambda pair: (pair[0][0], pair[0][-1]))
    expected = [(images[80:].mean(0), 0.2), (images[:30].mean(0), 0.3), (images[30:80].mean(0), 0.5)]
    for (mean, weight), (true_mean, true_weight) in zip(found, expected, strict=True):
        torch.testing.assert_close(torch.tensor(mean, dtype=torch.float32), true_mean, atol=1e-6, rtol=0)
        assert weight == pytest.approx(true_weight)
    with pytest.raises(VaelabError, match="at least 4 training images, got 3"):
        fit_clusters(images[:3], 4)


def test_chains_start_from_the_fitted_clusters_in_proportion_to_their_sizes():
    """chain_init=clusters: after_training fits k-means (saved buffers); a chain starts from a
    Bernoulli draw of one centroid, chosen with its cluster's share of the training images."""
    model = make_gsn(chain_init="clusters", chain_init_clusters=2, **NOISELESS)
    top, bottom = torch.zeros(*IMAGE_SHAPE), torch.zeros(*IMAGE_SHAPE)
    top[:, :2], bottom[:, 2:] = 1.0, 1.0
    images = torch.stack([top] * 3 + [bottom])  # the top half on in three images of four
    model.after_training(Split(images))
    assert {"cluster_means", "cluster_weights"} <= set(model.state_dict())
    starts = model._chain_start(4000, torch.Generator().manual_seed(0))  # (4000, 16)
    is_top = (starts == top.flatten()).all(1)
    assert ((starts == bottom.flatten()).all(1) | is_top).all()  # each start is one centroid, drawn exactly
    share = is_top.double().mean().item()
    assert abs(share - 0.75) < 3 * (0.75 * 0.25 / 4000) ** 0.5
    assert "cluster_means" not in make_gsn().state_dict()  # only this start fits them
    with pytest.raises(ConfigError, match="chain_init_clusters"):
        make_gsn(chain_init="clusters", chain_init_clusters=0)


def test_reconstruct_is_one_pass_from_the_corrupted_input():
    model = make_gsn(**NOISELESS)
    x = make_images()
    with torch.no_grad():
        h1 = torch.tanh(x.flatten(1) @ model.weights[0] + model.biases[1])
        expected = torch.sigmoid(h1 @ model.weights[0].T + model.biases[0]).view_as(x)
    torch.testing.assert_close(model.reconstruct(x), expected)
    noisy = make_gsn().reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and noisy.min() >= 0 and noisy.max() <= 1


PATTERNS = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0],  # top row
                         [0, 0, 0, 0, 0, 0, 1, 1, 1],  # bottom row
                         [1, 0, 0, 0, 1, 0, 0, 0, 1]], dtype=torch.float32)  # diagonal


def test_a_trained_gsn_chain_visits_the_training_patterns():
    torch.manual_seed(0)
    model = GSN(GSNConfig(hidden=(16, 16), input_noise_level=0.2, hidden_noise_std=0.5), (1, 3, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = PATTERNS.repeat(10, 1).view(-1, 1, 3, 3)
    for _ in range(150):
        optimizer.zero_grad()
        model.loss(Batch(x))["loss"].backward()
        optimizer.step()
    model.after_training(Split(x))
    states = model.sample_chain(20, 40, generator=torch.Generator().manual_seed(0), burn_in=20).flatten(2)
    distance = (states.unsqueeze(2) - PATTERNS).abs().sum(-1)  # (T, n, 3) L1 distance to each pattern
    nearest, which = distance.min(-1)
    assert (nearest < 1.0).float().mean() > 0.8  # most states are within one pixel's worth of a pattern
    assert len(which[nearest < 1.0].unique()) == 3  # and the chains between them visit all three


# -- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({"hidden": ()}, "hidden"),
    ({"walkbacks": 0}, "walkbacks"),
    ({"input_noise_level": 1.5}, "input_noise_level"),
    ({"hidden_noise_std": -1.0}, "hidden_noise_std"),
    ({"sample_burn_in": -1}, "sample_burn_in"),
    ({"activation": "swish"}, "swish"),
    ({"input_noise": "dropout"}, "input_noise"),
])
def test_bad_configs_raise_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_gsn(**overrides)


def test_sigmoid_hidden_units():
    model = make_gsn(activation="sigmoid", **NOISELESS)
    layers = model.initial_layers(make_images())
    model.walkback_step(layers)
    assert layers[1].min() >= 0 and layers[1].max() <= 1


def test_training_graph_has_one_cost_per_walkback_step_and_the_noise_nodes():
    graph = GSN.training_graph(GSNConfig(hidden=(8, 6), walkbacks=3))
    kinds = [node.kind for node in graph.nodes]
    assert kinds.count("cost") == 3 + 1  # three BCE terms and their sum
    assert kinds.count("network") == 3 and kinds.count("noise") == 3 + 3  # input and hidden noise per step
    assert ("net1", "net2") in graph.edges and ("p1", "x1") in graph.edges  # hidden state and sample carried
    quiet = GSN.training_graph(GSNConfig(hidden=(8,), noiseless_first_hidden=True))  # no hidden noise left
    assert [node.kind for node in quiet.nodes].count("noise") == 2


# -- the command line -----------------------------------------------------------------------------------

TINY = ["hidden=[12,8]", "batch_size=8", "sample_burn_in=5", "tensorboard=false", "binarize=dynamic"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz")


def train(run_dir, data, *args):
    return main(["train", "gsn", *TINY, "--data", str(data), "--out", str(run_dir), *args])


def test_cli_train_sample_reconstruct_and_load_round_trip(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2") == 0
    model = vaelab.load(run)
    assert isinstance(model, GSN) and model.config.hidden == (12, 8)
    assert not torch.allclose(model.pixel_means, torch.full((36,), 0.5))  # fitted after training
    reloaded = vaelab.load(run)
    first = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, reloaded.sample(6, generator=torch.Generator().manual_seed(0)))
    assert main(["sample", str(run), "-n", "6", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 1, 6, 6)
    assert main(["reconstruct", str(run), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file()


def test_cli_chain_init_clusters_round_trips_through_the_run_directory(tmp_path, data):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1", "chain_init=clusters", "chain_init_clusters=3") == 0
    model, reloaded = vaelab.load(run), vaelab.load(run)
    assert model.cluster_means.shape == (3, 36) and model.cluster_weights.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(model.cluster_means, torch.full((3, 36), 0.5))  # fitted after training
    assert torch.equal(model.sample(6, generator=torch.Generator().manual_seed(0)),
                       reloaded.sample(6, generator=torch.Generator().manual_seed(0)))


def test_cli_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, data):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert train(whole, data, "--epochs", "3", "--max-steps", "13") == 0
    assert train(resumed, data, "--epochs", "3", "--max-steps", "7") == 0
    torch.manual_seed(987654321)  # a resumed run starts in a fresh process: scramble the global RNG
    torch.rand(100)
    assert main(["train", "gsn", "--out", str(resumed), "--resume", "--max-steps", "13"]) == 0
    assert same_tensors(read_tensors(whole / "model.safetensors"), read_tensors(resumed / "model.safetensors"))
