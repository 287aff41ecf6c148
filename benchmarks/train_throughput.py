"""Training speed side by side, in one process and one run: the pytorch/examples VAE (784-400-20-400-784,
batch 128, Adam 1e-3) trained for one epoch of Fashion-MNIST in four ways.

    VAELAB_DATA=../shared/data python benchmarks/train_throughput.py [--repeats 3] [--threads 1] [--epochs 1]
        [--compile] [--ieee-subnormals] [--plain-loop] [--no-bf16] [--profile STEPS] [--json OUT]

- (a) `examples`: the loop users copy from pytorch/examples (vae/main.py), written out here: a
  per-sample Dataset (each image converted to a float tensor as torchvision's ToTensor does), a
  shuffling DataLoader of batch 128, BCE-sum reconstruction + analytic KL, Adam(lr=1e-3).
- (b) `vaelab fp32`: `vaelab train vae hidden=[400] latent_dim=20 batch_size=128 lr=1e-3` through
  vaelab's Trainer (data kept as one tensor, batches by index), the same network and loss.
- (c) `vaelab bf16`: the same with `precision=bf16` (bf16 autocast of the matmuls).
- (d) `limit`: the epoch's matmul FLOPs (6 x weights x images: 2 forward, 4 backward per weight and
  image) divided by the rates of fp32 and bf16 matmuls measured here, at these shapes, in this run
  (before and after the epochs; the faster rate counts).

vaelab's rows run with the trainer's defaults, so with subnormals flushed to zero
(`train.flush_denormal`, vaelab.precision.subnormals_flushed); the examples' loop runs with IEEE
subnormals, as it does for the people who copy it.

Optional rows: `--plain-loop` times vaelab's model and batches in a bare loop (loss, backward,
fused Adam; no Trainer, IEEE subnormals), which says what the Trainer itself costs or saves; with
`--compile` too it adds `plain fast`, the same loop with subnormals flushed and the loss compiled
(the Trainer's speed options without its non-finite checks and bookkeeping: the floor of a loop
around this loss and optimizer); `--compile` adds (b) and (c) with `train.compile=true` (the loss
through torch.compile);
`--ieee-subnormals` adds them with `train.flush_denormal=false`; `--no-bf16`
drops (c) on a CPU that emulates bf16 (its epoch takes many times fp32's). `--epochs N` trains every
method N epochs from fresh weights and times the last: with `--compile`, `--epochs 2` times an epoch
after the one that compiled. `--profile STEPS` times nothing: it prints torch.profiler's table of
STEPS of vaelab's Trainer steps (after 50 warm-up steps) per precision, compiled too with `--compile`.

All train on the same 59,000 images (vaelab's training split with val_size=1000; the grey values,
no binarization, as the examples do) and are scored by the same single-sample ELBO on the 10,000
test images. The epochs are timed without validation or checkpoints (vaelab's epoch_seconds), and
the methods alternate (a b c a b c ...) so that a change of machine load hits all of them; each
row gives the median of --repeats epochs, each from fresh weights. Ratios are taken within this run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matmul_limit import best_matmul_seconds, forward_flops
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vaelab.config import DataConfig, RunConfig, TrainConfig
from vaelab.data.datasets import Split
from vaelab.data.loader import BatchIterator
from vaelab.experiment import load_data, training_splits
from vaelab.models.vae import VAE, VAEConfig
from vaelab.precision import subnormals_flushed
from vaelab.trainer import Trainer

BATCH, LR, HIDDEN, LATENT, PIXELS = 128, 1e-3, 400, 20, 784
LAYER_SHAPES = [(PIXELS, HIDDEN), (HIDDEN, LATENT), (HIDDEN, LATENT), (LATENT, HIDDEN), (HIDDEN, PIXELS)]


# -- (a) the examples' loop ----------------------------------------------------------------------

class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py's network: fc1, fc21/fc22, fc3, fc4."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(PIXELS, HIDDEN), nn.Linear(HIDDEN, LATENT), nn.Linear(HIDDEN, LATENT)
        self.fc3, self.fc4 = nn.Linear(LATENT, HIDDEN), nn.Linear(HIDDEN, PIXELS)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, PIXELS)))
        mu, log_var = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, log_var


def examples_loss(reconstruction, x, mu, log_var):
    bce = F.binary_cross_entropy(reconstruction, x.view(-1, PIXELS), reduction="sum")
    return bce - 0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())


class PerSampleImages(Dataset):
    """What torchvision's FashionMNIST + ToTensor hands the DataLoader: one uint8 image at a time,
    converted to a (1, 28, 28) float tensor in [0, 1]."""

    def __init__(self, images_uint8: np.ndarray):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return torch.from_numpy(self.images[index]).float().div(255).unsqueeze(0), 0


def train_examples(images_uint8: np.ndarray, seed: int, epochs: int) -> tuple[float, nn.Module]:
    """(seconds of the last of `epochs` epochs, the model)."""
    torch.manual_seed(seed)
    model = ExamplesVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(PerSampleImages(images_uint8), batch_size=BATCH, shuffle=True)
    model.train()
    for _ in range(epochs):
        started = time.perf_counter()
        for x, _ in loader:
            optimizer.zero_grad()
            reconstruction, mu, log_var = model(x)
            examples_loss(reconstruction, x, mu, log_var).backward()
            optimizer.step()
    return time.perf_counter() - started, model


@torch.no_grad()
def examples_elbo(model: ExamplesVAE, test: torch.Tensor) -> float:
    model.eval()
    torch.manual_seed(0)
    total = sum(_examples_negative_elbo(model, x) for x in test.split(1000))
    return -total / len(test)


def _examples_negative_elbo(model: ExamplesVAE, x: torch.Tensor) -> float:
    reconstruction, mu, log_var = model(x)
    return examples_loss(reconstruction, x, mu, log_var).item()


# -- (b), (c) vaelab -------------------------------------------------------------------------------

def vaelab_run(seed: int, **train: Any) -> tuple[VAE, RunConfig]:
    """The benchmark's VAE, initialized from `seed`, and its run config with these train settings."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(hidden=(HIDDEN,), latent_dim=LATENT), (1, 28, 28))
    config = RunConfig("vae", model.config, DataConfig(name="fashion-mnist", binarize="none", val_size=1000),
                       TrainConfig(batch_size=BATCH, lr=LR, tensorboard=False, seed=seed, **train))
    return model, config


