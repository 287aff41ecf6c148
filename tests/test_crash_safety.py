"""Crash safety: training is SIGKILLed at many points, some of them in the middle of writing a
checkpoint, the best weights or the final weights, then resumed with the same command line plus
--resume; every run must end with exactly the tensors of an uninterrupted run.

Each run is a forked child process (fork keeps the imported torch, so a run takes a fraction of a
second) that kills itself with SIGKILL at the chosen point: no Python clean-up, no `finally`, no
flush, as when a machine is preempted or the OOM killer strikes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

import vaelab.checkpoint
import vaelab.files
import vaelab.trainer
from tiny_runs import read_tensors, same_tensors, write_images
from vaelab.cli import main

fork = multiprocessing.get_context("fork") if sys.platform != "win32" else None
pytestmark = pytest.mark.skipif(fork is None, reason="needs fork()")

FAMILIES = {  # tiny KEY=VALUE settings of each model family
    "vae": ["hidden=[16]", "latent_dim=3", "binarize=dynamic"],
    "gan": ["latent_dim=3", "g_hidden=[16]", "d_hidden=[16]", "d_steps=2"],
    "rbm": ["num_hidden=8", "persistent=true", "num_chains=8", "binarize=dynamic"],
    "gsn": ["hidden=[12,8]", "binarize=dynamic"],
    "ae": ["hidden=[16]", "latent_dim=3", "latent_density=gmm", "gmm_components=2"],
}
# (what, n): die on entering the n-th training step; in the middle of the n-th atomic file write
# (half of its bytes written); in the middle of writing the n-th checkpoint, the n-th best weights,
# or the final weights; between the two renames that commit the n-th checkpoint.
KILL_POINTS = [("step", 1), ("step", 4), ("step", 9), ("step", 14), ("write", 1), ("write", 5),
               ("write", 12), ("checkpoint", 3), ("best", 2), ("final", 1), ("rename", 4)]


def command(name: str, data: Path, run: Path) -> list[str]:
    return ["train", name, "--data", str(data), "--out", str(run), "--epochs", "3", "--save-every", "2",
            "batch_size=8", "tensorboard=false", *FAMILIES[name]]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Counter:
    def __init__(self, n: int):
        self.left = n

    def hit(self) -> bool:
        self.left -= 1
        return self.left == 0


def _install(what: str, n: int) -> None:
    """Arrange for this process to SIGKILL itself at the n-th occurrence of `what`."""
    counter = _Counter(n)
    if what == "step":
        original_step = vaelab.trainer.Trainer._train_step

        def step(self, batch):
            if counter.hit():
                _die()
            return original_step(self, batch)

        vaelab.trainer.Trainer._train_step = step
    elif what == "rename":
        original_replace = vaelab.checkpoint.replace

        def replace(source, target):
            if "pending" in str(source) and counter.hit():
                _die()  # `last` already became `previous`; `pending` not yet `last`
            original_replace(source, target)

        vaelab.checkpoint.replace = replace
    else:
        _kill_mid_write(what, counter)


def _kill_mid_write(what: str, counter: _Counter) -> None:
    """Die with half of the chosen file's bytes in its temporary file."""
    original_writer = vaelab.files.atomic_writer
    wanted = {"write": "", "checkpoint": "pending.safetensors", "best": "best.safetensors",
              "final": "model.safetensors"}[what]

    class HalfWriter:
        def __init__(self, handle, context):
            self.handle, self.context = handle, context  # the context keeps the file open

        def write(self, payload):
            self.handle.write(payload[: len(payload) // 2])
            self.handle.flush()
            _die()

    def writer(path):
        context = original_writer(path)
        if wanted in Path(path).name and counter.hit():
            handle = context.__enter__()
            return _Yield(HalfWriter(handle, context))
        return context

    vaelab.files.atomic_writer = writer


class _Yield:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


def _child(argv: list[str], kill: tuple[str, int] | None) -> None:
    if kill is not None:
        _install(*kill)
    os._exit(main(argv))


def run(argv: list[str], kill: tuple[str, int] | None = None) -> int:
    """The exit code of `vaelab ARGV` in a forked child: -9 when it was killed."""
    process = fork.Process(target=_child, args=(argv, kill))
    process.start()
    process.join(60)
    return process.exitcode


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz", labels=True)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_run_killed_anywhere_resumes_to_the_same_tensors(name, data, tmp_path):
    reference = tmp_path / "reference"
    assert main(command(name, data, reference)) == 0  # in this process: the forks then find every import done
    expected = {file: read_tensors(reference / file) for file in ("model.safetensors", "checkpoints/best.safetensors")}
    killed_at = []
    for what, n in KILL_POINTS:
        target = tmp_path / f"{what}{n}"
        status = run(command(name, data, target), kill=(what, n))
        killed_at.append((what, n)) if status == -signal.SIGKILL else None
        assert status in (0, -signal.SIGKILL), (what, n, status)
        if status == -signal.SIGKILL:
            assert not (target / "model.safetensors").exists(), f"unfinished run claims final weights ({what} {n})"
        assert run([*command(name, data, target), "--resume"]) == 0, (what, n)
        for file, tensors in expected.items():
            assert same_tensors(read_tensors(target / file), tensors), (what, n, file)
    assert len(killed_at) >= 10, killed_at
