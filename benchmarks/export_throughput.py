"""Decoding throughput of a run's decoder in PyTorch (vaelab's own module) and of its exported files
in onnxruntime and TorchScript (`vaelab export`, docs/export.md): samples per second, same z, same
batch size, same number of threads, the median of a few repeats.

    python benchmarks/export_throughput.py RUN_DIR [--batch-size 256] [--calls 20] [--repeats 5]

The run is exported into a temporary directory (the run directory is not written to). Each repeat
times `--calls` decodings of one batch after a warm-up; the three outputs are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import vaelab
from vaelab.export import ImageDecoder, export_decoder

WARM_UP_CALLS = 3


def pytorch_decoder(model, z: torch.Tensor, label: torch.Tensor | None) -> Callable[[], np.ndarray]:
    module = ImageDecoder(model).eval()

    def decode() -> np.ndarray:
        with torch.no_grad():
            return module(z, label).numpy()
    return decode


def onnx_decoder(path: Path, z: torch.Tensor, label: torch.Tensor | None) -> Callable[[], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy()} | ({} if label is None else {"label": label.numpy()})
    return lambda: session.run(["images"], feeds)[0]


def torchscript_decoder(path: Path, z: torch.Tensor, label: torch.Tensor | None) -> Callable[[], np.ndarray]:
    with warnings.catch_warnings():  # torch 2.13 marks torch.jit deprecated (docs/export.md)
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
    inputs = (z,) if label is None else (z, label)

    def decode() -> np.ndarray:
        with torch.no_grad():
            return module(*inputs).numpy()
    return decode


# runtime -> (the `vaelab export --format` it runs, what opens that file as a decoder)
EXPORTED = {"onnxruntime": ("onnx", onnx_decoder), "torchscript": ("torchscript", torchscript_decoder)}


def samples_per_second(decode: Callable[[], np.ndarray], batch_size: int, calls: int, repeats: int) -> list[float]:
    for _ in range(WARM_UP_CALLS):
        decode()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            decode()
        rates.append(batch_size * calls / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20, help="decodings of one batch per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", default="final")
    args = parser.parse_args()

    model = vaelab.load(args.run_dir, checkpoint=args.checkpoint)
    z = model.sample_prior(args.batch_size, generator=torch.Generator().manual_seed(0))  # (B, D)
    label = torch.arange(args.batch_size) % model.num_classes if model.conditional else None
    with tempfile.TemporaryDirectory() as scratch:
        decoders = {"pytorch (vaelab)": pytorch_decoder(model, z, label)}
        for runtime, (format_name, opener) in EXPORTED.items():
            exported = export_decoder(args.run_dir, format_name, Path(scratch) / f"decoder.{format_name}",
                                      args.checkpoint)
            decoders[runtime] = opener(exported.path, z, label)
        report(decoders, exported.signature, args)


def report(decoders: dict[str, Callable[[], np.ndarray]], signature: str, args) -> None:
    reference = decoders["pytorch (vaelab)"]()
    print(f"{args.run_dir}: {signature}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, {args.calls} calls x {args.repeats} repeats")
    for name, decode in decoders.items():
        difference = float(np.abs(decode() - reference).max())
        rates = samples_per_second(decode, args.batch_size, args.calls, args.repeats)
        print(f"{name:<18} median {statistics.median(rates):>10,.0f} samples/s "
              f"(min {min(rates):,.0f}, max {max(rates):,.0f}); max |difference| from pytorch {difference:.1e}")


if __name__ == "__main__":
    main()
