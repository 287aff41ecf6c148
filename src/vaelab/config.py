"""Typed configuration: dataclasses, checked overrides from YAML files and KEY=VALUE arguments.

A run is configured by three dataclasses: the model's own config (declared beside the model),
DataConfig and TrainConfig. Keys are unique across the three, so `lr=1e-3` or `latent_dim=40`
needs no section; `train.lr=1e-3` is accepted too. Every value is checked against the field's
type, and an unknown key is an error that names the nearest valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vaelab.errors import ConfigError
from vaelab.version import __version__


@dataclass
class DataConfig:
    """Which data and how its pixels are modelled."""

    name: str = "digits"  # fashion-mnist, mnist, digits (embedded), or a .npz/.npy/folder path
    data_dir: str | None = None
    # dynamic: a fresh Bernoulli draw every minibatch; auto: dynamic for a model of binary images
    # (a Bernoulli likelihood: the published protocol), none otherwise, decided when a run starts
    binarize: Literal["auto", "none", "dynamic", "fixed"] = "auto"
    dequantize: bool = False  # uniform dequantization of continuous pixels (binarize=none only)
    val_size: float = 0.1  # held out of the training split: a fraction (< 1) or a count (>= 1)
    split_seed: int = 0  # seeds the validation hold-out and the one-off binarization of eval data

    @property
    def pixel_model(self) -> str:
        if self.binarize == "auto":
            raise ConfigError("binarize=auto is decided by the model when a run starts (DataConfig.resolved)")
        if self.binarize != "none":
            return self.binarize
        return "dequantize" if self.dequantize else "continuous"

    def resolved(self, binary_model: bool) -> DataConfig:
        """This config with binarize=auto made concrete: dynamic for a model of binary images that is
        not asked to dequantize, none otherwise."""
        if self.binarize != "auto":
            return self
        return dataclasses.replace(self, binarize="dynamic" if binary_model and not self.dequantize else "none")


@dataclass
class TrainConfig:
    """How the trainer runs. Optimizer and schedule names are looked up in vaelab.optim."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps, whatever the epoch count
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd and rmsprop only
    schedule: str = "constant"  # constant, cosine, step, exponential
    lr_step_size: int = 10  # epochs, for schedule=step
    lr_gamma: float = 0.5  # decay factor for step (per lr_step_size epochs) and exponential (per epoch)
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    skip_nonfinite: int = 0  # skip up to this many steps whose loss or gradient is NaN/inf; 0: stop at the first
    early_stopping: int = 0  # stop after this many epochs without a better validation loss; 0 disables
    save_every: int = 0  # also checkpoint every this many steps; 0: only at epoch ends
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # auto: bf16 where native (vaelab.precision)
    eval_batch_size: int = 500
    tensorboard: bool = True
    # torch.compile the model's loss, forward and backward (Updater.compile_loss); eager if compiling
    # fails. Costs a few seconds of compiling per batch size in the first epoch; docs/performance.md.
    compile: bool = False
    # Flush subnormal floats to zero on the CPU while training (precision.subnormals_flushed): Adam's
    # moments decay into that range and each operation on them then costs many cycles.
    flush_denormal: bool = True
    # Start from these weights instead of a random init (a fine-tune, e.g. an IWAE objective on a
    # trained VAE): a .safetensors file, or a run directory (its final model.safetensors).
    init_from: str | None = None


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's model and data pipeline; saved as config.json."""

    model_name: str
    model: Any  # the model's config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    image_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int | None = None
    class_names: list[str] | None = None
    data_identity: dict[str, Any] | None = None  # experiment.data_identity of the data trained on

    def to_dict(self) -> dict[str, Any]:
        return {"vaelab_version": __version__, "model_name": self.model_name,
                "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "class_names": self.class_names, "data_identity": self.data_identity,
                "model": config_to_dict(self.model), "data": config_to_dict(self.data),
                "train": config_to_dict(self.train)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], model_config_class: Callable[[str], type]) -> RunConfig:
        """Rebuild from to_dict()'s output; model_config_class(model_name) gives the model's config
        dataclass (the registry's), so this module needs no model."""
        return cls(model_name=values["model_name"],
                   model=config_from_dict(model_config_class(values["model_name"]), values["model"]),
                   data=config_from_dict(DataConfig, values["data"]),
                   train=config_from_dict(TrainConfig, values["train"]),
                   image_shape=tuple(values["image_shape"]), num_classes=values.get("num_classes"),
                   class_names=values.get("class_names"), data_identity=values.get("data_identity"))


