"""vaelab's RBM against scikit-learn's BernoulliRBM at identical settings, both scored by vaelab's AIS.

    PYTHONPATH=src python benchmarks/rbm_vs_sklearn.py --data-dir /work/shared/data \\
        [--epochs 5] [--hidden 200] [--lr 0.05] [--batch 100] [--ais-steps 60000] [--ais-runs 100] \\
        [--test-images 2000] [--seed 0] [--threads 1] [--val-size 1000] \\
        [--variant NAME:KEY=VALUE,KEY=VALUE ...] [--json OUT]

In one process:

1. Fashion-MNIST's training and test images are binarized once with NumPy
   (np.random.RandomState(seed): u < grey value) and written to an .npz (x_train/x_test, bool) in a
   temporary directory.
2. vaelab is trained on that .npz by its own CLI (`vaelab train rbm`): binarize=none (the data is
   already binary), persistent=true cd_k=1 num_chains=BATCH, optimizer=sgd momentum=0
   weight_decay=0 lr=LR batch_size=BATCH, EPOCHS epochs, val_size=VAL_SIZE (vaelab holds a
   validation split out of the training split), seed=SEED.
3. scikit-learn's BernoulliRBM(n_components=HIDDEN, learning_rate=LR, batch_size=BATCH,
   n_iter=EPOCHS, random_state=SEED) is fitted to exactly vaelab's training split (the same images
   in the same order: 60,000 - VAL_SIZE of them, 2,950 updates of 100 at the defaults), float64.
4. sklearn's weights are loaded into a vaelab RBM: W = components_.T, b = intercept_visible_,
   c = intercept_hidden_.
5. Both are scored by `rbm_log_partition_ais` (base-rate model fitted to that training split, the
   same AIS seed) and `rbm_log_likelihood` on the first TEST_IMAGES binarized test images, at
   AIS_STEPS and (the convergence check) at AIS_STEPS // 2 with an independent generator.

--variant adds further vaelab runs with the same settings plus overrides, e.g.
`--variant momentum0.9:momentum=0.9` (the TrainConfig default for sgd) or
`--variant chains128:num_chains=128`; each is trained and scored like the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vaelab
from vaelab.checkpoint import load_run_config
from vaelab.cli import main as vaelab_main
from vaelab.data.datasets import Split, load_dataset
from vaelab.eval.rbm_ais import base_rate_visible_bias, rbm_log_likelihood, rbm_log_partition_ais
from vaelab.experiment import load_data, training_splits
from vaelab.files import atomic_write_json
from vaelab.models.rbm import RBM, RBMConfig


def binarize_once(images: torch.Tensor, rng: np.random.RandomState) -> np.ndarray:
    """(N, 1, 28, 28) grey values in [0, 1] -> (N, 28, 28) bool, one Bernoulli draw per pixel."""
    grey = images.numpy()[:, 0].astype(np.float64)
    return rng.uniform(size=grey.shape) < grey


def train_vaelab(npz: Path, run_dir: Path, args, overrides: list[str]) -> float:
    """`vaelab train rbm` on the .npz at the benchmark's settings plus `overrides`; returns seconds."""
    settings = ["binarize=none", "persistent=true", "cd_k=1", f"num_chains={args.batch}",
                f"num_hidden={args.hidden}", "optimizer=sgd", "momentum=0", "weight_decay=0",
                f"lr={args.lr}", f"batch_size={args.batch}", f"val_size={args.val_size}", "tensorboard=false",
                "device=cpu"]
    argv = ["train", "rbm", "--data", str(npz), "--out", str(run_dir), "--epochs", str(args.epochs),
            "--seed", str(args.seed), "--overwrite", *settings, *overrides]
    print("vaelab " + " ".join(argv), file=sys.stderr)
    start = time.perf_counter()
    if vaelab_main(argv) != 0:
        raise SystemExit(f"vaelab train failed for {run_dir}")
    return time.perf_counter() - start


def sklearn_rbm(train: np.ndarray, args) -> tuple[RBM, float]:
    """BernoulliRBM fitted to train (N, D) float64; its weights in a vaelab RBM, and the seconds."""
    from sklearn.neural_network import BernoulliRBM

    model = BernoulliRBM(n_components=args.hidden, learning_rate=args.lr, batch_size=args.batch,
                         n_iter=args.epochs, random_state=args.seed)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    rbm = RBM(RBMConfig(num_hidden=args.hidden), (1, 28, 28))
    with torch.no_grad():
        rbm.weight.copy_(torch.from_numpy(model.components_.T))
        rbm.visible_bias.copy_(torch.from_numpy(model.intercept_visible_))
        rbm.hidden_bias.copy_(torch.from_numpy(model.intercept_hidden_))
    return rbm.eval(), seconds


