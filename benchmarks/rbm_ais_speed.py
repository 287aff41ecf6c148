"""Wall time of AIS for an RBM's partition function at the published settings (Salakhutdinov & Murray
2008: 100 runs, 14,500 intermediate distributions), with log Z, its standard error and, optionally,
the mean test log-likelihood of the first N test images.

    PYTHONPATH=src python benchmarks/rbm_ais_speed.py [RUN_DIR] [--runs 100] [--steps 14500]
        [--seed 0] [--threads 1] [--uniform-base] [--test-images 1000] [--no-check] [--json FILE]

RUN_DIR is a trained `vaelab train rbm` run: its base-rate model is fitted to its training split
and the test images are its data config's evaluation view (binarized as at training). Without
RUN_DIR a random 784 x 500 RBM is scored (W ~ N(0, 0.01^2) plus a rank-5 component 0.01 A B with A,
B standard normal; visible biases ~ N(-1, 1), hidden biases ~ N(-0.5, 0.5^2)), annealing from the
RBM's own visible biases with the weights removed (there is no data to fit a base rate to). For
example, after

    vaelab train rbm --data fashion-mnist --data-dir /work/shared/data --max-steps 300 \\
        binarize=dynamic optimizer=sgd lr=0.01 momentum=0.5 tensorboard=false --out /tmp/rbm_ais

run `PYTHONPATH=src python benchmarks/rbm_ais_speed.py /tmp/rbm_ais --test-images 1000`.

--threads defaults to 1: on a shared 2-core machine two intra-op threads contending with another
process were over ten times slower per step than one (the matmuls are only 100 x 784 x 500).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import vaelab
from vaelab.eval.likelihood import Estimate
from vaelab.eval.rbm_ais import (
    base_rate_visible_bias,
    rbm_log_likelihood,
    rbm_log_partition_ais,
)
from vaelab.files import atomic_write_json
from vaelab.models.rbm import RBM, RBMConfig


def random_rbm(seed: int) -> RBM:
    torch.manual_seed(seed)
    rbm = RBM(RBMConfig(num_hidden=500, init_std=0.01), (1, 28, 28))
    with torch.no_grad():
        structure = 0.01 * torch.randn(784, 5) @ torch.randn(5, 500)
        rbm.weight.add_(structure)
        rbm.visible_bias.normal_(-1.0, 1.0)
        rbm.hidden_bias.normal_(-0.5, 0.5)
    return rbm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a trained RBM run (default: a random 784 x 500 RBM)")
    parser.add_argument("--runs", type=int, default=100, help="independent AIS runs (default 100)")
    parser.add_argument("--steps", type=int, default=14500, help="intermediate distributions (default 14500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--uniform-base", action="store_true",
                        help="anneal from the uniform distribution instead of the base-rate model")
    parser.add_argument("--test-images", type=int, default=0, help="also score the first N test images")
    parser.add_argument("--no-check", action="store_true",
                        help="time the estimate alone, without its half-steps convergence check")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base, test = None, None
    if args.run_dir:
        from vaelab.checkpoint import load_run_config
        from vaelab.experiment import evaluation_split, load_data, training_splits

        rbm = vaelab.load(args.run_dir)
        data_config = load_run_config(args.run_dir).data
        dataset = load_data(data_config)
        if not args.uniform_base:
            base = base_rate_visible_bias(training_splits(dataset, data_config)[0])
        if args.test_images:
            test = evaluation_split(dataset, data_config, "test")
            test = test.subset(torch.arange(min(args.test_images, len(test))))
    else:
        rbm = random_rbm(args.seed)
        if not args.uniform_base:
            base = rbm.visible_bias.detach().clone()  # no data: the RBM without its weights
    if not isinstance(rbm, RBM):
        raise SystemExit(f"{args.run_dir} holds a {type(rbm).__name__}, not an RBM")

    load_before = os.getloadavg()
    start = time.perf_counter()
    log_z = rbm_log_partition_ais(rbm, base, num_runs=args.runs, num_steps=args.steps,
                                  generator=torch.Generator().manual_seed(args.seed), progress=True,
                                  convergence_check=not args.no_check)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()
    shape = f"{rbm.num_visible} visible x {rbm.config.num_hidden} hidden"
    print(f"\nRBM {shape} ({args.run_dir or 'random'}); {args.runs} runs x {log_z.settings['num_steps']} steps, "
          f"{torch.get_num_threads()} thread(s); base: {log_z.settings['base']}")
    print(f"AIS wall time {seconds:.1f} s ({seconds / log_z.settings['num_steps'] * 1e3:.2f} ms per step); "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, {os.cpu_count()} CPUs")
    print(f"log Z = {log_z.value:.3f} +- {log_z.stderr:.3f}  (log Z_A = {log_z.settings['log_z_base']:.3f}, "
          f"ESS {log_z.settings['effective_sample_size']:.1f} of {args.runs}, "
          f"3-sd interval {log_z.settings['log_z_3sd_interval']})")
    results: dict = {"seconds": seconds, "threads": torch.get_num_threads(), "load_before": load_before,
                     "load_after": load_after, "rbm": shape, "log_z": log_z.to_dict()}
    if test is not None:
        log_likelihood: Estimate = rbm_log_likelihood(rbm, test, log_z)
        print(f"test log-likelihood over the first {len(test)} test images: "
              f"{log_likelihood.value:.2f} +- {log_likelihood.stderr:.2f} nats")
        results["test_log_likelihood"] = log_likelihood.to_dict()
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
