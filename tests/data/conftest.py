"""Fixtures for the data-layer tests: a hermetic environment, tiny IDX data sets, a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from vaelab.data import sources
from vaelab.data.idx import write_idx

# Read before any fixture clears it: the real-data test finds Fashion-MNIST through it.
REAL_VAELAB_DATA = os.environ.get("VAELAB_DATA")

ENV_VARS = ("VAELAB_DATA", "VAELAB_CACHE", "VAELAB_OFFLINE", "VAELAB_DOWNLOAD_URL", "XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def hermetic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer settings leak in: cache and system install point into tmp_path."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    # an http_proxy in the developer's shell must not capture requests to the loopback server
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def real_data_dir() -> Path:
    """The VAELAB_DATA of the caller's environment, if it holds Fashion-MNIST; else skip."""
    if not REAL_VAELAB_DATA:
        pytest.skip("VAELAB_DATA is not set (point it at a folder holding fashion-mnist/)")
    root = Path(REAL_VAELAB_DATA)
    if not any(sources.find_idx_files(d) for d in (root / "fashion-mnist", root)):
        pytest.skip(f"VAELAB_DATA={root} holds no fashion-mnist files")
    return root


def tiny_arrays(num_train: int = 12, num_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """Random uint8 images (N, 6, 5) and labels 0..9, named by IDX role."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (num_train, 6, 5), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, num_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (num_test, 6, 5), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, num_test, dtype=np.uint8),
    }


@pytest.fixture
def make_idx_dir() -> Callable[..., dict[str, np.ndarray]]:
    """Write a tiny IDX data set into a folder; returns the arrays written."""

    def make(directory: Path, compress: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
        directory.mkdir(parents=True, exist_ok=True)
        arrays = tiny_arrays(seed=seed)
        for role, file_name in sources.IDX_FILES.items():
            name = file_name if compress else file_name.removesuffix(".gz")
            write_idx(directory / name, arrays[role], compress=compress)
        return arrays

    return make


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging to stderr; counts requests."""

    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback HTTP server: (base URL, folder it serves, list of requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", root, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
