"""`vaelab export`: the decoder of a tiny trained vae, cvae, ae, dae and gan as ONNX (run in
onnxruntime) and TorchScript (run with torch.jit.load) gives, for the same z, the images vaelab's own
sampling gives; the files say what they are; rbm, gsn, a bad format, a missing run and a missing
onnx package end with one line and exit status 2, and leave no file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vaelab
from tiny_models import COMMON, TINY_CONFIGS
from tiny_runs import write_images
from vaelab.cli import main
from vaelab.export import METADATA_FILE, decoded_images

# torch 2.13 marks torch.jit deprecated; the TorchScript export is kept on purpose (docs/export.md)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

FORMATS = ["onnx", "torchscript"]
DECODERS = ["vae", "cvae", "ae", "dae", "gan"]
DECODING_NETWORK = {"vae": "decoder", "cvae": "decoder", "ae": "decoder", "dae": "decoder", "gan": "generator"}
NUM_CLASSES = 3  # write_images(labels=True)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_images(tmp_path_factory.mktemp("data") / "tiny.npz", labels=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data) -> dict[str, Path]:
    """One tiny run of each model, trained for one epoch (5 steps)."""
    root = tmp_path_factory.mktemp("runs")
    for name in [*DECODERS, "rbm", "gsn"]:
        arguments = ["train", name, *TINY_CONFIGS[name], *COMMON, "--data", str(data), "--out", str(root / name)]
        assert main([*arguments, "--epochs", "1"]) == 0
    return {name: root / name for name in [*DECODERS, "rbm", "gsn"]}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def skip_without_runtime(format_name: str) -> None:
    """The ONNX tests need the export extra (onnx writes the file, onnxruntime runs it)."""
    if format_name == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")


def export(run: Path, format_name: str, out: Path, *flags: str) -> int:
    return main(["export", str(run), "--format", format_name, "--out", str(out), *flags])


def only_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), stderr
    return lines[0]


def run_onnx(path: Path, z: torch.Tensor, label: torch.Tensor | None) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy()} | ({} if label is None else {"label": label.numpy()})
    return session.run(["images"], feeds)[0]


def run_torchscript(path: Path, z: torch.Tensor, label: torch.Tensor | None) -> np.ndarray:
    module = torch.jit.load(str(path))
    with torch.no_grad():
        return (module(z) if label is None else module(z, label)).numpy()


RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript}


def read_metadata(path: Path, format_name: str) -> dict[str, str]:
    if format_name == "onnx":
        import onnx

        return {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    extra = {METADATA_FILE: ""}
    torch.jit.load(str(path), _extra_files=extra)
    return json.loads(extra[METADATA_FILE])


def draw(model, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z from the model's own prior and, for a conditional model, labels 0, 1, 2, 0, ..."""
    z = model.sample_prior(num_samples, generator=torch.Generator().manual_seed(seed))
    label = torch.arange(num_samples) % NUM_CLASSES if model.conditional else None
    return z, label


# -- the exported decoder is vaelab's ------------------------------------------------------------

@pytest.mark.parametrize("format_name", FORMATS)
@pytest.mark.parametrize("name", DECODERS)
def test_exported_decoder_gives_vaelabs_samples(runs, tmp_path, name, format_name):
    """On the same z (5 rows, not the 2 the export traced with: the batch axis is dynamic), the
    file's images are model.sample()'s, which draws that z from the same seed."""
    skip_without_runtime(format_name)
    out = tmp_path / f"{name}.{format_name}"
    assert export(runs[name], format_name, out) == 0
    model = vaelab.load(runs[name])
    z, label = draw(model, 5, seed=3)
    labelled = {} if label is None else {"label": label}
    sampled = model.sample(5, generator=torch.Generator().manual_seed(3), **labelled)
    exported = RUNNERS[format_name](out, z, label)
    assert exported.shape == (5, 1, 6, 6) and exported.dtype == np.float32
    np.testing.assert_allclose(exported, sampled.numpy(), atol=TOLERANCE, rtol=0)
    with torch.no_grad():
        decoded = decoded_images(model, model.decode(z, label))
    np.testing.assert_allclose(exported, decoded.numpy(), atol=TOLERANCE, rtol=0)


