"""One run of the comparison, start to end: train it (or resume it, or reuse it when it is done),
score it with every estimator that applies under the comparison's one protocol, time it, and keep
the tensors its figures are drawn from. The orchestrator (vaelab.comparison) runs each in a child
process, so a failing model cannot take the others down and its peak memory is its own."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaelab.checkpoint import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, load, load_run_config, read_tensors_and_metadata
from vaelab.cli import build_parser, cmd_train, parse
from vaelab.comparison.budget import EvalBudget, RunSpec
from vaelab.data.datasets import ImageDataset
from vaelab.errors import VaelabError
from vaelab.eval.metrics import EvalContext, EvalOptions, evaluate
from vaelab.files import atomic_write_json
from vaelab.models.capabilities import BinaryRBM, LatentDecoder, MarkovChainSampler, Reconstructor, VariationalPosterior
from vaelab.plots.images import save_images

ERROR_FILE = "compare_error.txt"  # a failed run's error, one line, written by the child process
EVAL_FILE = "compare_eval.json"  # the scores, with the settings and weights they were made with
FIGURES_FILE = "compare_figures.safetensors"  # the tensors the report's figures are drawn from
MEMORY_FILE = "compare_memory.json"  # the child process's own peak resident memory, with the weights it made
GRID = 64  # samples per model in the side-by-side grids
SHOWN = 8  # test images reconstructed, samples shown beside their nearest training image
SAMPLE_SEED = 0


@dataclass(frozen=True)
class Job:
    spec: RunSpec
    run_dir: Path
    data: str
    data_dir: str | None
    seed: int
    budget: EvalBudget


def train(job: Job) -> None:
    """`vaelab train` for the run: a fresh run, or --resume (which continues an interrupted run,
    says a finished one is finished, and refuses settings that differ from the saved ones)."""
    argv = ["train", job.spec.model, "--data", job.data, "--out", str(job.run_dir), "--seed", str(job.seed),
            "tensorboard=false", *job.spec.overrides()]
    if job.data_dir:
        argv += ["--data-dir", job.data_dir]
    if (job.run_dir / CONFIG_FILE).exists():
        argv.append("--resume")
    cmd_train(parse(build_parser(), argv))  # errors propagate as they are, one line each


def score(job: Job, dataset: ImageDataset) -> dict[str, Any]:
    """The run's metrics, from its EVAL_FILE when that was made with the same settings and weights."""
    settings = {"budget": job.budget.__dict__, "seed": job.seed, "weights": _weights_checksum(job.run_dir)}
    cached = _read_json(job.run_dir / EVAL_FILE)
    if cached and cached.get("settings") == settings:
        return cached["metrics"]
    model, run_config = load(job.run_dir), load_run_config(job.run_dir)
    metrics = {name: estimate.to_dict() for name, estimate in _estimates(model, run_config, dataset, job).items()}
    metrics.update(_cost(model, job.run_dir))
    atomic_write_json(job.run_dir / EVAL_FILE, {"settings": settings, "metrics": metrics})
    return metrics


def _estimates(model, run_config, dataset: ImageDataset, job: Job) -> dict[str, Any]:
    b, results = job.budget, {}

    def options(**extra: Any) -> EvalOptions:
        return EvalOptions(seed=job.seed, num_samples=b.num_samples, **extra)

    sample_metrics = ["parzen", "sample_quality"] if dataset.num_classes else ["parzen"]  # the features need labels
    plans: list[tuple[list[str], EvalOptions]] = [(sample_metrics, options(continuous=True))]
    if isinstance(model, VariationalPosterior):
        plans.append((["iw"], options(k=b.iw_k, limit=b.limit)))
    if isinstance(model, BinaryRBM):
        plans.append((["rbm_ais"], options(limit=b.limit, ais_runs=b.rbm_ais_runs, ais_steps=b.rbm_ais_steps,
                                           convergence_check=True)))
    if isinstance(model, LatentDecoder) and not model.conditional:
        plans.append((["decoder_ais"], options(continuous=True, observation="gaussian", limit=b.decoder_ais_images,
                                               ais_steps=b.decoder_ais_steps, ais_runs=b.decoder_ais_chains,
                                               ais_gradients=b.decoder_ais_gradients, convergence_check=True)))
    if isinstance(model, Reconstructor):
        plans.append((["reconstruction"], options(continuous=True, limit=b.limit)))
    for names, eval_options in plans:
        results.update(evaluate(EvalContext(model, run_config, dataset, "test", eval_options), names))
    if model.conditional and "iw_bound" in results:  # log p(x|y): never in the log p(x) column
        results["conditional_iw_bound"] = results.pop("iw_bound")
    if "iw_bound" in results and not model.likelihood.binary_support:  # a density of continuous pixels
        results["continuous_iw_bound"] = results.pop("iw_bound")
    return results


def _cost(model, run_dir: Path) -> dict[str, Any]:
    """Parameters, seconds spent training (the epochs' own clocks) and samples per second."""
    lines = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    generator = torch.Generator(model.device).manual_seed(SAMPLE_SEED)
    model.sample(min(100, GRID), generator=generator)  # warm up
    started = time.perf_counter()
    count = model.sample(1000, generator=generator).shape[0]
    rate = count / (time.perf_counter() - started)
    return {"parameters": _exact(sum(p.numel() for p in model.parameters()), "trainable and fitted values"),
            "train_seconds": _exact(round(sum(line.get("epoch_seconds", 0.0) for line in lines), 3),
                                    "sum of the epochs' epoch_seconds in metrics.jsonl"),
            "samples_per_second": _exact(round(rate, 1), "model.sample(1000) on the model's device, after a warm-up")}


