"""Sample quality in the feature space of a classifier trained on the same data set (see
`classifier.py`): the Frechet distance, improved precision and recall, and, for class-conditional
models, class consistency.

This is NOT the Frechet Inception Distance: the features come from a small convnet trained locally
on the data set being modelled (nothing is downloaded), so the numbers are comparable with each
other (same data set, same classifier, same number of samples) but not with published FIDs.
`inception_fid` computes the real FID when the optional torch-fidelity package and a local copy of
its Inception weights are available.

- Frechet distance (Heusel et al. 2017, eq. 6, "GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium"): the 2-Wasserstein distance between Gaussians fitted to
  the two feature sets, ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}). Biased upward for
  finite samples (the sample covariances are noisy, and the distance is never negative), roughly
  by O(feature_dim / N): only compare values computed from the same number of samples.
- Precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models", section 2): each set's manifold is the union of balls around its
  points with radius the distance to the point's k-th nearest neighbour in the set (k = 3).
  Precision = fraction of generated points inside the real manifold; recall = fraction of real
  points inside the generated manifold.
- Class consistency: the fraction of a conditional model's samples that the classifier puts in
  the requested class.
- Mean pairwise distance: the mean L2 distance between two of the samples, in pixel space (the
  collapse check: a model whose samples are a few images, or one mean image, has a much smaller one
  than the data).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.data.datasets import ImageDataset, Split
from vaelab.data.loader import derive_seed
from vaelab.errors import VaelabError
from vaelab.eval.estimate import Estimate
from vaelab.eval.sampling import draw_model_samples, requested_labels

DEFAULT_NUM_SAMPLES = 10000
DEFAULT_K = 3  # Kynkaanniemi et al. 2019, section 2 ("we use k = 3")
DEFAULT_BOOTSTRAP = 50  # bootstrap replicates for the Frechet distance's standard error
DEFAULT_MAX_ELEMENTS = 1 << 23  # pairwise distances held at once (float64: 64 MB)
INCEPTION_WEIGHTS_ENV = "VAELAB_INCEPTION_WEIGHTS"


# -- Frechet distance --------------------------------------------------------------------------


def _as_features(features: Tensor | np.ndarray, name: str) -> Tensor:
    """(N, F) float64 CPU tensor, or VaelabError."""
    tensor = torch.as_tensor(features).detach().cpu().to(torch.float64)
    if tensor.ndim != 2 or len(tensor) < 2:
        raise VaelabError(f"{name} must be (N, F) with N >= 2 feature vectors, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise VaelabError(f"{name} contain NaN or infinity")
    return tensor


def _mean_and_covariance(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sample mean and unbiased covariance (divisor N - 1) of x (N, F) float64."""
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric square root of a symmetric PSD matrix (eigenvalues below 0 from rounding -> 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _trace_sqrt_product(cov_a: Tensor, cov_b: Tensor) -> Tensor:
    """Tr((S_a S_b)^{1/2}) = Tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}): S_a S_b is similar to the symmetric
    PSD matrix S_a^{1/2} S_b S_a^{1/2}, so both have the same (real, non-negative) eigenvalues and
    no complex square root (scipy.linalg.sqrtm's tiny imaginary parts) ever appears."""
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()


def gaussian_frechet_distance(mean_a: Tensor | np.ndarray, cov_a: Tensor | np.ndarray,
                              mean_b: Tensor | np.ndarray, cov_b: Tensor | np.ndarray) -> float:
    """The Frechet (2-Wasserstein squared) distance between N(mean_a, cov_a) and N(mean_b, cov_b),
    in float64: ||mean_a - mean_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^{1/2}), never negative."""
    mean_a, mean_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mean_a, mean_b))
    cov_a, cov_b = (torch.as_tensor(c, dtype=torch.float64) for c in (cov_a, cov_b))
    if cov_a.shape != cov_b.shape or cov_a.shape != (len(mean_a), len(mean_a)) or mean_a.shape != mean_b.shape:
        raise VaelabError(f"means {tuple(mean_a.shape)}, {tuple(mean_b.shape)} and covariances "
                          f"{tuple(cov_a.shape)}, {tuple(cov_b.shape)} do not match")
    distance = ((mean_a - mean_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2 * _trace_sqrt_product(cov_a, cov_b)
    return max(distance.item(), 0.0)


def frechet_distance(features_a: Tensor | np.ndarray, features_b: Tensor | np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F):
    sample means and unbiased (N - 1) covariances, computed in float64."""
    a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise VaelabError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return gaussian_frechet_distance(*_mean_and_covariance(a), *_mean_and_covariance(b))


def frechet_estimate(model_samples_features: Tensor | np.ndarray, reference_features: Tensor | np.ndarray, *,
                     bootstrap: int = DEFAULT_BOOTSTRAP, generator: torch.Generator | None = None,
                     seed: int = 0) -> Estimate:
    """frechet_distance(model samples, reference) with a bootstrap standard error.

    The stderr is the standard deviation of the distance over `bootstrap` replicates, each
    resampling both feature sets independently with replacement (same sizes). It measures the
    sampling spread of the estimate at these sample sizes, not its bias: the Frechet distance of
    finite samples is biased upward (roughly by O(F / N)), so the value depends on the number of
    samples, which `settings` records. `generator` (CPU) draws the resamples; without one, a
    generator seeded with `seed` does. bootstrap=0 gives stderr nan.
    """
    a = _as_features(model_samples_features, "model_samples_features")
    b = _as_features(reference_features, "reference_features")
    value = frechet_distance(a, b)
    settings: dict[str, Any] = {"num_model_samples": len(a), "num_reference": len(b), "feature_dim": a.shape[1],
                                "bootstrap": bootstrap, "seed": None if generator is not None else seed}
    if bootstrap < 2:
        return Estimate(value, float("nan"), settings)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    replicates = torch.empty(bootstrap, dtype=torch.float64)
    for i in range(bootstrap):  # each replicate is one batched (N, F) covariance and two eigh's
        index_a = torch.randint(len(a), (len(a),), generator=generator)
        index_b = torch.randint(len(b), (len(b),), generator=generator)
        replicates[i] = gaussian_frechet_distance(*_mean_and_covariance(a[index_a]),
                                                  *_mean_and_covariance(b[index_b]))
    return Estimate(value, replicates.std(unbiased=True).item(), settings)


# -- precision and recall ------------------------------------------------------------------------


def _chunk_rows(columns: int, max_elements: int) -> int:
    return max(1, max_elements // max(columns, 1))


def knn_radii(features: Tensor | np.ndarray, k: int = DEFAULT_K, *,
              max_elements: int = DEFAULT_MAX_ELEMENTS) -> Tensor:
    """Distance from each point of features (N, F) to its k-th nearest other point: (N,) float64.
    Pairwise distances are computed in row chunks of at most max_elements entries."""
    x = _as_features(features, "features")
    if not 1 <= k < len(x):
        raise VaelabError(f"k must be in 1..{len(x) - 1} for {len(x)} points, got {k}")
    rows = _chunk_rows(len(x), max_elements)
    radii = []
    for start in range(0, len(x), rows):
        distances = torch.cdist(x[start:start + rows], x)  # (rows, N), the point itself at distance 0
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])  # k-th neighbour besides itself
    return torch.cat(radii)


def _binomial(hits: Tensor, settings: dict[str, Any]) -> Estimate:
    """A fraction with its binomial standard error sqrt(p (1 - p) / n)."""
    n = len(hits)
    p = hits.double().mean().item() if n else float("nan")
    return Estimate(p, math.sqrt(p * (1 - p) / n) if n else float("nan"), settings)


def precision_recall(generated_features: Tensor | np.ndarray, real_features: Tensor | np.ndarray, *,
                     k: int = DEFAULT_K, max_elements: int = DEFAULT_MAX_ELEMENTS) -> dict[str, Estimate]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated vs real features.

    precision = fraction of generated points within distance r_k(x) of some real point x, where
    r_k(x) is the distance from x to its k-th nearest real neighbour; recall = fraction of real
    points within r_k(g) of some generated point g (radii from the generated set). Distances are
    Euclidean in float64, computed in chunks of at most `max_elements` pairs (torch.cdist).

    The stderr of each is binomial, sqrt(p (1 - p) / n) over the n tested points: the spread from
    the tested set given the manifold it is tested against; the randomness of the other set (its
    radii) is not included, so it understates the full sampling spread.
    """
    generated = _as_features(generated_features, "generated_features")
    real = _as_features(real_features, "real_features")
    if generated.shape[1] != real.shape[1]:
        raise VaelabError(f"feature sets differ in dimension: {generated.shape[1]} vs {real.shape[1]}")
    real_radii = knn_radii(real, k, max_elements=max_elements)  # (N_r,)
    generated_radii = knn_radii(generated, k, max_elements=max_elements)  # (N_g,)
    in_real_manifold = torch.zeros(len(generated), dtype=torch.bool)
    in_generated_manifold = torch.zeros(len(real), dtype=torch.bool)
    rows = _chunk_rows(len(real), max_elements)
    for start in range(0, len(generated), rows):
        distances = torch.cdist(generated[start:start + rows], real)  # (rows, N_r)
        in_real_manifold[start:start + rows] = (distances <= real_radii).any(dim=1)
        in_generated_manifold |= (distances <= generated_radii[start:start + rows, None]).any(dim=0)
    settings = {"k": k, "num_generated": len(generated), "num_real": len(real), "feature_dim": real.shape[1]}
    return {"precision": _binomial(in_real_manifold, settings), "recall": _binomial(in_generated_manifold, settings)}


# -- diversity ------------------------------------------------------------------------------------


def mean_pairwise_distance(images: Tensor, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Estimate:
    """The mean L2 distance over all n(n-1)/2 pairs of images (N, ...) flattened, with its stderr.

    The mean is a U-statistic of order 2; its variance is 4 zeta_1 / n to leading order (Hoeffding
    1948), zeta_1 = Var_i(E_j[d(x_i, x_j)]), estimated from the row means of the distance matrix.
    Distances in float64, computed in row chunks of at most `max_elements` pairs."""
    flat = images.flatten(start_dim=1).to(torch.float64)  # (N, P)
    n = len(flat)
    if n < 3:
        raise VaelabError(f"the mean pairwise distance needs at least 3 images, got {n}")
    row_sums = torch.cat([torch.cdist(flat[start:start + rows], flat).sum(dim=1)
                          for rows in [_chunk_rows(n, max_elements)] for start in range(0, n, rows)])  # (N,)
    mean = row_sums.sum().item() / (n * (n - 1))  # the diagonal is zero
    row_means = row_sums / (n - 1)  # (N,) E_j[d(x_i, x_j)] for each i
    stderr = math.sqrt(4.0 * row_means.var().item() / n)
    return Estimate(mean, stderr, {"num_images": n, "space": "pixels, flattened"})


# -- class consistency ---------------------------------------------------------------------------


def class_consistency(classifier, images: Tensor, requested_labels: Tensor, *, batch_size: int = 1000) -> Estimate:
    """Fraction of images (N, C, H, W) that `classifier` (anything with logits(x, batch_size) ->
    (N, K)) assigns to their requested class (N,); binomial stderr sqrt(p (1 - p) / N)."""
    requested = torch.as_tensor(requested_labels).long().cpu()
    if requested.shape != (len(images),):
        raise VaelabError(f"{len(images)} images but requested labels of shape {tuple(requested.shape)}")
    predicted = classifier.logits(images, batch_size).argmax(dim=1).cpu()
    return _binomial(predicted == requested, {"num_samples": len(images)})


# -- everything for one model --------------------------------------------------------------------


def _reference_split(dataset: ImageDataset, split: Split | str) -> tuple[Split, str]:
    if isinstance(split, Split):
        return split, "given"
    if split in ("train", "test"):
        return getattr(dataset, split), split
    raise VaelabError(f"split must be 'train', 'test' or a Split, got {split!r}")


@torch.no_grad()
def sample_quality(model, dataset: ImageDataset, split: Split | str = "test", classifier=None, *,
                   num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0, batch_size: int = 500,
                   k: int = DEFAULT_K, bootstrap: int = DEFAULT_BOOTSTRAP,
                   progress: bool = False) -> dict[str, Estimate]:
    """Frechet distance, precision and recall of `model`'s samples against a split's images, in the
    classifier's feature space, and for a conditional model (model.conditional) class consistency.

    `split` is "test" (default), "train" or a Split of continuous [0, 1] images: the reference must
    be in the pixel space the classifier was trained on and model.sample returns (likelihood means),
    so pass the data set's own images, not a binarized evaluation view. `classifier` defaults to
    `load_or_train_classifier(dataset)` (cached). Both sets have n = min(num_samples, len(split))
    points: a random subset of the split (seeded by derive_seed(seed, 1)), and n samples drawn with
    model.sample(b, generator=...) in batches of `batch_size` from a generator seeded with `seed` on
    the model's device (the bootstrap uses derive_seed(seed, 2)); a conditional model draws the
    classes 0, 1, ..., K-1, 0, 1, ... (equal counts up to one) via sample(b, label=...). Returns
    {"frechet_distance", "precision", "recall", "mean_pairwise_distance"} (the last of the samples'
    pixels, not features) and "class_consistency" for a conditional model; stderrs as in
    frechet_estimate (bootstrap), precision_recall, mean_pairwise_distance and class_consistency.
    """
    if classifier is None:
        from vaelab.eval.classifier import load_or_train_classifier  # trains on first use

        classifier, _ = load_or_train_classifier(dataset, progress=progress)
    reference, split_name = _reference_split(dataset, split)
    n = min(num_samples, len(reference))
    if n <= k:
        raise VaelabError(f"sample quality needs more than k={k} samples, got {n} "
                          f"(num_samples={num_samples}, {len(reference)} reference images)")
    if conditional := bool(model.conditional):
        classes = getattr(getattr(classifier, "architecture", None), "num_classes", model.num_classes)
        if classes != model.num_classes:
            raise VaelabError(f"the model has {model.num_classes} classes but the classifier {classes}")
    # independent streams from one seed: the reference subset, the model's draws, the bootstrap
    subset_generator = torch.Generator().manual_seed(derive_seed(seed, 1))
    subset = torch.randperm(len(reference), generator=subset_generator)[:n].sort().values
    reference_features = classifier.features(reference.images[subset], batch_size)

    images, _ = draw_model_samples(model, n, seed, batch_size)  # (n, C, H, W); labels 0..K-1 cycling
    model_features = classifier.features(images, batch_size)
    if conditional:
        requested = requested_labels(model, n)
        if requested is None:
            raise VaelabError("a conditional model must report the labels its samples were drawn for")
        hits = classifier.logits(images, batch_size).argmax(dim=1).cpu() == requested.cpu()

    info = getattr(classifier, "cache_info", None) or {}
    common = {"num_samples": n, "num_samples_requested": num_samples, "seed": seed, "batch_size": batch_size,
              "split": split_name, "feature_dim": model_features.shape[1],
              "classifier": info.get("key", "")[:16] or None, "classifier_test_accuracy": info.get("test_accuracy")}
    results = {"frechet_distance": frechet_estimate(model_features, reference_features, bootstrap=bootstrap,
                                                    seed=derive_seed(seed, 2))}
    results.update(precision_recall(model_features, reference_features, k=k))
    results["mean_pairwise_distance"] = mean_pairwise_distance(images)
    if conditional:
        results["class_consistency"] = _binomial(hits, {"num_classes": model.num_classes})
    for estimate in results.values():
        estimate.settings = {**estimate.settings, **common}  # the caller's seed, not the derived one
    return results


# -- the real FID, when torch-fidelity and local Inception weights are available ------------------


def _inception_extractor(weights_path: str | os.PathLike[str] | None):
    """torch-fidelity's FeatureExtractorInceptionV3 with local weights, or a VaelabError saying how to enable it."""
    how = (f"install the optional package torch-fidelity yourself and save its Inception weights "
           f"(weights-inception-2015-12-05-6726825d.pth) locally, then pass weights_path= or set "
           f"{INCEPTION_WEIGHTS_ENV}=PATH; vaelab never downloads them. Without it, use the sample_quality metric, "
           f"whose Frechet distance is computed in a classifier trained on the data set (not comparable "
           f"with published FIDs)")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise VaelabError(f"the Inception FID needs torch-fidelity, which is not installed: {how}") from None
    path = weights_path or os.environ.get(INCEPTION_WEIGHTS_ENV)
    if not path:
        raise VaelabError(f"the Inception FID needs local Inception weights and none are configured: {how}")
    if not Path(path).is_file():
        raise VaelabError(f"Inception weights {path} not found: {how}")
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))


@torch.no_grad()
def inception_fid(generated_images: Tensor, reference_images: Tensor, *,
                  weights_path: str | os.PathLike[str] | None = None, batch_size: int = 100,
                  device: str | torch.device = "cpu", bootstrap: int = DEFAULT_BOOTSTRAP,
                  seed: int = 0) -> Estimate:
    """The Frechet Inception Distance (Heusel et al. 2017) of two image sets (N, C, H, W) in [0, 1],
    with torch-fidelity's Inception-v3 (2048-d pool features; grey images repeated to RGB, pixels
    rounded to uint8, resized by the extractor). Needs torch-fidelity and local weights
    (`weights_path` or $VAELAB_INCEPTION_WEIGHTS); raises VaelabError otherwise. Stderr by bootstrap
    as in frechet_estimate; like every FID it is biased upward at small N (published: N = 50000)."""
    extractor = _inception_extractor(weights_path).to(device).eval()

    def features(images: Tensor) -> Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8).to(device)
            out.append(extractor(pixels)[0].reshape(len(batch), -1).double().cpu())
        return torch.cat(out)

    estimate = frechet_estimate(features(generated_images), features(reference_images), bootstrap=bootstrap, seed=seed)
    estimate.settings["features"] = "inception-v3-compat pool3 (2048)"
    return estimate
