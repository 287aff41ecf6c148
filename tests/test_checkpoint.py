"""Run directories: config + safetensors round trips, corrupt files as one-line errors, the
resumable training state, and no pickle anywhere."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab.config import RunConfig
from vaelab.checkpoint import (BEST_WEIGHTS, CHECKPOINT_DIR, CONFIG_FILE, WEIGHTS_FILE,
                               load_run_config, load_training_state, save_run_config,
                               save_training_state, save_weights)
from vaelab.config import DataConfig, TrainConfig
from vaelab.data.loader import Batch
from vaelab.errors import VaelabError
from vaelab.models.vae import VAE, VAEConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "vaelab"
IMAGE_SHAPE = (1, 6, 6)


def make_run(run_dir: Path, **model_fields) -> tuple[VAE, RunConfig]:
    """A run directory holding config.json and model.safetensors of a freshly built VAE."""
    fields = {"hidden": (16,), "channels": (4, 8), "latent_dim": 3, **model_fields}
    run_config = RunConfig(model_name="vae", model=VAEConfig(**fields), data=DataConfig(name="tiny.npz"),
                           train=TrainConfig(epochs=2, lr=3e-4), image_shape=IMAGE_SHAPE, num_classes=2,
                           class_names=["a", "b"])
    torch.manual_seed(0)
    model = VAE(run_config.model, IMAGE_SHAPE, num_classes=2)
    with torch.no_grad():  # not the initial weights, so a loader that re-initialises cannot pass
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    save_run_config(run_dir, run_config)
    save_weights(model, run_dir / WEIGHTS_FILE)
    return model.eval(), run_config


@pytest.mark.parametrize("fields", [{}, {"architecture": "conv", "likelihood": "gaussian", "variance": "learned"},
                                    {"architecture": "linear", "likelihood": "gaussian"}])
def test_save_and_load_give_identical_outputs_and_config(tmp_path, fields):
    model, run_config = make_run(tmp_path, **fields)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # nothing else needed
    loaded = vaelab.load(tmp_path)
    assert type(loaded) is VAE and not loaded.training
    assert loaded.config == run_config.model
    assert loaded.image_shape == IMAGE_SHAPE and loaded.num_classes == 2
    assert load_run_config(tmp_path) == run_config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    x = torch.rand(4, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), model.decode(z))
        for a, b in zip(loaded.encode(x), model.encode(x)):
            assert torch.equal(a, b)
    assert torch.equal(loaded.sample(5, generator=torch.Generator().manual_seed(3)),
                       model.sample(5, generator=torch.Generator().manual_seed(3)))


def test_run_config_json_round_trip(tmp_path):
    _, run_config = make_run(tmp_path)
    values = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert values["vaelab_version"] == vaelab.__version__
    assert values["model_name"] == "vae" and values["image_shape"] == [1, 6, 6]
    assert values["model"]["hidden"] == [16] and values["train"]["lr"] == 3e-4
    assert values["data"]["name"] == "tiny.npz" and values["class_names"] == ["a", "b"]
    assert load_run_config(tmp_path) == run_config


def test_best_and_unknown_checkpoints(tmp_path):
    model, _ = make_run(tmp_path)
    with pytest.raises(VaelabError, match="no best weights"):
        vaelab.load(tmp_path, checkpoint="best")
    (tmp_path / CHECKPOINT_DIR).mkdir()
    shutil.copy(tmp_path / WEIGHTS_FILE, tmp_path / CHECKPOINT_DIR / BEST_WEIGHTS)
    best = vaelab.load(tmp_path, checkpoint="best")
    assert torch.equal(best.posterior_head.weight, model.posterior_head.weight)
    with pytest.raises(VaelabError, match="checkpoint must be one of final, best"):
        vaelab.load(tmp_path, checkpoint="worst")


# -- broken run directories: VaelabError (one line, exit 2), never a traceback --------------------------

def _truncate(path: Path) -> None:
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 this is not a safetensors file")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty])
def test_corrupt_weights_raise_vaelab_error(tmp_path, damage):
    make_run(tmp_path)
    damage(tmp_path / WEIGHTS_FILE)
    with pytest.raises(VaelabError, match="cannot read weights"):
        vaelab.load(tmp_path)


def test_missing_files_raise_vaelab_error(tmp_path):
    with pytest.raises(VaelabError, match="not a vaelab run directory"):
        vaelab.load(tmp_path / "nowhere")
    make_run(tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(VaelabError, match="no final weights"):
        vaelab.load(tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(VaelabError, match="no config.json"):
        vaelab.load(tmp_path)


@pytest.mark.parametrize("edit,message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace('"model_name": "vae"', '"model_name": "vea"'), "unknown model 'vea'"),
    (lambda text: text.replace('"latent_dim": 3', '"latent_dim": "three"'), "latent_dim must be an integer"),
    (lambda text: text.replace('"latent_dim": 3', '"latent_dimm": 3'), "latent_dimm"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "model"}), "model"),
    (lambda text: "[1, 2, 3]", CONFIG_FILE),
])
def test_corrupt_config_raises_vaelab_error(tmp_path, edit, message):
    make_run(tmp_path)
    path = tmp_path / CONFIG_FILE
    path.write_text(edit(path.read_text()))
    with pytest.raises(VaelabError, match=message):
        vaelab.load(tmp_path)


def test_weights_of_another_shape_raise_vaelab_error(tmp_path):
    make_run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    make_run(other, latent_dim=4)
    shutil.copy(other / WEIGHTS_FILE, tmp_path / WEIGHTS_FILE)  # config says latent_dim=3
    with pytest.raises(VaelabError, match="do not fit"):
        vaelab.load(tmp_path)


# -- the resumable training state ---------------------------------------------------------------------

def _training_state() -> tuple[VAE, torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    model = VAE(VAEConfig(hidden=(8,), latent_dim=2), IMAGE_SHAPE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    batch = Batch((torch.rand(4, *IMAGE_SHAPE) > 0.5).float())
    for _ in range(3):
        optimizer.zero_grad()
        model.loss(batch)["loss"].backward()
        optimizer.step()
        scheduler.step()
    state = {"model": model.state_dict(), "optimizers": [optimizer.state_dict()],
             "schedulers": [scheduler.state_dict()], "rng": {"torch": torch.get_rng_state()},
             "progress": {"epoch": 1, "step": 3, "epoch_sums": {"loss": 12.5, "kl": 0.25},
                          "best_val_loss": math.inf, "epoch_seconds": 0.1, "note": None, "flag": True}}
    return model, optimizer, state


def _assert_same(restored, original, where="state"):
    """Exact equality of nested state; tensors bitwise with the same dtype. JSON has no tuples, so
    a tuple (Adam's betas) may come back as a list with the same items."""
    if isinstance(original, torch.Tensor):
        assert isinstance(restored, torch.Tensor), where
        assert restored.dtype == original.dtype and restored.shape == original.shape, where
        assert torch.equal(restored, original), where
    elif isinstance(original, dict):
        assert isinstance(restored, dict) and list(restored) == list(original), where  # int keys stay ints
        for key in original:
            _assert_same(restored[key], original[key], f"{where}/{key}")
    elif isinstance(original, (list, tuple)):
        assert isinstance(restored, (list, tuple)) and len(restored) == len(original), where
        for i, (a, b) in enumerate(zip(restored, original)):
            _assert_same(a, b, f"{where}/{i}")
    else:
        assert type(restored) is type(original) and restored == original, (where, restored, original)


def test_training_state_round_trips_exactly(tmp_path):
    model, optimizer, state = _training_state()
    assert set(state["optimizers"][0]["state"]) == set(range(len(list(model.parameters()))))
    save_training_state(tmp_path, state)
    restored = load_training_state(tmp_path)
    _assert_same(restored, state)
    # only the committed files, no temporary leftovers
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["last.json", "last.safetensors"]

    # a fresh model and optimizer restored from it take exactly the same next step
    torch.manual_seed(1)
    twin = VAE(VAEConfig(hidden=(8,), latent_dim=2), IMAGE_SHAPE)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=1.0)
    twin.load_state_dict(restored["model"])
    twin_optimizer.load_state_dict(restored["optimizers"][0])
    assert twin_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-3
    batch = Batch((torch.rand(4, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(5)) > 0.5).float())
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        torch.manual_seed(7)
        opt.zero_grad()
        m.loss(batch)["loss"].backward()
        opt.step()
    for name, tensor in model.state_dict().items():
        assert torch.equal(twin.state_dict()[name], tensor), name


