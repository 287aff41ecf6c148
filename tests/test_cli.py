"""Every `vaelab` command end to end through `vaelab.cli.main`, on a tiny run: outputs, exit
statuses, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from tiny_runs import error_lines, read_metrics, read_tensors, same_tensors, train, write_images
from vaelab.checkpoint import load_run_config
from vaelab.cli import main
from vaelab.eval.likelihood import elbo, importance_weighted_bound
from vaelab.experiment import evaluation_split, load_data

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Labelled tiny images: 40 train (36 + 4 validation) and 10 test."""
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz", labels=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    """One trained run shared by the read-only commands (sample, reconstruct, eval)."""
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    assert train(run_dir, data, "--epochs", "2", "lr=1e-2") == 0
    return run_dir


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs (runs/MODEL) land here, never in the repo


def only_error_line(stderr: str) -> str:
    """The whole stderr must be one `vaelab: error:` line."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), stderr
    return lines[0]


def tile(grid: np.ndarray, row: int, col: int, size: int = 6, padding: int = 2) -> np.ndarray:
    """Image (row, col) of a grid written by vaelab.plots.images.image_grid."""
    top, left = padding + row * (size + padding), padding + col * (size + padding)
    return grid[top:top + size, left:left + size]


# -- sample ----------------------------------------------------------------------------------------

