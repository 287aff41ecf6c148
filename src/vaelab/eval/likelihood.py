"""Log-likelihood estimators for latent-variable models with an encoder: the ELBO and the
importance-weighted bound L_k (Burda et al. 2015, eq. 8), batched and chunked.

L_k = E[log (1/k) sum_{s=1..k} p(x, z_s) / q(z_s|x)],  z_s ~ q(z|x).
L_1 is the ELBO; L_k rises with k and tends to log p(x) (Burda et al. 2015, theorem 1). The
published test negative log-likelihood is -L_5000 averaged over the test set.

Memory is bounded by the chunk size, never by k: the k samples of a batch are drawn in chunks of
at most `max_rows` decoder rows and folded into a running log-sum-exp.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vaelab.compiled import CompiledWithFallback, maybe_compiled
from vaelab.data.datasets import Split
from vaelab.distributed import current_world, gather_rows, local_split, process_generator
from vaelab.distributions import Likelihood
from vaelab.eval.batches import evaluation_batches
from vaelab.eval.estimate import Estimate, mean_and_stderr
from vaelab.models.capabilities import VariationalPosterior, require
from vaelab.precision import autocast_dtype, resolve_precision

# Decoder rows per chunk: ~26 MB of logits at 784 pixels; larger chunks ran slower (benchmarks/eval_speed.py).
DEFAULT_MAX_ROWS = 8192
NOT_BINARY = ("cross-entropy, not a log-likelihood: a Bernoulli likelihood on pixels that are not binary "
              "(train and evaluate with binarize=dynamic for the published protocol)")


def is_binary(split: Split) -> bool:
    images = split.images
    return bool(((images == 0) | (images == 1)).all())


def bound_of(likelihood: Likelihood | None, conditional: bool, split: Split) -> str:
    """What an estimate under `likelihood` on this split is an estimate of, in words: log p(x),
    log p(x|y) for a class-conditional model, or a cross-entropy when a likelihood of binary images
    (Bernoulli) scores grey pixels."""
    if likelihood is not None and likelihood.binary_support and not is_binary(split):
        return NOT_BINARY
    return "log p(x|y)" if conditional else "log p(x)"


def is_log_likelihood(quantity: str) -> bool:
    return quantity != NOT_BINARY


@torch.no_grad()
def elbo(model, split: Split, *, num_samples: int = 1, batch_size: int = 500, seed: int = 0,
         progress: bool = False) -> dict[str, Estimate]:
    """Test ELBO, its reconstruction and KL terms (nats per example, means over the split). Under a
    Bernoulli likelihood on grey pixels the first two are cross-entropies and are named so:
    "elbo_cross_entropy" and "reconstruction_cross_entropy"."""
    require(model, VariationalPosterior, "elbo")
    generator = torch.Generator(model.device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {"reconstruction": [], "kl": []}
    for x, label in evaluation_batches(model, split, batch_size, desc="elbo", progress=progress):
        terms = model.elbo_terms(x, num_samples, generator, label=label)
        for name in parts:
            parts[name].append(terms[name].cpu())
    reconstruction, kl = torch.cat(parts["reconstruction"]), torch.cat(parts["kl"])
    quantity = bound_of(model.likelihood, model.conditional, split)
    settings = {"num_samples": num_samples, "seed": seed, "examples": len(split), "bound_of": quantity}
    names = (("elbo", "reconstruction_log_prob") if is_log_likelihood(quantity)
             else ("elbo_cross_entropy", "reconstruction_cross_entropy"))
    return {names[0]: Estimate(*mean_and_stderr(reconstruction - kl), settings),
            names[1]: Estimate(*mean_and_stderr(reconstruction), dict(settings)),
            "kl": Estimate(*mean_and_stderr(kl), dict(settings))}


@torch.no_grad()
def importance_weighted_bound_per_example(model, x: Tensor, k: int, generator: torch.Generator,
                                          max_rows: int = DEFAULT_MAX_ROWS, label: Tensor | None = None,
                                          precision: str = "fp32",
                                          log_likelihood: Callable[..., Tensor] | None = None) -> Tensor:
    """L_k for each example of x (B, C, H, W) -> (B,), drawing the k samples in chunks; `label`
    (B,) goes to a class-conditional model's densities.

    precision "bf16" (or "auto" where bf16 is native, vaelab.precision): the decoder's matmuls run
    under bf16 autocast. The encoder, the samples z and
    both latent densities stay in fp32, and the likelihood's sums in fp32, so the result is exactly
    L_k of the model whose decoder is computed in bf16 (a Bernoulli with slightly rounded logits is
    still a distribution over x), not of the model itself: how far the two lie apart has to be
    measured (benchmarks/eval_speed.py).

    log_likelihood: log p(x|z) as the model's log_weights takes it (a compiled one, vaelab.compiled)."""
    dtype = autocast_dtype(precision, x.device.type, "iw_precision")
    posterior = model.encode(x, label=label)  # outside the autocast: q(z|x) is the proposal, exactly
    with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return _bound_over_chunks(model, x, k, generator, max_rows, label, posterior, log_likelihood)


def _bound_over_chunks(model, x: Tensor, k: int, generator: torch.Generator, max_rows: int,
                       label: Tensor | None, posterior: tuple[Tensor, Tensor],
                       log_likelihood: Callable[..., Tensor] | None = None) -> Tensor:
    samples_per_chunk = max(1, min(k, max_rows // len(x)))
    running = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float64)
    drawn = 0
    while drawn < k:
        chunk = min(samples_per_chunk, k - drawn)
        log_w = model.log_weights(x, chunk, generator, posterior=posterior, label=label,
                                  log_likelihood=log_likelihood)  # (chunk, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w.double(), dim=0))
        drawn += chunk
    return (running - math.log(k)).float()


@torch.no_grad()
def importance_weighted_bound(model, split: Split, *, k: int = 5000, batch_size: int | None = None,
                              max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0,
                              progress: bool = False, precision: str = "fp32", compile: bool = False) -> Estimate:
    """Mean L_k over the split (Burda et al. 2015); settings["bound_of"] says of what (see
    bound_of). The batch size defaults so that one chunk of samples covers a batch at small k and
    a handful of examples at large k.

    compile=True runs log p(x|z) through torch.compile, with an eager fallback (vaelab.compiled):
    the same estimate to float rounding, faster at large k once its compile (tens of seconds) is paid."""
    require(model, VariationalPosterior, "iw")
    precision = resolve_precision(precision, model.device.type, "iw_precision")  # settings say what ran
    world = current_world()  # under torchrun each process takes a share of the images
    generator = process_generator(torch.Generator(model.device).manual_seed(seed), world)
    batch_size = batch_size or max(1, min(500, max_rows // min(k, max_rows)))
    log_likelihood = maybe_compiled(model.log_likelihood, "log p(x|z)", compile)
    bounds = [importance_weighted_bound_per_example(model, x, k, generator, max_rows, label=label,
                                                    precision=precision, log_likelihood=log_likelihood).cpu()
              for x, label in evaluation_batches(model, local_split(split, world), batch_size, desc=f"L_{k}",
                                                 progress=progress)]
    compiled = isinstance(log_likelihood, CompiledWithFallback) and log_likelihood.active
    settings = {"k": k, "seed": seed, "examples": len(split), "batch_size": batch_size, "max_rows": max_rows,
                "precision": precision, "compiled": compiled,
                "bound_of": bound_of(model.likelihood, model.conditional, split), "processes": world.size}
    return Estimate(*mean_and_stderr(gather_rows(torch.cat(bounds) if bounds else torch.empty(0), world)), settings)
