"""What the comparison report shows besides each model's numbers: the protocol in words, the
columns of the metric table (one protocol per column), the data row, the convergence flags and the
figures, drawn from the tensors each run saved."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaelab.comparison.budget import Budget, EvalBudget
from vaelab.comparison.runner import FIGURES_FILE, GRID
from vaelab.config import DataConfig, RunConfig
from vaelab.data.datasets import ImageDataset
from vaelab.errors import VaelabError
from vaelab.eval.estimate import paired_difference
from vaelab.eval.metrics import EvalContext, EvalOptions, evaluate

FIGURES_DIR = "figures"
BINARIZED = "binarized test images"
CONTINUOUS = "continuous test images"
GAUSSIAN = "continuous, Gaussian obs."
# Samples whose mean pairwise distance is below this fraction of the data's are flagged as collapsed.
COLLAPSE_RATIO = 0.8

# (result key, column label, protocol tag, number format, higher is better)
COLUMNS = [
    ("iw_bound", "L_k, log p(x)", BINARIZED, ".1f", True),
    ("rbm_log_likelihood", "RBM AIS, log p(x)", BINARIZED, ".1f", True),
    ("conditional_iw_bound", "L_k, log p(x|y)", BINARIZED, ".1f", True),
    ("continuous_iw_bound", "L_k, log density", "continuous, model's own Gaussian", ".1f", True),
    ("decoder_ais", "decoder AIS, log p(x)", GAUSSIAN, ".1f", True),
    ("parzen", "Parzen, log p(x) (biased)", CONTINUOUS, ".1f", True),
    ("reconstruction_mse", "reconstruction SE", CONTINUOUS, ".2f", False),
    ("frechet_distance", "Frechet distance", "classifier features", ".2f", False),
    ("precision", "precision", "classifier features", ".3f", True),
    ("recall", "recall", "classifier features", ".3f", True),
    ("class_consistency", "class consistency", "classifier", ".3f", True),
    ("mean_pairwise_distance", "mean pairwise L2 of samples", "pixels", ".2f", None),
    ("parameters", "parameters", "", ",d", None),
    ("train_seconds", "training s", "", ".0f", None),
    ("samples_per_second", "samples / s", "", ",.0f", None),
    ("peak_memory_mb", "peak MB", "", ",.0f", None),
]


def read_json(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise VaelabError(f"cannot read {path}: {error}") from None
    if not isinstance(values, dict):
        raise VaelabError(f"{path} is not a vaelab comparison file")
    return values


def protocol(plan: Budget) -> list[str]:
    """The comparison's protocol in sentences, so that no number is read under the wrong one."""
    b = plan.eval
    return [
        "Models of binary images (the Bernoulli VAE and CVAE, the RBM, the GSN) train on dynamically "
        "binarized images (binarize=auto) unless a run sets binarize; the others on the continuous pixels.",
        *(f"{name} sets binarize={spec.settings['binarize']}"
          + (": it trains on the continuous pixels." if spec.settings["binarize"] == "none" else ".")
          for name, spec in plan.runs.items() if "binarize" in spec.settings),
        f"L_k (k={b.iw_k}) and RBM AIS ({b.rbm_ais_runs} runs x {b.rbm_ais_steps:,} steps) are log-likelihoods "
        f"of the test images binarized once with the fixed evaluation seed: comparable with each other. The "
        f"CVAE's L_k is log p(x|y), a conditional likelihood, in its own column; a Gaussian VAE's L_k is a "
        f"density of the continuous pixels under its own training sigma, in another.",
        f"Decoder AIS (Wu et al. 2017; {b.decoder_ais_steps} steps x {b.decoder_ais_chains} chains, the first "
        f"{b.decoder_ais_images} test images) scores every decoder model (VAE, AE, DAE, GAN) on the continuous "
        f"test images under the same Gaussian observation model N(x; decoder mean, sigma^2 I), sigma chosen "
        f"per model on validation images: comparable with each other, not with the binarized columns.",
        f"The Parzen window ({b.num_samples:,} samples, sigma chosen on validation images), the reconstruction "
        f"error and the feature-space metrics (a classifier trained on this data set's training split) use the "
        f"continuous test images for every model.",
        f"The mean pairwise L2 distance of the same samples, in pixels, is the collapse check: a model is "
        f"flagged when it is below {COLLAPSE_RATIO} of the data row's.",
        "The data row scores training images as if they were a model's samples: each sample metric's floor.",
        *(f"{name} spends differently from the other runs: "
          + ", ".join(f"{key}={value} (the others: {getattr(b, key)})" for key, value in spec.eval.items()) + "."
          for name, spec in plan.runs.items() if spec.eval),
    ]


