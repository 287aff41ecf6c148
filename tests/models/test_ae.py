"""The plain autoencoder on tiny configs: shapes, the cost against hand-computed values, a training
step, the fitted latent density (against numpy and scikit-learn), sampling, save/load and the CLI."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture
from tiny_runs import adam_step, read_tensors, same_tensors, write_images

import vaelab
from vaelab.checkpoint import load_run_config, save_weights
from vaelab.cli import main
from vaelab.data.datasets import Split
from vaelab.data.loader import Batch
from vaelab.errors import ConfigError, VaelabError
from vaelab.experiment import load_data, training_splits
from vaelab.models import ae as ae_module
from vaelab.models.ae import AE, AEConfig
from vaelab.registry import MODELS

IMAGE_SHAPE = (1, 6, 6)
LATENT_DIM = 3
BATCH = 5
ARCHITECTURES = ("mlp", "conv", "linear")
COSTS = ("bce", "mse")
TINY = ["hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false"]


def make_ae(architecture: str = "mlp", cost: str = "bce", seed: int = 0, **overrides) -> AE:
    fields = {"hidden": (16,), "channels": (4, 8), "latent_dim": LATENT_DIM, **overrides}
    torch.manual_seed(seed)
    return AE(AEConfig(architecture=architecture, cost=cost, **fields), IMAGE_SHAPE)


def make_images(n: int = BATCH, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


def density(model: AE) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name.startswith("density_")}


# -- the network and its cost -------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("cost", COSTS)
def test_shapes_and_reconstruction_range(architecture, cost):
    model = make_ae(architecture, cost)
    x = make_images()
    h = model.encode(x)
    assert h.shape == (BATCH, LATENT_DIM)
    assert model.decode(h).shape == x.shape
    assert model.decode(h.expand(4, BATCH, LATENT_DIM)).shape == (4, *x.shape)  # leading sample dims
    reconstructions = model.reconstruct(x)
    assert reconstructions.shape == x.shape and not reconstructions.requires_grad
    assert reconstructions.min() >= 0 and reconstructions.max() <= 1
    expected = torch.sigmoid(model.decode(h)) if cost == "bce" else model.decode(h).clamp(0, 1)
    torch.testing.assert_close(reconstructions, expected)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("cost", COSTS)
def test_cost_is_summed_over_pixels_and_averaged_over_the_batch(architecture, cost):
    model = make_ae(architecture, cost)
    x = make_images()
    terms = model.loss(Batch(x))
    assert set(terms) == {"loss", "reconstruction"}
    assert terms["loss"].shape == () and torch.isfinite(terms["loss"])
    assert torch.equal(terms["loss"], terms["reconstruction"])
    with torch.no_grad():
        out = model.decoder(model.code_head(model.encoder(x))).double()  # (B, C, H, W)
        target = x.double()
        if cost == "bce":
            x_hat = torch.sigmoid(out)
            per_pixel = -(target * torch.log(x_hat) + (1 - target) * torch.log(1 - x_hat))
        else:
            per_pixel = (target - out) ** 2
        expected = per_pixel.sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(terms["loss"].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_adam_step_changes_every_part_and_lowers_the_cost(architecture):
    model = make_ae(architecture)
    batch = Batch(make_images())
    loss_before, changed = adam_step(model, batch)
    for part in ("code_head", "decoder", *(("encoder",) if architecture != "linear" else ())):
        assert any(name.startswith(part + ".") for name in changed), (part, changed)
    assert not any(name.startswith("density_") for name in changed)  # buffers are not trained
    assert model.loss(batch)["loss"] < loss_before


# -- the fitted latent density --------------------------------------------------------------------

def test_density_buffers_are_shaped_from_the_config_before_fitting():
    gaussian, mixture = make_ae(), make_ae(latent_density="gmm", gmm_components=4)
    assert gaussian.density_weights.shape == (1,) and gaussian.density_means.shape == (1, LATENT_DIM)
    assert gaussian.density_scale_tril.shape == (1, LATENT_DIM, LATENT_DIM)
    assert mixture.density_weights.shape == (4,) and mixture.density_means.shape == (4, LATENT_DIM)
    assert mixture.density_scale_tril.shape == (4, LATENT_DIM, LATENT_DIM)
    assert not gaussian.density_fitted
    assert {"density_weights", "density_means", "density_scale_tril", "density_fitted"} <= set(gaussian.state_dict())


@pytest.mark.parametrize("method", ["sample", "log_prior"])
def test_sampling_before_fitting_is_a_clear_error(method):
    model = make_ae()
    call = (lambda: model.sample(2)) if method == "sample" else (lambda: model.log_prior(torch.zeros(2, 3)))
    with pytest.raises(VaelabError, match="no fitted latent density.*after_training"):
        call()


def test_gaussian_density_is_numpy_mean_and_covariance_of_the_training_codes(monkeypatch):
    monkeypatch.setattr(ae_module, "ENCODE_BATCH_SIZE", 7)  # several batches, the last one partial
    model = make_ae().eval()
    images = make_images(n=30, seed=2)
    model.after_training(Split(images))
    assert model.density_fitted
    with torch.no_grad():
        codes = model.encode(images).double().numpy()  # (N, D), all at once
    mean, covariance = codes.mean(0), np.cov(codes, rowvar=False) + 1e-6 * np.eye(LATENT_DIM)
    torch.testing.assert_close(model.density_weights, torch.ones(1))
    np.testing.assert_allclose(model.density_means[0].numpy(), mean, rtol=1e-5, atol=1e-6)
    scale = model.density_scale_tril[0].double()
    assert torch.equal(scale, scale.tril()) and (scale.diagonal() > 0).all()
    np.testing.assert_allclose((scale @ scale.T).numpy(), covariance, rtol=1e-5, atol=1e-6)
    # log p(h) is that Gaussian's density
    h = torch.randn(6, LATENT_DIM, generator=torch.Generator().manual_seed(0))
    expected = multivariate_normal(mean, covariance).logpdf(h.double().numpy())
    np.testing.assert_allclose(model.log_prior(h).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_gmm_density_matches_scikit_learn():
    components = 3
    model = make_ae(latent_density="gmm", gmm_components=components).eval()
    images = make_images(n=60, seed=3)
    model.after_training(Split(images))
    with torch.no_grad():
        codes = model.encode(images).double().numpy()
    reference = GaussianMixture(components, covariance_type="full", random_state=0).fit(codes)
    np.testing.assert_allclose(model.density_weights.numpy(), reference.weights_, rtol=1e-5)
    np.testing.assert_allclose(model.density_means.numpy(), reference.means_, rtol=1e-4, atol=1e-5)
    scale = model.density_scale_tril.double()
    np.testing.assert_allclose((scale @ scale.transpose(1, 2)).numpy(), reference.covariances_,
                               rtol=1e-4, atol=1e-6)
    points = np.concatenate([codes, codes.mean(0) + 2 * codes.std(0) * np.random.default_rng(0).normal(size=(8, 3))])
    np.testing.assert_allclose(model.log_prior(torch.tensor(points, dtype=torch.float32)).numpy(),
                               reference.score_samples(points), rtol=1e-4, atol=1e-3)


def test_log_prior_is_differentiable_and_batched():
    model = make_ae(latent_density="gmm", gmm_components=2).eval()
    model.after_training(Split(make_images(n=20)))
    h = torch.zeros(4, 5, LATENT_DIM, requires_grad=True)  # (S, B, D): the AIS chains' shape
    log_p = model.log_prior(h)
    assert log_p.shape == (4, 5)
    log_p.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_too_few_codes_for_the_mixture_is_a_clear_error():
    model = make_ae(latent_density="gmm", gmm_components=10).eval()
    with pytest.raises(VaelabError, match="10-component latent mixture needs at least 10"):
        model.after_training(Split(make_images(n=6)))
    assert not model.density_fitted


# -- sampling -----------------------------------------------------------------------------------

@pytest.mark.parametrize("latent_density", ["gaussian", "gmm"])
@pytest.mark.parametrize("cost", COSTS)
def test_samples_are_seeded_images_in_the_unit_range(latent_density, cost):
    model = make_ae(cost=cost, latent_density=latent_density, gmm_components=3).eval()
    model.after_training(Split(make_images(n=30)))
    samples = model.sample(9, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (9, *IMAGE_SHAPE) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, model.sample(9, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(samples, model.sample(9, generator=torch.Generator().manual_seed(1)))
    # by hand: a component from the weights, then mu_k + L_k eps, then the decoder mean
    generator = torch.Generator().manual_seed(0)
    component = torch.multinomial(model.density_weights, 9, replacement=True, generator=generator)
    eps = torch.randn(9, LATENT_DIM, generator=generator)
    h = model.density_means[component] + torch.einsum("nij,nj->ni", model.density_scale_tril[component], eps)
    with torch.no_grad():
        torch.testing.assert_close(samples, model.decoder_mean(model.decode(h)))


def test_latent_samples_follow_the_fitted_mixture():
    model = make_ae(latent_density="gmm", gmm_components=2).eval()
    weights = np.array([0.3, 0.7])
    means = np.array([[-4.0, 0.0, 1.0], [3.0, 2.0, -1.0]])
    covariances = np.stack([np.diag([1.0, 0.5, 2.0]), [[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]]])
    model.set_latent_density(weights, means, covariances)
    h = model.sample_prior(40000, generator=torch.Generator().manual_seed(0)).double().numpy()
    first = h[:, 0] < -0.5  # the components are well apart along the first axis
    assert abs(first.mean() - 0.3) < 0.01
    for part, k in [(h[first], 0), (h[~first], 1)]:
        np.testing.assert_allclose(part.mean(0), means[k], atol=0.05)
        np.testing.assert_allclose(np.cov(part, rowvar=False), covariances[k], atol=0.06)


def test_sample_does_not_touch_the_global_rng_when_given_a_generator():
    model = make_ae().eval()
    model.after_training(Split(make_images(n=10)))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model.sample(4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.rand(3), expected)


# -- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,key", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"gmm_components": 0}, "gmm_components"),
    ({"cost": "l1"}, "cost"),
    ({"latent_density": "flow"}, "latent_density"),
    ({"architecture": "resnet"}, "architecture"),
])
def test_bad_configs_raise_config_errors(overrides, key):
    with pytest.raises(ConfigError, match=key):
        make_ae(**{"architecture": "mlp", **overrides})


def test_training_graph_has_no_noise_and_no_kl():
    graph = AE.training_graph(AEConfig(cost="mse"))
    assert set(graph.edges) == {("x", "encoder"), ("encoder", "h"), ("h", "decoder"), ("decoder", "cost"),
                                ("x", "cost")}
    assert not any(node.kind == "noise" or node.highlight for node in graph.nodes)
    assert "MSE" in {node.name: node for node in graph.nodes}["cost"].label


def test_registry_names_the_ae():
    assert MODELS["ae"] is AE and AE.config_class is AEConfig and not AE.conditional


# -- end to end through the CLI -----------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("runs") / "ae"
    assert main(["train", "ae", *TINY, "latent_density=gmm", "gmm_components=2", "lr=1e-2",
                 "--data", str(data), "--out", str(run_dir), "--epochs", "2"]) == 0
    return run_dir


def test_cli_train_fits_the_density_that_load_restores(run):
    model = vaelab.load(run)
    assert isinstance(model, AE) and model.density_fitted
    assert model.density_weights.shape == (2,)
    # the density saved is the one fitted to the final weights' codes of the training split
    run_config = load_run_config(run)
    train_split, _ = training_splits(load_data(run_config.data), run_config.data)
    refitted = copy.deepcopy(model)
    refitted.density_fitted.fill_(False)
    refitted.after_training(train_split)
    for name, value in density(refitted).items():
        torch.testing.assert_close(value, density(model)[name], rtol=1e-5, atol=1e-6)
    assert vaelab.load(run, checkpoint="best").density_fitted  # the best weights get theirs too
    again = vaelab.load(run)
    assert torch.equal(model.sample(5, generator=torch.Generator().manual_seed(3)),
                       again.sample(5, generator=torch.Generator().manual_seed(3)))


def test_cli_sample_and_reconstruct(run, tmp_path):
    out = tmp_path / "samples.npy"
    assert main(["sample", str(run), "-n", "4", "--seed", "5", "--out", str(out)]) == 0
    expected = vaelab.load(run).sample(4, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(np.load(out), expected.numpy())
    assert main(["reconstruct", str(run), "-n", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file()


def test_cli_sample_of_an_unfitted_run_is_one_error_line(run, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((run / "config.json").read_text())
    model = vaelab.load(run)
    model.density_fitted.fill_(False)
    save_weights(model, bare / "model.safetensors")
    assert main(["sample", str(bare), "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: error: this AE has no fitted latent density")


def test_resume_gives_the_weights_and_density_of_an_uninterrupted_run(data, tmp_path):
    def train(out, *budget):
        return main(["train", "ae", *TINY, "--data", str(data), "--out", str(out), *budget])

    assert train(tmp_path / "full", "--epochs", "3") == 0
    assert train(tmp_path / "part", "--epochs", "1") == 0
    torch.manual_seed(987654321)  # a real resume starts in a fresh process
    assert main(["train", "ae", "--out", str(tmp_path / "part"), "--resume", "--epochs", "3"]) == 0
    full, part = (read_tensors(tmp_path / name / "model.safetensors") for name in ("full", "part"))
    assert same_tensors(full, part)
    assert bool(full["density_fitted"])
