"""Reproduce the published Fashion-MNIST VAE test NLL (Norouzi et al. 2020: 228.70 nats, L_5000).

Trains the checked-in config through the `vaelab` command line, then evaluates the weights with the
best validation loss with L_5000 on the 10,000 test images, and prints (and saves as JSON) the test
NLL, the epochs it took and the wall times.

    VAELAB_DATA=../shared/data python benchmarks/reproduce_vae_fashion_mnist.py --out runs/repro-fmnist

Needs Fashion-MNIST through VAELAB_DATA (or --data-dir); exits with a message if it is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "vae_fashion_mnist.yaml"
PUBLISHED_NLL = 228.70


def run(command: list[str]) -> float:
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    try:
        subprocess.run(command, check=True)
    except KeyboardInterrupt:
        raise SystemExit("interrupted; the run continues with --resume (or --skip-train to evaluate its best "
                         "weights so far)") from None
    except subprocess.CalledProcessError as error:
        raise SystemExit(f"{command[3]} stopped with exit status {error.returncode}; the run continues with "
                         "--resume (or --skip-train to evaluate its best weights so far)") from None
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/repro-fmnist")
    parser.add_argument("--config", type=Path, default=CONFIG,
                        help="the run's config (default: the session-sized one; "
                             "configs/vae_fashion_mnist_protocol.yaml is the published protocol in full)")
    parser.add_argument("--epochs", type=int, help="override the config's epoch budget")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--iw-compile", action="store_true",
                        help="score L_k with log p(x|z) compiled (vaelab eval --iw-compile: the same estimate to "
                             "float rounding, 1.1-1.3x faster on a CPU; docs/performance.md)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    parser.add_argument("--skip-train", action="store_true", help="only evaluate an existing run")
    args = parser.parse_args()

    vaelab = [sys.executable, "-m", "vaelab"]
    out = Path(args.out)
    train_seconds = None
    if not args.skip_train:
        command = [*vaelab, "train", "vae", "--out", str(out), "--save-every", "2000"]
        # a resumed run keeps the config it was started with
        command += ["--resume"] if args.resume else ["--config", str(args.config), "--overwrite"]
        if args.epochs:
            command += ["--epochs", str(args.epochs)]
        train_seconds = run(command)
    eval_json = out / f"eval_L{args.k}.json"
    eval_seconds = run([*vaelab, "eval", str(out), "--checkpoint", "best", "--metrics", "elbo,iw",
                        "--k", str(args.k), "--json", str(eval_json), *(["--iw-compile"] if args.iw_compile else [])])

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = min(metrics, key=lambda m: m["val_loss"])
    results = json.loads(eval_json.read_text())
    summary = {
        "test_nll": -results["iw_bound"]["value"], "test_nll_stderr": results["iw_bound"]["stderr"],
        "test_neg_elbo": -results["elbo"]["value"], "k": args.k,
        "epochs_trained": metrics[-1]["epoch"], "best_epoch": best["epoch"],
        "train_seconds_total": sum(m["epoch_seconds"] for m in metrics),
        "train_wall_seconds_this_call": train_seconds, "eval_wall_seconds": eval_seconds,
        "published_nll": PUBLISHED_NLL, "config": str(args.config),
    }
    summary["gap_to_published"] = summary["test_nll"] - PUBLISHED_NLL
    (out / "reproduction.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