def build_summary(plan: Budget, statuses: dict[str, dict[str, Any]], results: dict[str, Any],
                  dataset: ImageDataset, out: Path, seed: int, command: str) -> dict[str, Any]:
    present = {key for metrics in results.values() for key in metrics}
    columns = [{"key": key, "label": label, "protocol": tag, "format": fmt, "higher_is_better": better}
               for key, label, tag, fmt, better in COLUMNS if key in present]
    return {"title": f"vaelab comparison on {dataset.name} ({plan.name} budget)",
            "data": {"name": dataset.name, "source": dataset.source, "image_shape": list(dataset.image_shape),
                     "train": len(dataset.train), "test": len(dataset.test)},
            "budget": plan.name, "seed": seed, "command": command, "protocol": protocol(plan),
            "models": statuses, "columns": columns, "flags": report_flags(results), "figures": [],
            "notes": notes(statuses) + paired_decoder_ais(statuses, results)}


def report_flags(results: dict[str, Any]) -> list[str]:
    """Every warning the numbers themselves raise: unconverged AIS figures, collapsed samples."""
    return convergence_flags(results) + collapse_flags(results)


def collapse_flags(results: dict[str, Any]) -> list[str]:
    """A line for every model whose samples are less spread out than COLLAPSE_RATIO of the data
    row's images (the training images standing in for samples), in pixel space."""
    reference = results.get("data", {}).get("mean_pairwise_distance", {}).get("value")
    if not reference:
        return []
    flags = []
    for model, metrics in results.items():
        value = metrics.get("mean_pairwise_distance", {}).get("value")
        if model != "data" and value is not None and value < COLLAPSE_RATIO * reference:
            flags.append(f"the samples of {model} are close together: mean pairwise L2 {value:.2f}, "
                         f"{value / reference:.2f} of the data's {reference:.2f} (below {COLLAPSE_RATIO}): "
                         "few distinct images, or blurred towards a mean one")
    return flags


def convergence_flags(results: dict[str, Any]) -> list[str]:
    """A line for every AIS figure that moved by more than its stderr between half and all its steps."""
    flags = []
    for model, metrics in results.items():
        for name, estimate in metrics.items():
            half = estimate.get("settings", {}).get("half_steps")
            if half and estimate["settings"].get("converged") is False:
                # an RBM log-likelihood moves with its log Z: judged against log Z's stderr
                stderr = estimate["settings"].get("log_z_stderr", estimate["stderr"])
                flags.append(f"{name} of {model} moved by {abs(estimate['value'] - half['value']):.2f} nats between "
                             f"{half['num_steps']:,} steps and twice as many (stderr {stderr:.2f}): "
                             "not converged, read it as a rough figure")
    return flags


def notes(statuses: dict[str, dict[str, Any]]) -> list[str]:
    failed = [name for name, status in statuses.items() if status["status"] != "ok"]
    return [f"{len(failed)} of {len(statuses)} runs failed: {', '.join(failed)}; their errors are in the table."] \
        if failed else []


def paired_decoder_ais(statuses: dict[str, dict[str, Any]], results: dict[str, Any]) -> list[str]:
    """A sentence per decoder model against each GAN: the mean difference of their decoder-AIS
    log p(x) on the same test images, with the stderr of the paired differences (the table's
    stderrs are the images' spread, which the two models share and the difference cancels)."""
    gans = [name for name, status in statuses.items() if status.get("model") == "gan"]
    lines = []
    for gan in gans:
        for name, metrics in results.items():
            if name == gan or "decoder_ais" not in metrics or "decoder_ais" not in results.get(gan, {}):
                continue
            paired = paired_difference(metrics["decoder_ais"], results[gan]["decoder_ais"])
            if paired is not None:
                count = len(metrics["decoder_ais"]["settings"]["per_example"])
                lines.append(f"Decoder AIS, {name} minus {gan} on the same {count} test images: "
                             f"{paired[0]:+.1f} ± {paired[1]:.1f} nats (stderr of the paired differences).")
    return lines


class TrainingImages:
    """Training images standing in for a model's samples (the data row): sample(n) draws n of them."""

    conditional = False
    num_classes = None
    device = torch.device("cpu")

    def __init__(self, images: Tensor):
        self.images = images

    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        index = torch.randint(len(self.images), (num_samples,), generator=generator)
        return self.images[index]