def _short(value: Any) -> str:
    """repr(value) cut to a line: a YAML alias bomb (a list of lists of lists ... built from anchors)
    is tiny to parse but astronomically long to repr in full."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 2, 60, 60, 60
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = 4
    try:
        text = short.repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Return value converted to `annotation` or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(key, value, option)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {_short(value)}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}, got {_short(value)}")
        return value
    if origin in (tuple, list):
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {_short(value)}")
        items = [_check_value(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key} must be true or false, got {_short(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {_short(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {_short(value)}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {_short(value)}")
    return value


def _field_types(config_class: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def update_config(config: Any, updates: dict[str, Any]) -> Any:
    """A copy of `config` with `updates` applied, each checked against the field type."""
    types_by_name = _field_types(type(config))
    checked = {}
    for key, value in updates.items():
        if key not in types_by_name:
            raise ConfigError(unknown_key_message(key, types_by_name))
        checked[key] = _check_value(key, value, types_by_name[key])
    return dataclasses.replace(config, **checked)


def config_from_dict(config_class: type, values: dict[str, Any]) -> Any:
    """Build `config_class` from a (JSON or YAML) dict, type-checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"{config_class.__name__} values must be a mapping of keys to values, got {_short(values)}")
    return update_config(config_class(), values)


def unknown_key_message(key: str, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    nearest = difflib.get_close_matches(key.split(".")[-1], valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(nearest)}?" if nearest else f"; valid keys: {', '.join(valid)}"
    return f"unknown config key {key!r}{hint}"


# What yaml.safe_load raises for bad input: its own errors, and those of the constructors it calls
# (`2001-13-40` is a timestamp with month 13, a 5000-digit int exceeds Python's int-from-text limit,
# `[[[[...` nested a thousand deep exhausts the recursive composer)
YAML_ERRORS = (yaml.YAMLError, ValueError, OverflowError, RecursionError)


def parse_value(text: str) -> Any:
    """A KEY=VALUE right-hand side: YAML syntax, so `[300,300]`, `true`, `1e-3` and `bernoulli` all work."""
    try:
        return yaml.safe_load(text)
    except YAML_ERRORS:
        return text


def parse_overrides(pairs: typing.Sequence[str]) -> dict[str, Any]:
    """['latent_dim=40', 'hidden=[300,300]'] -> {'latent_dim': 40, 'hidden': [300, 300]}."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file: either flat keys or sections `model:`, `data:`, `train:`."""
    try:
        # bytes, so that YAML's reader decodes them (UTF-8/16) and rejects what is not text
        values = yaml.safe_load(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid YAML: nested too deeply") from None
    except YAML_ERRORS as error:
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"config file {path} is not valid YAML: {first_line}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values


SECTIONS = ("model", "data", "train")


def split_by_section(values: dict[str, Any], configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Route flat or dotted keys (`lr`, `train.lr`) and nested sections to the config they belong to."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in configs}
    owners = {key: name for name, cfg in configs.items() for key in _field_types(type(cfg))}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {_short(key)}")
        if key in configs and isinstance(value, dict):
            for sub_key, sub_value in value.items():
                _route(f"{key}.{sub_key}", sub_value, configs, owners, routed)
        else:
            _route(key, value, configs, owners, routed)
    return routed


def _route(key, value, configs, owners, routed) -> None:
    section, dot, name = key.partition(".")
    if dot:
        if section not in configs:
            raise ConfigError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(configs)}")
        if name not in _field_types(type(configs[section])):
            raise ConfigError(unknown_key_message(key, _field_types(type(configs[section]))))
        routed[section][name] = value
    elif key in owners:
        routed[owners[key]][key] = value
    else:
        raise ConfigError(unknown_key_message(key, owners))


def apply_overrides(configs: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Apply flat/dotted/sectioned `values` to the dict of configs {'model': ..., 'data': ..., 'train': ...}."""
    routed = split_by_section(values, configs)
    return {name: update_config(cfg, routed[name]) for name, cfg in configs.items()}