def train_vaelab(train_split: Split, val_split: Split, precision: str, seed: int, epochs: int,
                 compiled: bool = False, flush_denormal: bool = True) -> tuple[float, VAE]:
    """(seconds of the last of `epochs` epochs, the model); compiled: train.compile=true;
    flush_denormal=False: IEEE subnormals, as before the trainer flushed them."""
    model, config = vaelab_run(seed, epochs=epochs, precision=precision, compile=compiled,
                               flush_denormal=flush_denormal)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, config, run_dir, train_split, val_split, None, progress_bar=False)
        metrics = trainer.fit()
    if not flush_denormal:
        print(f"    {subnormal_moments(trainer.optimizers[0])}", file=sys.stderr)
    return metrics["epoch_seconds"], model


def subnormal_moments(optimizer: torch.optim.Optimizer) -> str:
    """How many of Adam's first moments (exp_avg) are subnormal, in all and in the largest tensor."""
    tiny = torch.finfo(torch.float32).tiny
    moments = [optimizer.state[p]["exp_avg"] for group in optimizer.param_groups for p in group["params"]]
    counts = [int(((m != 0) & (m.abs() < tiny)).sum()) for m in moments]
    largest = max(range(len(moments)), key=lambda i: moments[i].numel())
    return (f"subnormal first moments: {sum(counts):,} of {sum(m.numel() for m in moments):,}; "
            f"{counts[largest]:,} of the largest tensor's {moments[largest].numel():,}")


