"""The trainer's speed options: subnormals flushed to zero (train.flush_denormal) and the loss through
torch.compile (train.compile), each checked against what it must not change."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from tiny_runs import error_lines, read_metrics, train, write_images
from vaelab.models.vae import VAE
from vaelab.optim import Updater
from vaelab.precision import subnormals_flushed

SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def arithmetic_keeps_subnormals() -> bool:
    """Whether this thread's float32 arithmetic keeps a subnormal (IEEE) or flushes it to zero."""
    return float(torch.tensor([SUBNORMAL]) * 1.0) != 0.0


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return write_images(tmp_path / "tiny.npz")


@pytest.fixture(autouse=True)
def ieee_after():
    """Whatever a test switches on, the next one starts with IEEE subnormals again."""
    yield
    torch.set_flush_denormal(False)


def test_subnormals_are_flushed_inside_the_block_and_kept_after_it():
    assert arithmetic_keeps_subnormals()
    with subnormals_flushed():
        assert not arithmetic_keeps_subnormals()
        assert float(torch.tensor([1e-30]) * 1.0) == pytest.approx(1e-30)  # normal numbers are untouched
    assert arithmetic_keeps_subnormals()
    with subnormals_flushed(enabled=False):
        assert arithmetic_keeps_subnormals()


def test_adam_moments_of_a_dead_weight_stay_subnormal_without_flushing():
    """The reason for the option: with a zero gradient, m <- 0.9 m decays into the subnormal range
    and sticks at the smallest subnormal (round-to-nearest) instead of reaching zero; flushed, it is
    exactly zero."""
    def moment_after_decay(flushed: bool) -> float:
        weight = torch.nn.Parameter(torch.ones(1))
        optimizer = torch.optim.Adam([weight], lr=1e-3, fused=True)
        with subnormals_flushed(flushed):
            weight.grad = torch.ones(1)
            optimizer.step()
            for _ in range(1000):  # 0.9 ** 1000 * 0.1 is far below the smallest subnormal, 1.4e-45
                weight.grad = torch.zeros(1)
                optimizer.step()
        return float(optimizer.state[weight]["exp_avg"])

    stuck = moment_after_decay(flushed=False)
    assert 0 < stuck < torch.finfo(torch.float32).tiny
    assert moment_after_decay(flushed=True) == 0.0


def test_training_flushes_subnormals_by_default_and_keeps_them_when_asked(tmp_path, data, monkeypatch):
    seen: list[bool] = []
    real_loss = VAE.loss

    def recording_loss(self, batch, step=None):
        seen.append(arithmetic_keeps_subnormals())
        return real_loss(self, batch, step)

    monkeypatch.setattr(VAE, "loss", recording_loss)
    assert train(tmp_path / "flushed", data, "--epochs", "1") == 0
    training_steps = 5
    assert seen[:training_steps] == [False] * training_steps
    assert arithmetic_keeps_subnormals()  # back to IEEE once training ended
    seen.clear()
    assert train(tmp_path / "ieee", data, "--epochs", "1", "flush_denormal=false") == 0
    assert seen and all(seen)


def test_flushing_leaves_the_tiny_run_identical(tmp_path, data):
    """No value of a normal training run comes near the subnormal range, so flushing changes nothing."""
    assert train(tmp_path / "flushed", data, "--epochs", "2") == 0
    torch.set_flush_denormal(False)
    assert train(tmp_path / "ieee", data, "--epochs", "2", "flush_denormal=false") == 0
    assert read_metrics(tmp_path / "flushed") == read_metrics(tmp_path / "ieee")


