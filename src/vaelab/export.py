"""`vaelab export`: a trained model's decoder as a file that runs without vaelab (docs/export.md).

The exported module maps z (batch, latent_dim), and for a class-conditional model a label
(batch,) int64, to images (batch, C, H, W) in [0, 1]: for the same z, exactly what
`model.sample(mean=True)` returns, i.e. the mean of p(x|z) of the decoder's output (the sigmoid of
a Bernoulli decoder's logits, the GAN's sigmoid of G(z), an MSE autoencoder's clamped output).
Every model with the LatentDecoder capability exports (vae, cvae, ae, dae, gan); the others (rbm,
gsn) have no map from a latent z to an image, and get one line saying so.

The file says what it is, in the ONNX model's metadata_props or the TorchScript file's extra file
`metadata.json` (the same string map): latent_dim, image_shape, the inputs, what the output means,
the likelihood, the prior to draw z from (N(0, I), or the AE's fitted mixture as numbers), the
model's config and the vaelab version. It is built in memory and written atomically.

- ONNX: torch.onnx.export(dynamo=False), the TorchScript-based exporter, which needs only the onnx
  package. Since torch 2.9 the default is the torch.export-based exporter, which also needs
  onnxscript; these decoders are plain MLPs and transposed convolutions, which the legacy exporter
  handles, so vaelab keeps its dependencies to onnx (and onnxruntime to run the file).
- TorchScript: torch.jit.trace, then torch.jit.freeze (optimize_numerics=False, so no folding changes
  a result): freezing inlines the weights the decoder uses and drops the rest (the encoder, the
  GAN's discriminator), so the file holds the decoder only. torch 2.13 marks torch.jit deprecated
  (in favour of torch.export) but still runs and loads it; the file is for torch.jit.load and
  LibTorch users, and its deprecation warnings are silenced here.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from vaelab.checkpoint import load, load_run_config
from vaelab.config import RunConfig, config_to_dict
from vaelab.errors import VaelabError
from vaelab.files import atomic_write_bytes
from vaelab.models.capabilities import WHAT_IT_LACKS, GaussianMixturePrior, LatentDecoder, MarkovChainSampler
from vaelab.noise import draw_normal
from vaelab.version import __version__

METADATA_FILE = "metadata.json"  # the TorchScript file's extra file holding the metadata
EXAMPLE_BATCH = 2  # traced with two rows, so that nothing is specialised to a batch of one
ONNX_OPSET = 17  # onnxruntime 1.13 and later run it
INSTALL_HINT = "pip install 'vaelab[export]' (or pip install onnx onnxruntime)"

# What a decoder output becomes as an image when the model has no likelihood of its own (a GAN, an
# MSE autoencoder): LatentDecoder.decoder_output says which of the two it emits.
OUTPUT_TO_IMAGE: dict[str, Callable[[Tensor], Tensor]] = {
    "logits": torch.sigmoid,
    "mean": lambda decoded: decoded,
}
OUTPUT_WORDS = {"logits": "the sigmoid of the decoder's logits", "mean": "the decoder's output"}


def decoded_images(model: Any, decoded: Tensor) -> Tensor:
    """A LatentDecoder's output (B, C * params, H, W) -> the images it stands for (B, C, H, W) in
    [0, 1], as model.sample(mean=True) gives them: the likelihood's mean, clamped."""
    own = model.likelihood
    images = own.mean(decoded) if own is not None else OUTPUT_TO_IMAGE[model.decoder_output](decoded)
    return images.clamp(0.0, 1.0)


class ImageDecoder(nn.Module):
    """z (B, D) [, label (B,) int64] -> images (B, C, H, W) in [0, 1]: the module that is exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor, label: Tensor | None = None) -> Tensor:
        decoder = cast(LatentDecoder, self.model)  # checked by require_latent_decoder before export
        return decoded_images(decoder, decoder.decode(z, label))


# -- the formats ---------------------------------------------------------------------------------

Serializer = Callable[[ImageDecoder, tuple[Tensor, ...], dict[str, str]], bytes]


@dataclass(frozen=True)
class ExportFormat:
    suffix: str  # of the default output file, RUN_DIR/decoder.SUFFIX
    serialize: Serializer  # (module, example inputs, metadata) -> the file's bytes
    needs: tuple[str, ...] = ()  # optional packages it imports


def onnx_bytes(module: ImageDecoder, inputs: tuple[Tensor, ...], metadata: dict[str, str]) -> bytes:
    """The ONNX file: dynamic batch axis, inputs z [, label], output images, metadata_props."""
    import onnx

    names = ["z", "label"][: len(inputs)]
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "decoder.onnx"
        with warnings.catch_warnings():  # the legacy exporter's deprecation notice: chosen (module docstring)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, inputs, path, dynamo=False, opset_version=ONNX_OPSET, input_names=names,
                              output_names=["images"],
                              dynamic_axes={name: {0: "batch"} for name in [*names, "images"]})
        proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(module: ImageDecoder, inputs: tuple[Tensor, ...], metadata: dict[str, str]) -> bytes:
    """The TorchScript file: traced (and checked by re-running), frozen to the decoder's weights."""
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated: kept on purpose (docs/export.md)
        warnings.simplefilter("ignore", DeprecationWarning)
        frozen = torch.jit.freeze(torch.jit.trace(module, inputs), optimize_numerics=False)
        buffer = io.BytesIO()
        torch.jit.save(frozen, buffer, _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    return buffer.getvalue()


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(".onnx", onnx_bytes, needs=("onnx",)),
    "torchscript": ExportFormat(".pt", torchscript_bytes),
}


