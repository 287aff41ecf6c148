"""A quantitative mode-collapse check for any trained vaelab model that samples (written for the GAN).

Draws N samples and takes N real test images, and for each set reports, over all N(N-1)/2 pairs of
flattened images (pixels in [0, 1]):

- the mean pairwise L2 distance (a collapsed generator has a much smaller one than the data),
- the median distance from each image to its nearest neighbour within the set,
- the number of near-duplicate pairs, closer than --threshold in L2 (1.0 by default: an RMS
  difference of 0.036 a pixel on 28x28 images), and the smallest pairwise distance.

    PYTHONPATH=src python benchmarks/gan_diversity.py RUN_DIR [-n 1000] [--seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys

import torch

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.experiment import evaluation_split, load_data
from vaelab.files import atomic_write_json


def diversity(images: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pairwise statistics of images (N, C, H, W)."""
    flat = images.flatten(start_dim=1).double()  # (N, P)
    distance = torch.cdist(flat, flat)  # (N, N)
    n = len(flat)
    upper = distance[torch.triu_indices(n, n, offset=1).unbind()]  # (N(N-1)/2,) each pair once
    nearest = distance.fill_diagonal_(float("inf")).min(dim=1).values  # (N,)
    return {"mean_pairwise_l2": upper.mean().item(), "median_nn_l2": nearest.median().item(),
            "near_duplicate_pairs": int((upper < threshold).sum()), "min_pairwise_l2": upper.min().item()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("-n", type=int, default=1000, help="samples and real test images (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the samples and the choice of test images")
    parser.add_argument("--threshold", type=float, default=1.0, help="L2 distance of a near-duplicate pair")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    model = vaelab.load(args.run_dir)
    samples = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    data_config = load_run_config(args.run_dir).data
    test = evaluation_split(load_data(data_config), data_config, "test").images
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    results = {"samples": diversity(samples, args.threshold), "test_images": diversity(test[chosen], args.threshold),
               "settings": {"n": args.n, "seed": args.seed, "threshold": args.threshold}}
    print(f"{'':<14}{'mean pair L2':>14}{'median NN L2':>14}{'pairs < ' + format(args.threshold, 'g'):>12}"
          f"{'min pair L2':>13}")
    for name in ("samples", "test_images"):
        r = results[name]
        print(f"{name:<14}{r['mean_pairwise_l2']:>14.3f}{r['median_nn_l2']:>14.3f}"
              f"{r['near_duplicate_pairs']:>12d}{r['min_pairwise_l2']:>13.3f}")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
