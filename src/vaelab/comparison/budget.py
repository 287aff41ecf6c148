"""The reference configs of `vaelab compare`, one YAML file per budget shipped with the package
(`vaelab/comparison/budgets/*.yaml`), read and checked here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vaelab.errors import ConfigError
from vaelab.precision import check_precision
from vaelab.registry import MODELS

BUDGETS = ("quick", "standard", "full")


@dataclass(frozen=True)
class EvalBudget:
    """How much each estimator spends."""

    iw_k: int = 5000
    limit: int | None = None
    num_samples: int = 10000
    decoder_ais_images: int = 50
    decoder_ais_steps: int = 300
    decoder_ais_chains: int = 16
    decoder_ais_gradients: str = "fp32"  # the leapfrog gradients' precision: fp32, bf16 or auto (exact in each)
    rbm_ais_runs: int = 100
    rbm_ais_steps: int = 14500


@dataclass(frozen=True)
class RunSpec:
    """One training run of the comparison: a registry model and its KEY=VALUE settings."""

    name: str
    model: str
    settings: dict[str, Any]
    # EvalBudget fields this run spends differently (e.g. fewer L_k images for a convolutional decoder,
    # whose k samples per image cost far more than an MLP's); the report's protocol names each one.
    eval: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> list[str]:
        """The settings as `vaelab train` KEY=VALUE arguments (values in YAML/JSON syntax)."""
        return [f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                for key, value in self.settings.items()]


@dataclass(frozen=True)
class Budget:
    name: str
    data: str
    eval: EvalBudget
    runs: dict[str, RunSpec]
    # With --jobs above 1, these runs start before the others (the longest ones: the comparison ends
    # when its last run does); the report keeps the order of `runs`.
    start_first: tuple[str, ...] = ()

    def with_runs(self, runs: dict[str, RunSpec]) -> Budget:
        """The same budget with only `runs` (start_first narrowed to them)."""
        return Budget(self.name, self.data, self.eval, runs, tuple(name for name in self.start_first if name in runs))

    def eval_of(self, run: str) -> EvalBudget:
        """What the estimators spend on `run`: the budget's eval with the run's own overrides."""
        return replace(self.eval, **self.runs[run].eval)

    def start_order(self) -> list[str]:
        """The runs in the order they are started: start_first, then the rest in budget order."""
        return [*self.start_first, *(name for name in self.runs if name not in self.start_first)]


def budget_text(name: str) -> str:
    """The YAML of a budget: one shipped with vaelab by name, or a file of the same form."""
    if name in BUDGETS:
        return resources.files("vaelab.comparison").joinpath(f"budgets/{name}.yaml").read_text()
    if name.endswith((".yaml", ".yml")):
        try:
            return Path(name).read_text()
        except OSError as error:
            raise ConfigError(f"cannot read budget file {name}: {error.strerror}") from None
    raise ConfigError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)} or a .yaml file")


def load_budget(name: str) -> Budget:
    """The budget `name`, checked: known eval keys, registered models, a data set and runs."""
    try:
        values = yaml.safe_load(budget_text(name))
    except yaml.YAMLError as error:
        raise ConfigError(f"budget {name} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict) or not isinstance(values.get("models"), dict) or "data" not in values:
        raise ConfigError(f"budget {name} must map data: NAME, eval: {{...}} and models: {{RUN: {{model, settings}}}}")
    evaluation = _checked_eval(values.get("eval"), f"budget {name}: eval")
    runs = {run_name: _run_spec(name, run_name, entry) for run_name, entry in values["models"].items()}
    start_first = values.get("start_first") or []
    if not isinstance(start_first, list) or set(start_first) - set(runs):
        raise ConfigError(f"budget {name}: start_first must list runs of models:, got {start_first!r}")
    return Budget(name, values["data"], EvalBudget(**evaluation), runs, tuple(start_first))


def _run_spec(budget: str, name: str, entry: Any) -> RunSpec:
    if not isinstance(entry, dict) or entry.get("model") not in MODELS:
        raise ConfigError(f"budget {budget}: run {name} names no registered model ({entry.get('model')!r})")
    overrides = _checked_eval(entry.get("eval"), f"budget {budget}: run {name}'s eval")
    return RunSpec(str(name), entry["model"], dict(entry.get("settings") or {}), overrides)


def _checked_eval(values: Any, where: str) -> dict[str, Any]:
    """An `eval:` mapping (the budget's, or a run's overrides) of EvalBudget keys, checked; {} if absent."""
    values = values or {}
    known = {item.name for item in fields(EvalBudget)}
    if not isinstance(values, dict) or set(values) - known:
        raise ConfigError(f"{where} must map eval keys ({', '.join(sorted(known))}), got {values!r}")
    check_precision(values.get("decoder_ais_gradients", "fp32"), f"{where}: decoder_ais_gradients")
    return dict(values)
