"""Annealed importance sampling (AIS) for the partition function of a binary RBM, and the RBM's
test log-likelihood from it (Salakhutdinov & Murray 2008, "On the Quantitative Analysis of Deep
Belief Networks", sections 3-4; Neal 2001, "Annealed Importance Sampling").

The base distribution A is an RBM with zero weights, visible biases b_A and hidden biases 0
(the paper's "base-rate" model when b_A is the log-odds of the training data's pixel means,
`base_rate_visible_bias`; the uniform distribution when b_A = 0). Its partition function is in
closed form: with H_A = H hidden units,

    log Z_A = sum_i softplus(b_A,i) + H log 2.

The intermediate distributions are those of section 4.1 of the paper, in which A's and B's hidden
units are both present and A's energy is scaled by (1 - beta), B's by beta:

    p*_k(v) = sum_{h_A, h_B} exp(-(1 - beta_k) E_A(v, h_A) - beta_k E_B(v, h_B))
            = 2^H exp((1 - beta_k) b_A.v + beta_k b.v) prod_j (1 + exp(beta_k (c_j + (v W)_j))).

Because A has no weights its hidden units sum out to the constant 2^H at every beta, so this is the
geometric path p_A*(v)^(1 - beta) p_B*(v)^beta of the two free energies up to a beta-independent
factor (the free-energy interpolation differs only by 2^{(1 - beta) H}, which changes no sample and
cancels between beta_0 = 0 and beta_K = 1). Each p_k is left invariant by one block Gibbs sweep
(the paper's eq. 15-17): h_B ~ sigmoid(beta_k (c + v W)), v ~ sigmoid((1 - beta_k) b_A + beta_k
(b + W h_B)); A's hidden units are independent fair coins that v does not depend on, so they are not
drawn.

With v_1 ~ p_A exactly (independent Bernoulli(sigmoid(b_A)) pixels) and v_{k+1} ~ T_k(v_k),

    log w = sum_{k=1..K} [log p*_k(v_k) - log p*_{k-1}(v_k)],   E[w] = Z_B / Z_A,

so Z_hat = Z_A mean_r w_r is unbiased for Z_B, and log Z_hat (what is reported) is biased
downwards by Jensen's inequality: AIS tends to underestimate log Z and so to overestimate the
log-likelihood (Salakhutdinov & Murray 2008, section 3.2; the bias shrinks as the weights' variance
shrinks).

All runs are advanced together, one (runs x visible) @ (visible x hidden) matmul and one transposed
matmul per intermediate distribution, in the RBM's dtype (float32); the log-weight increments are
computed from those activations by a cancellation-free formula (`softplus_difference`), summed over
units and accumulated over steps in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from vaelab.data.datasets import Split
from vaelab.distributed import current_world, gather_rows, process_generator, shard_of
from vaelab.errors import VaelabError
from vaelab.eval.estimate import Estimate, importance_weight_statistics, mean_and_stderr
from vaelab.models.capabilities import BinaryRBM, require
from vaelab.noise import BernoulliBits

# The schedule of Salakhutdinov & Murray (2008), section 5 (and their RBM_AIS.m): beta rises from
# 0 to 0.5 in 500 uniform steps, to 0.9 in 4,000 and to 1 in 10,000: 14,500 steps in all.
PAPER_SEGMENTS: tuple[tuple[float, int], ...] = ((0.5, 500), (0.9, 4000), (1.0, 10000))
DEFAULT_NUM_STEPS = sum(steps for _, steps in PAPER_SEGMENTS)  # 14500
DEFAULT_NUM_RUNS = 100  # independent AIS runs, as in the paper
DEFAULT_SEED = 0  # the seed used when no generator is given
CONVERGENCE_SLACK = 1e-6  # nats: the rounding of float32 sampling, so an exact estimate counts as converged
BASE_RATE_EPS = 1e-3  # pixel means are clamped to [eps, 1 - eps] before their log-odds are taken


def _segment_counts(num_steps: int) -> list[int] | None:
    """Steps in each of the paper's segments scaled to num_steps, or None below 3 steps."""
    if num_steps < len(PAPER_SEGMENTS):
        return None
    counts = [max(1, round(num_steps * steps / DEFAULT_NUM_STEPS)) for _, steps in PAPER_SEGMENTS[:-1]]
    counts.append(num_steps - sum(counts))
    return counts if counts[-1] >= 1 else None


