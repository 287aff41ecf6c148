"""Run directories: config.json, model.safetensors, metrics.jsonl and checkpoints/.

Everything is JSON or safetensors, written atomically and fsynced (vaelab.files), so an interrupted
write never leaves a half-written file behind. Every safetensors file carries a SHA-256 of its
tensors and metadata, checked when it is read, so a truncated or corrupted file is detected; the
training state keeps the checkpoint before the last one too, and resuming falls back to it, with a
warning, when the last one is damaged. model.safetensors exists only for a run whose training
finished. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors_to_bytes

from vaelab.config import RunConfig
from vaelab.errors import VaelabError
from vaelab.files import atomic_write_bytes, atomic_write_json, fsync_directory, replace
from vaelab.models.base import GenerativeModel
from vaelab.registry import get_model_class
from vaelab.version import __version__

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TRAINING_STATE = "last"  # checkpoints/last.safetensors + checkpoints/last.json
PREVIOUS_STATE = "previous"  # checkpoints/previous.safetensors: the checkpoint before the last
PENDING_STATE = "pending"  # checkpoints/pending.safetensors: a new checkpoint, written before it becomes last
BEST_WEIGHTS = "best.safetensors"  # checkpoints/best.safetensors: lowest validation loss so far
CHECKSUM_KEY = "sha256"


class CorruptFile(VaelabError):
    """A safetensors file that cannot be read or whose checksum does not match."""


def checksum(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 over the metadata (but its checksum) and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in metadata.items() if k != CHECKSUM_KEY},
                                       sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors and string metadata as one safetensors file, with its checksum, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = dict(metadata or {})
    metadata[CHECKSUM_KEY] = checksum(tensors, metadata)
    atomic_write_bytes(path, save_tensors_to_bytes(tensors, metadata=metadata))


def read_tensors_and_metadata(path: Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A safetensors file's tensors and metadata, its checksum verified (files written before
    checksums existed have none to verify). CorruptFile names the file when it is damaged."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (OSError, SafetensorError, ValueError) as error:
        raise CorruptFile(f"cannot read {what} {path}: {error}") from None
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != checksum(tensors, metadata):
        raise CorruptFile(f"{what} {path} are corrupted: the checksum does not match the contents")
    return tensors, metadata


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_tensors_and_metadata(path)[0]


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
        values = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise VaelabError(f"{path} is not valid JSON: it is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise VaelabError(f"{path} is not valid JSON: {error.msg}") from None
    except (ValueError, RecursionError) as error:  # a number too long to read, nesting too deep
        raise VaelabError(f"{path} is not a vaelab run config: {str(error)[:100]}") from None
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
    _load_state_dict(model, read_tensors(path), path)


def load_initial_weights(model: torch.nn.Module, source: str | Path) -> None:
    """Load train.init_from into a freshly built model: a weights file, or a run directory's final
    weights; one VaelabError line when it is missing or does not fit."""
    path = Path(source)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise VaelabError(f"init_from: no weights file {path}")
    load_weights(model, path)


def _load_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load `tensors` into `model`, or one VaelabError line when they do not fit it."""
    expected = model.state_dict()
    # load_state_dict raises a RuntimeError for a shape mismatch even with strict=False
    mismatched = [f"{key} {tuple(tensors[key].shape)} (model: {tuple(value.shape)})"
                  for key, value in expected.items() if key in tensors and tensors[key].shape != value.shape]
    if mismatched:
        raise VaelabError(f"weights {path} do not fit the model: {', '.join(mismatched[:3])}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise VaelabError(f"weights {path} do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


CHECKPOINTS = ("final", "best", "last")


def load(run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a trained model from its run directory, in eval mode.

    checkpoint: "final" (model.safetensors, the weights of a run whose training finished), "best"
    (the lowest validation loss seen) or "last" (the latest training checkpoint, also of a run that
    is still going or was interrupted).
    """
    run_dir = Path(run_dir)
    run_config = load_run_config(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise VaelabError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    model = build_model(run_config)
    if checkpoint == "last":
        _load_state_dict(model, load_training_state(run_dir)["model"], run_dir / CHECKPOINT_DIR)
        return model.to(device).eval()
    path = run_dir / WEIGHTS_FILE if checkpoint == "final" else run_dir / CHECKPOINT_DIR / BEST_WEIGHTS
    if not path.is_file():
        unfinished = " (its training has not finished: resume it, or load --checkpoint last)" \
            if checkpoint == "final" else ""
        raise VaelabError(f"{run_dir} has no {checkpoint} weights{unfinished}; {path} is missing")
    load_weights(model, path)
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


def _state_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.safetensors"


def has_training_state(run_dir: str | Path) -> bool:
    """Whether a run directory holds a checkpoint to resume from (the last or the previous one)."""
    return any(_state_path(Path(run_dir), name).is_file() for name in (TRAINING_STATE, PREVIOUS_STATE))


def save_training_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Save a nested dict of tensors and plain values (weights, optimizer and scheduler state, RNG
    state, counters) as checkpoints/last.safetensors, the one it replaces becoming
    checkpoints/previous.safetensors. The plain values travel as JSON inside the safetensors
    metadata, so one atomic rename commits the whole checkpoint; last.json is a readable copy."""
    tensors: dict[str, torch.Tensor] = {}
    json_state = _split_state("state", state, tensors)
    names = (TRAINING_STATE, PREVIOUS_STATE, PENDING_STATE)
    last, previous, pending = (_state_path(run_dir, name) for name in names)
    # Written in full first: a failed write (a full disk) leaves the last checkpoint as it was.
    atomic_save_tensors(pending, tensors, metadata={"state": json.dumps(json_state), "vaelab_version": __version__})
    if last.is_file():
        replace(last, previous)  # a crash before the next rename leaves `previous` to resume from
    replace(pending, last)
    fsync_directory(last.parent)
    atomic_write_json(last.with_suffix(".json"), json_state)


def load_training_state(run_dir: Path) -> dict[str, Any]:
    """The last checkpoint, or, when it is missing or damaged, the previous one (with a warning)."""
    last, previous = _state_path(run_dir, TRAINING_STATE), _state_path(run_dir, PREVIOUS_STATE)
    if not last.is_file() and not previous.is_file():
        raise VaelabError(f"nothing to resume in {run_dir}: {last} is missing")
    try:
        return _read_training_state(last)
    except CorruptFile as error:
        if not previous.is_file():
            raise
        print(f"warning: {error}; resuming from the previous checkpoint {previous}", file=sys.stderr)
        return _read_training_state(previous)


def _read_training_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CorruptFile(f"{path} is missing")
    tensors, metadata = read_tensors_and_metadata(path, what="checkpoint")
    try:
        state = _join_state(json.loads(metadata["state"]), tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise CorruptFile(f"cannot read checkpoint {path}: {str(error)[:100]}") from None
    if not isinstance(state, dict) or not {"model", "progress"} <= set(state):
        raise CorruptFile(f"{path} is not a vaelab training checkpoint")
    return state
