"""Finding named data sets (resolution order, layouts) and checksum-verified downloads (loopback server)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from vaelab.data import load_dataset, resolve_dataset_dir, sources
from vaelab.errors import DataError

NAME = "fashion-mnist"


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """The four candidate roots: --data-dir, VAELAB_DATA, cache, system (the last two set by hermetic_env)."""
    return {
        "data_dir": tmp_path / "data-dir",
        "env": tmp_path / "env",
        "cache": Path(os.environ["VAELAB_CACHE"]),
        "system": sources.SYSTEM_DATA_DIRS[0],
    }


def test_resolution_order(roots, make_idx_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    for root in roots.values():
        make_idx_dir(root / NAME)
    monkeypatch.setenv("VAELAB_DATA", str(roots["env"]))
    assert resolve_dataset_dir(NAME, roots["data_dir"], download=False) == roots["data_dir"] / NAME
    assert resolve_dataset_dir(NAME, download=False) == roots["env"] / NAME
    monkeypatch.delenv("VAELAB_DATA")
    assert resolve_dataset_dir(NAME, download=False) == roots["cache"] / NAME
    for file in (roots["cache"] / NAME).iterdir():
        file.unlink()  # an emptied cache folder is skipped
    assert resolve_dataset_dir(NAME, download=False) == roots["system"] / NAME


def test_root_itself_or_name_subfolder(roots, make_idx_dir) -> None:
    make_idx_dir(roots["data_dir"])
    assert resolve_dataset_dir(NAME, roots["data_dir"], download=False) == roots["data_dir"]
    make_idx_dir(roots["data_dir"] / NAME)
    assert resolve_dataset_dir(NAME, roots["data_dir"], download=False) == roots["data_dir"] / NAME


def test_uncompressed_files_accepted(roots, make_idx_dir) -> None:
    arrays = make_idx_dir(roots["data_dir"], compress=False)
    dataset = load_dataset(NAME, roots["data_dir"], download=False)
    np.testing.assert_array_equal(dataset.test.labels.numpy(), arrays["test_labels"])


def test_partial_folder_is_skipped(roots, make_idx_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dir(roots["env"])
    partial = roots["data_dir"] / NAME
    make_idx_dir(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("VAELAB_DATA", str(roots["env"]))
    assert resolve_dataset_dir(NAME, roots["data_dir"], download=False) == roots["env"]


def test_other_data_sets_folder_is_not_taken(roots, make_idx_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dir(roots["env"] / NAME)
    monkeypatch.setenv("VAELAB_DATA", str(roots["env"] / NAME))
    with pytest.raises(DataError, match="'mnist' not found"):
        resolve_dataset_dir("mnist", download=False)


@pytest.mark.parametrize("how", ["argument", "VAELAB_OFFLINE"])
def test_nothing_found_offline(roots, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "VAELAB_OFFLINE":
        monkeypatch.setenv("VAELAB_OFFLINE", "1")
    roots["data_dir"].mkdir()
    (roots["data_dir"] / "t10k-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(DataError) as error:
        resolve_dataset_dir(NAME, roots["data_dir"], download=how != "argument")
    message = str(error.value)
    for root in (roots["data_dir"], roots["cache"] / NAME, roots["system"] / NAME):
        assert str(root) in message
    assert f"{roots['data_dir']} (missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images" in message
    assert f"{roots['cache'] / NAME} (no such folder)" in message
    assert "--data-dir" in message and "\n" not in message
    assert ("unset VAELAB_OFFLINE" in message) == (how == "VAELAB_OFFLINE")


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="known IDX data sets: fashion-mnist, mnist"):
        resolve_dataset_dir("cifar10", download=False)


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sources.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("VAELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_dir() == tmp_path / "xdg" / "vaelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert sources.cache_dir() == Path.home() / ".cache" / "vaelab"


@pytest.fixture
def served(http_server, make_idx_dir, monkeypatch: pytest.MonkeyPatch):
    """Tiny IDX .gz files on the loopback server, their MD5s patched into the spec."""
    base_url, root, requests = http_server
    arrays = make_idx_dir(root)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in root.iterdir()}
    spec = dataclasses.replace(sources.KNOWN_DATASETS[NAME], md5=md5, urls=(base_url,))
    monkeypatch.setitem(sources.KNOWN_DATASETS, NAME, spec)
    return base_url, root, requests, arrays


def test_download_writes_verified_files_then_loads(served) -> None:
    base_url, root, requests, arrays = served
    directory = resolve_dataset_dir(NAME, progress=False)
    assert directory == sources.cache_dir() / NAME
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in root.iterdir())
    assert len(requests) == 4
    dataset = load_dataset(NAME, progress=False)  # found in the cache now: no new request
    assert len(requests) == 4
    np.testing.assert_array_equal(dataset.train.labels.numpy(), arrays["train_labels"])
    np.testing.assert_allclose(dataset.test.images[:, 0].numpy(), arrays["test_images"] / 255, rtol=1e-6)
    assert dataset.class_names[0] == "T-shirt/top" and dataset.source == str(directory)


def test_download_url_from_environment_or_argument(served, monkeypatch: pytest.MonkeyPatch) -> None:
    base_url, _, requests, _ = served
    spec = dataclasses.replace(sources.KNOWN_DATASETS[NAME], urls=("http://127.0.0.1:9/unused/",))
    monkeypatch.setitem(sources.KNOWN_DATASETS, NAME, spec)
    monkeypatch.setenv("VAELAB_DOWNLOAD_URL", "http://127.0.0.1:9/also-unused/")
    resolve_dataset_dir(NAME, base_url=base_url.rstrip("/"), progress=False)
    assert len(requests) == 4
    for file in (sources.cache_dir() / NAME).iterdir():
        file.unlink()
    monkeypatch.setenv("VAELAB_DOWNLOAD_URL", base_url)
    resolve_dataset_dir(NAME, progress=False)
    assert len(requests) == 8


def test_checksum_mismatch_leaves_no_file(served, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = sources.KNOWN_DATASETS[NAME]
    bad = dict(spec.md5, **{"train-labels-idx1-ubyte.gz": "0" * 32})
    monkeypatch.setitem(sources.KNOWN_DATASETS, NAME, dataclasses.replace(spec, md5=bad))
    with pytest.raises(DataError) as error:
        resolve_dataset_dir(NAME, progress=False)
    actual = spec.md5["train-labels-idx1-ubyte.gz"]
    message = str(error.value)
    assert "checksum mismatch for train-labels-idx1-ubyte.gz" in message
    assert "0" * 32 in message and actual in message
    left = sorted(p.name for p in (sources.cache_dir() / NAME).iterdir())
    assert left == ["train-images-idx3-ubyte.gz"]  # verified files are kept; no partial file


def test_http_404(served) -> None:
    base_url, root, _, _ = served
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=f"download of {base_url}t10k-images-idx3-ubyte.gz failed: HTTP Error 404"):
        resolve_dataset_dir(NAME, progress=False)
    assert not list((sources.cache_dir() / NAME).glob(".*part"))


def test_unreachable_server(served, monkeypatch: pytest.MonkeyPatch) -> None:
    # port 9 (discard) on loopback: nothing listens in a test environment, so the connection is refused
    with pytest.raises(DataError, match="download of http://127.0.0.1:9/train-images-idx3-ubyte.gz failed"):
        resolve_dataset_dir(NAME, base_url="http://127.0.0.1:9/", progress=False)


def test_progress_bar_on_request(served, capsys: pytest.CaptureFixture[str]) -> None:
    resolve_dataset_dir(NAME, progress=True)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err
