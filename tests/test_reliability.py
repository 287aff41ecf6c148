"""Resuming as preemption scripts do, numerical faults, full disks and concurrent writers.

Runs are tiny (tests/tiny_runs.py); a "named" data set is a tiny MNIST-shaped IDX folder, so the
data can move between directories like a real one."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab.files
from tiny_runs import (STEPS_PER_EPOCH, TINY_MODEL, error_lines, read_metrics, read_tensors, same_tensors, train,
                       write_images)
from vaelab.checkpoint import load_training_state
from vaelab.cli import main
from vaelab.data.idx import write_idx
from vaelab.files import run_lock
from vaelab.models.vae import VAE

STEPS = ["--max-steps", "12", "--save-every", "3", "--seed", "7"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz")


def write_mnist(directory: Path, seed: int = 0) -> Path:
    """A tiny MNIST (40 train, 10 test images of 6x6) as the four IDX files in directory/."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (40, 6, 6), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, 40, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 6, 6), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 10, dtype=np.uint8)}
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return directory


def mnist_command(run: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["train", "vae", "--data", "mnist", "--data-dir", str(data_dir), "--out", str(run), *STEPS,
            "hidden=[16]", "latent_dim=3", "batch_size=8", "tensorboard=false", *extra]


def snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}


# -- resume as schedulers do it ------------------------------------------------------------------

def test_the_same_command_line_plus_resume_continues_to_the_uninterrupted_result(tmp_path, capsys):
    data_dir = write_mnist(tmp_path / "data")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(mnist_command(reference, data_dir)) == 0
    assert main([*mnist_command(run, data_dir)[:-4], "--max-steps", "5", *mnist_command(run, data_dir)[-4:]]) == 0
    # the preemption script re-issues the very command line, with --resume added
    assert main([*mnist_command(run, data_dir), "--resume"]) == 0
    assert not error_lines(capsys.readouterr().err)
    assert same_tensors(read_tensors(run / "model.safetensors"), read_tensors(reference / "model.safetensors"))
    assert read_metrics(run) == read_metrics(reference)


@pytest.mark.parametrize("changed, named", [
    (["--seed", "8"], "--seed (saved 7, given 8)"), (["lr=0.01"], "lr= (saved 0.001, given 0.01)"),
    (["hidden=[32]"], "hidden= (saved (16,), given (32,))"), (["binarize=none"], "binarize= (saved 'dynamic', given 'none')"),
    (["--precision", "bf16"], "--precision (saved 'fp32', given 'bf16')")])
