"""Frechet distance, precision/recall and class consistency against closed forms and hand counts."""

import itertools
import math
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

from vaelab.data.datasets import ImageDataset, Split
from vaelab.errors import VaelabError
from vaelab.eval.classifier import ClassifierArchitecture, FeatureClassifier
from vaelab.eval.sample_quality import (
    class_consistency,
    frechet_distance,
    frechet_estimate,
    gaussian_frechet_distance,
    inception_fid,
    knn_radii,
    mean_pairwise_distance,
    precision_recall,
    sample_quality,
)

# -- helpers -------------------------------------------------------------------------------------


def with_exact_moments(mean, cov, n=500, seed=0) -> torch.Tensor:
    """n points (n, F) whose sample mean is exactly `mean` and unbiased covariance exactly `cov`."""
    mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(dim=0)
    values, vectors = torch.linalg.eigh(z.T @ z / (n - 1))
    white = z @ vectors @ torch.diag(values.rsqrt()) @ vectors.T  # sample covariance exactly I
    return mean + white @ torch.linalg.cholesky(cov).T


def random_spd(dim, seed, scale=1.0) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return scale * (a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64))


def two_by_two_closed_form(mu_a, s_a, mu_b, s_b) -> float:
    """For 2x2 matrices: Tr((S_a S_b)^{1/2}) = sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b)), since the
    two eigenvalues l1, l2 of S_a S_b are positive and (sqrt l1 + sqrt l2)^2 = l1 + l2 + 2 sqrt(l1 l2)."""
    tr_sqrt = math.sqrt(np.trace(s_a @ s_b) + 2 * math.sqrt(np.linalg.det(s_a) * np.linalg.det(s_b)))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


MU_A, MU_B = np.array([0.0, 1.0]), np.array([1.5, -0.5])
S_A = np.array([[2.0, 0.8], [0.8, 1.0]])
S_B = np.array([[0.5, -0.3], [-0.3, 1.5]])  # does not commute with S_A


# -- Frechet distance ----------------------------------------------------------------------------


def test_identical_feature_sets_are_at_distance_zero():
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, x[torch.randperm(1000)]) == pytest.approx(0.0, abs=1e-6)  # order is irrelevant


def test_exact_moments_match_the_closed_forms():
    # diagonal covariances: ||dmu||^2 + sum (sqrt a_i - sqrt b_i)^2
    a_diag, b_diag = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.25])
    mu_a, mu_b = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a_diag) - np.sqrt(b_diag)) ** 2)  # 5 + 1 + 4 + 0
    assert expected == 10.0
    fa, fb = with_exact_moments(mu_a, np.diag(a_diag), seed=1), with_exact_moments(mu_b, np.diag(b_diag), seed=2)
    assert frechet_distance(fa, fb) == pytest.approx(expected, abs=1e-6)
    # non-commuting 2x2 covariances
    expected = two_by_two_closed_form(MU_A, S_A, MU_B, S_B)
    fa, fb = with_exact_moments(MU_A, S_A, seed=3), with_exact_moments(MU_B, S_B, n=77, seed=4)
    assert frechet_distance(fa, fb) == pytest.approx(expected, abs=1e-6)
    assert gaussian_frechet_distance(MU_A, S_A, MU_B, S_B) == pytest.approx(expected, abs=1e-9)
    # S_b = c S_a: Tr((1 + c) S_a - 2 sqrt(c) S_a) = (1 - sqrt c)^2 Tr S_a
    s = random_spd(6, 5)
    fa, fb = with_exact_moments(np.zeros(6), s, seed=6), with_exact_moments(np.zeros(6), 4 * s, seed=7)
    assert frechet_distance(fa, fb) == pytest.approx(s.trace().item(), abs=1e-6)


def test_matches_scipy_sqrtm_in_ten_dimensions():
    s_a, s_b = random_spd(10, 8).numpy(), random_spd(10, 9, scale=3.0).numpy()
    mu_a, mu_b = np.arange(10) / 10, np.ones(10)
    root = scipy.linalg.sqrtm(s_a @ s_b)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * root.real)
    fa, fb = with_exact_moments(mu_a, s_a, seed=10), with_exact_moments(mu_b, s_b, seed=11)
    assert frechet_distance(fa, fb) == pytest.approx(expected, abs=1e-6)
    # a singular covariance (fewer points than dimensions) gives the low-rank closed form
    assert frechet_distance(fa[:5], fb[:5]) == pytest.approx(low_rank_closed_form(fa[:5], fb[:5]), abs=1e-6)


