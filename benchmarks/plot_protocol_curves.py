"""Validation -ELBO per epoch of one or more runs of the published Fashion-MNIST protocol, on one axis
zoomed to where the runs differ (the warm-up's first epochs are off the scale).

    PYTHONPATH=src python benchmarks/plot_protocol_curves.py NAME=RUN_DIR [NAME=RUN_DIR ...] \\
        --out docs/images/protocol_curves.png [--ymax 240] [--ylabel "validation -L_50 (nats)" --warmup-epoch 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from matplotlib.figure import Figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ymax", type=float, default=240.0)
    parser.add_argument("--ylabel", default="validation -ELBO (nats)",
                        help="what val_loss is: -ELBO, or -L_k for an objective=iwae run")
    parser.add_argument("--warmup-epoch", type=int, default=100, help="where the KL warm-up ends (0: no marker)")
    args = parser.parse_args()
    figure = Figure(figsize=(7, 4), dpi=110, layout="constrained")
    axes = figure.subplots()
    lowest = float("inf")
    for entry in args.runs:
        name, run_dir = entry.rsplit("=", 1)  # the name may hold "=" (k=50), a path seldom does
        lines = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
        epochs, losses = [m["epoch"] for m in lines], [m["val_loss"] for m in lines]
        best = min(range(len(losses)), key=losses.__getitem__)
        axes.plot(epochs, losses, lw=1.2, label=f"{name}: best {losses[best]:.2f} at epoch {epochs[best]}")
        lowest = min(lowest, losses[best])
    if args.warmup_epoch:
        axes.axvline(args.warmup_epoch, color="#888888", lw=0.8, ls=":")
        axes.text(args.warmup_epoch + 1, args.ymax - 0.5, "end of KL warm-up", fontsize=8, color="#666666", va="top")
    axes.set_ylim(lowest - 1.0, args.ymax)
    axes.set_xlabel("epoch")
    axes.set_ylabel(args.ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
