"""Every registered model through the one interface: tiny config, finite loss, a training step
changes the weights, sampling shape and range, save/load round trip, and --resume.

Adding a model to the registry without a tiny config here fails `test_every_model_has_a_tiny_config`.
"""

from __future__ import annotations


import pytest
import torch
from tiny_models import COMMON, IMAGE_SHAPE, NUM_CLASSES, TINY_CONFIGS, build_tiny
from tiny_runs import read_tensors, same_tensors, write_images

import vaelab
from vaelab.checkpoint import WEIGHTS_FILE
from vaelab.cli import main
from vaelab.data.loader import Batch
from vaelab.optim import Updater, build_optimizer
from vaelab.registry import MODELS



def test_every_model_has_a_tiny_config():
    assert set(TINY_CONFIGS) == set(MODELS)


def build(name: str):
    return build_tiny(name)


def tiny_batch(seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(8, *IMAGE_SHAPE, generator=generator) < 0.4).float()
    return Batch(x=x, label=torch.randint(0, NUM_CLASSES, (8,), generator=generator))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz", labels=True)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_loss_is_finite(name):
    model, _ = build(name)
    terms = model.loss(tiny_batch())
    assert terms["loss"].dim() == 0 and torch.isfinite(terms["loss"])


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_a_training_step_changes_the_weights(name):
    model, train_config = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = model.make_optimizers(lambda params: build_optimizer(params, train_config))
    model.train()
    terms = model.train_step(tiny_batch(), 0, Updater(optimizers))
    assert torch.isfinite(terms["loss"])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter moved"


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_samples_have_the_image_shape_and_range(name, tmp_path, data):
    run = tmp_path / name
    assert main(["train", name, "--data", str(data), "--out", str(run), "--epochs", "1",
                 *TINY_CONFIGS[name], *COMMON]) == 0
    model = vaelab.load(run)
    samples = model.sample(5, generator=torch.Generator().manual_seed(3))
    again = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert samples.shape == (5, *IMAGE_SHAPE)
    assert samples.min() >= 0 and samples.max() <= 1
    torch.testing.assert_close(samples, again)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_save_load_round_trip(name, tmp_path, data):
    run = tmp_path / name
    assert main(["train", name, "--data", str(data), "--out", str(run), "--max-steps", "3",
                 *TINY_CONFIGS[name], *COMMON]) == 0
    loaded = vaelab.load(run)
    assert same_tensors(read_tensors(run / WEIGHTS_FILE), {k: v for k, v in loaded.state_dict().items()})
    reloaded = vaelab.load(run)
    torch.testing.assert_close(loaded.sample(4, generator=torch.Generator().manual_seed(1)),
                               reloaded.sample(4, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_resume_reproduces_an_uninterrupted_run(name, tmp_path, data):
    args = ["--data", str(data), *TINY_CONFIGS[name], *COMMON]
    assert main(["train", name, "--out", str(tmp_path / "whole"), "--max-steps", "8", *args]) == 0
    assert main(["train", name, "--out", str(tmp_path / "parts"), "--max-steps", "3", *args]) == 0
    torch.manual_seed(987654321)  # a resumed run must not lean on this process's RNG
    assert main(["train", name, "--out", str(tmp_path / "parts"), "--resume", "--max-steps", "8"]) == 0
    assert same_tensors(read_tensors(tmp_path / "whole" / WEIGHTS_FILE), read_tensors(tmp_path / "parts" / WEIGHTS_FILE))