def data_row(dataset: ImageDataset, budget: EvalBudget, seed: int) -> dict[str, Any]:
    """The test split scored against the training split by the sample metrics."""
    run_config = RunConfig("data", None, DataConfig(name=dataset.name, binarize="none"),
                           image_shape=dataset.image_shape)
    options = EvalOptions(seed=seed, num_samples=budget.num_samples, continuous=True)
    context = EvalContext(TrainingImages(dataset.train.images), run_config, dataset, "test", options)
    names = ["parzen", "sample_quality"] if dataset.num_classes else ["parzen"]
    return {name: estimate.to_dict() for name, estimate in evaluate(context, names).items()}


# -- figures --------------------------------------------------------------------------------------

def draw_figures(out: Path, summary: dict[str, Any]) -> list[dict[str, str]]:
    """The report's figures, drawn into DIR/figures/ from the runs' saved tensors and metrics."""
    from vaelab.plots.figures import Panel, graphs_figure, panel_figure, training_curves
    from vaelab.registry import get_model_class

    ok = {name: entry for name, entry in summary["models"].items() if entry["status"] == "ok"}
    tensors = {name: _figure_tensors(out / entry["run_dir"]) for name, entry in ok.items()}
    scale = max(1, 40 // max(summary["data"]["image_shape"][1:]))  # small images are enlarged
    directory = out / FIGURES_DIR
    figures: list[dict[str, str]] = []

    def add(title: str, name: str, panels: list, caption: str, columns: int | None = None) -> None:
        if panels:
            panel_figure(panels, directory / name, scale=scale, columns=columns)
            figures.append({"title": title, "path": f"{FIGURES_DIR}/{name}", "caption": caption})

    add("Samples", "samples.png", [Panel(name, t["samples"], 8) for name, t in tensors.items()],
        f"{GRID} samples of every model, same seed and pixel scale (likelihood means where the model has one).", 4)
    originals = _test_images(out, summary)
    add("Reconstructions", "reconstructions.png",
        ([Panel("test images", originals, 8)] if originals is not None else [])
        + [Panel(name, t["reconstructions"], 8) for name, t in tensors.items() if "reconstructions" in t],
        "The same first test images and each model's reconstruction of them.", 4)
    add("Interpolations", "interpolations.png",
        [Panel(name, t["interpolation"], 10) for name, t in tensors.items() if "interpolation" in t],
        "Decodings along the straight line between the codes of the first two test images.", 1)
    add("Latent manifold", "manifold.png", [Panel(name, t["manifold"], 15) for name, t in tensors.items()
                                            if "manifold" in t],
        "The 2-D-latent VAE's decoder over a grid of N(0, 1) quantiles (Kingma & Welling 2013, Figure 4).")
    add("Class grid", "class_grid.png", [Panel(name, t["class_grid"], 8) for name, t in tensors.items()
                                         if "class_grid" in t],
        "The CVAE's samples, one row per requested class.")
    add("Markov chains", "chains.png", [Panel(name, t["chain"], 12) for name, t in tensors.items() if "chain" in t],
        "Consecutive states of 8 chains (rows) of the models that sample by a Markov chain.", 1)
    add("Nearest training images", "nearest.png",
        [Panel(f"{name}: samples / nearest", torch.cat([t["samples"][:8], t["nearest"]]), 8)
         for name, t in tensors.items()],
        "Each model's first 8 samples above their nearest training images (L2 in pixels): samples are not copies.", 4)
    curves = {name: _metrics_lines(out / entry["run_dir"]) for name, entry in ok.items()}
    training_curves(curves, directory / "curves.png")
    figures.append({"title": "Training curves", "path": f"{FIGURES_DIR}/curves.png",
                    "caption": "Training and validation loss per epoch; for the GAN both players."})
    graphs = {name: get_model_class(entry["model"]).training_graph(_model_config(out / entry["run_dir"]))
              for name, entry in summary["models"].items() if (out / entry["run_dir"] / "config.json").exists()}
    graphs_figure(graphs, directory / "graphs.png", rows=4)
    figures.append({"title": "Training graphs", "path": f"{FIGURES_DIR}/graphs.png",
                    "caption": "What each model computes in training; the VAE's extra cost, its KL term, in blue."})
    return figures


def _figure_tensors(run_dir: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    path = run_dir / FIGURES_FILE
    return load_file(str(path)) if path.is_file() else {}


def _test_images(out: Path, summary: dict[str, Any]) -> Tensor | None:
    from vaelab.checkpoint import load_run_config
    from vaelab.comparison.runner import SHOWN
    from vaelab.experiment import load_data

    for entry in summary["models"].values():
        if (out / entry["run_dir"] / "config.json").exists():
            data = load_run_config(out / entry["run_dir"]).data
            return load_data(data).test.images[:SHOWN]
    return None


def _metrics_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _model_config(run_dir: Path) -> Any:
    from vaelab.checkpoint import load_run_config

    return load_run_config(run_dir).model


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value))