def low_rank_closed_form(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance of two feature sets without any matrix square root: with S_a = A A^T and
    S_b = B B^T (A = centred a^T / sqrt(N_a - 1)), Tr((S_a S_b)^{1/2}) is the sum of the singular
    values of A^T B (the eigenvalues of S_a S_b are those of A^T B B^T A), exact at any rank."""
    a, b = a.double().numpy(), b.double().numpy()
    root_a = (a - a.mean(0)).T / math.sqrt(len(a) - 1)  # (F, N_a)
    root_b = (b - b.mean(0)).T / math.sqrt(len(b) - 1)
    trace_sqrt = np.linalg.svd(root_a.T @ root_b, compute_uv=False).sum()
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum(root_a**2) + np.sum(root_b**2) - 2 * trace_sqrt)


def test_a_translation_adds_exactly_the_squared_shift():
    """d(x, x + c) = ||c||^2: equal covariances cancel. Unlike d(x, x) = 0, this value lies far from
    the clamp at 0, so an error in the covariance terms of either sign shows; ||c||^2 < Tr S here, so
    even a dropped trace term (which the clamp would turn into 0) is caught."""
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(20), dtype=torch.float64) * 2 + 1
    c = torch.tensor([0.5, -1.0, 0.0, 2.0, -0.25, 0.75], dtype=torch.float64)
    shift = (c**2).sum().item()  # 5.875
    assert shift < torch.cov(x.T).trace().item()
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x, x + c) == pytest.approx(shift, abs=1e-9)
    assert frechet_distance(x - c, x) == pytest.approx(shift, abs=1e-9)
    assert frechet_distance(x[:4], x[:4] + c) == pytest.approx(shift, abs=1e-6)  # rank 3 of 6
    s = random_spd(6, 21)
    assert gaussian_frechet_distance(np.ones(6), s, np.ones(6) + c.numpy(), s) == pytest.approx(shift, abs=1e-9)
    assert gaussian_frechet_distance(np.ones(6), s, np.ones(6), s) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_have_the_closed_form_exactly():
    # ||dmu||^2 + sum_i (sqrt a_i - sqrt b_i)^2 for diagonal covariances
    a, b = np.array([4.0, 1.0, 0.25, 2.0]), np.array([1.0, 9.0, 0.25, 0.5])
    mu_a, mu_b = np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 5.0, 0.5])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5.25 + 1 + 4 + 0 + 0.5
    assert expected == pytest.approx(10.75, abs=1e-12)
    assert gaussian_frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b)) == pytest.approx(expected, abs=1e-9)
    assert gaussian_frechet_distance(mu_a, np.diag(b), mu_b, np.diag(a)) == pytest.approx(expected, abs=1e-9)
    # equal means: only the covariance term, (1 - sqrt 4)^2 Tr S = Tr S for S_b = 4 S_a
    assert gaussian_frechet_distance(mu_a, np.diag(a), mu_a, np.diag(4 * a)) == pytest.approx(a.sum(), abs=1e-9)


def test_large_gaussian_samples_approach_the_closed_form_and_the_bootstrap_spread_is_right():
    expected = two_by_two_closed_form(MU_A, S_A, MU_B, S_B)
    la, lb = np.linalg.cholesky(S_A), np.linalg.cholesky(S_B)
    generator = torch.Generator().manual_seed(0)

    def draw(mu, chol, n):
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return torch.as_tensor(mu) + noise @ torch.as_tensor(chol).T

    big = frechet_estimate(draw(MU_A, la, 100_000), draw(MU_B, lb, 100_000), bootstrap=20)
    assert big.value == pytest.approx(expected, abs=4 * big.stderr + 1e-3)
    assert 0 < big.stderr < 0.02
    assert big.settings == {"num_model_samples": 100_000, "num_reference": 100_000, "feature_dim": 2,
                            "bootstrap": 20, "seed": 0}
    # at n = 2000, the bootstrap stderr matches the spread of independent repeats
    repeats = torch.tensor([frechet_distance(draw(MU_A, la, 2000), draw(MU_B, lb, 2000)) for _ in range(40)])
    one = frechet_estimate(draw(MU_A, la, 2000), draw(MU_B, lb, 2000), bootstrap=100, seed=1)
    assert one.stderr == pytest.approx(repeats.std().item(), rel=0.35)
    assert repeats.mean().item() == pytest.approx(expected, abs=3 * repeats.std().item() / math.sqrt(40) + 2e-3)


def test_bootstrap_is_seeded():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randn(300, 4, generator=torch.Generator().manual_seed(1)) + 0.5
    assert frechet_estimate(x, y, seed=3).stderr == frechet_estimate(x, y, seed=3).stderr
    assert frechet_estimate(x, y, seed=3).stderr != frechet_estimate(x, y, seed=4).stderr
    assert math.isnan(frechet_estimate(x, y, bootstrap=0).stderr)


# -- precision and recall ------------------------------------------------------------------------


def column(values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_precision_recall_by_hand_in_one_dimension():
    real = column([0.0, 1.0, 3.0, 7.0])  # k=1 radii 1, 1, 2, 4: the real manifold is [-1, 11]
    generated = column([0.25, 0.75, 6.5, 7.25, 20.0, 20.5])  # radii .5 .5 .75 .75 .5 .5
    assert knn_radii(real, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(real, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]
    result = precision_recall(generated, real, k=1)
    assert result["precision"].value == pytest.approx(4 / 6)  # 20 and 20.5 are outside [-1, 11]
    assert result["recall"].value == pytest.approx(3 / 4)  # 3 is in no generated ball; 0, 1, 7 are
    assert result["precision"].stderr == pytest.approx(math.sqrt(4 / 6 * 2 / 6 / 6))
    assert result["recall"].stderr == pytest.approx(math.sqrt(3 / 4 * 1 / 4 / 4))
    assert result["recall"].settings == {"k": 1, "num_generated": 6, "num_real": 4, "feature_dim": 1}
    # a point exactly on a ball's boundary counts as inside
    on_boundary = precision_recall(column([2.0, 1.5, 2.5]), column([0.0, 1.0]), k=1)  # real manifold [-1, 2]
    assert on_boundary["precision"].value == pytest.approx(2 / 3)


def test_identical_and_far_apart_sets():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    same = precision_recall(x, x.clone())
    assert same["precision"].value == 1.0 and same["recall"].value == 1.0
    assert same["precision"].stderr == 0.0
    far = precision_recall(x + 1000.0, x)
    assert far["precision"].value == 0.0 and far["recall"].value == 0.0


def modes(count, per_mode, seed):
    """Unit Gaussian clusters around the first `count` of 10 points spaced on a circle of radius 100
    in the plane (far apart: neighbouring centres are 62 apart)."""
    angles = 2 * math.pi * torch.arange(count, dtype=torch.float64) / 10
    centres = 100 * torch.stack([angles.cos(), angles.sin()], dim=1).repeat_interleave(per_mode, dim=0)
    noise = torch.randn(count * per_mode, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return centres + noise


def test_covering_half_of_the_modes():
    real = modes(10, 100, seed=0)
    # exactly: the generated set is the real points of the first five modes
    exact = precision_recall(real[:500], real)
    assert exact["precision"].value == 1.0 and exact["recall"].value == 0.5
    # statistically: fresh draws from the first five modes (the k-NN balls miss a few tail points)
    drawn = precision_recall(modes(5, 200, seed=1), real)
    assert drawn["precision"].value > 0.93
    assert 0.45 < drawn["recall"].value <= 0.5  # never more than the covered half


def test_chunking_and_a_brute_force_check():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(90, 3, generator=generator, dtype=torch.float64)
    generated = torch.randn(70, 3, generator=generator, dtype=torch.float64) * 0.7 + 1.5
    k = 3
    d_rr = np.linalg.norm(real[:, None].numpy() - real[None].numpy(), axis=2)
    d_gg = np.linalg.norm(generated[:, None].numpy() - generated[None].numpy(), axis=2)
    d_gr = np.linalg.norm(generated[:, None].numpy() - real[None].numpy(), axis=2)
    r_real, r_gen = np.sort(d_rr, axis=1)[:, k], np.sort(d_gg, axis=1)[:, k]
    precision = np.mean([(d_gr[i] <= r_real).any() for i in range(70)])
    recall = np.mean([(d_gr[:, j] <= r_gen).any() for j in range(90)])
    assert 0.1 < precision < 0.99 and 0.1 < recall < 0.99  # neither trivial
    for max_elements in (1, 50, 1 << 20):
        result = precision_recall(generated, real, k=k, max_elements=max_elements)
        assert result["precision"].value == pytest.approx(precision)
        assert result["recall"].value == pytest.approx(recall)


def test_k_must_leave_neighbours():
    with pytest.raises(VaelabError, match="k must be"):
        precision_recall(torch.randn(3, 2), torch.randn(3, 2), k=3)


# -- class consistency ---------------------------------------------------------------------------


class BrightnessClassifier(torch.nn.Module):
    """Hand-built: class 1 when the mean pixel is above 0.5, else class 0; features = the mean pixel
    and the fraction of pixels above 0.5."""

    def features(self, x, batch_size=1000):
        flat = x.flatten(start_dim=1)
        return torch.stack([flat.mean(dim=1), (flat > 0.5).float().mean(dim=1)], dim=1)

    def logits(self, x, batch_size=1000):
        brightness = x.flatten(start_dim=1).mean(dim=1)
        return torch.stack([0.5 - brightness, brightness - 0.5], dim=1)


def test_class_consistency_counts_matches():
    images = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.95, 0.05]).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    requested = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1, 1, 0])  # wrong at 5, 6, 7
    estimate = class_consistency(BrightnessClassifier(), images, requested)
    assert estimate.value == pytest.approx(0.7)
    assert estimate.stderr == pytest.approx(math.sqrt(0.7 * 0.3 / 10))
    with pytest.raises(VaelabError, match="requested labels"):
        class_consistency(BrightnessClassifier(), images, requested[:3])


# -- sample_quality on stand-in models -----------------------------------------------------------


class ReplayModel(torch.nn.Module):
    """Samples = the given images in order (a perfect memoriser); a conditional one returns a bright
    image for class 1 and a dark one for class 0, and remembers the labels it was asked for."""

    def __init__(self, images, conditional=False, num_classes=None, flip_every=0):
        super().__init__()
        self.register_buffer("images", images)
        self.conditional, self.num_classes, self.flip_every = conditional, num_classes, flip_every
        self.position, self.labels_seen, self.generators = 0, [], []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.weight.device

    def sample(self, num_samples, generator=None, label=None, **kwargs):
        self.generators.append(generator)
        if not self.conditional:
            out = self.images[self.position:self.position + num_samples]
            self.position += num_samples
            return out
        self.labels_seen.append(label.clone())
        bright = label.clone()
        if self.flip_every:
            bright[::self.flip_every] = 1 - bright[::self.flip_every]
        noise = torch.rand(num_samples, 1, 2, 2, generator=generator) * 0.2
        return bright.view(-1, 1, 1, 1).float() * 0.7 + noise


def brightness_dataset(n=60):
    images = torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = (images.flatten(start_dim=1).mean(dim=1) > 0.5).long()
    return ImageDataset("bright", Split(images[:n // 2], labels[:n // 2]), Split(images[n // 2:], labels[n // 2:]))


def test_a_memorising_model_scores_perfectly():
    dataset = brightness_dataset()
    model = ReplayModel(dataset.test.images)  # num_samples == len(test): the whole split, in order
    results = sample_quality(model, dataset, "test", BrightnessClassifier(), num_samples=30, batch_size=7, bootstrap=5)
    assert set(results) == {"frechet_distance", "precision", "recall", "mean_pairwise_distance"}
    assert results["frechet_distance"].value == pytest.approx(0.0, abs=1e-9)
    assert results["mean_pairwise_distance"].value == pytest.approx(mean_pairwise_distance(dataset.test.images).value)
    assert results["precision"].value == 1.0 and results["recall"].value == 1.0
    settings = results["precision"].settings
    assert settings["num_samples"] == 30 and settings["batch_size"] == 7 and settings["split"] == "test"
    assert settings["k"] == 3 and settings["seed"] == 0
    assert [g.initial_seed() for g in model.generators] == [0] * 5  # one seeded generator, 5 batches
    # asking for more samples than the split has uses the whole split, and says so
    model = ReplayModel(dataset.test.images)
    results = sample_quality(model, dataset, dataset.test, BrightnessClassifier(), num_samples=1000, bootstrap=0)
    assert results["recall"].settings["num_samples"] == 30
    assert results["recall"].settings["num_samples_requested"] == 1000
    assert results["recall"].value == 1.0


def test_conditional_models_get_balanced_classes_and_class_consistency():
    dataset = brightness_dataset()
    model = ReplayModel(dataset.test.images, conditional=True, num_classes=2)
    results = sample_quality(model, dataset, "test", BrightnessClassifier(), num_samples=30, batch_size=8, bootstrap=0)
    requested = torch.cat(model.labels_seen)
    assert requested.bincount().tolist() == [15, 15]
    assert results["class_consistency"].value == 1.0
    flipping = ReplayModel(dataset.test.images, conditional=True, num_classes=2, flip_every=2)
    results = sample_quality(flipping, dataset, "test", BrightnessClassifier(), num_samples=30, batch_size=10,
                             bootstrap=0)
    # every other sample in each batch of 10 is drawn from the wrong class: 15 of 30
    assert results["class_consistency"].value == 0.5
    assert results["class_consistency"].stderr == pytest.approx(math.sqrt(0.25 / 30))
    assert results["class_consistency"].settings["num_samples"] == 30
    assert results["frechet_distance"].settings["seed"] == 0  # the caller's seed, not the bootstrap's derived one
    three_classes = FeatureClassifier(ClassifierArchitecture((1, 2, 2), num_classes=3))
    with pytest.raises(VaelabError, match="2 classes but the classifier 3"):
        sample_quality(flipping, dataset, "test", three_classes, num_samples=30)


def test_a_bad_split_name_is_refused():
    dataset = brightness_dataset()
    with pytest.raises(VaelabError, match="split"):
        sample_quality(ReplayModel(dataset.test.images), dataset, "val", BrightnessClassifier())


# -- the Inception FID is optional ---------------------------------------------------------------


def test_inception_fid_without_torch_fidelity(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails as if not installed
    with pytest.raises(VaelabError, match="torch-fidelity, which is not installed"):
        inception_fid(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8))


def fake_torch_fidelity(monkeypatch):
    """A stand-in torch_fidelity whose 'Inception' returns the mean of each RGB channel as features."""

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features, feature_extractor_weights_path=None):
            super().__init__()
            assert name == "inception-v3-compat" and features == ["2048"] and feature_extractor_weights_path

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            return (x.float().mean(dim=(2, 3)),)

    package = types.ModuleType("torch_fidelity")
    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", package)
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)


def test_inception_fid_needs_local_weights(monkeypatch, tmp_path):
    fake_torch_fidelity(monkeypatch)
    monkeypatch.delenv("VAELAB_INCEPTION_WEIGHTS", raising=False)
    a, b = torch.rand(20, 1, 4, 4), torch.rand(20, 1, 4, 4) * 0.5
    with pytest.raises(VaelabError, match="VAELAB_INCEPTION_WEIGHTS"):
        inception_fid(a, b)
    with pytest.raises(VaelabError, match="not found"):
        inception_fid(a, b, weights_path=tmp_path / "missing.pth")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    monkeypatch.setenv("VAELAB_INCEPTION_WEIGHTS", str(weights))
    estimate = inception_fid(a, b, batch_size=6, bootstrap=0)
    to_features = lambda x: ((x * 255).round().mean(dim=(2, 3))).expand(-1, 3).double()
    assert estimate.value == pytest.approx(frechet_distance(to_features(a), to_features(b)), abs=1e-9)


# -- mean pairwise distance (the collapse check) --------------------------------------------------


def test_mean_pairwise_distance_of_three_points_is_the_hand_computed_mean_and_hoeffding_stderr():
    images = torch.tensor([[0.0], [3.0], [4.0]]).view(3, 1, 1, 1)  # pairs at distances 3, 4, 1
    result = mean_pairwise_distance(images)
    assert result.value == pytest.approx(8 / 3)
    row_means = torch.tensor([7 / 2, 4 / 2, 5 / 2], dtype=torch.float64)  # each point's mean distance to the others
    assert result.stderr == pytest.approx(math.sqrt(4 * row_means.var().item() / 3))
    assert result.settings == {"num_images": 3, "space": "pixels, flattened"}


def test_mean_pairwise_distance_equals_the_mean_over_all_pairs_for_any_chunking():
    images = torch.rand(23, 1, 3, 4, generator=torch.Generator().manual_seed(1))
    flat = images.flatten(start_dim=1).double()
    pairs = [(flat[i] - flat[j]).norm().item() for i, j in itertools.combinations(range(23), 2)]
    for max_elements in (1, 50, 10**6):
        assert mean_pairwise_distance(images, max_elements=max_elements).value == pytest.approx(sum(pairs) / len(pairs))


def test_mean_pairwise_distance_stderr_matches_the_spread_over_repeated_draws():
    generator = torch.Generator().manual_seed(2)
    estimates = [mean_pairwise_distance(torch.randn(60, 5, generator=generator)) for _ in range(400)]
    spread = torch.tensor([e.value for e in estimates]).std().item()
    mean_stderr = sum(e.stderr for e in estimates) / len(estimates)
    assert mean_stderr == pytest.approx(spread, rel=0.2)


def test_mean_pairwise_distance_of_one_repeated_image_is_zero_and_needs_three_images():
    assert mean_pairwise_distance(torch.ones(5, 1, 2, 2)).value == 0.0
    with pytest.raises(VaelabError, match="at least 3 images"):
        mean_pairwise_distance(torch.ones(2, 1, 2, 2))
