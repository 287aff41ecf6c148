"""Resuming a run the way preemption schedulers do it: the same command line again, plus --resume.

Every option given on the command line (flags, KEY=VALUE overrides, a --config file) is checked
against the run's saved config: those that may change take effect (the training budget, the
device, the data location), any other that differs is named in one error line, and options not
given keep their saved values, so a bare `vaelab train MODEL --out RUN --resume` also continues.
The data set itself must be the one the run was trained on: its identity (name, shapes, SHA-256 of
every split) is saved in config.json and compared wherever the data is found now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from vaelab.config import RunConfig, apply_overrides
from vaelab.errors import VaelabError

MAY_CHANGE = frozenset({"train.epochs", "train.max_steps", "train.save_every", "train.device", "data.data_dir"})
FLAGS = {"data.name": "--data", "data.data_dir": "--data-dir", "train.epochs": "--epochs",
         "train.max_steps": "--max-steps", "train.save_every": "--save-every", "train.seed": "--seed",
         "train.device": "--device", "train.precision": "--precision"}


def resumed_run_config(saved: RunConfig, given: list[dict[str, Any]],
                       prefers_binary_pixels: Callable[[Any], bool]) -> RunConfig:
    """`saved` with the command line's values (`given`: layers of KEY=VALUE dicts, applied in order)
    taken where they may change; one VaelabError naming every other option that differs."""
    saved_configs = {"model": saved.model, "data": saved.data, "train": saved.train}
    candidate = dict(saved_configs)
    for values in given:
        candidate = apply_overrides(candidate, values)
    candidate["data"] = candidate["data"].resolved(prefers_binary_pixels(candidate["model"]))
    differences = [f"{FLAGS.get(key, key.split('.')[1] + '=')} (saved {old!r}, given {new!r})"
                   for key, old, new in _changed_fields(saved_configs, candidate) if key not in MAY_CHANGE]
    if differences:
        raise VaelabError(f"--resume: the command line differs from the saved run in {'; '.join(differences)}; "
                          "only --epochs, --max-steps, --save-every, --device and the data location "
                          "(--data-dir, VAELAB_DATA) may change")
    return dataclasses.replace(saved, data=candidate["data"], train=candidate["train"])


def _changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.field, before, after) for every field that differs."""
    return [(f"{section}.{field.name}", getattr(config, field.name), getattr(after[section], field.name))
            for section, config in before.items() for field in dataclasses.fields(config)
            if getattr(config, field.name) != getattr(after[section], field.name)]


def check_data_identity(saved: dict[str, Any] | None, found: dict[str, Any], where: str) -> None:
    """One VaelabError line when the data found now is not the data the run was trained on."""
    if saved is None or saved == found:
        return
    differing = sorted(key for key in set(saved) | set(found) if saved.get(key) != found.get(key))
    raise VaelabError(f"--resume: the data found at {where} is not the data this run was trained on "
                      f"(it differs in {', '.join(differing)}); point --data-dir at the original data")
