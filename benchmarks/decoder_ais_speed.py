"""Decoder AIS (Wu et al. 2017) of a trained run with fp32 and with bf16 leapfrog gradients, timed side
by side in one process (runs alternating fp32, bf16, fp32, bf16, ...), with the estimates they give.

    VAELAB_DATA=../shared/data PYTHONPATH=src python benchmarks/decoder_ais_speed.py RUN_DIR \\
        [--images 10] [--steps 50] [--chains 16] [--sigma 0.1] [--repeats 2] [--threads 1] [--json FILE]

Every run scores the first --images test images (continuous pixels, a Gaussian observation model of
std --sigma around the decoder's mean, the comparison's protocol) with the same seed, so the two
precisions start from the same chains; the bf16 gradients only change the trajectories, so their
estimates agree within the chains' Monte Carlo error, not bit for bit. Prints the median seconds of
each precision, their ratio, the estimates and the mean acceptance rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.eval.decoder_ais import decoder_ais
from vaelab.experiment import load_data, raw_split
from vaelab.files import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = vaelab.load(args.run_dir)
    data_config = load_run_config(args.run_dir).data
    test = raw_split(load_data(data_config), data_config, "test")
    test = test.subset(torch.arange(min(args.images, len(test))))
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    estimates: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for _ in range(args.repeats):
        for precision in seconds:
            started = time.perf_counter()
            estimate = decoder_ais(model, test, num_steps=args.steps, num_chains=args.chains, observation="gaussian",
                                   sigma=args.sigma, seed=0, gradient_precision=precision)
            seconds[precision].append(time.perf_counter() - started)
            estimates[precision].append({"value": estimate.value, "stderr": estimate.stderr,
                                         **estimate.settings["diagnostics"]})
            print(f"  {precision}: {seconds[precision][-1]:.1f} s, log p(x) {estimate.value:.2f}, acceptance "
                  f"{estimate.settings['diagnostics']['mean_acceptance_rate']:.3f}", flush=True)
    medians = {precision: statistics.median(values) for precision, values in seconds.items()}
    print(f"median seconds: fp32 {medians['fp32']:.1f}, bf16 {medians['bf16']:.1f}; "
          f"bf16 / fp32 = {medians['bf16'] / medians['fp32']:.3f}")
    figures = {"run": args.run_dir, "images": len(test), "steps": args.steps, "chains": args.chains,
               "sigma": args.sigma, "threads": args.threads, "seconds": seconds, "median_seconds": medians,
               "estimates": estimates}
    if args.json:
        atomic_write_json(args.json, figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
