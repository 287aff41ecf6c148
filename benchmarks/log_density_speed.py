"""Time the Bernoulli log-density log p(x|z) that L_k spends its time in, with the plain softplus sum
against vaelab's grouped one (vaelab.distributions.softplus_sum), in one process, alternating.

    VAELAB_DATA=../shared/data python benchmarks/log_density_speed.py RUN_DIR [--k 5000] [--images 5]
        [--threads 2] [--precision fp32 bf16] [--repeats 5] [--eager]

RUN_DIR is a trained Bernoulli VAE run (the published protocol's, e.g.
benchmarks/results/vae_fashion_mnist_protocol_gated_timed). For each of the first --images test
images it draws k samples z ~ q(z|x), as L_k does, and times log p(x|z) for all of them: the
model's own (decoder, then x.l - softplus_sum(l)) against the same decoder with
x.l - sum softplus(l), the form before the grouped sum. Both are compiled (as `vaelab eval
--iw-compile` compiles log p(x|z)) unless --eager, and run under bf16 autocast for --precision
bf16. It prints milliseconds per image (medians over --repeats alternating runs), their ratio, and
the largest difference between the two forms' log-densities (tests/test_distributions.py checks
both against float64).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.experiment import evaluation_split, load_data


def plain_log_density(model):
    """log p(x|z) with the per-pixel softplus summed as it is: x.l - sum_i softplus(l_i)."""
    def log_density(x, z):
        logits = model.decode(z)
        logits = logits.to(torch.promote_types(logits.dtype, x.dtype))
        return (x * logits - F.softplus(logits)).flatten(start_dim=logits.dim() - 3).sum(-1)
    return log_density


def milliseconds(function, x, z, runs: int = 5) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        function(x, z)
    return (time.perf_counter() - started) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--images", type=int, default=5, help="first N test images (default 5)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="do not compile either form")
    parser.add_argument("--checkpoint", default="final", choices=["best", "final", "last"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vaelab.load(args.run_dir, checkpoint=args.checkpoint)
    run_config = load_run_config(args.run_dir)
    split = evaluation_split(load_data(run_config.data), run_config.data, "test").subset(slice(0, args.images))
    x_all = split.images.to(model.reference_tensor())
    generator = torch.Generator().manual_seed(0)
    forms = {"plain softplus sum": plain_log_density(model), "grouped (vaelab)": model.log_likelihood}
    if not args.eager:
        forms = {name: torch.compile(form) for name, form in forms.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(split)} images, k={args.k}, "
          f"{'eager' if args.eager else 'compiled'}")
    with torch.no_grad():
        draws = []
        for x in x_all:
            mu, log_var = model.encode(x[None])
            draws.append((x[None], model.reparameterize(mu, log_var, args.k, generator)))  # (k, 1, D)
        for precision in args.precision:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                for form in forms.values():  # compile and warm up
                    form(*draws[0])
                times: dict[str, list[float]] = {name: [] for name in forms}
                for _ in range(args.repeats):
                    for name, form in forms.items():
                        times[name].append(sum(milliseconds(form, x, z) for x, z in draws) / len(draws))
                plain_form, grouped_form = forms.values()
                worst = max((grouped_form(x, z) - plain_form(x, z)).abs().max().item() for x, z in draws)
            medians = {name: statistics.median(values) for name, values in times.items()}
            plain, grouped = medians.values()
            print(f"{precision}: " + ", ".join(f"{name} {value:.2f} ms an image" for name, value in medians.items())
                  + f"; plain / grouped = {plain / grouped:.2f}; largest |grouped - plain| over the "
                  f"{len(draws) * args.k:,} log-densities: {worst:.1e} nats")


if __name__ == "__main__":
    main()