def train_plain_loop(train_split: Split, seed: int, epochs: int, fast: bool = False) -> tuple[float, VAE]:
    """vaelab's VAE and batches without the Trainer: loss, backward, fused Adam, nothing else (no
    non-finite checks, no logging). The gap to (b) is what the Trainer costs or saves.

    fast=False: IEEE subnormals and the eager loss. fast=True: the Trainer's speed options without
    its checks (subnormals flushed, the loss through torch.compile with one static graph per batch
    size, as train.compile=true does), so the gap to (b) compiled is what the checks and the
    bookkeeping cost: the floor of any loop around this loss and optimizer."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(hidden=(HIDDEN,), latent_dim=LATENT), (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    loss = torch.compile(model.loss) if fast else model.loss
    model.train()
    with subnormals_flushed(fast):
        for epoch in range(epochs):
            started = time.perf_counter()
            for batch in BatchIterator(train_split, BATCH, shuffle=True, seed=seed, epoch=epoch):
                if fast:
                    torch._dynamo.mark_static(batch.x, 0)
                optimizer.zero_grad(set_to_none=True)
                loss(batch, step=0)["loss"].backward()
                optimizer.step()
    return time.perf_counter() - started, model


class ProfiledTrainer(Trainer):
    """A Trainer whose steps advance a torch.profiler schedule."""

    profiler: torch.profiler.profile

    def _train_step(self, batch):
        terms = super()._train_step(batch)
        self.profiler.step()
        return terms


def profile_vaelab(train_split: Split, val_split: Split, precision: str, steps: int, compiled: bool) -> str:
    """torch.profiler's table (self CPU time) of `steps` Trainer steps after 50 warm-up steps."""
    model, config = vaelab_run(0, epochs=1, max_steps=50 + steps, precision=precision, compile=compiled)
    schedule = torch.profiler.schedule(wait=0, warmup=50, active=steps, repeat=1)
    with tempfile.TemporaryDirectory() as run_dir, \
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as profiler:
        trainer = ProfiledTrainer(model, config, run_dir, train_split, val_split, None, progress_bar=False)
        trainer.profiler = profiler
        trainer.fit()
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)


@torch.no_grad()
def vaelab_elbo(model: VAE, test: torch.Tensor) -> float:
    model.eval()
    torch.manual_seed(0)
    total = 0.0
    for x in test.split(1000):
        terms = model.elbo_terms(x)
        total += (terms["reconstruction"] - terms["kl"]).sum().item()
    return total / len(test)


# -- (d) the limit ---------------------------------------------------------------------------------

def limit_seconds(dtype: torch.dtype, images: int) -> tuple[float, float]:
    """(seconds for an epoch's 6 x weights x images FLOPs at the measured rate, the rate in GFLOP/s)."""
    flops_per_batch = forward_flops(LAYER_SHAPES, BATCH)  # forward only
    rate = flops_per_batch / best_matmul_seconds(LAYER_SHAPES, BATCH, dtype)
    return 3 * flops_per_batch * (images / BATCH) / rate, rate / 1e9


