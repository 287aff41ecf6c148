"""Time the importance-weighted bound L_k at the published settings: k=5000 over the Fashion-MNIST test
images with the MLP 2x300, z=40 VAE (issue 4: under 10 minutes for all 10,000 images on 2 CPU cores).

    VAELAB_DATA=../shared/data python benchmarks/eval_speed.py RUN_DIR [--limit N] [--max-rows R ...]

RUN_DIR is a trained run of benchmarks/configs/vae_fashion_mnist.yaml (any run of that shape: the
cost does not depend on the weights). Prints seconds, images per second, the time extrapolated to
10,000 images, L_k and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.eval.likelihood import importance_weighted_bound
from vaelab.experiment import evaluation_split, load_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--max-rows", type=int, nargs="+", default=[8192], help="decoder rows per chunk to try")
    args = parser.parse_args()

    model = vaelab.load(args.run_dir, checkpoint="best")
    run_config = load_run_config(args.run_dir)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test")
    if args.limit:
        split = split.subset(slice(0, args.limit))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(split)} images, k={args.k}")
    for max_rows in args.max_rows:
        started = time.perf_counter()
        estimate = importance_weighted_bound(model, split, k=args.k, max_rows=max_rows)
        seconds = time.perf_counter() - started
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"max_rows={max_rows}: {seconds:.1f} s, {len(split) / seconds:.1f} images/s, "
              f"{seconds / len(split) * 10000 / 60:.1f} min per 10,000 images, L_{args.k} = "
              f"{estimate.value:.3f} +- {estimate.stderr:.3f}, peak RSS so far {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