def test_sample_writes_a_png_grid(run, tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert main(["sample", str(run), "-n", "6", "--out", str(out)]) == 0
    assert f"wrote 6 samples to {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "L"
        assert image.size == (3 * 8 + 2, 2 * 8 + 2)  # 3 a row (ceil sqrt 6), 6x6 tiles with 2-pixel padding
    assert main(["sample", str(run), "-n", "6", "--nrow", "6", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (6 * 8 + 2, 8 + 2)


def test_sample_npy_is_seeded_and_matches_the_png(run, tmp_path):
    paths = {name: tmp_path / f"{name}.npy" for name in ("a", "b", "c")}
    for name, seed in [("a", "5"), ("b", "5"), ("c", "6")]:
        assert main(["sample", str(run), "-n", "4", "--seed", seed, "--out", str(paths[name])]) == 0
    a, b, c = (np.load(paths[name]) for name in "abc")
    assert a.shape == (4, 1, 6, 6) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1 and a.std() > 0
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # the same draw as the library call with a generator of that seed
    expected = vaelab.load(run).sample(4, generator=torch.Generator().manual_seed(5))
    assert np.array_equal(a, expected.numpy())
    # and the PNG of that seed shows those pixels
    assert main(["sample", str(run), "-n", "4", "--seed", "5", "--out", str(tmp_path / "a.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert np.array_equal(tile(grid, 0, 1), np.round(a[1, 0] * 255).astype(np.uint8))


def test_sample_defaults_to_the_run_directory(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["sample", str(copy), "-n", "2"]) == 0
    assert (copy / "samples.png").is_file()


def test_a_run_rebuilds_from_config_and_weights_alone(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, bare / name)
    for source, out in [(run, tmp_path / "full.npy"), (bare, tmp_path / "bare.npy")]:
        assert main(["sample", str(source), "-n", "3", "--out", str(out)]) == 0
    assert np.array_equal(np.load(tmp_path / "full.npy"), np.load(tmp_path / "bare.npy"))


def test_sample_label_on_an_unconditional_model_is_a_usage_error(run, tmp_path, capsys):
    assert main(["sample", str(run), "--label", "1", "--out", str(tmp_path / "s.png")]) == 2
    assert "--label needs a class-conditional model" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--out", "samples.jpg"], "--out must end in .png or .npy"),
    (["-n", "0"], "-n must be at least 1"),
    (["--checkpoint", "worst"], "invalid choice"),
])
def test_sample_usage_errors(run, tmp_path, capsys, args, message):
    assert main(["sample", str(run), *args]) == 2
    assert message in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "samples.jpg").exists()


# -- reconstruct ----------------------------------------------------------------------------------

def test_reconstruct_writes_originals_above_reconstructions(run, data, tmp_path, capsys):
    out = tmp_path / "recon.png"
    assert main(["reconstruct", str(run), "-n", "4", "--nrow", "4", "--out", str(out)]) == 0
    assert f"wrote 4 originals and reconstructions to {out}" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 8 + 2, 4 * 8 + 2)
    run_config = load_run_config(run)
    assert run_config.data.binarize == "dynamic"  # binarize=auto: a Bernoulli VAE gets the published protocol
    x = evaluation_split(load_data(run_config.data), run_config.data, "test").images[:4]  # binarized once
    for i in range(4):
        assert np.array_equal(tile(grid, 0, i), np.round(x[i, 0].numpy() * 255).astype(np.uint8))  # the originals
    model = vaelab.load(run)
    expected = np.round(model.reconstruct(x).numpy() * 255).astype(np.uint8)
    for i in range(4):
        assert np.abs(tile(grid, 1, i).astype(int) - expected[i, 0]).max() <= 1


# -- eval -----------------------------------------------------------------------------------------

def test_eval_writes_json_with_values_stderrs_and_settings(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "elbo,iw", "--k", "50", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "iw_bound" in table and "nll (= -iw_bound)" in table
    results = json.loads(out.read_text())
    assert set(results) == {"elbo", "reconstruction_log_prob", "kl", "iw_bound"}
    for name, result in results.items():
        assert set(result) == {"value", "stderr", "settings"}, name
        assert math.isfinite(result["value"]) and math.isfinite(result["stderr"]) and result["stderr"] > 0
        assert result["settings"]["split"] == "test" and result["settings"]["checkpoint"] == "final"
        assert result["settings"]["examples"] == 10
    assert results["iw_bound"]["settings"]["k"] == 50
    elbo_value, iw_value = results["elbo"]["value"], results["iw_bound"]["value"]
    assert elbo_value < 0 and iw_value >= elbo_value - 0.05
    assert elbo_value == pytest.approx(results["reconstruction_log_prob"]["value"] - results["kl"]["value"])
    # the numbers are the library's estimators on the test split with the same seed
    model, run_config = vaelab.load(run), load_run_config(run)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test")
    assert elbo(model, split, seed=0)["elbo"].value == pytest.approx(elbo_value, rel=1e-6)
    assert importance_weighted_bound(model, split, k=50, seed=0).value == pytest.approx(iw_value, rel=1e-6)


def test_eval_limit_split_and_best_checkpoint(run, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--metrics", "elbo", "--limit", "3", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"elbo", "reconstruction_log_prob", "kl"}
    assert results["elbo"]["settings"]["examples"] == 3
    assert main(["eval", str(run), "--metrics", "iw", "--k", "5", "--split", "val", "--checkpoint", "best",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"iw_bound"}
    settings = results["iw_bound"]["settings"]
    assert (settings["examples"], settings["split"], settings["checkpoint"]) == (4, "val", "best")


@pytest.mark.parametrize("args,message", [
    (["--metrics", "fid"], "unknown metric 'fid'; available: elbo, iw"),
    (["--metrics", "elbo,bogus"], "unknown metric 'bogus'"),
    (["--metrics", ","], "no metric given"),
    (["--k", "0"], "--k must be at least 1"),
    (["--split", "holdout"], "invalid choice"),
])
def test_eval_usage_errors(run, tmp_path, capsys, args, message):
    assert main(["eval", str(run), *args, "--json", str(tmp_path / "e.json")]) == 2
    assert message in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "e.json").exists()


# -- data -----------------------------------------------------------------------------------------

def test_data_digits_prints_the_counts(capsys):
    assert main(["data", "digits"]) == 0
    out = capsys.readouterr().out
    assert "train:      1500 images" in out and "test:       297 images" in out
    assert "1 x 8 x 8" in out and "levels:     17" in out


def test_data_describes_a_file(data, capsys):
    assert main(["data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "train:      40 images" in out and "test:       10 images" in out and "1 x 6 x 6" in out


# -- train: overrides anywhere, and every usage error leaves nothing behind ---------------------------

def test_overrides_may_follow_options(data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "vae", "hidden=[8]", "--data", str(data), "--out", str(out), "--epochs", "1",
                 "latent_dim=2", "tensorboard=false", "--max-steps", "2", "train.lr=0.01", "batch_size=8"]) == 0
    config = load_run_config(out)
    assert config.model.hidden == (8,) and config.model.latent_dim == 2
    assert config.train.lr == 0.01 and config.train.tensorboard is False and config.train.max_steps == 2
    assert config.train.batch_size == 8
    assert [m["step"] for m in read_metrics(out)] == [2]


def test_train_defaults_to_runs_model(data, tmp_path):
    assert main(["train", "vae", "hidden=[8]", "latent_dim=2", "tensorboard=false", "--data", str(data),
                 "--max-steps", "1"]) == 0
    assert (tmp_path / "runs" / "vae" / "model.safetensors").is_file()


def _bad_npy(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY garbage, not an array")


def _pickled_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _not_images(path: Path) -> None:
    np.save(path, np.zeros((4, 6, 6), dtype=np.int64))


@pytest.mark.parametrize("args,message", [
    (["train", "vea"], "invalid choice: 'vea'"),
    (["train", "vae", "latent_dm=3"], "unknown config key 'latent_dm'; did you mean latent_dim"),
    (["train", "vae", "latent_dim=abc"], "latent_dim must be an integer, got 'abc'"),
    (["train", "vae", "binarize=sometimes"], "binarize must be one of auto, none, dynamic, fixed"),
    (["train", "vae", "latent_dim"], "expected KEY=VALUE"),
    (["train", "vae", "--epochs", "two"], "invalid int value"),
    (["train", "vae", "--config", "missing.yaml"], "cannot read config file"),
    (["train", "vae", "--data", "no-such-dataset"], "unknown data set 'no-such-dataset'"),
    (["train", "vae", "--data", "BAD.npy"], "cannot read .npy"),
    (["train", "vae", "--data", "PICKLED.npy"], "cannot read .npy"),
    (["train", "vae", "--data", "INTS.npy"], "uint8"),
    (["train", "vae", "--epochs", "1", "bogus"], "unrecognized arguments: bogus"),
    (["sample", "no-such-run"], "no-such-run is not a vaelab run directory"),
    (["eval", "no-such-run"], "no-such-run is not a vaelab run directory"),
    (["reconstruct", "no-such-run"], "no-such-run is not a vaelab run directory"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required"),
])
def test_usage_errors_are_one_line_with_exit_2_and_leave_no_run(tmp_path, capsys, args, message):
    _bad_npy(tmp_path / "BAD.npy")
    _pickled_npy(tmp_path / "PICKLED.npy")
    _not_images(tmp_path / "INTS.npy")
    args = [str(tmp_path / a) if a.endswith(".npy") else a for a in args]
    if args[:1] == ["train"]:
        args += ["--out", str(tmp_path / "out")]
    assert main(args) == 2
    stderr = capsys.readouterr().err
    assert message in only_error_line(stderr)
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()  # a failed train writes nothing
    assert not (tmp_path / "runs").exists()


def test_train_into_an_existing_run_needs_resume_or_overwrite(run, data, capsys):
    before = (run / "model.safetensors").read_bytes()
    assert train(run, data, "--epochs", "1") == 2
    line = only_error_line(capsys.readouterr().err)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "model.safetensors").read_bytes() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_usage_error(data, tmp_path, capsys):
    assert train(tmp_path / "out", data, "--device", "cuda") == 2
    assert "no CUDA device" in error_lines(capsys.readouterr().err)[0]
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(capsys, monkeypatch):
    assert main(["--debug", "sample", "no-such-run"]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and stderr.strip().splitlines()[-1].startswith("vaelab: error:")
    monkeypatch.setenv("VAELAB_DEBUG", "1")
    assert main(["sample", "no-such-run"]) == 2
    assert "Traceback" in capsys.readouterr().err


# -- python -m vaelab ---------------------------------------------------------------------------------

def _python_m_vaelab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("VAELAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_python_m_vaelab_version_and_a_usage_error():
    result = _python_m_vaelab("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vaelab {vaelab.__version__}"
    result = _python_m_vaelab("sample", "no-such-run")
    assert result.returncode == 2 and result.stdout == ""
    assert only_error_line(result.stderr) == "vaelab: error: no-such-run is not a vaelab run directory (no config.json)"


def test_init_from_starts_from_another_runs_weights(run, data, tmp_path):
    """lr=0 keeps the weights where they start: the source run's with init_from, the seed's without."""
    source = read_tensors(run / "model.safetensors")
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    assert train(warm, data, "--max-steps", "2", "lr=0", f"init_from={run}") == 0
    assert train(cold, data, "--max-steps", "2", "lr=0") == 0
    assert same_tensors(read_tensors(warm / "model.safetensors"), source)
    assert not same_tensors(read_tensors(cold / "model.safetensors"), source)
    assert load_run_config(warm).train.init_from == str(run)  # saved with the run


@pytest.mark.parametrize("init_from,extra,message", [
    ("missing.safetensors", [], "init_from: no weights file"),
    ("RUN", ["hidden=[5]"], "do not fit the model"),
])
def test_init_from_errors_are_one_line_and_leave_no_run(run, data, tmp_path, capsys, init_from, extra, message):
    source = run if init_from == "RUN" else tmp_path / init_from
    assert train(tmp_path / "out", data, *extra, f"init_from={source}") == 2
    assert message in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
