"""The collapse check: for every run, the mean pairwise L2 distance of N samples (seeded) against that
of N continuous test images, the comparison's protocol for sample metrics; a ratio well below 1
means collapsed samples (the comparison flags a ratio below 0.8).

    PYTHONPATH=src python benchmarks/compare_diversity.py DIR [-n 1000] [--seed 0] [--json FILE]
    PYTHONPATH=src python benchmarks/compare_diversity.py RUN_DIR [RUN_DIR ...] [--sample burn_in=20]

DIR is a `vaelab compare` output directory (every run that finished); otherwise each argument is a
`vaelab train` run directory. --sample KEY=INT passes keyword arguments to model.sample (e.g. a
Markov chain's burn_in). `vaelab compare` itself reports the same statistic over all its samples
(the "mean pairwise L2 of samples" column).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from gan_diversity import diversity

from vaelab.checkpoint import load, load_run_config
from vaelab.experiment import load_data
from vaelab.files import atomic_write_json


def runs_of(paths: list[str]) -> dict[str, Path]:
    """{name: run directory}: a comparison's finished runs, or the given run directories."""
    first = Path(paths[0])
    if len(paths) == 1 and (first / "summary.json").is_file():
        summary = json.loads((first / "summary.json").read_text())
        return {name: first / entry["run_dir"] for name, entry in summary["models"].items() if entry["status"] == "ok"}
    return {Path(path).name: Path(path) for path in paths}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=1.0)
    parser.add_argument("--sample", action="append", default=[], metavar="KEY=INT")
    parser.add_argument("--json")
    args = parser.parse_args()
    sample_options = {key: int(value) for key, value in (option.split("=", 1) for option in args.sample)}
    results, reference = {}, None
    for name, run in runs_of(args.dirs).items():
        if reference is None:
            test = load_data(load_run_config(run).data).test.images
            reference = diversity(test[torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
                                       [: args.n]], args.threshold)
            results["test images"] = reference
        with torch.no_grad():
            samples = load(run).sample(args.n, generator=torch.Generator().manual_seed(args.seed), **sample_options)
        results[name] = diversity(samples, args.threshold)
        results[name]["ratio_to_test"] = results[name]["mean_pairwise_l2"] / reference["mean_pairwise_l2"]
    for name, values in results.items():
        print(f"{name:<12} mean pairwise L2 {values['mean_pairwise_l2']:6.2f}  ratio "
              f"{values.get('ratio_to_test', 1.0):5.2f}  near-duplicate pairs {values['near_duplicate_pairs']}")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