def ais_schedule(num_steps: int = DEFAULT_NUM_STEPS) -> Tensor:
    """The inverse temperatures beta_0 = 0 < beta_1 < ... < beta_K = 1 (K = num_steps), float64 (K + 1,).

    The paper's three segments (0 -> 0.5, 0.5 -> 0.9, 0.9 -> 1 in 500, 4,000 and 10,000 uniform
    steps) scaled to num_steps: segment sizes round(num_steps * 500 / 14500) and
    round(num_steps * 4000 / 14500), each at least 1, the rest in the last segment. num_steps=14500
    gives the published schedule exactly; below 3 steps the betas are uniform on [0, 1].
    """
    if num_steps < 1:
        raise VaelabError(f"AIS needs at least one step, got num_steps={num_steps}")
    counts = _segment_counts(num_steps)
    if counts is None:
        return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    betas, start = [torch.zeros(1, dtype=torch.float64)], 0.0
    for (stop, _), count in zip(PAPER_SEGMENTS, counts, strict=True):
        betas.append(torch.linspace(start, stop, count + 1, dtype=torch.float64)[1:])
        start = stop
    return torch.cat(betas)


def _describe_schedule(betas: Tensor) -> str:
    num_steps = len(betas) - 1
    counts = _segment_counts(num_steps)
    if counts is not None and torch.equal(betas, ais_schedule(num_steps)):
        starts = [0.0] + [stop for stop, _ in PAPER_SEGMENTS[:-1]]
        parts = [f"{start:g}->{stop:g} in {count}"
                 for start, (stop, _), count in zip(starts, PAPER_SEGMENTS, counts, strict=True)]
        return "beta " + ", ".join(parts) + " uniform steps (Salakhutdinov & Murray 2008, scaled)"
    if torch.equal(betas, torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)):
        return f"beta 0->1 in {num_steps} uniform steps"
    return f"custom: {num_steps} steps, betas {[round(b, 6) for b in betas[:4].tolist()]}..."


def base_rate_visible_bias(images: Tensor | Split, eps: float = BASE_RATE_EPS) -> Tensor:
    """Visible biases b_A of the base-rate RBM (Salakhutdinov & Murray 2008, section 4.1): the log-odds
    of each pixel's mean over the training images, the means clamped to [eps, 1 - eps] so that
    pixels that are always off (or on) get a finite bias. images: (N, C, H, W) or (N, D) in [0, 1]
    (grey values are fine: their mean is the mean of their binarizations) -> (D,) float32."""
    if isinstance(images, Split):
        images = images.images
    if not 0 < eps < 0.5:
        raise VaelabError(f"eps must lie in (0, 0.5), got {eps}")
    means = images.reshape(len(images), -1).double().mean(0).clamp(eps, 1 - eps)
    return torch.logit(means).float()


def base_log_partition(base_visible_bias: Tensor, num_hidden: int) -> float:
    """log Z_A of the RBM with weights 0, visible biases b_A and num_hidden hidden units of bias 0:
    sum_i softplus(b_A,i) + num_hidden log 2 (every visible and hidden unit is independent)."""
    return F.softplus(base_visible_bias.double()).sum().item() + num_hidden * math.log(2.0)


def softplus_difference(x: Tensor, beta: float, previous: float) -> Tensor:
    """softplus(beta x) - softplus(previous x), elementwise, without cancellation: with s = (beta -
    previous) x and a = previous x,

        relu(s) + log1p(sigmoid(-|a|) expm1(-|s|))

    (for x < 0 the ratio (1 + e^{a+s}) / (1 + e^a) = 1 + sigmoid(a) expm1(s); for x >= 0 factor out
    e^s first). The argument of log1p lies in [-1/2, 0], so the result has the relative accuracy of
    the dtype even when the step, and the difference, are tiny: in float32 it matches the float64
    difference of softplus values to ~1e-9 nats per unit at the paper's smallest steps, at a fraction
    of the float64 cost."""
    step = x * (beta - previous)
    scale = (x * previous).abs_().neg_().sigmoid_()  # sigmoid(-|a|), in (0, 1/2]
    return step.abs().neg_().expm1_().mul_(scale).log1p_().add_(step.clamp_(min=0))


def _parameters(rbm) -> tuple[Tensor, Tensor, Tensor]:
    return rbm.weight.detach(), rbm.visible_bias.detach(), rbm.hidden_bias.detach()


