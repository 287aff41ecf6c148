"""vaelab's RBM against scikit-learn's BernoulliRBM at identical settings, both scored by vaelab's AIS.

    PYTHONPATH=src python benchmarks/rbm_vs_sklearn.py --data-dir /work/shared/data \\
        [--epochs 5] [--hidden 200] [--lr 0.05] [--batch 100] [--ais-steps 60000] [--ais-runs 100] \\
        [--test-images 2000] [--seed 0] [--train-seeds 0,1,2] [--threads 1] [--val-size 1000] \\
        [--models sklearn,sklearn_vaelab_order,vaelab_file_order] [--trace LAST:EVERY]
        [--log-z-sweep 3625,7250,14500,29000,60000] [--variant NAME:KEY=VALUE,KEY=VALUE ...] [--json OUT]

In one process:

1. Fashion-MNIST's training and test images are binarized once with NumPy
   (np.random.RandomState(SEED): u < grey value, training images first) and written to an .npz
   (x_train/x_test, bool) in a temporary directory.
2. For each training seed S (--train-seeds, default SEED):
   - `vaelab`: `vaelab train rbm` (vaelab's own CLI and trainer) on that .npz: binarize=none (the
     data is already binary), persistent=true cd_k=1 num_chains=BATCH, optimizer=sgd momentum=0
     weight_decay=0 lr=LR batch_size=BATCH, EPOCHS epochs, val_size=VAL_SIZE, --seed S. The trainer
     holds VAL_SIZE images out for validation; the other 60,000 - VAL_SIZE (59,000: 590 updates an
     epoch, 2,950 in all at the defaults) are the training split every model below gets.
   - `sklearn`: BernoulliRBM(n_components=HIDDEN, learning_rate=LR, batch_size=BATCH,
     n_iter=EPOCHS, random_state=S).fit(that training split), float64. fit() visits the array in
     its given order (here Fashion-MNIST's file order) in every epoch.
   - `sklearn_vaelab_order`: the same BernoulliRBM(random_state=S), trained by its own partial_fit
     (one sklearn update per call) on exactly the minibatches vaelab's trainer drew with seed S
     (BatchIterator(shuffle=True, seed=S, epoch=e)): identical settings including the order of
     the data, so the two differ only in their code and random numbers.
   - `vaelab_file_order`: vaelab's RBM and update (RBM.train_step through the trainer's Updater
     and build_optimizer, the model built and the RNG seeded as `vaelab train --seed S` does) on
     the training split in its stored order every epoch, as sklearn's fit() sees it. The trainer
     always reshuffles, so this is the one vaelab run in sklearn's order. The same loop in the
     trainer's order replays the `vaelab train` run bit for bit (--trace checks this).
   - sklearn's weights are loaded into a vaelab RBM: W = components_.T, b = intercept_visible_,
     c = intercept_hidden_.
3. Every model is scored by `rbm_log_partition_ais` (base-rate model fitted to the training split,
   AIS generator seeded with SEED, AIS_RUNS runs) and `rbm_log_likelihood` on the first TEST_IMAGES
   binarized test images, at AIS_STEPS and (the convergence check) at AIS_STEPS // 2 from an
   independent generator.

The pairs that see the same minibatches in the same order are vaelab / sklearn_vaelab_order and
vaelab_file_order / sklearn. The tables give each run's test log-likelihood and log Z at both
step counts; the paired difference vaelab - other of one seed has the stderr of the per-image difference of -F plus both
log Z stderrs, in quadrature. Over several training seeds the summary gives each model's mean and
the stderr of that mean over seeds (training noise included: at lr 0.05 a single run's final
iterate moves by ~10 nats from one update to the next, see docs/models/rbm.md).

--trace LAST:EVERY re-runs the first seed's `vaelab train` run and scores its iterate every EVERY
updates over the last LAST (AIS --trace-ais-steps), and the mean of those iterates.

--variant adds vaelab runs with the same settings plus overrides, e.g. `--variant
momentum0.9:momentum=0.9` (the TrainConfig default for sgd) or `--variant chains128:num_chains=128`.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.cli import main as vaelab_main
from vaelab.config import TrainConfig
from vaelab.data.datasets import Split, load_dataset
from vaelab.data.loader import BatchIterator
from vaelab.eval.rbm_ais import base_rate_visible_bias, rbm_log_likelihood, rbm_log_partition_ais
from vaelab.experiment import load_data, training_splits
from vaelab.files import atomic_write_json
from vaelab.models.rbm import RBM, RBMConfig
from vaelab.optim import Updater, build_optimizer

OTHER_MODELS = ("sklearn", "sklearn_vaelab_order", "vaelab_file_order")


def binarize_once(images: torch.Tensor, rng: np.random.RandomState) -> np.ndarray:
    """(N, 1, 28, 28) grey values in [0, 1] -> (N, 28, 28) bool, one Bernoulli draw per pixel."""
    grey = images.numpy()[:, 0].astype(np.float64)
    return rng.uniform(size=grey.shape) < grey


def train_vaelab(npz: Path, run_dir: Path, args, seed: int, overrides: list[str]) -> RBM:
    """`vaelab train rbm` on the .npz at the benchmark's settings plus `overrides`."""
    settings = ["binarize=none", "persistent=true", "cd_k=1", f"num_chains={args.batch}",
                f"num_hidden={args.hidden}", "optimizer=sgd", "momentum=0", "weight_decay=0",
                f"lr={args.lr}", f"batch_size={args.batch}", f"val_size={args.val_size}", "tensorboard=false",
                "device=cpu"]
    argv = ["train", "rbm", "--data", str(npz), "--out", str(run_dir), "--epochs", str(args.epochs),
            "--seed", str(seed), "--overwrite", *settings, *overrides]
    print("vaelab " + " ".join(argv), file=sys.stderr)
    if vaelab_main(argv) != 0:
        raise SystemExit(f"vaelab train failed for {run_dir}")
    model = vaelab.load(run_dir)
    assert isinstance(model, RBM)
    return model


