"""Run directories: config.json, model.safetensors, metrics.jsonl and checkpoints/.

Everything is JSON or safetensors, written atomically (a temporary file, then os.replace), so an
interrupted write never leaves a half-written file behind. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors_to_bytes

from vaelab.config import RunConfig
from vaelab.errors import VaelabError
from vaelab.files import atomic_write_bytes, atomic_write_json
from vaelab.models.base import GenerativeModel
from vaelab.registry import get_model_class
from vaelab.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TRAINING_STATE = "last"  # checkpoints/last.safetensors + checkpoints/last.json
BEST_WEIGHTS = "best.safetensors"  # checkpoints/best.safetensors: lowest validation loss so far


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    payload = save_tensors_to_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, payload)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise VaelabError(f"cannot read weights {path}: {error}") from None


RUN_ENTRIES = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE, CHECKPOINT_DIR, "tensorboard")


def clear_run(run_dir: str | Path) -> None:
    """Remove what a previous run wrote into run_dir (and nothing else: it may hold other files)."""
    for name in RUN_ENTRIES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def save_run_config(run_dir: Path, run_config: RunConfig) -> None:
    atomic_write_json(Path(run_dir) / CONFIG_FILE, run_config.to_dict())


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise VaelabError(f"{run_dir} is not a vaelab run directory (no {CONFIG_FILE})")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise VaelabError(f"{path} is not valid JSON: {error.msg}") from None
    if not isinstance(values, dict):
        raise VaelabError(f"{path} is not a vaelab run config (expected a JSON object)")
    try:
        return RunConfig.from_dict(values, lambda name: get_model_class(name).config_class)
    except KeyError as error:  # a hand-edited or foreign config.json: one line, not a traceback
        raise VaelabError(f"{path} is not a complete vaelab run config: no {error} entry") from None
    except (AttributeError, TypeError, ValueError) as error:
        raise VaelabError(f"{path} is not a valid vaelab run config: {error}") from None


def build_model(run_config: RunConfig) -> GenerativeModel:
    model_class = get_model_class(run_config.model_name)
    return model_class(run_config.model, run_config.image_shape, run_config.num_classes)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    atomic_save_tensors(path, model.state_dict(), metadata={"format": "pt", "vaelab_version": __version__})


def load_weights(model: torch.nn.Module, path: Path) -> None:
    tensors = read_tensors(path)
    expected = model.state_dict()
    # load_state_dict raises a RuntimeError for a shape mismatch even with strict=False
    mismatched = [f"{key} {tuple(tensors[key].shape)} (model: {tuple(value.shape)})"
                  for key, value in expected.items() if key in tensors and tensors[key].shape != value.shape]
    if mismatched:
        raise VaelabError(f"weights {path} do not fit the model: {', '.join(mismatched[:3])}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise VaelabError(f"weights {path} do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load(run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a trained model from its run directory, in eval mode.

    checkpoint: "final" (model.safetensors, the weights when training stopped) or "best"
    (the lowest validation loss seen).
    """
    run_dir = Path(run_dir)
    run_config = load_run_config(run_dir)
    paths = {"final": run_dir / WEIGHTS_FILE, "best": run_dir / CHECKPOINT_DIR / BEST_WEIGHTS}
    if checkpoint not in paths:
        raise VaelabError(f"checkpoint must be one of {', '.join(paths)}, got {checkpoint!r}")
    if not paths[checkpoint].is_file():
        raise VaelabError(f"{run_dir} has no {checkpoint} weights ({paths[checkpoint]} is missing)")
    model = build_model(run_config)
    load_weights(model, paths[checkpoint])
    return model.to(device).eval()


# -- resumable training state --------------------------------------------------------------------

def _split_state(prefix: str, state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested state dict into `tensors` under a path key; return the JSON rest."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state
        return {"__tensor__": prefix}
    if isinstance(state, dict):
        return {"__dict__": [[key, _split_state(f"{prefix}/{key}", value, tensors)] for key, value in state.items()]}
    if isinstance(state, (list, tuple)):
        return [_split_state(f"{prefix}/{i}", value, tensors) for i, value in enumerate(state)]
    return state


def _join_state(json_state: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(json_state, dict) and "__tensor__" in json_state:
        return tensors[json_state["__tensor__"]]
    if isinstance(json_state, dict) and "__dict__" in json_state:
        return {key: _join_state(value, tensors) for key, value in json_state["__dict__"]}
    if isinstance(json_state, list):
        return [_join_state(value, tensors) for value in json_state]
    return json_state


def save_training_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and plain values (weights, optimizer and scheduler state, RNG
    state, counters) as checkpoints/last.safetensors. The plain values travel as JSON inside the
    safetensors metadata, so one atomic rename commits the whole checkpoint; last.json is a
    readable copy of them."""
    tensors: dict[str, torch.Tensor] = {}
    json_state = _split_state("state", state, tensors)
    directory = Path(run_dir) / CHECKPOINT_DIR
    atomic_save_tensors(directory / f"{TRAINING_STATE}.safetensors", tensors,
                        metadata={"state": json.dumps(json_state), "vaelab_version": __version__})
    atomic_write_json(directory / f"{TRAINING_STATE}.json", json_state)


def load_training_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINT_DIR / f"{TRAINING_STATE}.safetensors"
    if not path.is_file():
        raise VaelabError(f"nothing to resume in {run_dir}: {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            json_state = json.loads(handle.metadata()["state"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as error:
        raise VaelabError(f"cannot read checkpoint {path}: {error}") from None
    return _join_state(json_state, tensors)
