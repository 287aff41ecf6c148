"""Decoder AIS of several runs on the same test images, as the standard comparison scores them, and
each run's paired difference from the first (the GAN, say): the mean and stderr of the per-image
differences, far tighter than the two figures' own stderrs, which are the images' spread.

    VAELAB_DATA=../shared/data PYTHONPATH=src python benchmarks/decoder_ais_paired.py GAN_RUN RUN [RUN ...] \
        [--images 30] [--steps 500] [--chains 16] [--threads 1] [--cache DIR]

With --cache DIR each run's estimate is written to DIR/<run name>.json and read back on the next call
with the same settings, so a long list can be scored in pieces. Every run is scored with the settings
`vaelab compare` uses (sigma chosen on validation images, leapfrog gradients in bf16 where native,
and the same estimate at half the steps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import vaelab
from vaelab.eval.estimate import paired_difference
from vaelab.files import atomic_write_json


def score(run: str, args: argparse.Namespace) -> dict:
    settings = {"images": args.images, "steps": args.steps, "chains": args.chains}
    cached = Path(args.cache) / f"{Path(run).name}.json" if args.cache else None
    if cached is not None and cached.is_file():
        saved = json.loads(cached.read_text())
        if saved.get("settings") == settings:
            return saved["estimate"]
    started = time.perf_counter()
    estimate = vaelab.evaluate(run, ["decoder_ais"], continuous=True, observation="gaussian", limit=args.images,
                               ais_steps=args.steps, ais_runs=args.chains, ais_gradients="auto",
                               convergence_check=True)["decoder_ais"]
    estimate["settings"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    if cached is not None:
        atomic_write_json(cached, {"settings": settings, "estimate": estimate})
    return estimate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories; the first is the reference")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    estimates = {run: score(run, args) for run in args.runs}
    reference = args.runs[0]
    for run, estimate in estimates.items():
        settings = estimate["settings"]
        line = (f"{Path(run).name:<24} {estimate['value']:8.1f} ± {estimate['stderr']:5.1f}  "
                f"sigma {settings['sigma']:g}  half steps {settings['half_steps']['value']:8.1f}  "
                f"{settings.get('wall_seconds', 0):7.1f} s")
        paired = paired_difference(estimate, estimates[reference]) if run != reference else None
        if paired is not None:
            line += f"  minus {Path(reference).name}: {paired[0]:+.1f} ± {paired[1]:.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