def score(rbm: RBM, base: torch.Tensor, test, args) -> dict:
    """log Z at AIS_STEPS with its half-steps check, and the test log-likelihood under both."""
    start = time.perf_counter()
    log_z = rbm_log_partition_ais(rbm, base, num_runs=args.ais_runs, num_steps=args.ais_steps,
                                  generator=torch.Generator().manual_seed(args.seed), convergence_check=True)
    seconds = time.perf_counter() - start
    log_likelihood = rbm_log_likelihood(rbm, test, log_z)
    return {"log_z": log_z.to_dict(), "test_log_likelihood": log_likelihood.to_dict(), "ais_seconds": seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--val-size", type=int, default=1000,
                        help="images vaelab holds out for validation (default 1000: 59,000 training images)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE,KEY=VALUE: one more vaelab run with these overrides")
    parser.add_argument("--keep", help="keep the .npz and run directories in this folder")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.val_size < 1:
        raise SystemExit("--val-size must be at least 1 (vaelab's trainer needs a validation split)")

    dataset = load_dataset("fashion-mnist", args.data_dir)
    rng = np.random.RandomState(args.seed)
    x_train, x_test = binarize_once(dataset.train.images, rng), binarize_once(dataset.test.images, rng)

    variants = [("vaelab", [])]
    for spec in args.variant:
        name, _, overrides = spec.partition(":")
        variants.append((name, [item for item in overrides.split(",") if item]))

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / "fashion_mnist_binary.npz"
        np.savez(npz, x_train=x_train, x_test=x_test)
        results: dict = {"settings": {key: value for key, value in vars(args).items() if key != "json"},
                         "models": {}}
        models: dict[str, RBM] = {}
        seconds: dict[str, float] = {}
        for name, overrides in variants:
            run_dir = folder / f"run_{name}"
            seconds[name] = train_vaelab(npz, run_dir, args, overrides)
            loaded = vaelab.load(run_dir)
            assert isinstance(loaded, RBM)
            models[name] = loaded
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            results["models"][name] = {"overrides": overrides, "updates": metrics[-1]["step"]}
        data_config = load_run_config(folder / "run_vaelab").data
        train_split, _ = training_splits(load_data(data_config), data_config)
        train = train_split.images.reshape(len(train_split), -1).double().numpy()
        models["sklearn"], seconds["sklearn"] = sklearn_rbm(train, args)
        results["models"]["sklearn"] = {"updates": args.epochs * -(-len(train) // args.batch)}

    base = base_rate_visible_bias(train_split)
    test_images = torch.from_numpy(x_test[: args.test_images, None].astype(np.float32))
    test = Split(test_images, None)
    results["settings"]["training_images"] = len(train_split)
    print(f"\n{len(train_split)} training images (vaelab's training split, given to sklearn as well), "
          f"{len(test)} test images; AIS {args.ais_runs} runs, base-rate model", file=sys.stderr)
    for name in ["sklearn", *[name for name, _ in variants]]:
        scored = score(models[name], base, test, args)
        results["models"][name].update(scored, train_seconds=seconds[name])
        print(f"  scored {name}: {scored['ais_seconds']:.0f} s of AIS", file=sys.stderr)

    header = (f"| model | updates | test log-lik. ({args.ais_steps} steps) | log Z | "
              f"test log-lik. ({args.ais_steps // 2} steps) | log Z | converged |")
    print("\n" + header + "\n" + "|---" * 7 + "|")
    for name, entry in results["models"].items():
        ll, half = entry["test_log_likelihood"], entry["test_log_likelihood"]["settings"]["half_steps"]
        log_z, log_z_half = entry["log_z"], entry["log_z"]["settings"]["half_steps"]
        print(f"| {name} | {entry['updates']} | {ll['value']:.2f} +- {ll['stderr']:.2f} | "
              f"{log_z['value']:.3f} +- {log_z['stderr']:.3f} | {half['value']:.2f} +- {half['stderr']:.2f} | "
              f"{log_z_half['value']:.3f} +- {log_z_half['stderr']:.3f} | {entry['log_z']['settings']['converged']} |")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