@torch.no_grad()
def ais_log_weights(rbm, base_visible_bias: Tensor, betas: Tensor | Sequence[float], num_runs: int,
                    generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """The log importance weights (num_runs,) float64 of independent AIS runs from the base RBM A
    (zero weights, visible biases base_visible_bias, hidden biases 0) to `rbm`, along `betas`
    (increasing, from 0 to 1), with E[exp(log w)] = Z_B / Z_A (see the module docstring).

    All runs advance together: per intermediate distribution one addmm to the hidden layer, the
    weight increment log p*_k(v) - log p*_{k-1}(v) (per unit in the RBM's dtype by
    `softplus_difference`, summed and accumulated in float64), then (except after the last) one
    block Gibbs sweep that leaves p_k invariant."""
    weight, visible_bias, hidden_bias = _parameters(rbm)
    device, dtype = weight.device, weight.dtype
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or bool((betas[1:] < betas[:-1]).any()):
        raise VaelabError("the AIS schedule must rise from beta=0 to beta=1 in at least one step")
    if num_runs < 1:
        raise VaelabError(f"num_runs must be at least 1, got {num_runs}")
    num_visible, num_hidden = weight.shape
    base = base_visible_bias.detach().reshape(-1).to(device=device, dtype=dtype)
    if base.shape != (num_visible,):
        raise VaelabError(f"base_visible_bias has {base.numel()} entries; the RBM has {num_visible} visible units")
    bias_gap = (visible_bias.double() - base.double())  # (D,) d log p*_k / d beta, visible part
    weight_t = weight.t()  # (H, D)

    bits = BernoulliBits(generator)
    activation = torch.empty(num_runs, num_hidden, device=device, dtype=dtype)  # c + v W
    visible_input = torch.empty(num_runs, num_visible, device=device, dtype=dtype)
    # v_1 ~ p_A exactly: independent pixels with p(v_i = 1) = sigmoid(b_A,i).
    v = bits.draw(torch.sigmoid(base).expand(num_runs, num_visible))  # (R, D)
    log_w = torch.zeros(num_runs, device=device, dtype=torch.float64)
    beta_list = betas.tolist()
    for k in tqdm(range(1, len(beta_list)), disable=not progress, desc="AIS", leave=False, unit="beta"):
        beta, previous = beta_list[k], beta_list[k - 1]
        torch.addmm(hidden_bias, v, weight, out=activation)  # (R, H)
        # log p*_k(v) - log p*_{k-1}(v) = (beta_k - beta_{k-1}) (b - b_A).v
        #     + sum_j [softplus(beta_k x_j) - softplus(beta_{k-1} x_j)],  x = c + v W
        log_w += (beta - previous) * (v.double() @ bias_gap)
        log_w += softplus_difference(activation, beta, previous).double().sum(-1)
        if k == len(beta_list) - 1:
            break
        # One block Gibbs sweep leaving p_k invariant: h ~ p_k(h_B | v), v ~ p_k(v | h_B).
        h = bits.draw(activation.mul_(beta).sigmoid_())  # (R, H)
        torch.addmm((1 - beta) * base + beta * visible_bias, h, weight_t, alpha=beta, out=visible_input)  # (R, D)
        v = bits.draw(visible_input.sigmoid_())
    return log_w


def half_schedule(betas: Tensor) -> Tensor:
    """Every other beta of `betas` (0 = beta_0 < ... < beta_K = 1), with beta = 1 kept: the schedule
    with about half the steps that the convergence check reruns for a custom schedule."""
    half = betas[::2]
    return half if half[-1] == 1 else torch.cat([half, betas[-1:]])


def _independent_generator(generator: torch.Generator) -> torch.Generator:
    """A fresh generator on generator's device, seeded by one draw from `generator` (so the same
    generator state always gives the same second stream, and the two streams share no numbers)."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator(generator.device).manual_seed(seed)


def _run_ais(rbm, base_visible_bias: Tensor, betas: Tensor, num_runs: int, generator: torch.Generator,
             progress: bool) -> tuple[float, float, float, Tensor]:
    """(log Z, delta-method stderr, ESS, log-weights) of one AIS estimate along `betas`."""
    log_z_base = base_log_partition(base_visible_bias, rbm.weight.shape[1])
    world = current_world()  # under torchrun each process runs a share of the runs
    local_runs = shard_of(num_runs, world)
    log_w = ais_log_weights(rbm, base_visible_bias, betas, local_runs.stop - local_runs.start,
                            process_generator(generator, world), progress).cpu()
    log_w = gather_rows(log_w, world)
    statistics = importance_weight_statistics(log_w)
    return log_z_base + statistics.log_mean.item(), statistics.stderr.item(), statistics.ess.item(), log_w


def _convergence(full: float, full_stderr: float, half: float, half_stderr: float, num_steps: int,
                 seed: int | None) -> dict:
    """The convergence-check part of an estimate's settings: the half-steps estimate and whether the
    full one lies within its own stderr of it."""
    return {"half_steps": {"num_steps": num_steps, "value": half, "stderr": half_stderr, "seed": seed,
                           "difference": full - half, "difference_stderr": math.hypot(full_stderr, half_stderr)},
            "converged": bool(abs(full - half) <= full_stderr + CONVERGENCE_SLACK)}


@torch.no_grad()
def rbm_log_partition_ais(rbm, base_visible_bias: Tensor | None = None, num_runs: int = DEFAULT_NUM_RUNS,
                          num_steps: int | None = DEFAULT_NUM_STEPS, generator: torch.Generator | None = None,
                          progress: bool = False, *, betas: Tensor | Sequence[float] | None = None,
                          convergence_check: bool = True) -> Estimate:
    """log Z of `rbm` by AIS from the base RBM with visible biases base_visible_bias (Salakhutdinov &
    Murray 2008): value = log Z_A + log mean_r w_r over num_runs independent runs, the log-mean-exp
    taken stably.

    base_visible_bias: (D,) biases b_A of the base model, normally `base_rate_visible_bias(train)`
    (the paper's base-rate model); None uses b_A = 0, the uniform distribution (valid but needing
    far more steps for a trained RBM). num_steps (None: DEFAULT_NUM_STEPS) scales the paper's
    three-segment schedule (`ais_schedule`); `betas` (0 = beta_0 < ... < beta_K = 1) overrides it.
    generator: the source of all randomness (default: a fresh generator seeded with 0 on the RBM's
    device).

    stderr is over the independent runs, by the delta method: the standard deviation of the
    normalized weights w_r / mean(w) divided by sqrt(num_runs), i.e. the relative standard error of
    Z_hat, which is the standard error of log Z_hat to first order. It understates the error when
    the weights are heavy-tailed (a small effective_sample_size warns of that), and it cannot see
    the bias of an annealing that is too fast: every run is then pulled low together, and the
    spread between runs stays small. settings also holds log_z_base (log Z_A), the weights'
    effective sample size (sum w)^2 / sum w^2, and the paper's interval [log(Z_hat - 3 sd),
    log(Z_hat + 3 sd)] (None where Z_hat - 3 sd <= 0).

    convergence_check (default on): also run AIS with half the steps (ais_schedule(num_steps // 2),
    or every other beta of a custom schedule) and the same number of runs, from an independent
    generator seeded by one draw from `generator` after the main run (so the main estimate is the
    same with or without the check). settings["half_steps"] = {"num_steps", "value", "stderr",
    "seed", "difference" (full - half), "difference_stderr"} and settings["converged"] =
    |full - half| <= stderr of the full estimate (+ 1e-6 nats of rounding): an estimate that still
    moves by more than its stderr when the steps are doubled is not converged. Two independent
    estimates of a converged log Z differ by more than the full one's stderr about half the time
    (their difference has stderr "difference_stderr", about 1.5 times that), so False alone is a
    warning; a difference of many difference_stderr is a bias. The check costs half the main run
    again; it is skipped (half_steps None, converged None) for a one-step schedule."""
    require(rbm, BinaryRBM, "rbm_ais")
    weight = rbm.weight
    if base_visible_bias is None:
        base_visible_bias = torch.zeros(weight.shape[0])
        base_name = "uniform (b_A = 0)"
    else:
        base_name = "given visible biases b_A (the base-rate model if fitted to training pixel means)"
    if generator is None:
        generator = torch.Generator(weight.device).manual_seed(DEFAULT_SEED)
    seed = generator.initial_seed()
    num_steps = DEFAULT_NUM_STEPS if num_steps is None else num_steps
    betas = ais_schedule(num_steps) if betas is None else torch.as_tensor(betas, dtype=torch.float64).flatten()
    base_visible_bias = base_visible_bias.detach().reshape(-1)
    log_z_base = base_log_partition(base_visible_bias, weight.shape[1])

    log_z, stderr, ess, log_w = _run_ais(rbm, base_visible_bias, betas, num_runs, generator, progress)
    interval = [log_z + math.log(1 - 3 * stderr) if 3 * stderr < 1 else None,
                log_z + math.log1p(3 * stderr) if math.isfinite(stderr) else None]
    settings = {
        "method": "AIS (Salakhutdinov & Murray 2008), section 4.1 path, one block Gibbs sweep per beta",
        "num_runs": num_runs, "num_steps": len(betas) - 1, "schedule": _describe_schedule(betas),
        "seed": seed, "base": base_name, "log_z_base": log_z_base,
        "base_visible_bias_mean": base_visible_bias.double().mean().item(),
        "effective_sample_size": ess, "log_weight_std": log_w.std(unbiased=True).item() if num_runs > 1 else 0.0,
        "log_z_3sd_interval": interval,
        "stderr_method": "delta method over independent runs: std(w / mean w) / sqrt(num_runs); blind to the "
                         "bias of too fast an annealing (see half_steps)",
        "dtype": str(weight.dtype).removeprefix("torch.") + " sampling, float64 log-weights",
        "half_steps": None, "converged": None,
    }
    if convergence_check and len(betas) > 2:
        num_steps = len(betas) - 1
        # The default schedule is rescaled to half the steps; a custom one keeps every other beta.
        half_betas = ais_schedule(num_steps // 2) if torch.equal(betas, ais_schedule(num_steps)) \
            else half_schedule(betas)
        half_generator = _independent_generator(generator)
        half, half_stderr, _, _ = _run_ais(rbm, base_visible_bias, half_betas, num_runs, half_generator, progress)
        settings.update(_convergence(log_z, stderr, half, half_stderr, len(half_betas) - 1,
                                     half_generator.initial_seed()))
    return Estimate(log_z, stderr, settings)


@torch.no_grad()
def rbm_log_likelihood(rbm, split: Split, log_z: Estimate, batch_size: int = 1000) -> Estimate:
    """Mean log p(v) = -F(v) - log Z over the split's images, with log Z from `rbm_log_partition_ais`
    (or an exact Estimate(log_partition_exact(), 0.0)).

    The images should be binary (evaluation_split binarizes them under binarize=dynamic/fixed);
    values in (0, 1) are used as they are in F(v), i.e. as the probabilities of binary visible units
    (the RBM's own convention), and then the number is not the log-probability of any binary image
    (settings["binary"] says which case applied).

    stderr = sqrt(se_F^2 + se_logZ^2): the standard error over examples of the mean of -F(v) and the
    standard error of log Z, combined in quadrature because the AIS runs are independent of the
    data. The log Z error is shared by every example (and by every split scored with the same log Z),
    so it does not average away with more images. An AIS log Z is biased low, so this estimate is
    biased high (section 3.2 of Salakhutdinov & Murray 2008)."""
    if batch_size < 1:
        raise VaelabError(f"batch_size must be at least 1, got {batch_size}")
    if len(split) == 0:
        raise VaelabError("cannot score an empty split")
    device, dtype = rbm.weight.device, rbm.weight.dtype
    negative_free_energy, binary = [], True
    for start in range(0, len(split), batch_size):
        v = split.images[start:start + batch_size].to(device=device, dtype=dtype)
        binary = binary and bool(((v == 0) | (v == 1)).all())
        negative_free_energy.append(-rbm.free_energy(v).double().cpu())
    mean, se = mean_and_stderr(torch.cat(negative_free_energy))
    stderr = math.hypot(se, log_z.stderr) if math.isfinite(se) else log_z.stderr
    settings = {"examples": len(split), "batch_size": batch_size, "binary": binary,
                "log_z": log_z.value, "log_z_stderr": log_z.stderr,
                "mean_negative_free_energy": mean, "negative_free_energy_stderr": se,
                "stderr_method": "sqrt(se over examples of -F(v)^2 + se of log Z^2)",
                "log_z_settings": dict(log_z.settings), "half_steps": None, "converged": None}
    half = log_z.settings.get("half_steps")
    if half is not None:
        # The same images with log Z from half the AIS steps. The two figures differ only by their
        # log Z, so "converged" is that of log Z: judged against the log Z stderr, not against the
        # over-examples error, which both figures share.
        settings["half_steps"] = {**half, "value": mean - half["value"],
                                  "stderr": math.hypot(se, half["stderr"]) if math.isfinite(se) else half["stderr"],
                                  "difference": half["value"] - log_z.value}
        settings["converged"] = log_z.settings.get("converged")
    return Estimate(mean - log_z.value, stderr, settings)
