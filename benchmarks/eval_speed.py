"""Time the importance-weighted bound L_k at the published settings (k=5000 over the Fashion-MNIST test
images with the MLP 2x300, z=40 VAE), in fp32 and with bf16 decoder matmuls, against the matmul
limit measured in the same run.

    VAELAB_DATA=../shared/data python benchmarks/eval_speed.py RUN_DIR [--limit N] [--threads 2]
        [--precision fp32 bf16] [--max-rows R ...] [--json FILE]

RUN_DIR is a trained run of benchmarks/configs/vae_fashion_mnist.yaml (any run of that shape: the
cost does not depend on the weights). For each precision it prints seconds, the time extrapolated
to 10,000 images, L_k, and the ratio to the limit; then the bf16 estimate's distance from fp32
(the same seed, so the same z). The limit is the decoder's forward FLOPs for k samples of every
image (2 x rows x in x out per Linear layer; the encoder's one pass per image is negligible) at
the matmul rate measured for the decoder's own shapes at max_rows rows.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from matmul_limit import best_matmul_seconds, forward_flops
from torch import nn

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.eval.likelihood import importance_weighted_bound
from vaelab.experiment import evaluation_split, load_data
from vaelab.files import atomic_write_json


def decoder_shapes(model) -> list[tuple[int, int]]:
    layers = [layer for layer in model.decoder.modules() if isinstance(layer, nn.Linear)]
    return [(layer.in_features, layer.out_features) for layer in layers]


def matmul_rate(shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype) -> float:
    """FLOP/s of the decoder's forward matmuls for `rows` rows."""
    return forward_flops(shapes, rows) / best_matmul_seconds(shapes, rows, dtype, repeats=5, inner=3)


def time_bound(model, split, k: int, max_rows: int, precision: str, compiled: bool) -> dict:
    """One timed L_k over the split; a compiled run first compiles on the first image (timed apart)."""
    compile_seconds = 0.0
    if compiled:
        torch._dynamo.reset()  # each compiled run pays its own compile, not an earlier run's
        started = time.perf_counter()
        importance_weighted_bound(model, split.subset(slice(0, 1)), k=k, max_rows=max_rows, precision=precision,
                                  compile=True)
        compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    estimate = importance_weighted_bound(model, split, k=k, max_rows=max_rows, precision=precision, compile=compiled)
    return {"compiled": estimate.settings["compiled"], "seconds": time.perf_counter() - started,
            "compile_seconds": compile_seconds, "value": estimate.value, "stderr": estimate.stderr}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--max-rows", type=int, nargs="+", default=[8192], help="decoder rows per chunk to try")
    parser.add_argument("--compile", action="store_true",
                        help="also time each precision with log p(x|z) compiled (vaelab eval --iw-compile); its "
                             "compile is timed apart, on one image, before the timed run")
    parser.add_argument("--checkpoint", default="best", choices=["best", "final", "last"],
                        help="which weights (default best; the committed benchmarks/results/ runs hold final only)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = vaelab.load(args.run_dir, checkpoint=args.checkpoint)
    run_config = load_run_config(args.run_dir)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test")
    if args.limit:
        split = split.subset(slice(0, args.limit))
    shapes = decoder_shapes(model)
    flops = forward_flops(shapes, args.k * len(split))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(split)} images, k={args.k}, "
          f"decoder {shapes}: {flops / 1e12:.1f} TFLOP")
    figures: dict = {"images": len(split), "k": args.k, "threads": torch.get_num_threads(), "runs": []}
    for max_rows in args.max_rows:
        rates = {name: matmul_rate(shapes, max_rows, dtype)
                 for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        print(f"max_rows={max_rows}: matmul rates fp32 {rates['fp32'] / 1e9:.0f}, "
              f"bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s; limits fp32 {flops / rates['fp32']:.1f} s, "
              f"bf16 {flops / rates['bf16']:.1f} s")
        values = {}
        for precision in args.precision:
            for compiled in (False, True) if args.compile else (False,):
                name = f"{precision}{' compiled' if compiled else ''}"
                run = time_bound(model, split, args.k, max_rows, precision, compiled)
                run.update(max_rows=max_rows, precision=precision, limit_seconds=flops / rates[precision],
                           matmul_gflops=rates[precision] / 1e9)
                values[name] = run["value"]
                compile_note = f" (+{run['compile_seconds']:.1f} s compiling, untimed)" if compiled else ""
                print(f"  {name}: {run['seconds']:.1f} s ({run['seconds'] / len(split) * 10000:.0f} s per 10,000 "
                      f"images){compile_note}, {run['seconds'] / run['limit_seconds']:.2f} x its limit, "
                      f"L_{args.k} = {run['value']:.4f} +- {run['stderr']:.3f}")
                figures["runs"].append(run)
        for name, value in values.items():
            if name != "fp32" and "fp32" in values:
                print(f"  {name} - fp32 = {value - values['fp32']:+.4f} nats (the same seed: the same z)")
    if args.json:
        atomic_write_json(args.json, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
