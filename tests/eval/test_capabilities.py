"""Estimators ask models for capabilities, never for a class: a decoder model that no part of vaelab
knows, written here, is scored by decoder AIS, the Parzen window and the sample-quality metrics
through the path `vaelab eval` takes, and is told in one line which metrics do not apply to it."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import vaelab.eval
from vaelab.config import DataConfig, RunConfig
from vaelab.data.datasets import ImageDataset, Split
from vaelab.data.loader import Batch
from vaelab.distributions import BernoulliLikelihood
from vaelab.errors import VaelabError
from vaelab.eval.metrics import EvalContext, EvalOptions, check_metrics, evaluate
from vaelab.models.base import GenerativeModel, StandardNormalPrior
from vaelab.registry import MODELS

SHAPE = (1, 2, 3)


@dataclass
class LineDecoderConfig:
    latent_dim: int = 1


class LineDecoder(GenerativeModel, StandardNormalPrior):
    """z ~ N(0, 1); x_i ~ Bernoulli(sigmoid(w_i z + b_i)): a one-dimensional latent decoder."""

    config_class = LineDecoderConfig
    decoder_output = "logits"

    def __init__(self, config: LineDecoderConfig, image_shape, num_classes=None):
        super().__init__(config, image_shape, num_classes)
        pixels = math.prod(self.image_shape)
        self.weight = nn.Parameter(torch.linspace(-3.0, 3.0, pixels))
        self.bias = nn.Parameter(torch.linspace(1.0, -1.0, pixels))
        self.likelihood = BernoulliLikelihood()

    def decode(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        self.check_label(label)
        logits = z[..., :1] * self.weight + self.bias  # (..., P)
        return logits.view(*z.shape[:-1], *self.image_shape)

    def loss(self, batch: Batch, step: int | None = None) -> dict[str, Tensor]:
        """-log p(x) by importance sampling from the prior (64 draws per image)."""
        z = self.sample_prior(64 * len(batch.x)).view(64, len(batch.x), 1)
        log_px = torch.logsumexp(self.likelihood.log_prob(batch.x, self.decode(z)), 0) - math.log(64)
        return {"loss": -log_px.mean()}

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        return self.likelihood.sample(self.decode(self.sample_prior(num_samples, generator)), generator)


def exact_log_px(model: LineDecoder, images: Tensor) -> Tensor:
    """log p(x) = log integral N(z; 0, 1) p(x|z) dz by the trapezoid rule on [-10, 10]: (N,)."""
    z = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    with torch.no_grad():
        decoded = model.double().decode(z[:, None, None].expand(-1, len(images), 1))  # (Z, N, 1, 2, 3)
        log_f = model.likelihood.log_prob(images.double(), decoded) - 0.5 * (z[:, None] ** 2 + math.log(2 * math.pi))
    model.float()
    return torch.logsumexp(log_f + math.log(z[1] - z[0]), dim=0)


@pytest.fixture(scope="module")
def context() -> EvalContext:
    model = LineDecoder(LineDecoderConfig(), SHAPE).eval()
    images = model.sample(160, torch.Generator().manual_seed(0))  # binary images the model could make
    labels = (images.flatten(1).sum(1) > 3).long()
    dataset = ImageDataset("line", Split(images[:120], labels[:120]), Split(images[120:], labels[120:]))
    run_config = RunConfig(model_name="line", model=LineDecoderConfig(), data=DataConfig(name="line", binarize="none"),
                           image_shape=SHAPE, num_classes=2)
    options = EvalOptions(num_samples=200, ais_steps=300, ais_runs=16, seed=1)
    return EvalContext(model, run_config, dataset, "test", options)


def test_decoder_ais_scores_an_unknown_decoder_model_exactly(context):
    result = evaluate(context, ["decoder_ais"])["decoder_ais"]
    exact = exact_log_px(context.model, context.split.images).mean().item()
    assert result.value == pytest.approx(exact, abs=0.05)
    assert result.settings["observation"].startswith("bernoulli on the decoder's logits")
    assert result.settings["bound_of"] == "log p(x)"


def test_sample_metrics_score_an_unknown_model(context, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))  # the feature classifier is trained and cached there
    results = evaluate(context, ["parzen", "sample_quality"])
    assert set(results) == {"parzen", "frechet_distance", "precision", "recall", "mean_pairwise_distance"}
    assert math.isfinite(results["parzen"].value) and results["parzen"].settings["num_samples"] == 200
    # the test images are draws of this very model: its samples cover them and lie among them
    assert results["precision"].value > 0.8 and results["recall"].value > 0.8
    assert results["frechet_distance"].value < 5 * results["frechet_distance"].stderr


@pytest.mark.parametrize("metric, lacks", [
    ("elbo", "variational posterior"), ("iw", "variational posterior"), ("latent", "variational posterior"),
    ("reconstruction", "reconstruction pass"), ("rbm_ais", "binary RBM energy")])
def test_a_metric_it_lacks_a_capability_for_is_one_line(context, metric, lacks):
    with pytest.raises(VaelabError, match=f"^metric {metric} does not apply to model LineDecoder: it has no {lacks}"):
        check_metrics([metric], context.model)


def test_nothing_under_eval_names_a_model_class_or_a_model_name():
    allowed = {"vaelab.models.capabilities", "vaelab.models.modes"}
    classes = {cls.__name__ for cls in MODELS.values()}
    for path in Path(vaelab.eval.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vaelab.models"):
                assert node.module in allowed, f"{path.name} imports {node.module}"
            if isinstance(node, ast.Name):
                assert node.id not in classes, f"{path.name}:{node.lineno} names the model class {node.id}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in MODELS, f"{path.name}:{node.lineno} names the model {node.value!r}"