def _exact(value: float, how: str) -> dict[str, Any]:
    return {"value": value, "stderr": None, "settings": {"measured": how}}


def figure_tensors(job: Job, dataset: ImageDataset) -> None:
    """Samples, reconstructions, interpolations, chains and class grids of the run, saved for the report."""
    model = load(job.run_dir)
    generator = lambda: torch.Generator(model.device).manual_seed(SAMPLE_SEED)  # noqa: E731 - same draws for all
    test = dataset.test
    tensors = {"samples": model.sample(GRID, generator=generator())}
    tensors["nearest"] = _nearest(tensors["samples"][:SHOWN], dataset.train.images)
    if isinstance(model, Reconstructor):
        label = test.labels[:SHOWN] if model.conditional and test.labels is not None else None
        tensors["reconstructions"] = model.reconstruct(test.images[:SHOWN], label=label, generator=generator())
    if isinstance(model, MarkovChainSampler):
        tensors["chain"] = model.sample_chain(SHOWN, 12, generator=generator()).transpose(0, 1).flatten(0, 1)
    class_grid = getattr(model, "class_grid", None)  # a class-conditional model's rows of classes
    if model.conditional and class_grid is not None:
        tensors["class_grid"] = class_grid(SHOWN, generator=generator())
    interpolation = _interpolation(model, test.images[:2])
    if interpolation is not None:
        tensors["interpolation"] = interpolation
    if isinstance(model, LatentDecoder) and model.latent_dim == 2 and not getattr(model, "conditional", False):
        tensors["manifold"] = _manifold(model)
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}, str(job.run_dir / FIGURES_FILE))
    save_images(tensors["samples"], job.run_dir / "samples.png", nrow=8)


def _nearest(samples: Tensor, train_images: Tensor) -> Tensor:
    """Each sample's nearest training image in pixel space (L2): (n, C, H, W)."""
    flat = train_images.flatten(1)
    index = torch.cdist(samples.flatten(1).to(flat), flat).argmin(dim=1)
    return train_images[index]


def _as_image(model, decoded: Tensor) -> Tensor:
    return (torch.sigmoid(decoded) if model.decoder_output == "logits" else decoded).clamp(0.0, 1.0)


@torch.no_grad()
def _interpolation(model, pair: Tensor, steps: int = 10) -> Tensor | None:
    """Decodings along the straight line between the codes of two test images (a model with an
    encoder into its decoder's latent space), or None."""
    if not isinstance(model, LatentDecoder) or getattr(model, "conditional", False) or not hasattr(model, "encode"):
        return None
    code = model.encode(pair)
    start, end = code if isinstance(code, Tensor) else code[0]  # a VAE's posterior mean
    weights = torch.linspace(0.0, 1.0, steps, device=start.device)[:, None]
    path = (1 - weights) * start + weights * end  # (steps, D)
    return _as_image(model, model.decode(path))


@torch.no_grad()
def _manifold(model, size: int = 15) -> Tensor:
    """The decoder over a size x size grid of the 2-D latent, at the N(0, 1) quantiles (Kingma &
    Welling 2013, Figure 4): (size^2, C, H, W)."""
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, size))
    grid = torch.cartesian_prod(quantiles.flip(0), quantiles)[:, [1, 0]].to(model.device)  # rows: z_2 falls
    return _as_image(model, model.decode(grid))


def record_peak_memory(run_dir: Path) -> None:
    """Keep the largest peak resident memory of a child process that worked on these weights.

    The peak is the child's own VmHWM (/proc/self/status). Not ru_maxrss: Linux carries that over an
    exec from the parent's memory, so a child spawned by a 2 GB orchestrator would report at least
    2 GB. A child that only reuses a finished run keeps the peak of the one that trained it."""
    peak_kib = own_peak_memory_kib()
    if peak_kib is None:
        return
    weights = _weights_checksum(run_dir)
    previous = _read_json(run_dir / MEMORY_FILE) or {}
    if previous.get("weights") == weights and isinstance(previous.get("peak_kib"), int):
        peak_kib = max(peak_kib, previous["peak_kib"])
    atomic_write_json(run_dir / MEMORY_FILE, {"weights": weights, "peak_kib": peak_kib})


def own_peak_memory_kib() -> int | None:
    """This process's peak resident set in KiB (Linux's VmHWM), or None where /proc has no status."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def recorded_peak_memory_kib(run_dir: Path) -> int | None:
    values = _read_json(run_dir / MEMORY_FILE) or {}
    peak = values.get("peak_kib")
    return peak if isinstance(peak, int) and values.get("weights") == _weights_checksum(run_dir) else None


def _weights_checksum(run_dir: Path) -> str | None:
    path = run_dir / WEIGHTS_FILE
    if not path.is_file():
        return None
    return read_tensors_and_metadata(path)[1].get("sha256")


def _read_json(path: Path) -> dict | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


__all__ = ["EVAL_FILE", "FIGURES_FILE", "MEMORY_FILE", "Job", "VaelabError", "figure_tensors", "score", "train"]