def test_the_output_is_the_likelihood_mean_not_the_logits(runs, tmp_path):
    """The vae's decoder emits Bernoulli logits; the file emits their sigmoid (what a user wants to
    look at), so a logit far from 0 does not come out as a pixel outside [0, 1]."""
    out = tmp_path / "vae.pt"
    assert export(runs["vae"], "torchscript", out) == 0
    model = vaelab.load(runs["vae"])
    z = 10 * torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.decode(z)
    exported = run_torchscript(out, z, None)
    np.testing.assert_allclose(exported, torch.sigmoid(logits).numpy(), atol=TOLERANCE, rtol=0)
    assert (logits.abs() > 1).any()


def stored_weights(path: Path, format_name: str) -> int:
    """How many numbers the file stores as weights: the ONNX initializers, or the frozen TorchScript
    graph's tensor constants (a frozen module has no parameters left)."""
    if format_name == "onnx":
        import onnx

        return sum(math.prod(entry.dims) for entry in onnx.load(str(path)).graph.initializer)
    module = torch.jit.load(str(path))
    assert not list(module.named_parameters()) and not list(module.named_buffers())
    constants = [node.output().toIValue() for node in module.graph.nodes()
                 if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType"]
    return sum(constant.numel() for constant in constants)


@pytest.mark.parametrize("format_name", FORMATS)
@pytest.mark.parametrize("name", ["vae", "gan"])
def test_the_file_holds_only_the_decoding_network(runs, tmp_path, name, format_name):
    """Neither file carries the encoder or the discriminator: it stores exactly as many numbers as
    the decoding network's weights and BatchNorm statistics."""
    skip_without_runtime(format_name)
    out = tmp_path / f"{name}.{format_name}"
    assert export(runs[name], format_name, out) == 0
    network = getattr(vaelab.load(runs[name]), DECODING_NETWORK[name])
    expected = sum(value.numel() for value in network.state_dict().values() if value.is_floating_point())
    assert stored_weights(out, format_name) == expected


# -- the metadata --------------------------------------------------------------------------------

@pytest.mark.parametrize("format_name", FORMATS)
def test_the_file_says_what_it_is(runs, tmp_path, format_name):
    skip_without_runtime(format_name)
    out = tmp_path / f"cvae.{format_name}"
    assert export(runs["cvae"], format_name, out, "--decoder-only") == 0
    metadata = read_metadata(out, format_name)
    assert metadata["producer"] == "vaelab" and metadata["vaelab_version"] == vaelab.__version__
    assert metadata["model"] == "cvae" and metadata["part"] == "decoder" and metadata["checkpoint"] == "final"
    assert int(metadata["latent_dim"]) == 3 and json.loads(metadata["image_shape"]) == [1, 6, 6]
    assert int(metadata["num_classes"]) == NUM_CLASSES and "label: int64 (batch,)" in metadata["inputs"]
    assert metadata["likelihood"] == "bernoulli on the decoder's logits"
    assert "the mean of p(x|z)" in metadata["output"]
    assert json.loads(metadata["prior"])["distribution"] == "standard_normal"
    assert json.loads(metadata["model_config"])["hidden"] == [16]


def test_the_gan_says_it_has_no_likelihood(runs, tmp_path):
    out = tmp_path / "gan.pt"
    assert export(runs["gan"], "torchscript", out) == 0
    metadata = read_metadata(out, "torchscript")
    assert metadata["likelihood"] == "none" and "sigmoid of the decoder's logits" in metadata["output"]
    assert "num_classes" not in metadata and "label" not in metadata["inputs"]


def mixture_log_density(prior: dict, z: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(z; mu_k, L_k L_k^T) from the file's numbers, in numpy: z (N, D) -> (N,)."""
    weights, means, scale_tril = (np.asarray(prior[key], dtype=np.float64)
                                  for key in ("weights", "means", "scale_tril"))
    centred = z[:, None, :] - means[None]  # (N, K, D)
    whitened = np.linalg.solve(scale_tril[None], centred[..., None])[..., 0]  # L_k^-1 (z - mu_k)
    log_det = np.log(np.diagonal(scale_tril, axis1=-2, axis2=-1)).sum(-1)  # (K,)
    log_normal = -0.5 * (z.shape[1] * np.log(2 * np.pi) + (whitened ** 2).sum(-1)) - log_det  # (N, K)
    terms = np.log(weights / weights.sum()) + log_normal
    top = terms.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(terms - top).sum(axis=1, keepdims=True)))[:, 0]


