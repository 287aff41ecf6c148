"""Reconstruction error: exact values for a reconstruct we control, every registered model with a
reconstruct, the CVAE's labels, and the GSN's seeded stochastic pass."""

import math

import numpy as np
import pytest
import torch

from tiny_models import IMAGE_SHAPE, NUM_CLASSES, build_tiny
from vaelab.data.datasets import Split
from vaelab.errors import VaelabError
from vaelab.eval.reconstruction import reconstruction_error
from vaelab.registry import MODELS

RECONSTRUCTING = {"vae", "cvae", "ae", "dae", "rbm", "gsn"}


def build(name):
    return build_tiny(name)[0].eval()


def tiny_split(count=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(count, *IMAGE_SHAPE, generator=generator) < 0.4).float()
    return Split(images, torch.randint(0, NUM_CLASSES, (count,), generator=generator))


def test_exact_values_for_a_controlled_reconstruct():
    model = build("ae")
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.5, 0.0, 0.25], [0.0, 0.0, 1.0, 1.0]]).view(3, 1, 2, 2)
    p = torch.tensor([[0.5, 0.9, 1.0, 0.0], [0.2, 0.5, 0.1, 0.25], [0.0, 1.0, 0.7, 0.6]]).view(3, 1, 2, 2)
    model.reconstruct = lambda images, label=None, generator=None: p  # one batch of the three images
    results = reconstruction_error(model, Split(x), batch_size=3)
    xs, ps = x.double().view(3, 4).numpy(), p.double().view(3, 4).numpy()
    mse = ((xs - ps) ** 2).sum(1)
    clamped = np.clip(ps, 1e-6, 1 - 1e-6)
    bce = -(xs * np.log(clamped) + (1 - xs) * np.log(1 - clamped)).sum(1)
    # by hand, image 0: 0.25 + 0.01 + 0 + 0 and -log 0.5 - log 0.9 - log(1 - 1e-6) - log(1 - 1e-6)
    assert mse[0] == pytest.approx(0.26, abs=1e-7)  # 0.9 is a float32
    assert bce[0] == pytest.approx(math.log(2) - math.log(0.9) + 2e-6, abs=1e-7)
    # image 2: p = 1 where x = 0 is clamped to 1 - 1e-6, costing -log 1e-6 = 13.8 nats, not infinity
    assert bce[2] == pytest.approx(-math.log(1 - 1e-6) - math.log(1e-6) - math.log(0.7) - math.log(0.6), abs=1e-6)
    for name, per_image in (("reconstruction_mse", mse), ("reconstruction_bce", bce)):
        assert results[name].value == pytest.approx(per_image.mean(), abs=1e-12)
        assert results[name].stderr == pytest.approx(per_image.std(ddof=1) / math.sqrt(3), abs=1e-12)
    assert results["reconstruction_mse"].settings["examples"] == 3


def test_rbm_is_one_mean_field_up_down_pass():
    model = build("rbm")
    with torch.no_grad():
        model.visible_bias.normal_(0, 0.5)
        model.hidden_bias.normal_(0, 0.5)
        model.weight.normal_(0, 0.5)
    split = tiny_split()
    v = split.images.view(len(split), -1).double()
    W, b, c = model.weight.double(), model.visible_bias.double(), model.hidden_bias.double()
    p = torch.sigmoid(torch.sigmoid(v @ W + c) @ W.T + b)
    expected = (v - p).pow(2).sum(1)
    result = reconstruction_error(model, split, batch_size=4)["reconstruction_mse"]
    assert result.value == pytest.approx(expected.mean().item(), rel=1e-6)
    assert "up-down Gibbs pass" in result.settings["reconstruction"] and result.settings["model"] == "RBM"


def test_every_registered_model_with_reconstruct_runs():
    assert {name for name, cls in MODELS.items() if hasattr(cls, "reconstruct")} == RECONSTRUCTING
    split = tiny_split()
    for name in sorted(RECONSTRUCTING):
        model = build(name)
        results = reconstruction_error(model, split, batch_size=4)
        for estimate in results.values():
            assert math.isfinite(estimate.value) and estimate.stderr > 0, name
        settings = results["reconstruction_bce"].settings
        class_name = type(model).__name__
        assert settings["model"] == class_name
        assert settings["reconstruction"] == type(model).reconstruction_description
        assert settings["stochastic"] == (name == "gsn") and settings["conditional"] == (name == "cvae")
        if name != "gsn":  # deterministic: batching does not change the numbers
            whole = reconstruction_error(model, split, batch_size=100)
            batched = results["reconstruction_bce"].value
            assert whole["reconstruction_bce"].value == pytest.approx(batched, rel=1e-6)
    with pytest.raises(VaelabError, match="does not apply to model GAN: it has no reconstruction pass"):
        reconstruction_error(build("gan"), split)


def test_cvae_reconstructs_with_each_image_label():
    model = build("cvae")
    split = tiny_split()
    expected = (split.images - model.reconstruct(split.images, split.labels)).pow(2).flatten(1).sum(1)
    got = reconstruction_error(model, split, batch_size=4)["reconstruction_mse"].value
    assert got == pytest.approx(expected.double().mean().item(), rel=1e-6)
    shifted = (split.labels + 1) % NUM_CLASSES
    wrong = (split.images - model.reconstruct(split.images, shifted)).pow(2).flatten(1).sum(1)
    assert got != pytest.approx(wrong.double().mean().item(), rel=1e-6)
    with pytest.raises(VaelabError, match="labelled"):
        reconstruction_error(model, Split(split.images))


def test_gsn_reconstruction_is_seeded_and_leaves_the_global_rng_alone():
    model = build("gsn")
    split = tiny_split()
    state = torch.get_rng_state()
    first = reconstruction_error(model, split, batch_size=4, seed=3)["reconstruction_bce"]
    assert torch.equal(torch.get_rng_state(), state)
    assert reconstruction_error(model, split, batch_size=4, seed=3)["reconstruction_bce"].value == first.value
    assert reconstruction_error(model, split, batch_size=4, seed=4)["reconstruction_bce"].value != first.value
    generator = torch.Generator().manual_seed(3)  # the same stream, batch after batch
    p = torch.cat([model.reconstruct(x, generator=generator) for x in split.images.split(4)]).double()
    x = split.images.double()
    p = p.clamp(1e-6, 1 - 1e-6)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    assert first.value == pytest.approx(bce.mean().item(), rel=1e-9)
    assert first.settings["seed"] == 3 and first.settings["stochastic"] is True
