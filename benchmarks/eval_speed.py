"""Time the importance-weighted bound L_k at the published settings (k=5000 over the Fashion-MNIST test
images with the MLP 2x300, z=40 VAE), in fp32 and with bf16 decoder matmuls, against the matmul
limit measured in the same run.

    VAELAB_DATA=../shared/data python benchmarks/eval_speed.py RUN_DIR [--limit N] [--threads 2]
        [--precision fp32 bf16] [--compile] [--repeats R] [--max-rows R ...] [--checkpoint final] [--json FILE]

RUN_DIR is a trained run of benchmarks/configs/vae_fashion_mnist.yaml (any run of that shape: the
cost does not depend on the weights). For each precision it prints seconds, the time extrapolated
to 10,000 images, L_k, and the ratio to the limit; then the bf16 estimate's distance from fp32
(the same seed, so the same z). --compile adds each precision with log p(x|z) through torch.compile
(vaelab eval --iw-compile), compiled once before the timed runs; --repeats alternates the variants
and reports medians. The limit is the decoder's forward FLOPs for k samples of every
image (2 x rows x in x out per Linear layer; the encoder's one pass per image is negligible) at
the matmul rate measured for the decoder's own shapes at max_rows rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def compile_seconds(model, split, k: int, max_rows: int, precision: str) -> float:
    """Seconds to compile log p(x|z) for this precision: one image's L_k, whose chunks have the shape
    of every later image's (one image per batch at k >= max_rows / 2)."""
    started = time.perf_counter()
    importance_weighted_bound(model, split.subset(slice(0, 1)), k=k, max_rows=max_rows, precision=precision,
                              compile=True)
    return time.perf_counter() - started


def time_bound(model, split, k: int, max_rows: int, precision: str, compiled: bool) -> dict:
    """One timed L_k over the split (a compiled one after compile_seconds compiled it)."""
    started = time.perf_counter()
    estimate = importance_weighted_bound(model, split, k=k, max_rows=max_rows, precision=precision, compile=compiled)
    return {"compiled": estimate.settings["compiled"], "seconds": time.perf_counter() - started,
            "value": estimate.value, "stderr": estimate.stderr}


def profile_bound(model, split, k: int, precision: str, compile: bool) -> None:
    """torch.profiler's table (ops by self time) of one L_k over the split, eager and compiled."""
    from torch.profiler import ProfilerActivity, profile

    for compiled in (False, True) if compile else (False,):
        importance_weighted_bound(model, split.subset(slice(0, 1)), k=k, precision=precision, compile=compiled)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            importance_weighted_bound(model, split, k=k, precision=precision, compile=compiled)
        print(f"{precision}{' compiled' if compiled else ''}, {len(split)} images, k={k}:")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--max-rows", type=int, nargs="+", default=[8192], help="decoder rows per chunk to try")
    parser.add_argument("--compile", action="store_true",
                        help="also time each precision with log p(x|z) compiled (vaelab eval --iw-compile); its "
                             "compile is timed apart, on one image, before the timed runs")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant, alternating")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="instead of timing, print torch.profiler's table of L_k on the first N images, "
                             "eager and (with --compile) compiled")
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
    if args.profile:
        profile_bound(model, split.subset(slice(0, args.profile)), args.k, args.precision[0], args.compile)
        return
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
        variants = [(precision, compiled) for precision in args.precision
                    for compiled in ((False, True) if args.compile else (False,))]
        torch._dynamo.reset()  # compile times below are this run's own, not an earlier max_rows'
        compiling = {precision: compile_seconds(model, split, args.k, max_rows, precision)
                     for precision, compiled in variants if compiled}
        seconds: dict[str, list[float]] = {}
        values = {}
        for repeat in range(args.repeats):  # alternating the variants, so that a change of load hits all
            for precision, compiled in variants:
                name = f"{precision}{' compiled' if compiled else ''}"
                run = time_bound(model, split, args.k, max_rows, precision, compiled)
                run.update(max_rows=max_rows, precision=precision, limit_seconds=flops / rates[precision],
                           matmul_gflops=rates[precision] / 1e9, repeat=repeat,
                           compile_seconds=compiling.get(precision) if compiled else 0.0)
                values[name] = run["value"]
                seconds.setdefault(name, []).append(run["seconds"])
                print(f"  {name}: {run['seconds']:.1f} s, L_{args.k} = {run['value']:.4f} +- {run['stderr']:.3f}",
                      flush=True)
                figures["runs"].append(run)
        # On a shared machine the matmul rate drifts: measured again after the timed runs, the limit
        # takes the faster of the two rates (the stricter limit).
        after = {name: matmul_rate(shapes, max_rows, dtype) for name, dtype in (("fp32", torch.float32),
                                                                                   ("bf16", torch.bfloat16))}
        print(f"matmul rates after the runs: fp32 {after['fp32'] / 1e9:.0f}, bf16 {after['bf16'] / 1e9:.0f} GFLOP/s")
        rates = {name: max(rates[name], after[name]) for name in rates}
        for run in figures["runs"]:
            if run["max_rows"] == max_rows:
                run.update(limit_seconds=flops / rates[run["precision"]], matmul_gflops=rates[run["precision"]] / 1e9)
        for precision, compiled in variants:
            name = f"{precision}{' compiled' if compiled else ''}"
            median = statistics.median(seconds[name])
            compile_note = f" (after {compiling[precision]:.1f} s compiling)" if compiled else ""
            print(f"{name}: median {median:.1f} s of {len(seconds[name])} ({median / len(split) * 10000:.0f} s per "
                  f"10,000 images){compile_note}, {median * rates[precision] / flops:.2f} x its limit, "
                  f"{statistics.median(seconds[precision]) / median:.2f} x faster than {precision} eager")
        for name, value in values.items():
            if name != "fp32" and "fp32" in values:
                print(f"  {name} - fp32 = {value - values['fp32']:+.4f} nats (the same seed: the same z)")
    if args.json:
        atomic_write_json(args.json, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
