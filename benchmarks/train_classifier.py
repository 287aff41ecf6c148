"""Train (or load from the cache) the feature classifier of the sample-quality metrics on a data set
and print its test accuracy and the wall time.

    PYTHONPATH=src python benchmarks/train_classifier.py [--dataset fashion-mnist]
        [--data-dir ../shared/data] [--epochs 4] [--seed 0] [--cache-dir DIR] [--retrain]

The data set is found as `vaelab.data.load_dataset` finds it (--data-dir, $VAELAB_DATA, the user
cache, /usr/share/datasets); the classifier is cached under `vaelab.data.sources.cache_dir() /
"classifiers"` unless --cache-dir says otherwise. Requirement (issue 4): at least 90% test accuracy
on Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vaelab.data import load_dataset
from vaelab.eval.classifier import DEFAULT_EPOCHS, DEFAULT_SEED, load_or_train_classifier

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.is_dir() else None)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--cache-dir", default=None, help="default: the user cache's classifiers/ folder")
    parser.add_argument("--retrain", action="store_true", help="train even when a cached classifier exists")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--min-accuracy", type=float, default=None, help="exit 1 below this test accuracy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    dataset = load_dataset(args.dataset, args.data_dir, download=False)
    loaded = time.perf_counter()
    _, info = load_or_train_classifier(dataset, args.cache_dir, epochs=args.epochs, seed=args.seed,
                                       progress=sys.stderr.isatty(), retrain=args.retrain)
    done = time.perf_counter()
    print(f"data set:       {dataset.name} ({len(dataset.train)} train / {len(dataset.test)} test, "
          f"{'x'.join(map(str, dataset.image_shape))})")
    print(f"classifier:     {'trained' if info['trained'] else 'loaded from the cache'}: {info['cache_path']}")
    print(f"epochs, seed:   {info['epochs']}, {info['seed']}  (torch threads: {torch.get_num_threads()})")
    print(f"test accuracy:  {info['test_accuracy']:.4f}")
    print(f"wall time:      {done - loaded:.1f} s ({'training + test' if info['trained'] else 'cache load'}); "
          f"data loading {loaded - started:.1f} s")
    print(json.dumps({"dataset": dataset.name, "test_accuracy": info["test_accuracy"], "trained": info["trained"],
                      "seconds": round(done - loaded, 1), "epochs": info["epochs"], "seed": info["seed"],
                      "threads": torch.get_num_threads()}))
    if args.min_accuracy is not None and info["test_accuracy"] < args.min_accuracy:
        print(f"FAIL: test accuracy {info['test_accuracy']:.4f} < {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