# -- the run ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="train every method this many epochs from fresh weights and time the last one "
                             "(default 1; 2 times a compiled loss after its first epoch compiled it)")
    parser.add_argument("--compile", action="store_true",
                        help="also time vaelab with train.compile=true, in fp32 and (without --no-bf16) bf16; "
                             "the first epoch compiles, so use --epochs 2")
    parser.add_argument("--ieee-subnormals", action="store_true",
                        help="also time vaelab with flush_denormal=false (IEEE subnormals); the gap grows "
                             "after the first epoch, so use --epochs 3 or more")
    parser.add_argument("--plain-loop", action="store_true",
                        help="also time vaelab's model in a plain PyTorch loop without the Trainer (with --compile, "
                             "also with flushed subnormals and the compiled loss)")
    parser.add_argument("--no-bf16", action="store_true",
                        help="skip (c): on a CPU without native bf16 (vaelab.precision.native_bf16) PyTorch "
                             "emulates it and its epoch takes many times fp32's")
    parser.add_argument("--profile", type=int, metavar="STEPS",
                        help="instead of timing epochs, print torch.profiler's table of STEPS Trainer steps of vaelab "
                             "(after 50 warm-up steps) in each precision, eager and, with --compile, compiled")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_data(DataConfig(name="fashion-mnist", data_dir=args.data_dir, binarize="none"))
    train_split, val_split = training_splits(dataset, DataConfig(name="fashion-mnist", binarize="none", val_size=1000))
    if args.profile:
        for precision in ["fp32"] if args.no_bf16 else ["fp32", "bf16"]:
            for compiled in [False, True] if args.compile else [False]:
                print(f"vaelab {precision}{' compiled' if compiled else ''}, {args.profile} steps of batch {BATCH}:")
                print(profile_vaelab(train_split, val_split, precision, args.profile, compiled))
        return 0
    train_uint8 = (train_split.images.squeeze(1) * 255).round().to(torch.uint8).numpy()
    test = dataset.test.images
    epochs = args.epochs
    print(f"torch {torch.__version__}, {args.threads} thread(s), {len(train_split)} training images, "
          f"batch {BATCH}, {args.repeats} runs each of {epochs} epoch(s), the last timed, alternating",
          file=sys.stderr)

    precisions = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    methods = {"examples": lambda seed: train_examples(train_uint8, seed, epochs)}
    for precision in precisions:
        methods[f"vaelab {precision}"] = functools.partial(train_vaelab, train_split, val_split, precision,
                                                           epochs=epochs)
    if args.compile:
        for precision in precisions:
            methods[f"compiled {precision}"] = functools.partial(train_vaelab, train_split, val_split, precision,
                                                                 epochs=epochs, compiled=True)
    if args.ieee_subnormals:
        for precision in precisions:
            methods[f"ieee {precision}"] = functools.partial(train_vaelab, train_split, val_split, precision,
                                                             epochs=epochs, flush_denormal=False)
    if args.plain_loop:
        methods["plain loop"] = lambda seed: train_plain_loop(train_split, seed, epochs)
        if args.compile:
            methods["plain fast"] = lambda seed: train_plain_loop(train_split, seed, epochs, fast=True)
    elbo = {name: examples_elbo if name == "examples" else vaelab_elbo for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    elbos: dict[str, list[float]] = {name: [] for name in methods}
    before = {dtype: limit_seconds(dtype, len(train_split)) for dtype in (torch.float32, torch.bfloat16)}
    for repeat in range(args.repeats):
        for name, train in methods.items():
            took, model = train(repeat)
            seconds[name].append(took)
            elbos[name].append(elbo[name](model, test))
            print(f"  {name:<12} epoch {took:6.2f} s, test ELBO {elbos[name][-1]:8.2f}", file=sys.stderr)

    # On a shared machine the matmul rate drifts: it is measured before and after the epochs, and
    # the limit takes the faster (the stricter limit).
    fp32_limit, sgemm_rate = min(before[torch.float32], limit_seconds(torch.float32, len(train_split)))
    bf16_limit, bf16_rate = min(before[torch.bfloat16], limit_seconds(torch.bfloat16, len(train_split)))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    rows = [(name, medians[name], statistics.median(elbos[name])) for name in methods]
    rows += [("limit fp32", fp32_limit, None), ("limit bf16", bf16_limit, None)]
    print(f"\nmatmul rates at these shapes: fp32 {sgemm_rate:.1f} GFLOP/s, bf16 {bf16_rate:.1f} GFLOP/s")
    print(f"{'':<14}{'s / epoch':>10}{'vs examples':>13}{'vs own limit':>14}{'test ELBO':>11}")
    for name, took, test_elbo in rows:
        own_limit = bf16_limit if "bf16" in name else fp32_limit
        print(f"{name:<14}{took:>10.2f}{took / medians['examples']:>13.3f}{took / own_limit:>14.2f}"
              f"{'' if test_elbo is None else format(test_elbo, '.2f'):>11}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds": seconds, "test_elbo": elbos, "median_seconds": medians,
            "limit_seconds": {"fp32": fp32_limit, "bf16": bf16_limit},
            "matmul_gflops": {"fp32": sgemm_rate, "bf16": bf16_rate},
            "settings": {"threads": args.threads, "repeats": args.repeats, "epochs": epochs,
                         "images": len(train_split),
                         "batch": BATCH, "torch": torch.__version__}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
