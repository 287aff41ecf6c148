"""The Gaussian Parzen-window log-likelihood estimate of a model that samples (Breuleux, Bengio &
Vincent 2011; Goodfellow et al. 2014, "Generative Adversarial Nets", section 5 and Table 1).

M samples s_1..s_M are drawn from the model and an isotropic Gaussian kernel is put on each:

    log p_hat(x) = log (1/M) sum_i N(x; s_i, sigma^2 I)
                 = logsumexp_i(-||x - s_i||^2 / (2 sigma^2)) - log M - (D/2) log(2 pi sigma^2).

sigma is chosen on a validation split by maximizing the mean log p_hat over it, on a grid
(the GAN paper's code, goodfeli/adversarial parzen_ll.py: 10,000 samples, sigma in
numpy.logspace(-1, 0, 10), the first 1,000 validation images), then the test images are scored.

This is a BIASED estimate of the test log-likelihood, and not a bound in either direction: with a
finite M it is an underestimate in expectation of log of the kernel-smoothed model density (Jensen),
yet it can rate a model that memorizes its training images above the true data distribution, and in
high dimension it is far from the true log-likelihood even with millions of samples (Theis, van den
Oord & Bethge 2016, "A note on the evaluation of generative models", the section on Parzen window
estimates: k-means centroids outscore true samples of the data). Report it only because the
literature did, and never as a bound.

The squared distances are ||x||^2 + ||s||^2 - 2 x.s, one matmul per (image batch, sample chunk), in
float64 (the expansion loses digits in float32 when sigma is small); the sample chunks are folded
into a running log-sum-exp, so memory is (batch_size x sample_chunk), never (N, M, D). The distances
do not depend on sigma, so choosing sigma computes them once for the whole grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.estimate import Estimate, mean_and_stderr
from vaelab.eval.sampling import draw_model_samples

# The GAN paper's grid (parzen_ll.py: logspace(sigma_start=-1, sigma_end=0, num=cross_val=10)).
DEFAULT_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.logspace(-1.0, 0.0, 10))
DEFAULT_NUM_SAMPLES = 10000  # parzen_ll.py --num_samples
DEFAULT_VALIDATION_SIZE = 1000  # parzen_ll.py --limit_size: the first 1000 validation images
DEFAULT_BATCH_SIZE = 1000  # test images per distance block
DEFAULT_SAMPLE_CHUNK = 4096  # model samples per distance block: 1000 x 4096 float64 = 33 MB
BIAS_NOTE = ("biased estimate, not a bound: Gaussian Parzen window on model samples (Goodfellow et al. 2014, "
             "Table 1); can favour a model that memorizes the training set and is poor in high dimension "
             "(Theis, van den Oord & Bethge 2016)")


def _as_rows(values, name: str) -> Tensor:
    """(N, ...) tensor or array -> (N, D) tensor (a view where possible)."""
    values = torch.as_tensor(values)
    if values.ndim < 1 or len(values) == 0:
        raise VaelabError(f"{name} must be a non-empty (N, ...) array, got shape {tuple(values.shape)}")
    return values.reshape(len(values), -1)


def _check_sigmas(sigmas) -> list[float]:
    sigmas = [float(s) for s in np.atleast_1d(np.asarray(sigmas, dtype=np.float64))]
    if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
        raise VaelabError(f"Parzen sigmas must be positive and finite, got {sigmas}")
    return sigmas


@torch.no_grad()
def _parzen_log_likelihoods(samples, images, sigmas: Sequence[float], batch_size: int, sample_chunk: int,
                            dtype: torch.dtype, device, progress: bool) -> Tensor:
    """log p_hat(x) of each image for each sigma: (S, N) float64 on the CPU."""
    if batch_size < 1 or sample_chunk < 1:
        raise VaelabError(f"batch_size and sample_chunk must be at least 1, got {batch_size}, {sample_chunk}")
    samples, images, sigmas = _as_rows(samples, "samples"), _as_rows(images, "images"), _check_sigmas(sigmas)
    if samples.shape[1] != images.shape[1]:
        raise VaelabError(f"samples have {samples.shape[1]} values each but images have {images.shape[1]}")
    device = torch.device(device) if device is not None else samples.device
    samples = samples.to(device=device, dtype=dtype)  # (M, D), converted once
    if not torch.isfinite(samples).all():
        raise VaelabError("the model's samples are not all finite")
    num_samples, dim = samples.shape
    chunks = [(chunk, chunk.pow(2).sum(1)) for chunk in samples.split(sample_chunk)]  # (C, D), (C,)
    coefficients = [-0.5 / s**2 for s in sigmas]
    results = []
    for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="parzen", leave=False):
        x = images[start:start + batch_size].to(device=device, dtype=dtype)  # (B, D)
        x_sq = x.pow(2).sum(1, keepdim=True)  # (B, 1)
        running = torch.full((len(sigmas), len(x)), -math.inf, device=device, dtype=dtype)  # (S, B)
        for chunk, chunk_sq in chunks:
            # ||x - s||^2 = ||x||^2 + ||s||^2 - 2 x.s, clamped at 0 against rounding: (B, C)
            distances = torch.addmm(x_sq + chunk_sq, x, chunk.t(), alpha=-2.0).clamp_min_(0.0)
            for j, coefficient in enumerate(coefficients):
                running[j] = torch.logaddexp(running[j], torch.logsumexp(distances * coefficient, dim=1))
        results.append(running.double().cpu())
    log_norm = torch.tensor([math.log(num_samples) + 0.5 * dim * math.log(2 * math.pi * s**2) for s in sigmas],
                            dtype=torch.float64)
    return torch.cat(results, dim=1) - log_norm[:, None]


def parzen_log_likelihood(samples, images, sigma: float, batch_size: int = DEFAULT_BATCH_SIZE,
                          sample_chunk: int = DEFAULT_SAMPLE_CHUNK, *, dtype: torch.dtype = torch.float64,
                          device: torch.device | str | None = None, progress: bool = False) -> Tensor:
    """log (1/M) sum_i N(x; s_i, sigma^2 I) for each image: samples (M, ...), images (N, ...) -> (N,)
    float64 on the CPU. Computed on `device` (default: the samples'), `batch_size` images against
    `sample_chunk` samples at a time, with a running log-sum-exp over the sample chunks."""
    return _parzen_log_likelihoods(samples, images, [sigma], batch_size, sample_chunk, dtype, device, progress)[0]


def choose_sigma(samples, validation_images, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 batch_size: int = DEFAULT_BATCH_SIZE, sample_chunk: int = DEFAULT_SAMPLE_CHUNK, *,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                 progress: bool = False) -> tuple[float, list[dict[str, float]]]:
    """The sigma of the grid with the highest mean validation log p_hat (first one on ties), and the
    table [{"sigma", "log_likelihood" (mean over the validation images), "stderr" (over them)}, ...]
    in grid order. The distances are computed once for all sigmas."""
    sigmas = _check_sigmas(sigmas)
    per_image = _parzen_log_likelihoods(samples, validation_images, sigmas, batch_size, sample_chunk, dtype,
                                        device, progress)  # (S, N)
    table = []
    for sigma, values in zip(sigmas, per_image, strict=True):
        mean, stderr = mean_and_stderr(values)
        table.append({"sigma": sigma, "log_likelihood": mean, "stderr": stderr})
    best = max(range(len(sigmas)), key=lambda j: (table[j]["log_likelihood"], -j))
    return sigmas[best], table


@torch.no_grad()
def parzen_estimate(model, validation_split: Split, test_split: Split, num_samples: int = DEFAULT_NUM_SAMPLES,
                    sigmas: Sequence[float] = DEFAULT_SIGMAS, seed: int = 0, *,
                    validation_size: int | None = DEFAULT_VALIDATION_SIZE, sample_batch_size: int = 1000,
                    batch_size: int = DEFAULT_BATCH_SIZE, sample_chunk: int = DEFAULT_SAMPLE_CHUNK,
                    sample_kwargs: dict[str, Any] | None = None, progress: bool = False) -> Estimate:
    """The GAN paper's Parzen-window estimate of the mean test log-likelihood (nats per image).

    Draws num_samples images from the model (draw_model_samples, seeded by `seed`; extra sample()
    arguments in sample_kwargs, e.g. {"mean": False}), chooses sigma on the first validation_size
    images of validation_split (None: all of them), then scores every test image. The standard
    error is over test images for the chosen sigma and the one set of samples: it leaves out the
    variation from resampling the model and from choosing sigma. A biased estimate (module
    docstring): settings["biased"] is True and settings["note"] says why."""
    if validation_size is not None and validation_size < 1:
        raise VaelabError(f"validation_size must be at least 1 (or None for the whole split), "
                          f"got {validation_size}")
    validation = validation_split.images[:validation_size]
    if len(validation) == 0 or len(test_split) == 0:
        raise VaelabError("the Parzen estimate needs non-empty validation and test splits")
    sigmas = _check_sigmas(sigmas)
    samples, counts = draw_model_samples(model, num_samples, seed, sample_batch_size, sample_kwargs)
    sigma, table = choose_sigma(samples, validation, sigmas, batch_size=batch_size, sample_chunk=sample_chunk,
                                progress=progress)
    per_image = parzen_log_likelihood(samples, test_split.images, sigma, batch_size=batch_size,
                                      sample_chunk=sample_chunk, progress=progress)
    settings = {
        "estimator": "parzen window (Gaussian kernel on model samples)",
        "biased": True,
        "note": BIAS_NOTE,
        "sigma": sigma,
        "sigmas": sigmas,
        "sigma_at_grid_edge": sigma in (min(sigmas), max(sigmas)),
        "validation_log_likelihoods": table,
        "num_samples": num_samples,
        "samples_per_class": counts,
        "sample_kwargs": dict(sample_kwargs or {}),
        "validation_size": len(validation),
        "examples": len(test_split),
        "seed": seed,
        "stderr": "over test images, for the chosen sigma and one set of samples",
    }
    return Estimate(*mean_and_stderr(per_image), settings)