def test_training_state_overwrites_atomically_and_bad_files_are_errors(tmp_path, capsys):
    _, _, state = _training_state()
    with pytest.raises(VaelabError, match="nothing to resume"):
        load_training_state(tmp_path)
    save_training_state(tmp_path, state)
    first_step = state["progress"]["step"]
    state["progress"]["step"] = 4
    save_training_state(tmp_path, state)
    assert load_training_state(tmp_path)["progress"]["step"] == 4
    _truncate(tmp_path / CHECKPOINT_DIR / "last.safetensors")
    # the damaged last checkpoint is detected and the previous one used, with a warning
    assert load_training_state(tmp_path)["progress"]["step"] == first_step != 4
    warning = capsys.readouterr().err
    assert warning.startswith("warning: cannot read checkpoint") and "resuming from the previous checkpoint" in warning
    _truncate(tmp_path / CHECKPOINT_DIR / "previous.safetensors")
    with pytest.raises(VaelabError, match="cannot read checkpoint"):
        load_training_state(tmp_path)


# -- nothing is pickled --------------------------------------------------------------------------------

FORBIDDEN = re.compile(r"\bimport\s+pickle\b|\bfrom\s+pickle\b|\bpickle\.loads?\(|\bcPickle\b|\bdill\b|\bjoblib\b"
                       r"|torch\.load\(|torch\.save\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False")


def test_no_pickle_in_the_source():
    sources = sorted(SRC.rglob("*.py"))
    assert len(sources) > 10
    offenders = [f"{path.relative_to(SRC)}:{n}: {line.strip()}" for path in sources
                 for n, line in enumerate(path.read_text().splitlines(), 1) if FORBIDDEN.search(line)]
    assert offenders == []
    # every numpy load refuses pickled objects explicitly
    loads = [line for path in sources for line in path.read_text().splitlines() if re.search(r"\bnp\.load\(", line)]
    assert loads and all("allow_pickle=False" in line for line in loads), loads
