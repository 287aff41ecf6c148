"""Tiny image files and `vaelab train` runs on them, shared by the trainer and CLI tests.

40 training images of 6x6 pixels: 36 train / 4 validation, so batch_size=8 gives 5 steps an epoch
(the last batch holds 4 images) and a run of a few epochs takes well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vaelab.cli import main

TINY_MODEL = ["hidden=[16]", "latent_dim=3", "batch_size=8"]
STEPS_PER_EPOCH = 5


def write_images(path: Path, num_train: int = 40, num_test: int = 10, size: int = 6, labels: bool = False,
                 seed: int = 0) -> Path:
    """A .npz of uint8 images with x_train/x_test (and y_train/y_test when `labels`): bright blobs
    at random places on a dark background, so there is something to learn."""
    rng = np.random.default_rng(seed)
    total = num_train + num_test
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centres = rng.uniform(0, size - 1, (total, 2))
    distance = (rows[None] - centres[:, :1, None]) ** 2 + (cols[None] - centres[:, 1:, None]) ** 2
    images = (255 * np.exp(-distance / 3.0) + rng.integers(0, 20, (total, size, size))).clip(0, 255).astype(np.uint8)
    arrays = {"x_train": images[:num_train], "x_test": images[num_train:]}
    if labels:
        classes = rng.integers(0, 3, total)
        arrays.update(y_train=classes[:num_train], y_test=classes[num_train:])
    np.savez(path, **arrays)
    return path


def train(run_dir: Path, data: Path, *args: str, tensorboard: bool = False) -> int:
    """`vaelab train vae` on `data` into `run_dir` with a tiny model; `args` are more flags or KEY=VALUE."""
    overrides = [*TINY_MODEL, *([] if tensorboard else ["tensorboard=false"])]
    return main(["train", "vae", *overrides, "--data", str(data), "--out", str(run_dir), *args])


def resume(run_dir: Path, *args: str) -> int:
    """`vaelab train vae --resume` of `run_dir`: the saved config, only the budget flags in `args`.

    A real resume starts in a fresh process, so the global RNG is scrambled first: whatever an
    earlier run in this process left there must not stand in for the checkpoint's RNG state."""
    torch.manual_seed(987654321)
    torch.rand(1000)
    return main(["train", "vae", "--out", str(run_dir), "--resume", *args])


def read_metrics(run_dir: Path, ignore: tuple[str, ...] = ("epoch_seconds",)) -> list[dict]:
    """metrics.jsonl as a list of dicts, without the wall-clock fields."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ignore} for line in lines]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def error_lines(stderr: str) -> list[str]:
    """The `vaelab: error:` lines of a captured stderr."""
    return [line for line in stderr.splitlines() if line.startswith("vaelab: error:")]


def assert_same_state(a, b, where: str = "state") -> None:
    """Nested training states (tensors, dicts, lists, plain values) are equal, naming the first difference."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


def adam_step(model, batch, lr: float = 1e-3, seed: int = 5) -> tuple[torch.Tensor, set[str]]:
    """One Adam step on model.loss(batch) with the global RNG seeded (so a test can redraw the same
    noise afterwards): returns the loss before the step and the names of the state entries it changed."""
    before = {name: value.clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    loss = model.loss(batch)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {name for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    return loss.detach(), changed
