"""No code from data: pickles planted in a run directory, or as its data, are never unpickled.

Each payload, when unpickled, creates a marker file (its __reduce__ is `pathlib.Path.touch`). It is
planted under every name a user might try (model.pt, .pth, .ckpt, .bin, .pkl), in place of the
safetensors files vaelab reads (model.safetensors, checkpoints/last, previous and best), and as the
data (an .npz holding an object array, an .npy of pickled objects, a bare pickle). Loading, sampling,
evaluating, resuming and reading the training state must never create the marker: each either works
from the real files or fails with one `vaelab: error:` line and exit status 2. A last test reads
src/ and finds no call that could unpickle (pickle, torch.load, joblib, np.load(allow_pickle=True),
yaml.load).
"""

from __future__ import annotations

import ast
import io
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from tiny_runs import error_lines, resume, train, write_images
from vaelab import checkpoint
from vaelab.cli import main
from vaelab.data.datasets import load_dataset
from vaelab.errors import VaelabError

SRC = Path(vaelab.__file__).resolve().parent
TORCH_NAMES = ["model.pt", "model.pth", "model.ckpt", "model.bin", "model.pkl"]
SAFETENSORS_NAMES = ["model.safetensors", "checkpoints/last.safetensors", "checkpoints/previous.safetensors",
                     "checkpoints/best.safetensors"]
CHECKPOINTS = list(getattr(checkpoint, "CHECKPOINTS", ("final", "best")))