def test_a_compiled_loss_trains_like_the_eager_one(tmp_path, data, monkeypatch, capsys):
    """With inductor drawing its noise from torch's own generator (fallback_random), the compiled
    forward and backward give the eager run's losses up to float rounding."""
    pytest.importorskip("torch._inductor")
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    calls: list[str] = []
    real_compile = Updater.compile_loss

    def recording_compile(self, model):
        real_compile(self, model)
        compiled = self.compiled_loss.compiled

        def counted(*args, **kwargs):
            calls.append(self.compiled_loss.name)
            return compiled(*args, **kwargs)
        self.compiled_loss.compiled = counted

    monkeypatch.setattr(Updater, "compile_loss", recording_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        assert train(tmp_path / "compiled", data, "--epochs", "2", "compile=true", "kl_warmup_steps=4") == 0
    assert calls == ["VAE.loss"] * 10  # every training step (2 epochs of 5) went through it
    assert ", compiled loss) ->" in capsys.readouterr().err  # the run's first line says so
    assert train(tmp_path / "eager", data, "--epochs", "2", "kl_warmup_steps=4") == 0
    stderr = capsys.readouterr().err
    assert not error_lines(stderr) and "compiled loss" not in stderr
    compiled, eager = read_metrics(tmp_path / "compiled"), read_metrics(tmp_path / "eager")
    for line_c, line_e in zip(compiled, eager, strict=True):
        for key in ("train_loss", "train_kl", "val_loss"):
            assert line_c[key] == pytest.approx(line_e[key], rel=1e-4, abs=1e-4), key
    assert compiled[-1]["val_loss"] != pytest.approx(compiled[0]["val_loss"], rel=1e-3)  # it trained


def test_a_loss_that_cannot_be_compiled_trains_eagerly_with_one_warning(tmp_path, data, monkeypatch):
    def broken_compile(function, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("inductor: no working C++ compiler")
        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    expected = re.escape("torch.compile of VAE.loss failed (inductor: no working C++ compiler); running it eagerly")
    with pytest.warns(RuntimeWarning, match=expected):
        assert train(tmp_path / "fallback", data, "--epochs", "2", "compile=true") == 0
    assert train(tmp_path / "eager", data, "--epochs", "2") == 0
    assert read_metrics(tmp_path / "fallback") == read_metrics(tmp_path / "eager")


def test_a_compiled_loss_is_refused_under_torchrun_before_anything_is_built(tmp_path):
    """The check comes before DistributedDataParallel, so no process group is needed to see it."""
    from vaelab.config import DataConfig, RunConfig, TrainConfig
    from vaelab.data.datasets import Split
    from vaelab.distributed import World
    from vaelab.errors import ConfigError
    from vaelab.models.vae import VAEConfig
    from vaelab.trainer import Trainer

    model = VAE(VAEConfig(hidden=(8,), latent_dim=2), (1, 4, 4))
    split = Split(torch.rand(16, 1, 4, 4), None)
    config = RunConfig("vae", model.config, DataConfig(binarize="none"),
                       TrainConfig(batch_size=4, compile=True, device="cpu"))
    with pytest.raises(ConfigError, match=r"train\.compile is not supported under torchrun"):
        Trainer(model, config, tmp_path / "run", split, split, None, world=World(rank=0, size=2))


PROBE = """
import sys, torch
import vaelab.experiment
from vaelab.cli import main
from vaelab.models.vae import VAE
real_load = vaelab.experiment.load_data
def load_data(config):  # as loading a real data set does, start torch's thread pool
    torch.ones(1 << 22).mul_(2.0)
    return real_load(config)
vaelab.experiment.load_data = load_data
real_loss, kept = VAE.loss, []
def probe(self, batch, step=None):  # a product split over both threads: any unflushed thread keeps its half
    kept.append(int((torch.full((1 << 20,), 1e-39) * 1.0).count_nonzero()))
    return real_loss(self, batch, step)
VAE.loss = probe
main(["train", "vae", "hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false", *sys.argv[1:]])
print(torch.get_num_threads(), max(kept))
"""


@pytest.mark.parametrize("flush, expected_kept", [("true", 0), ("false", 1 << 20)])
def test_every_worker_thread_of_a_training_process_flushes(tmp_path, data, flush, expected_kept):
    """Flushing reaches torch's worker threads, even when loading the data started them before
    training set the flag. Run in a fresh process with two threads (the test session uses one)."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", PROBE, "--data", str(data), "--out", str(tmp_path / "run"),
                             "--max-steps", "2", f"flush_denormal={flush}"],
                            capture_output=True, text=True, env=environment, timeout=120, check=True)
    threads, kept = map(int, result.stdout.split()[-2:])
    assert threads == 2
    assert kept == expected_kept


def test_a_compiled_loss_is_refused_for_a_model_with_its_own_train_step(tmp_path, data, capsys):
    """The GAN's train_step computes its players' losses itself: compiling model.loss would do nothing."""
    from vaelab.cli import main

    code = main(["train", "gan", "g_hidden=[16]", "d_hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false",
                 "compile=true", "--data", str(data), "--out", str(tmp_path / "gan"), "--epochs", "1"])
    assert code == 2
    assert "train.compile has no effect on GAN: its train_step computes its own losses" in capsys.readouterr().err
    assert not (tmp_path / "gan").exists()  # refused before the run directory was made
