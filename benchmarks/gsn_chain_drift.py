"""Does a GSN's Markov chain keep the data's spread? Chains started at training images, scored by the
collapse check's statistic after each number of steps.

    PYTHONPATH=src:benchmarks python benchmarks/gsn_chain_drift.py RUN_DIR [RUN_DIR ...] \\
        [-n 1000] [--steps 0,5,20,100,300] [--seed 0] [--json FILE]

For every run: n chains start at the first n training images as the model sees them at evaluation
(`evaluation_split(..., "train")`: binarized once, with the data config's seed, for a binarized
run; the grey values for binarize=none). After each listed number of steps, the states' P(X | h)
(what `vaelab sample` shows) are compared with n test images (chosen with --seed, grey values as in
the comparison's sample metrics): the ratio of their mean pairwise L2 distances, the statistic
`vaelab compare` flags below 0.8.

Started at the data, a chain whose stationary distribution is the data's keeps a ratio near that
of its one-step reconstructions. A ratio that keeps falling with the steps says the chain contracts
(the model's stationary distribution is narrower than the data), not merely that chains started
elsewhere have not yet mixed. Every step count reuses the same seed, so each row is the same chains
run for longer.
"""

from __future__ import annotations

import argparse
import sys

import torch
from gan_diversity import diversity

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.experiment import evaluation_split, load_data
from vaelab.files import atomic_write_json


def drift(run_dir: str, n: int, steps: list[int], seed: int) -> dict[str, float]:
    """{steps: ratio of the states' mean pairwise L2 to the test images'} for chains started at training images."""
    model = vaelab.load(run_dir)
    data_config = load_run_config(run_dir).data
    dataset = load_data(data_config)
    test = dataset.test.images  # grey values, as the comparison's sample metrics use them
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    reference = diversity(test[chosen], 1.0)["mean_pairwise_l2"]
    start = evaluation_split(dataset, data_config, "train").images[:n]
    ratios = {}
    for count in steps:
        with torch.no_grad():
            states = model.sample_chain(n, 1, torch.Generator().manual_seed(seed), start=start, burn_in=count)[0]
        ratios[str(count)] = diversity(states, 1.0)["mean_pairwise_l2"] / reference
        print(f"{run_dir}: after {count + 1:>4} steps, ratio to the test images {ratios[str(count)]:.3f}", flush=True)
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", help="`vaelab train gsn` run directories")
    parser.add_argument("-n", type=int, default=1000, help="chains and test images (default 1000)")
    parser.add_argument("--steps", default="0,5,20,100,300",
                        help="comma-separated burn-in step counts before the state scored (default 0,5,20,100,300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write {run: {steps: ratio}} to this file")
    args = parser.parse_args()
    steps = [int(count) for count in args.steps.split(",")]
    if min(steps) < 0 or args.n < 2:
        parser.error("step counts must be non-negative and -n at least 2")
    results = {run: drift(run, args.n, steps, args.seed) for run in args.runs}
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