def test_the_autoencoders_fitted_mixture_is_in_the_file(runs, tmp_path):
    """The ae's prior is the mixture fitted to its training codes, not N(0, I): the file carries its
    numbers (their density, computed in numpy, is the model's log p(z)), and z drawn from them
    without vaelab decodes as vaelab decodes it."""
    out = tmp_path / "ae.pt"
    assert export(runs["ae"], "torchscript", out) == 0
    prior = json.loads(read_metadata(out, "torchscript")["prior"])
    model = vaelab.load(runs["ae"])
    assert prior["distribution"] == "gaussian_mixture" and len(prior["weights"]) == 2  # gmm_components=2
    points = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(mixture_log_density(prior, points.numpy()),
                               model.log_prior(points.float()).double().numpy(), rtol=1e-5)
    rng = np.random.default_rng(0)
    component = rng.choice(len(prior["weights"]), size=4, p=np.asarray(prior["weights"]) / sum(prior["weights"]))
    eps = rng.standard_normal((4, 3))
    z = np.asarray(prior["means"])[component] + np.einsum("nij,nj->ni", np.asarray(prior["scale_tril"])[component], eps)
    z = torch.as_tensor(z, dtype=torch.float32)
    with torch.no_grad():
        expected = model.decoder_mean(model.decode(z))
    np.testing.assert_allclose(run_torchscript(out, z, None), expected.numpy(), atol=TOLERANCE, rtol=0)


def test_the_default_out_is_in_the_run_directory(runs, capsys):
    assert main(["export", str(runs["gan"]), "--format", "torchscript"]) == 0
    path = runs["gan"] / "decoder.pt"
    assert f"to {path}" in capsys.readouterr().out and path.is_file()
    path.unlink()


# -- what cannot be exported ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rbm", "gsn"])
def test_models_without_a_latent_decoder_are_refused(runs, tmp_path, capsys, name):
    out = tmp_path / "decoder.onnx"
    assert export(runs[name], "torchscript", out) == 2
    line = only_error_line(capsys.readouterr().err)
    assert f"does not apply to model {name}: it has no latent decoder" in line
    assert list(tmp_path.iterdir()) == []


def test_a_bad_format_is_one_line(runs, tmp_path, capsys):
    out = tmp_path / "decoder.tflite"
    assert export(runs["vae"], "tflite", out) == 2
    assert "invalid choice: 'tflite'" in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_run_is_one_line(tmp_path, capsys):
    out = tmp_path / "decoder.pt"
    assert export(tmp_path / "no-such-run", "torchscript", out) == 2
    assert "is not a vaelab run directory" in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_without_onnx_the_error_says_how_to_install_it(runs, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    without_onnx = lambda name, *rest: None if name == "onnx" else find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_onnx)
    out = tmp_path / "decoder.onnx"
    assert export(runs["vae"], "onnx", out) == 2
    assert "pip install 'vaelab[export]'" in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_previous_file_alone(runs, tmp_path, capsys, monkeypatch):
    """The file is written whole or not at all: an export refused, or one whose write fails (here
    the disk refuses the fsync), keeps what --out held and leaves no temporary file beside it."""
    import vaelab.files

    out = tmp_path / "decoder.pt"
    out.write_bytes(b"previous")
    assert export(runs["rbm"], "torchscript", out) == 2
    assert out.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [out]
    capsys.readouterr()

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vaelab.files.os, "fsync", full_disk)
    assert export(runs["vae"], "torchscript", out) == 1
    assert "No space left on device" in only_error_line(capsys.readouterr().err)
    assert out.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [out]
    monkeypatch.undo()
    assert export(runs["vae"], "torchscript", out) == 0
    assert torch.jit.load(str(out)) is not None and list(tmp_path.iterdir()) == [out]