def export_format(name: str) -> ExportFormat:
    """The format `name`, its optional packages checked, or one VaelabError line."""
    if name not in FORMATS:
        raise VaelabError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    missing = [package for package in FORMATS[name].needs if importlib.util.find_spec(package) is None]
    if missing:
        raise VaelabError(f"--format {name} needs the {', '.join(missing)} package: {INSTALL_HINT}")
    return FORMATS[name]


# -- what the file says about itself -------------------------------------------------------------

def describe_prior(model: Any, model_name: str) -> dict[str, Any]:
    """p(z) as numbers to draw z from without vaelab."""
    if isinstance(model, GaussianMixturePrior):
        weights, means, scale_tril = model.mixture_parameters()
        return {"distribution": "gaussian_mixture", "weights": weights.tolist(), "means": means.tolist(),
                "scale_tril": scale_tril.tolist(),
                "sampling": "k ~ Categorical(weights), z = means[k] + scale_tril[k] @ eps, eps ~ N(0, I)"}
    if model.prior_moments() is None:
        return {"distribution": "standard_normal", "sampling": "z ~ N(0, I)"}
    raise VaelabError(f"cannot export the {model_name} decoder: its prior p(z) is neither N(0, I) nor a "
                      "Gaussian mixture, so the file could not say how to draw z")


def output_meaning(model: Any) -> str:
    shape = "(batch, {}, {}, {})".format(*model.image_shape)
    if model.likelihood is not None:
        return f"float32 {shape} in [0, 1]: the mean of p(x|z), {model.likelihood.description}"
    return (f"float32 {shape} in [0, 1]: {OUTPUT_WORDS[model.decoder_output]}, clamped "
            "(the model defines no likelihood p(x|z))")


def input_meaning(model: Any) -> str:
    words = f"z: float32 (batch, {model.latent_dim}), drawn from the prior"
    if model.conditional:
        words += f"; label: int64 (batch,), a class in 0..{model.num_classes - 1}"
    return words


def export_metadata(model: Any, run_config: RunConfig, checkpoint: str) -> dict[str, str]:
    """The string map written into the file (ONNX metadata_props, TorchScript metadata.json)."""
    metadata = {"producer": "vaelab", "vaelab_version": __version__, "model": run_config.model_name,
                "checkpoint": checkpoint, "part": "decoder", "latent_dim": str(model.latent_dim),
                "image_shape": json.dumps(list(model.image_shape)), "inputs": input_meaning(model),
                "output": output_meaning(model),
                "likelihood": model.likelihood.description if model.likelihood is not None else "none",
                "prior": json.dumps(describe_prior(model, run_config.model_name)),
                "model_config": json.dumps(config_to_dict(model.config))}
    if model.conditional:
        metadata.update(num_classes=str(model.num_classes), class_names=json.dumps(run_config.class_names))
    return metadata


# -- the export ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exported:
    path: Path
    signature: str  # "z (batch, D) -> images (batch, C, H, W)", for the command's one line


def require_latent_decoder(model: object, model_name: str) -> None:
    """One VaelabError line unless `model` has a decoder from z to images."""
    if isinstance(model, LatentDecoder):
        return
    chain = "; it samples by running a Markov chain (vaelab sample)" if isinstance(model, MarkovChainSampler) else ""
    raise VaelabError(f"vaelab export does not apply to model {model_name}: it has no "
                      f"{WHAT_IT_LACKS[LatentDecoder]}{chain}")


def example_inputs(model: Any) -> tuple[Tensor, ...]:
    """What the exporters trace the module with: z (EXAMPLE_BATCH, D) [, labels (EXAMPLE_BATCH,)]."""
    z = draw_normal((EXAMPLE_BATCH, model.latent_dim), torch.Generator().manual_seed(0),
                    like=model.reference_tensor())
    if not model.conditional:
        return (z,)
    return z, torch.arange(EXAMPLE_BATCH) % model.num_classes


def export_decoder(run_dir: str | Path, format_name: str = "onnx", out: str | Path | None = None,
                   checkpoint: str = "final") -> Exported:
    """Write the decoder of the run in `run_dir` as `format_name` to `out` (default
    RUN_DIR/decoder.onnx or .pt). Everything that can be refused is checked before anything is
    written; the file is written atomically."""
    exporter = export_format(format_name)
    model = load(run_dir, checkpoint=checkpoint)
    run_config = load_run_config(run_dir)
    require_latent_decoder(model, run_config.model_name)
    metadata = export_metadata(model, run_config, checkpoint)
    payload = exporter.serialize(ImageDecoder(model).eval(), example_inputs(model), metadata)
    path = Path(out) if out is not None else Path(run_dir) / f"decoder{exporter.suffix}"
    atomic_write_bytes(path, payload)
    return Exported(path, signature(model))


def signature(model: Any) -> str:
    label = ", label (batch,)" if model.conditional else ""
    return f"z (batch, {model.latent_dim}){label} -> images (batch, {', '.join(map(str, model.image_shape))})"
