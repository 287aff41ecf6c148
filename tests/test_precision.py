"""Precision options: "auto" picks bf16 only where it is native, an explicit bf16 where it is emulated
warns, and what ran is what the trainer uses and the estimates record."""

from __future__ import annotations

import warnings

import pytest
import torch

import vaelab.precision as precision
from vaelab.comparison.budget import load_budget
from vaelab.config import TrainConfig
from vaelab.errors import ConfigError, VaelabError
from vaelab.eval.likelihood import importance_weighted_bound
from vaelab.optim import Updater
from vaelab.precision import autocast_dtype, resolve_precision

from eval.test_likelihood import _split, make_linear_gaussian_vae, sample_data


@pytest.fixture(params=[True, False], ids=["native", "emulated"])
def bf16_native(request, monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: request.param)
    precision._warn_emulated.cache_clear()
    yield request.param
    precision._warn_emulated.cache_clear()


def test_auto_is_bf16_exactly_where_bf16_is_native(bf16_native):
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_native else "fp32")
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if bf16_native else None)
    assert resolve_precision("fp32", "cpu") == "fp32" and autocast_dtype("fp32", "cpu") is None


def test_explicit_bf16_is_kept_and_warns_once_only_where_emulated(bf16_native):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", "cpu", "iw_precision") == "bf16"
        assert resolve_precision("bf16", "cpu", "iw_precision") == "bf16"
    messages = [str(w.message) for w in caught]
    if bf16_native:
        assert messages == []
    else:
        assert len(messages) == 1 and "iw_precision=bf16" in messages[0] and "iw_precision=auto" in messages[0]


def test_an_unknown_precision_names_the_option():
    with pytest.raises(VaelabError, match="gradient_precision must be one of fp32, bf16, auto, got 'fp16'"):
        resolve_precision("fp16", "cpu", "gradient_precision")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Updater([], precision="fp16")


def test_the_trainer_config_accepts_auto_and_its_updater_runs_the_resolved_precision(bf16_native):
    config = TrainConfig(precision="auto")
    updater = Updater([], precision=config.precision, device_type="cpu")
    assert updater.precision == ("bf16" if bf16_native else "fp32")
    with updater.autocast():
        assert torch.is_autocast_enabled("cpu") == bf16_native


def test_the_bound_records_the_precision_that_ran(bf16_native):
    model = make_linear_gaussian_vae()
    estimate = importance_weighted_bound(model, _split(sample_data(model, 4)), k=4, precision="auto")
    assert estimate.settings["precision"] == ("bf16" if bf16_native else "fp32")


def test_a_budget_with_an_unknown_gradient_precision_is_refused(tmp_path):
    path = tmp_path / "budget.yaml"
    path.write_text("data: x\neval: {decoder_ais_gradients: fp16}\nmodels: {vae: {model: vae}}\n")
    with pytest.raises(ConfigError, match="decoder_ais_gradients must be one of fp32, bf16, auto, got 'fp16'"):
        load_budget(str(path))


def test_the_shipped_budgets_pick_the_gradient_precision_by_hardware():
    """bf16 leapfrog gradients are 16 times slower than fp32 where bf16 is emulated (vaelab.precision)."""
    for name in ("standard", "full"):
        assert load_budget(name).eval.decoder_ais_gradients == "auto"