def test_an_option_that_differs_is_named(tmp_path, capsys, changed, named):
    data_dir = write_mnist(tmp_path / "data")
    run = tmp_path / "run"
    assert main([*mnist_command(run, data_dir), "--max-steps", "3"]) == 0
    before = snapshot(run)
    assert main([*mnist_command(run, data_dir), *changed, "--resume"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("vaelab: error: --resume: the command line differs from the saved run in " + named)
    assert snapshot(run) == before  # refused before anything was written


def test_the_data_may_move_but_not_change(tmp_path, capsys):
    first, moved, other = tmp_path / "first", tmp_path / "moved", tmp_path / "other"
    write_mnist(first)
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert main(mnist_command(reference, first)) == 0
    assert main([*mnist_command(run, first), "--max-steps", "6"]) == 0
    shutil.move(first, moved)
    write_mnist(other, seed=1)  # the same shapes, other pixels
    assert main([*mnist_command(run, other), "--resume"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "is not the data this run was trained on (it differs in test_images_sha256, test_labels_sha256, " \
           "train_images_sha256, train_labels_sha256)" in line
    os.environ["VAELAB_DATA"] = str(moved)  # the location may also come from VAELAB_DATA
    try:
        command = [arg for arg in mnist_command(run, moved) if arg not in ("--data-dir", str(moved))]
        assert main([*command, "--resume"]) == 0
    finally:
        del os.environ["VAELAB_DATA"]
    assert same_tensors(read_tensors(run / "model.safetensors"), read_tensors(reference / "model.safetensors"))


def test_a_run_killed_before_its_first_checkpoint_starts_from_scratch(tmp_path, data, capsys):
    run, reference = tmp_path / "run", tmp_path / "reference"
    assert train(reference, data, "--epochs", "2") == 0
    run.mkdir()
    (run / "config.json").write_text((reference / "config.json").read_text())  # written, then killed
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / ".pending.safetensors.1234.part").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert train(run, data, "--epochs", "2", "--resume") == 0
    assert f"no checkpoint in {run} yet: starting the run from scratch" in capsys.readouterr().err
    assert same_tensors(read_tensors(run / "model.safetensors"), read_tensors(reference / "model.safetensors"))
    assert not list((run / "checkpoints").glob(".*part"))


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "2") == 0
    before = snapshot(run)
    capsys.readouterr()
    assert train(run, data, "--epochs", "2", "--resume") == 0
    assert capsys.readouterr().err.strip() == (f"{run} already finished at step 10; nothing to do "
                                               "(raise --epochs or --max-steps to train it further)")
    assert snapshot(run) == before
    assert train(run, data, "--epochs", "3", "--resume") == 0  # a larger budget trains on
    assert load_training_state(run)["progress"]["step"] == 15


def test_final_weights_exist_only_for_a_finished_run(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1") == 0
    assert (run / "model.safetensors").exists()
    original = VAE.train_step

    def interrupt(self, batch, step, updater):
        if step == 7:
            raise KeyboardInterrupt
        return original(self, batch, step, updater)

    VAE.train_step = interrupt
    try:
        assert train(run, data, "--epochs", "3", "--resume") == 130
    finally:
        VAE.train_step = original
    assert not (run / "model.safetensors").exists()  # the run goes on: no weights claim to be final
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 2
    assert "has no final weights (its training has not finished" in capsys.readouterr().err
    assert main(["sample", str(run), "--checkpoint", "last", "--out", str(tmp_path / "s.png")]) == 0


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, data):
    """SIGTERM (a scheduler's stop) ends training as Ctrl-C does: the checkpoint of the step it
    reached is written, exit status 143 with one line, and --resume continues from there."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "vaelab", "train", "vae", *TINY_MODEL, "tensorboard=false",
               "--data", str(data), "--out", str(run), "--epochs", "100000"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(_lines(run / "metrics.jsonl")) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert error_lines(stderr) == ["vaelab: error: terminated (a training run can continue with --resume)"]
    saved = load_training_state(run)["progress"]
    assert saved["step"] >= 3 * STEPS_PER_EPOCH  # at least the epochs it logged: nothing lost
    assert not (run / "model.safetensors").exists()
    assert main(["train", "vae", "--out", str(run), "--resume", "--max-steps", str(saved["step"] + 2)]) == 0
    assert load_training_state(run)["progress"]["step"] == saved["step"] + 2


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- numerical faults -------------------------------------------------------------------------------

def poison(monkeypatch, steps: set[int], term: str = "kl", where: str = "value") -> None:
    """Make the VAE's `term` NaN (where=value) or its gradient NaN with a finite loss (where=grad)
    at the given steps."""
    original = VAE.loss

    def loss(self, batch, step=None):
        terms = original(self, batch, step)
        if step in steps and where == "value":
            terms[term] = terms[term] * float("nan")
            terms["loss"] = terms["loss"] + terms[term]
        elif step in steps:  # sqrt at 0: value 0, gradient inf, times 0: NaN
            weight = self.posterior_head.weight
            terms["loss"] = terms["loss"] + 0.0 * torch.sqrt((weight - weight.detach()).abs().sum())
        return terms

    monkeypatch.setattr(VAE, "loss", loss)


def test_a_nan_term_stops_the_run_naming_the_step_and_the_term(tmp_path, data, monkeypatch, capsys):
    poison(monkeypatch, {6})
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "3") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("vaelab: error: step 7: the loss term 'kl' became nan; the last checkpoint")
    assert "is intact" in line
    assert load_training_state(run)["progress"]["step"] == 5


def test_a_nan_gradient_stops_the_run_before_the_weights_change(tmp_path, data, monkeypatch, capsys):
    poison(monkeypatch, {2}, where="grad")
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "1", "--save-every", "2") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "step 3: the loss term 'gradient of loss' became nan" in line
    state = load_training_state(run)
    assert state["progress"]["step"] == 2 and all(torch.isfinite(t).all() for t in state["model"].values())


def test_skip_nonfinite_skips_and_counts_and_stops_after_n(tmp_path, data, monkeypatch, capsys):
    poison(monkeypatch, {3, 8})
    run = tmp_path / "run"
    assert train(run, data, "--epochs", "3", "skip_nonfinite=2") == 0
    stderr = capsys.readouterr().err
    assert "warning: step 4: the loss term 'kl' became nan; the step is skipped (1 of 2 allowed" in stderr
    assert [m.get("skipped_steps") for m in read_metrics(run)] == [1, 2, 2]
    assert all(torch.isfinite(t).all() for t in read_tensors(run / "model.safetensors").values())
    poison(monkeypatch, {3, 8, 11})
    assert train(tmp_path / "again", data, "--epochs", "3", "skip_nonfinite=2") == 1
    assert "step 12: the loss term 'kl' became nan after 2 skipped steps" in capsys.readouterr().err


# -- disk and concurrency -----------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch, capsys):
    run = tmp_path / "run"
    fsync, calls = os.fsync, []

    def full_after_a_while(descriptor):
        calls.append(descriptor)
        if len(calls) > 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(descriptor)

    monkeypatch.setattr(vaelab.files.os, "fsync", full_after_a_while)
    assert train(run, data, "--epochs", "3") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("vaelab: error: cannot write ") and line.endswith(": No space left on device")
    monkeypatch.setattr(vaelab.files.os, "fsync", fsync)
    step = load_training_state(run)["progress"]["step"]
    assert step > 0 and not list(run.rglob("*.part"))  # a good checkpoint, no leftovers
    assert train(run, data, "--epochs", "3", "--resume") == 0


def test_a_real_tiny_filesystem_that_fills_up(tmp_path, data, capsys):
    mount = tmp_path / "tiny_fs"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        run = mount / "run"
        status = train(run, data, "--epochs", "50", "hidden=[64]", "latent_dim=8")
        line = error_lines(capsys.readouterr().err)
        assert status == 1 and "No space left on device" in line[0], line
        assert load_training_state(run)["progress"]["step"] > 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_an_unwritable_output_directory_is_one_line(tmp_path, data, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    assert train(tmp_path / "a_file" / "run", data, "--epochs", "1") in (1, 2)
    (line,) = error_lines(capsys.readouterr().err)
    assert "a_file/run" in line and "Not a directory" in line


def _train_in_child(run: str, data: str, queue) -> None:
    queue.put(main(["train", "vae", "--data", data, "--out", run, "--epochs", "1", "hidden=[16]",
                    "latent_dim=3", "batch_size=8", "tensorboard=false"]))


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, data, capfd):
    run = tmp_path / "run"
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    with run_lock(run):  # this process is training into run
        child = fork.Process(target=_train_in_child, args=(str(run), str(data), queue))
        child.start()
        child.join(60)
        assert queue.get(timeout=5) == 2
    assert f"{run} is in use by another vaelab process (pid {os.getpid()})" in capfd.readouterr().err
    (run / ".lock").write_text("999999")  # left by a process that was killed: no flock is held
    assert train(run, data, "--epochs", "1") == 0
    assert "had a stale lock of process 999999, which is no longer running" in capfd.readouterr().err
    assert json.loads((run / "config.json").read_text())["model_name"] == "vae"