def sklearn_model(args, seed: int):
    from sklearn.neural_network import BernoulliRBM

    return BernoulliRBM(n_components=args.hidden, learning_rate=args.lr, batch_size=args.batch,
                        n_iter=args.epochs, random_state=seed)


def as_vaelab_rbm(model, hidden: int) -> RBM:
    """A fitted BernoulliRBM's parameters in a vaelab RBM (float32)."""
    rbm = RBM(RBMConfig(num_hidden=hidden), (1, 28, 28))
    with torch.no_grad():
        rbm.weight.copy_(torch.from_numpy(model.components_.T))
        rbm.visible_bias.copy_(torch.from_numpy(model.intercept_visible_))
        rbm.hidden_bias.copy_(torch.from_numpy(model.intercept_hidden_))
    return rbm.eval()


def sklearn_fit(train: Split, args, seed: int) -> RBM:
    """BernoulliRBM.fit on the training split as it is stored (the same order every epoch)."""
    model = sklearn_model(args, seed)
    model.fit(train.images.reshape(len(train), -1).double().numpy())
    return as_vaelab_rbm(model, args.hidden)


def sklearn_in_vaelab_order(train: Split, args, seed: int) -> RBM:
    """BernoulliRBM.partial_fit on the minibatches vaelab's trainer draws with this seed, in its order."""
    model = sklearn_model(args, seed)
    for epoch in range(args.epochs):
        for batch in BatchIterator(train, args.batch, shuffle=True, seed=seed, epoch=epoch):
            model.partial_fit(batch.x.reshape(len(batch), -1).double().numpy())
    return as_vaelab_rbm(model, args.hidden)