class Payload:
    """Unpickling this creates `marker`: the proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def raw_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(marker)})


def torch_pickle(marker: Path) -> bytes:
    """The zip format of torch.save, its data.pkl holding the payload."""
    buffer = io.BytesIO()
    torch.save({"state_dict": Payload(marker), "weight": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def object_npy(marker: Path) -> bytes:
    """An .npy of an object array: its data is a pickle (np.save with allow_pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([Payload(marker), 1], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def object_npz(marker: Path) -> bytes:
    """An .npz whose x_train is an object array, beside a real x_test."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x_train.npy", object_npy(marker))
        real = io.BytesIO()
        np.save(real, np.zeros((4, 6, 6), dtype=np.uint8))
        archive.writestr("x_test.npy", real.getvalue())
    return buffer.getvalue()


PAYLOADS = {"raw pickle": raw_pickle, "torch.save": torch_pickle}


def test_the_payloads_do_create_the_marker(tmp_path: Path) -> None:
    """Without this, a marker that never appears would prove nothing."""
    for name, make in [*PAYLOADS.items(), ("npy", object_npy), ("npz", object_npz)]:
        marker = tmp_path / f"marker-{name}"
        path = tmp_path / f"payload-{name}"
        path.write_bytes(make(marker))
        if name == "raw pickle":
            pickle.loads(path.read_bytes())
        elif name == "torch.save":
            torch.load(path, weights_only=False)
        elif name == "npy":
            np.load(path, allow_pickle=True)
        else:
            np.load(path, allow_pickle=True)["x_train"]
        assert marker.exists(), name


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, data): a tiny run trained two epochs, with every checkpoint written."""
    folder = tmp_path_factory.mktemp("unpickling")
    data = write_images(folder / "tiny.npz")
    run_dir = folder / "run"
    assert train(run_dir, data, "--epochs", "2") == 0
    return run_dir, data


@pytest.fixture
def run_copy(trained, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(trained[0], run_dir)
    return run_dir


def plant(run_dir: Path, names: list[str], payload: bytes) -> None:
    for name in names:
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)


def command_outcome(capsys, argv: list[str]) -> tuple[int, str]:
    """Run `vaelab argv`: it works (0) or fails with exit 2 and exactly one `vaelab: error:` line."""
    capsys.readouterr()
    status = main(argv)
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert status in (0, 2), (argv, status, stderr)
    if status == 2:
        assert len(error_lines(stderr)) == 1, stderr
    return status, stderr


def api_outcome(call) -> str:
    """Run a loading function: it returns, or raises VaelabError with a one-line message."""
    try:
        call()
    except VaelabError as error:
        assert "\n" not in str(error)
        return "error"
    return "ok"


def use_every_way(run_dir: Path, marker: Path, capsys, tmp_path: Path) -> dict[str, int | str]:
    """Load, sample, evaluate, read the training state and resume `run_dir`; the marker never appears."""
    outcomes: dict[str, int | str] = {}
    for name in CHECKPOINTS:
        outcomes[f"load {name}"] = api_outcome(lambda name=name: checkpoint.load(run_dir, checkpoint=name))
        assert not marker.exists()
        outcomes[f"sample {name}"], _ = command_outcome(
            capsys, ["sample", str(run_dir), "--checkpoint", name, "-n", "2", "--out", str(tmp_path / "s.png")])
        assert not marker.exists()
        outcomes[f"eval {name}"], _ = command_outcome(
            capsys, ["eval", str(run_dir), "--checkpoint", name, "--metrics", "elbo", "--limit", "4"])
        assert not marker.exists()
    outcomes["vaelab.load"] = api_outcome(lambda: vaelab.load(run_dir))
    outcomes["training state"] = api_outcome(lambda: checkpoint.load_training_state(run_dir))
    assert not marker.exists()
    capsys.readouterr()
    status = resume(run_dir, "--epochs", "3")
    stderr = capsys.readouterr().err
    assert status in (0, 2) and "Traceback" not in stderr, (status, stderr)
    assert status == 0 or len(error_lines(stderr)) == 1, stderr
    outcomes["resume"] = status
    assert not marker.exists()
    return outcomes


@pytest.mark.parametrize("payload", PAYLOADS)
def test_pickles_beside_the_real_files_are_ignored(run_copy: Path, tmp_path: Path, capsys, payload: str) -> None:
    """model.pt & co. in the run directory and in checkpoints/: everything works from the real files."""
    marker = tmp_path / "PWNED"
    plant(run_copy, TORCH_NAMES + [f"checkpoints/{name}" for name in TORCH_NAMES], PAYLOADS[payload](marker))
    outcomes = use_every_way(run_copy, marker, capsys, tmp_path)
    assert set(outcomes.values()) == {"ok", 0}, outcomes


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("names", [[name] for name in SAFETENSORS_NAMES] + [SAFETENSORS_NAMES],
                         ids=[*SAFETENSORS_NAMES, "all"])
def test_pickles_in_place_of_the_safetensors_files(run_copy: Path, tmp_path: Path, capsys, payload: str,
                                                   names: list[str]) -> None:
    """A pickle named like a file vaelab reads is refused (one line, exit 2), or the real one is used."""
    marker = tmp_path / "PWNED"
    plant(run_copy, names, PAYLOADS[payload](marker))
    outcomes = use_every_way(run_copy, marker, capsys, tmp_path)
    if "model.safetensors" in names:
        assert outcomes["load final"] == "error" and outcomes["sample final"] == 2 and outcomes["eval final"] == 2
        assert outcomes["vaelab.load"] == "error"
    if "checkpoints/best.safetensors" in names:
        assert outcomes["load best"] == "error" and outcomes["sample best"] == 2
    if names == SAFETENSORS_NAMES:  # nothing real to fall back on
        assert outcomes["training state"] == "error" and outcomes["resume"] == 2


DATA_PAYLOADS = {"data.npz": object_npz, "data.npy": object_npy, "pickle.npy": raw_pickle,
                 "pickle.npz": raw_pickle, "torch.npz": torch_pickle}


@pytest.mark.parametrize("name", DATA_PAYLOADS)
def test_pickled_data_is_refused(tmp_path: Path, capsys, name: str) -> None:
    """Training on, loading, and describing a data file that holds a pickle: one line, exit 2."""
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(DATA_PAYLOADS[name](marker))
    with pytest.raises(VaelabError):
        load_dataset(str(path))
    for argv in (["data", str(path)], ["train", "vae", "--data", str(path), "--out", str(tmp_path / "r"),
                                      "--epochs", "1", "tensorboard=false"]):
        status, stderr = command_outcome(capsys, argv)
        assert status == 2 and str(path) in stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", DATA_PAYLOADS)
def test_a_run_whose_data_became_a_pickle(run_copy: Path, tmp_path: Path, capsys, name: str) -> None:
    """Evaluating (and resuming) a run after its data file was replaced by a pickle: one line, exit 2."""
    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(DATA_PAYLOADS[name](marker))
    config = json.loads((run_copy / checkpoint.CONFIG_FILE).read_text())
    config["data"]["name"] = str(path)
    (run_copy / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    status, _ = command_outcome(capsys, ["eval", str(run_copy), "--metrics", "elbo", "--limit", "4"])
    assert status == 2
    capsys.readouterr()
    assert resume(run_copy, "--epochs", "3") == 2
    assert len(error_lines(capsys.readouterr().err)) == 1
    assert not marker.exists()


# -- nothing in src/ can unpickle ------------------------------------------------------------------

UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for an attribute chain on a name, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def unpickling_calls(source: str) -> list[str]:
    """What in `source` could unpickle: imports of pickle-like modules, torch.load, np.load without
    allow_pickle=False, yaml.load and friends, weights_only=False, allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "numpy", "yaml"):
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name in {"load", "unsafe_load", "full_load"}]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith(("torch.load", "jit.load")) or name.split(".")[0] in UNPICKLING_MODULES:
                found.append(name)
            elif name in ("np.load", "numpy.load"):
                value = keywords.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{name} without allow_pickle=False")
            elif (name.startswith("yaml.") and name.split(".")[-1] in UNSAFE_YAML) or name.endswith("read_pickle"):
                found.append(name)
            for key, expected in (("allow_pickle", False), ("weights_only", True)):
                value = keywords.get(key)
                if value is not None and not (isinstance(value, ast.Constant) and value.value is expected):
                    found.append(f"{name}({key}=...)")
    return found


UNPICKLING_TEXT = re.compile(r"pickle\.loads?\(|torch\.load\(|joblib|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
                             r"|yaml\.(unsafe_|full_)?load\(|import\s+(c?pickle|dill|cloudpickle|shelve)\b")


def test_the_checker_finds_what_it_should() -> None:
    bad = ["import pickle", "from pickle import loads", "import joblib", "torch.load(p)",
           "torch.load(p, weights_only=True)", "np.load(p)", "np.load(p, allow_pickle=True)",
           "numpy.load(p, allow_pickle=flag)", "yaml.load(t)", "yaml.unsafe_load(t)", "pd.read_pickle(p)",
           "from torch import load", "torch.jit.load(p)"]
    for source in bad:
        assert unpickling_calls(source), source
    for source in ["np.load(p, allow_pickle=False)", "yaml.safe_load(t)", "json.loads(t)", "load_file(p)"]:
        assert not unpickling_calls(source), source


def test_nothing_in_src_unpickles() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    found = {}
    for path in files:
        source = path.read_text()
        calls = unpickling_calls(source) + [m.group(0) for m in UNPICKLING_TEXT.finditer(source)]
        if calls:
            found[str(path.relative_to(SRC))] = calls
    assert not found, found