def vaelab_loop(train: Split, args, seed: int, shuffle: bool, snapshot_steps: frozenset[int] = frozenset()
                ) -> tuple[RBM, dict[int, dict[str, torch.Tensor]]]:
    """vaelab's RBM and update (RBM.train_step through the trainer's Updater and build_optimizer),
    the model built and the RNG seeded as `vaelab train --seed S` does, in a loop of our own:
    shuffle=True draws the trainer's minibatches (BatchIterator(shuffle=True, seed=S, epoch=e)), so
    it replays the `vaelab train` run; shuffle=False visits the training split in its stored order
    every epoch, as sklearn's fit() does. Returns the model and its parameters after each update
    in snapshot_steps (1-based)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rbm = RBM(RBMConfig(num_hidden=args.hidden, cd_k=1, persistent=True, num_chains=args.batch), (1, 28, 28))
    torch.manual_seed(seed)
    config = TrainConfig(optimizer="sgd", lr=args.lr, momentum=0.0, weight_decay=0.0, batch_size=args.batch)
    updater = Updater(rbm.make_optimizers(lambda params: build_optimizer(params, config)))
    step, snapshots = 0, {}
    for epoch in range(args.epochs):
        for batch in BatchIterator(train, args.batch, shuffle=shuffle, seed=seed, epoch=epoch):
            rbm.train_step(batch, step, updater)
            step += 1
            if step in snapshot_steps:
                snapshots[step] = {name: value.detach().clone() for name, value in rbm.state_dict().items()}
    return rbm.eval(), snapshots


def trace(train: Split, trained: RBM, base: torch.Tensor, test: Split, args, seed: int) -> dict:
    """Replay the `vaelab train` run of this seed (checking it ends on the trainer's very weights) and
    score its iterate every EVERY updates over the last LAST, and the mean of those iterates."""
    last, every = (int(value) for value in args.trace.split(":"))
    total = args.epochs * -(-len(train) // args.batch)
    steps = frozenset(range(total, total - last, -every))
    replay, snapshots = vaelab_loop(train, args, seed, shuffle=True, snapshot_steps=steps)
    same = all(torch.equal(value, trained.state_dict()[name]) for name, value in replay.state_dict().items())
    points = {}
    for step in sorted(snapshots):
        replay.load_state_dict(snapshots[step])
        log_z = rbm_log_partition_ais(replay, base, num_runs=args.ais_runs, num_steps=args.trace_ais_steps,
                                      generator=torch.Generator().manual_seed(args.seed))
        points[step] = rbm_log_likelihood(replay, test, log_z).value
        print(f"  trace seed {seed} update {step}: {points[step]:.2f} (log Z {log_z.value:.2f} +- "
              f"{log_z.stderr:.2f}, converged {log_z.settings['converged']})", file=sys.stderr)
    mean_state = {name: torch.stack([snap[name] for snap in snapshots.values()]).mean(0) for name in snapshots[total]}
    replay.load_state_dict(mean_state)
    log_z = rbm_log_partition_ais(replay, base, num_runs=args.ais_runs, num_steps=args.trace_ais_steps,
                                  generator=torch.Generator().manual_seed(args.seed))
    mean_iterate = rbm_log_likelihood(replay, test, log_z).value
    return {"replays_the_trainer_exactly": same, "ais_steps": args.trace_ais_steps,
            "test_log_likelihood_by_update": points, "mean_of_these_iterates": mean_iterate}


def score(rbm: RBM, base: torch.Tensor, test: Split, args) -> dict:
    """log Z at AIS_STEPS with its half-steps check, the test log-likelihood, and -F per test image."""
    start = time.perf_counter()
    log_z = rbm_log_partition_ais(rbm, base, num_runs=args.ais_runs, num_steps=args.ais_steps,
                                  generator=torch.Generator().manual_seed(args.seed), convergence_check=True)
    seconds = time.perf_counter() - start
    log_likelihood = rbm_log_likelihood(rbm, test, log_z)
    with torch.no_grad():
        negative_free_energy = -rbm.free_energy(test.images).double()
    return {"log_z": log_z.to_dict(), "test_log_likelihood": log_likelihood.to_dict(), "ais_seconds": seconds,
            "_negative_free_energy": negative_free_energy}


# Three-segment schedules for --log-z-sweep NAME@STEPS: (beta at the end of each segment, share of
# the steps). "paper" is Salakhutdinov & Murray's (ais_schedule); the others move steps to lower betas.
SCHEDULES = {"paper": ((0.5, 500 / 14500), (0.9, 4000 / 14500), (1.0, 10000 / 14500)),
             "middle": ((0.5, 500 / 14500), (0.9, 7000 / 14500), (1.0, 7000 / 14500)),
             "early": ((0.5, 3000 / 14500), (0.9, 5500 / 14500), (1.0, 6000 / 14500)),
             "uniform": ((1.0, 1.0),)}


def schedule(name: str, steps: int) -> torch.Tensor:
    """The betas of a named schedule with `steps` steps, each segment uniform."""
    betas, start = [torch.zeros(1, dtype=torch.float64)], 0.0
    counts = [round(steps * share) for _, share in SCHEDULES[name][:-1]]
    counts.append(steps - sum(counts))
    for (stop, _), count in zip(SCHEDULES[name], counts, strict=True):
        betas.append(torch.linspace(start, stop, count + 1, dtype=torch.float64)[1:])
        start = stop
    return torch.cat(betas)


def log_z_sweep(rbm: RBM, base: torch.Tensor, args, points: list[str]) -> dict[str, dict]:
    """log Z at each sweep point, STEPS (the paper's schedule scaled, as rbm_log_partition_ais
    does) or NAME@STEPS (a SCHEDULES entry), seconds included: how the estimate converges."""
    sweep = {}
    for point in points:
        name, _, steps_text = point.rpartition("@")
        steps = int(steps_text)
        betas = schedule(name, steps) if name else None
        generator = torch.Generator().manual_seed(args.seed + steps + zlib.crc32(name.encode()))  # crc32("") = 0
        start = time.perf_counter()
        log_z = rbm_log_partition_ais(rbm, base, num_runs=args.ais_runs, num_steps=steps, betas=betas,
                                      convergence_check=False, generator=generator)
        sweep[point] = {"value": log_z.value, "stderr": log_z.stderr,
                        "effective_sample_size": log_z.settings["effective_sample_size"],
                        "seconds": time.perf_counter() - start}
        print(f"    log Z at {point} steps: {log_z.value:.3f} +- {log_z.stderr:.3f} "
              f"(ESS {log_z.settings['effective_sample_size']:.1f}, {sweep[point]['seconds']:.0f} s)", file=sys.stderr)
    return sweep


def paired_difference(a: dict, b: dict, half: bool = False) -> tuple[float, float]:
    """Test log-likelihood of a minus that of b on the same images, and its stderr: the per-image
    difference of -F over the images, and both log Z stderrs, in quadrature."""
    def log_z(entry):
        estimate = entry["log_z"]
        return (estimate["settings"]["half_steps"]["value"], estimate["settings"]["half_steps"]["stderr"]) if half \
            else (estimate["value"], estimate["stderr"])
    per_image = a["_negative_free_energy"] - b["_negative_free_energy"]
    (za, sa), (zb, sb) = log_z(a), log_z(b)
    value = per_image.mean().item() - (za - zb)
    stderr = math.sqrt(per_image.var().item() / len(per_image) + sa ** 2 + sb ** 2)
    return value, stderr


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"),
                        help="folder holding fashion-mnist/ (default $VAELAB_DATA)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--ais-steps", type=int, default=60000)
    parser.add_argument("--ais-runs", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0, help="binarization and AIS seed (and the training seed)")
    parser.add_argument("--train-seeds", help="comma-separated training seeds (default: --seed)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--val-size", type=int, default=1000,
                        help="images vaelab holds out for validation (default 1000: 59,000 training images)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE,KEY=VALUE: one more vaelab run with these overrides")
    parser.add_argument("--models", default=",".join(OTHER_MODELS),
                        help=f"which of {', '.join(OTHER_MODELS)} to train besides vaelab (default all)")
    parser.add_argument("--log-z-sweep", metavar="STEPS,NAME@STEPS,...",
                        help="also estimate every model's log Z at each of these AIS step counts, the paper's "
                             f"schedule or a named one ({', '.join(SCHEDULES)}); no half-steps check; generator "
                             "seeded with SEED + the step count (+ crc32 of NAME)")
    parser.add_argument("--trace", metavar="LAST:EVERY",
                        help="also score the first seed's vaelab iterate every EVERY updates over the last LAST")
    parser.add_argument("--trace-ais-steps", type=int, default=7250, help="AIS steps of the trace (default 7250)")
    parser.add_argument("--keep", help="keep the .npz and run directories in this folder")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.val_size < 1:
        raise SystemExit("--val-size must be at least 1 (vaelab's trainer needs a validation split)")
    seeds = [int(s) for s in args.train_seeds.split(",")] if args.train_seeds else [args.seed]
    args.models = [name for name in args.models.split(",") if name]
    unknown = set(args.models) - set(OTHER_MODELS)
    if unknown:
        raise SystemExit(f"unknown --models {', '.join(sorted(unknown))}; choose from {', '.join(OTHER_MODELS)}")
    sweep = [point for point in args.log_z_sweep.split(",") if point] if args.log_z_sweep else []
    for point in sweep:
        name, _, steps = point.rpartition("@")
        if (name and name not in SCHEDULES) or not steps.isdigit():
            raise SystemExit(f"--log-z-sweep: {point!r} is not STEPS or NAME@STEPS with NAME in {', '.join(SCHEDULES)}")

    dataset = load_dataset("fashion-mnist", args.data_dir)
    rng = np.random.RandomState(args.seed)
    x_train, x_test = binarize_once(dataset.train.images, rng), binarize_once(dataset.test.images, rng)
    test = Split(torch.from_numpy(x_test[: args.test_images, None].astype(np.float32)), None)
    variants = [("vaelab", [])]
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        variants.append((name, [item for item in overrides.split(",") if item]))
    started = time.perf_counter()
    results: dict = {"settings": {key: value for key, value in vars(args).items() if key != "json"},
                     "runs": {}}

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / "fashion_mnist_binary.npz"
        np.savez(npz, x_train=x_train, x_test=x_test)
        for seed in seeds:
            models: dict[str, RBM] = {}
            for name, overrides in variants:
                models[name] = train_vaelab(npz, folder / f"run_{name}_seed{seed}", args, seed, overrides)
            data_config = load_run_config(folder / f"run_vaelab_seed{seed}").data
            train, _ = training_splits(load_data(data_config), data_config)
            if "sklearn" in args.models:
                models["sklearn"] = sklearn_fit(train, args, seed)
            if "sklearn_vaelab_order" in args.models:
                models["sklearn_vaelab_order"] = sklearn_in_vaelab_order(train, args, seed)
            if "vaelab_file_order" in args.models:
                models["vaelab_file_order"], _ = vaelab_loop(train, args, seed, shuffle=False)
            base = base_rate_visible_bias(train)
            if args.trace and seed == seeds[0]:
                results["trace"] = trace(train, models["vaelab"], base, test, args, seed)
            results["settings"]["training_images"] = len(train)
            results["settings"]["updates"] = args.epochs * -(-len(train) // args.batch)
            run = results["runs"][str(seed)] = {}
            for name, rbm in models.items():
                run[name] = score(rbm, base, test, args)
                print(f"  seed {seed}: scored {name} ({run[name]['ais_seconds']:.0f} s of AIS): "
                      f"{run[name]['test_log_likelihood']['value']:.2f}", file=sys.stderr)
                if sweep:
                    run[name]["log_z_sweep"] = log_z_sweep(rbm, base, args, sweep)
    results["seconds"] = time.perf_counter() - started

    half_steps = args.ais_steps // 2
    print(f"\n{results['settings']['training_images']} training images, {results['settings']['updates']} updates; "
          f"{len(test)} test images; AIS {args.ais_runs} runs from the base-rate model")
    print(f"\n| seed | model | test log-lik. ({args.ais_steps} steps) | log Z | test log-lik. ({half_steps} steps) "
          "| log Z | converged | vaelab - model |")
    print("|---" * 8 + "|")
    names = list(next(iter(results["runs"].values())))
    for seed, run in results["runs"].items():
        for name in names:
            entry = run[name]
            ll, log_z = entry["test_log_likelihood"], entry["log_z"]
            half, half_z = ll["settings"]["half_steps"], log_z["settings"]["half_steps"]
            entry["vaelab_minus_this"] = None if name == "vaelab" else paired_difference(run["vaelab"], entry)
            difference = "" if name == "vaelab" else "{:+.2f} +- {:.2f}".format(*entry["vaelab_minus_this"])
            entry["vaelab_minus_this_half_steps"] = None if name == "vaelab" else \
                paired_difference(run["vaelab"], entry, half=True)
            if name == "sklearn" and "vaelab_file_order" in run:  # the same batches, in the file's order
                entry["vaelab_file_order_minus_this"] = paired_difference(run["vaelab_file_order"], entry)
                difference += " (vaelab_file_order - sklearn: {:+.2f} +- {:.2f})".format(
                    *entry["vaelab_file_order_minus_this"])
            print(f"| {seed} | {name} | {ll['value']:.2f} +- {ll['stderr']:.2f} | {log_z['value']:.2f} +- "
                  f"{log_z['stderr']:.2f} | {half['value']:.2f} +- {half['stderr']:.2f} | {half_z['value']:.2f} +- "
                  f"{half_z['stderr']:.2f} | {log_z['settings']['converged']} | {difference} |")
    summary = results["summary"] = {}
    if len(seeds) > 1:
        print(f"\nover {len(seeds)} training seeds (mean +- stderr over seeds):\n")
        print(f"| model | test log-lik. ({args.ais_steps} steps) | ({half_steps} steps) | vaelab - model |")
        print("|---|---|---|---|")
        for name in names:
            full = mean_and_stderr([run[name]["test_log_likelihood"]["value"] for run in results["runs"].values()])
            half = mean_and_stderr([run[name]["test_log_likelihood"]["settings"]["half_steps"]["value"]
                                    for run in results["runs"].values()])
            gap = None if name == "vaelab" else \
                mean_and_stderr([run[name]["vaelab_minus_this"][0] for run in results["runs"].values()])
            summary[name] = {"test_log_likelihood": full, "test_log_likelihood_half_steps": half,
                             "vaelab_minus_this": gap}
            gap_text = "" if gap is None else f"{gap[0]:+.2f} +- {gap[1]:.2f}"
            if name == "sklearn" and "vaelab_file_order" in names:
                same_order = mean_and_stderr([run[name]["vaelab_file_order_minus_this"][0]
                                              for run in results["runs"].values()])
                summary[name]["vaelab_file_order_minus_this"] = same_order
                gap_text += f" (vaelab_file_order - sklearn: {same_order[0]:+.2f} +- {same_order[1]:.2f})"
            print(f"| {name} | {full[0]:.2f} +- {full[1]:.2f} | {half[0]:.2f} +- {half[1]:.2f} | {gap_text} |")
    for run in results["runs"].values():
        for entry in run.values():
            del entry["_negative_free_energy"]
    if sweep:
        print("\nlog Z by AIS steps (100 runs unless --ais-runs; +- the delta-method stderr; ESS):\n")
        print("| seed | model | " + " | ".join(f"{point} steps" for point in sweep) + " |")
        print("|---" * (len(sweep) + 2) + "|")
        for seed, run in results["runs"].items():
            for name in names:
                cells = [f"{v['value']:.2f} +- {v['stderr']:.2f} ({v['effective_sample_size']:.0f})"
                         for v in run[name]["log_z_sweep"].values()]
                print(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    if "trace" in results:
        t = results["trace"]
        print(f"\ntrace of the seed-{seeds[0]} vaelab run (replayed: identical to the trainer's weights: "
              f"{t['replays_the_trainer_exactly']}; AIS {t['ais_steps']} steps):")
        by_update = t["test_log_likelihood_by_update"]
        print("| update | " + " | ".join(str(step) for step in by_update) + " | mean of these |")
        print("|---" * (len(by_update) + 2) + "|")
        print("| test log-lik. | " + " | ".join(f"{value:.2f}" for value in by_update.values())
              + f" | {t['mean_of_these_iterates']:.2f} |")
    print(f"\ntotal {results['seconds']:.0f} s")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
