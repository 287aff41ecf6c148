"""The one training loop every model goes through.

The loop reads top to bottom: for each epoch, for each minibatch, `model.train_step` through the
trainer's Updater (zero-grad, backward, clipping, step, precision); then validation, a
metrics.jsonl line, TensorBoard scalars and a checkpoint. Models with unusual updates override
`train_step`/`make_optimizers`, never this loop. A checkpoint holds everything `--resume`
needs (weights, optimizer and scheduler state, RNG state, position in the epoch, running sums), so
a resumed run produces the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from vaelab.checkpoint import (
    BEST_WEIGHTS,
    CHECKPOINT_DIR,
    METRICS_FILE,
    WEIGHTS_FILE,
    load_training_state,
    load_weights,
    save_run_config,
    save_training_state,
    save_weights,
)
from vaelab.config import RunConfig
from vaelab.data.datasets import Split
from vaelab.data.loader import BatchIterator, derive_seed
from vaelab.data.pixels import batch_transform
from vaelab.distributed import SINGLE, World, barrier, check_batch_size, gather_rows, process_seed, sum_over_processes
from vaelab.errors import ConfigError, TrainingError, VaelabError
from vaelab.experiment import deterministic_view
from vaelab.files import make_directory
from vaelab.models.base import GenerativeModel
from vaelab.optim import NonFiniteStep, Updater, build_optimizer, build_scheduler
from vaelab.precision import subnormals_flushed

if TYPE_CHECKING:  # imported in _open_tensorboard, only when TensorBoard logging is asked for
    from torch.utils.tensorboard import SummaryWriter

VALIDATION_SEED = 12345  # validation noise is drawn from its own fixed stream, never the training one
TENSORBOARD_EVERY = 50  # steps between TensorBoard training scalars


def process_device(device: torch.device, world: World) -> torch.device:
    """Under torchrun, each process on a GPU machine takes the GPU of its local rank."""
    if device.type == "cuda" and world.distributed:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaelabError("--device cuda was asked for but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise VaelabError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # index of the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already done
    step: int = 0  # optimizer steps so far
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running sums of this epoch's terms
    epoch_batches: int = 0
    epoch_seconds: float = 0.0  # time spent in this epoch before an interruption
    best_val_loss: float = math.inf
    epochs_since_best: int = 0
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (skip_nonfinite)
    finished: bool = False  # the final weights are written: training ended


class Trainer:
    def __init__(self, model: GenerativeModel, run_config: RunConfig, run_dir: str | Path,
                 train_split: Split, val_split: Split, levels: int | None, progress_bar: bool | None = None,
                 world: World = SINGLE):
        self.cfg = run_config.train
        self.run_config = run_config
        self.run_dir = Path(run_dir)
        self.world = world
        self.device = process_device(resolve_device(self.cfg.device), world)
        self.model = model.to(self.device)
        self.train_split, self.val_split = train_split, val_split
        self.levels = levels
        self.transform = batch_transform(run_config.data.pixel_model, levels)
        self.steps_per_epoch = len(BatchIterator(train_split, self.cfg.batch_size, shuffle=False))
        if self.steps_per_epoch == 0:
            raise VaelabError(f"batch_size={self.cfg.batch_size} gives no batches for {len(train_split)} images")
        total_steps = self.cfg.max_steps or self.cfg.epochs * self.steps_per_epoch
        self.optimizers = model.make_optimizers(lambda params: build_optimizer(params, self.cfg))
        self.schedulers = [build_scheduler(opt, self.cfg, self.steps_per_epoch, total_steps)
                           for opt in self.optimizers]
        self.updater = Updater(self.optimizers, self.cfg.grad_clip, self.cfg.precision, self.device.type)
        if world.distributed:
            self._replicate()
        elif self.cfg.compile:
            self._compile_loss()
        self.progress = Progress()
        self.restored = False
        self.show_bar = world.is_main and (sys.stderr.isatty() if progress_bar is None else progress_bar)
        self.writer: SummaryWriter | None = None

    def _has_own_train_step(self) -> bool:
        """The model overrides train_step (the GAN's two players): it makes its own updates and never
        calls its loss through the Updater."""
        return type(self.model).train_step is not GenerativeModel.train_step

    def _compile_loss(self) -> None:
        """train.compile: the default train_step's loss through torch.compile; refused for a model
        with its own train_step, which would never call it."""
        if self._has_own_train_step():
            raise ConfigError(f"train.compile has no effect on {type(self.model).__name__}: its train_step "
                              "computes its own losses (train it with compile=false)")
        self.updater.compile_loss(self.model)

    def _replicate(self) -> None:
        """DistributedDataParallel over the model's loss: models with their own train_step (the
        GAN's two players) would step without averaging their gradients, so they are refused."""
        check_batch_size(self.cfg.batch_size, self.world)
        if self.cfg.compile:
            raise ConfigError("train.compile is not supported under torchrun yet: train with compile=false")
        if self._has_own_train_step():
            raise ConfigError(f"distributed training of {type(self.model).__name__} is not supported: its "
                              "train_step makes its own updates (train it in one process)")
        self.updater.replicate(self.model, self.device)

    # -- state ------------------------------------------------------------------------------

    def _state(self) -> dict:
        """The checkpoint's contents; when distributed, a collective call (every process's RNG
        state is gathered, one row per rank, so a resumed run continues every process's stream)."""
        state: dict[str, Any] = {"model": self.model.state_dict(),
                                 "optimizers": [opt.state_dict() for opt in self.optimizers],
                                 "schedulers": [sch.state_dict() for sch in self.schedulers],
                                 "rng": {"torch": torch.get_rng_state()},
                                 "progress": self.progress.__dict__.copy()}
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.world.distributed:
            state["rng"]["torch_ranks"] = gather_rows(torch.get_rng_state()[None], self.world)  # (W, S)
        return state

    def save_checkpoint(self) -> None:
        state = self._state()
        if self.world.is_main:
            save_training_state(self.run_dir, state)

    def restore_checkpoint(self) -> None:
        """Continue from the run directory's checkpoint (the previous one if the last is damaged)."""
        state = load_training_state(self.run_dir)
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=False):
            opt.load_state_dict(opt_state)
        for sch, sch_state in zip(self.schedulers, state["schedulers"], strict=False):
            sch.load_state_dict(sch_state)
        self._restore_rng(state["rng"])
        self.progress = Progress(**state["progress"])
        self.restored = True

    def _restore_rng(self, rng: dict[str, torch.Tensor]) -> None:
        """This process's RNG stream as saved; a checkpoint from a different number of processes
        gives rank r > 0 a fresh stream seeded by (seed, r, step)."""
        per_rank = rng.get("torch_ranks")
        if per_rank is not None and len(per_rank) == self.world.size:
            torch.set_rng_state(per_rank[self.world.rank].clone())
        elif self.world.rank == 0:
            torch.set_rng_state(rng["torch"])
        else:
            torch.manual_seed(derive_seed(self.cfg.seed, self.world.rank, self.progress.step))
        if "cuda" in rng and self.device.type == "cuda" and self.world.rank == 0:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    # -- the loop ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The run's training ended (final weights written) and the budget leaves nothing to do."""
        return self.progress.finished and not self.has_work()

    def has_work(self) -> bool:
        """Steps are left under epochs, max_steps and early stopping."""
        return (self.progress.epoch < self.cfg.epochs and not self._reached_max_steps()
                and not self._should_stop_early())

    def fit(self, resume: bool = False) -> dict:
        """Train until `epochs`, `max_steps` or early stopping, then write the final weights; returns
        the last metrics line. resume=True continues from the checkpoint (restore_checkpoint, if
        the caller has not already); a finished run with no budget left is left untouched."""
        main = self.world.is_main
        if main:
            make_directory(self.run_dir)
        if resume and not self.restored:
            self.restore_checkpoint()
        if not resume:
            # each process its own noise stream; rank 0's is that of a one-process run
            torch.manual_seed(process_seed(self.cfg.seed, self.world))
            if main:
                (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        if self.finished:
            return {}
        if main:
            _truncate_metrics(self.run_dir / METRICS_FILE, completed_epochs=self.progress.epoch)
            # From here on the run is not finished: model.safetensors would claim final weights it is not.
            (self.run_dir / WEIGHTS_FILE).unlink(missing_ok=True)
            save_run_config(self.run_dir, self.run_config)
        self.progress.finished = False
        metrics = self._train()
        barrier(self.world)  # no process returns before the main one has written the run
        return metrics

    def _train(self) -> dict:
        self._open_tensorboard()
        last_metrics: dict = {}
        try:
            with subnormals_flushed(self.cfg.flush_denormal and self.device.type == "cpu"):
                while self.has_work():
                    last_metrics = self._run_epoch()
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        self._finish_training()
        return last_metrics

    def _finish_training(self) -> None:
        """Run the model's after-training pass (e.g. an AE fits its latent density to the training
        codes) on the final weights and on the best ones, and save both."""
        fit_split = deterministic_view(self.train_split, self.run_config.data, "train", self.levels)
        best_path = self.run_dir / CHECKPOINT_DIR / BEST_WEIGHTS
        main = self.world.is_main
        if main and best_path.exists() and type(self.model).after_training is not GenerativeModel.after_training:
            best_model = copy.deepcopy(self.model)
            load_weights(best_model, best_path)
            best_model.eval().after_training(fit_split)
            save_weights(best_model, best_path)
        self.model.eval().after_training(fit_split)
        if main:
            save_weights(self.model, self.run_dir / WEIGHTS_FILE)
        self.progress.finished = True
        self.save_checkpoint()

    def _run_epoch(self) -> dict:
        p = self.progress
        batches = BatchIterator(self.train_split, self.cfg.batch_size, shuffle=True, seed=self.cfg.seed,
                                epoch=p.epoch, transform=self.transform, start_batch=p.batch_in_epoch,
                                shard=self.world.shard)
        bar = tqdm(total=len(batches), initial=p.batch_in_epoch, disable=not self.show_bar,
                   desc=f"epoch {p.epoch + 1}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        started = time.perf_counter() - p.epoch_seconds
        self.model.train()
        for batch in batches:
            terms = self._train_step(batch)
            p.batch_in_epoch += 1
            p.epoch_seconds = time.perf_counter() - started
            bar.update(1)
            if terms is not None and p.step % 10 == 0:
                bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items() if k in ("loss", "reconstruction", "kl")})
            if self.cfg.save_every and p.step % self.cfg.save_every == 0:
                self.save_checkpoint()
            if self._reached_max_steps():
                break
        bar.close()
        return self._end_epoch(partial=p.batch_in_epoch < len(batches))

    def _train_step(self, batch) -> dict[str, float] | None:
        """One update and its bookkeeping; None when the update was skipped (skip_nonfinite)."""
        p = self.progress
        batch = batch.to(self.device)
        try:
            terms = self.model.train_step(batch, p.step, self.updater)
        except NonFiniteStep as fault:
            self._skip_or_stop(fault)
            terms = None
        self._step_schedules()
        p.step += 1
        if terms is None:
            return None
        values = self._mean_over_processes(terms)
        if not math.isfinite(values["loss"]):
            self._skip_or_stop(NonFiniteStep("loss", values["loss"]))
            return None
        for name, value in values.items():
            p.epoch_sums[name] = p.epoch_sums.get(name, 0.0) + value
        p.epoch_batches += 1
        if self.writer is not None and p.step % TENSORBOARD_EVERY == 0:
            for name, value in values.items():
                self.writer.add_scalar(f"train_step/{name}", value, p.step)
        return values

    def _mean_over_processes(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's loss terms as floats; when distributed, averaged over the processes' equal
        shards (the global batch's means), so every process logs and judges the same numbers."""
        totals = sum_over_processes({name: float(value) for name, value in terms.items()}, self.world)
        return {name: total / self.world.size for name, total in totals.items()}

    def _skip_or_stop(self, fault: NonFiniteStep) -> None:
        """Count a non-finite step against skip_nonfinite, or stop the run with one line."""
        p, allowed = self.progress, self.cfg.skip_nonfinite
        if p.skipped_steps < allowed:
            p.skipped_steps += 1
            print(f"warning: step {p.step + 1}: {fault}; the step is skipped ({p.skipped_steps} of "
                  f"{allowed} allowed by skip_nonfinite)", file=sys.stderr)
            return
        saved = self.run_dir / CHECKPOINT_DIR / "last.safetensors"
        kept = f"; the last checkpoint ({saved}) is intact" if saved.exists() else ""
        skipped = f" after {p.skipped_steps} skipped steps" if allowed else ""
        raise TrainingError(f"step {p.step + 1}: {fault}{skipped}{kept} (try a lower lr, grad_clip=1, "
                            "or skip_nonfinite=N to skip such steps)")

    def _step_schedules(self) -> None:
        with warnings.catch_warnings():
            # Schedules follow the trainer's step. An optimizer that skips steps (a GAN's generator
            # with d_steps > 1) keeps the same schedule; PyTorch would warn about that ordering.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in self.schedulers:
                scheduler.step()

    def _end_epoch(self, partial: bool) -> dict:
        p = self.progress
        validation = self.validate()
        metrics = {"epoch": p.epoch + 1, "step": p.step,
                   **{f"train_{k}": v / max(1, p.epoch_batches) for k, v in p.epoch_sums.items()},
                   **{f"val_{k}": v for k, v in validation.items()},
                   "lr": self.optimizers[0].param_groups[0]["lr"], "epoch_seconds": round(p.epoch_seconds, 3)}
        if partial:
            metrics["partial_epoch"] = True
        if p.skipped_steps:
            metrics["skipped_steps"] = p.skipped_steps  # so far, over the whole run
        self._log_epoch(metrics)
        # A partial epoch (stopped by max_steps) keeps its place for --resume; best-so-far tracking
        # and early stopping count whole epochs only.
        if not partial:
            self._track_best(validation["loss"])
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
            p.epoch_sums, p.epoch_batches, p.epoch_seconds = {}, 0, 0.0
        self.save_checkpoint()
        return metrics

    def _track_best(self, val_loss: float) -> None:
        p = self.progress
        if val_loss < p.best_val_loss:
            p.best_val_loss, p.epochs_since_best = val_loss, 0
            if self.world.is_main:
                save_weights(self.model, self.run_dir / CHECKPOINT_DIR / BEST_WEIGHTS)
        else:
            p.epochs_since_best += 1

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss terms over the validation split, with noise from a fixed, separate stream so the
        training RNG is untouched and epochs are comparable. When distributed, each process takes
        its shard of every batch and the sums are added over processes."""
        self.model.eval()
        sums: dict[str, float] = defaultdict(float)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(process_seed(VALIDATION_SEED, self.world))
            for batch in BatchIterator(self.val_split, self.cfg.eval_batch_size, shuffle=False,
                                       shard=self.world.shard):
                batch = batch.to(self.device)
                with self.updater.autocast():
                    terms = self.model.validation_loss(batch)
                for name, value in terms.items():
                    sums[name] += float(value) * len(batch.x)
        self.model.train()
        totals = sum_over_processes(sums, self.world)
        return {name: total / len(self.val_split) for name, total in totals.items()}

    # -- helpers ----------------------------------------------------------------------------

    def _reached_max_steps(self) -> bool:
        return self.cfg.max_steps is not None and self.progress.step >= self.cfg.max_steps

    def _should_stop_early(self) -> bool:
        patience = self.cfg.early_stopping
        return patience > 0 and self.progress.epochs_since_best >= patience

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard or not self.world.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when asked for

        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.progress.step or None)

    def _log_epoch(self, metrics: dict) -> None:
        if not self.world.is_main:
            return
        with open(self.run_dir / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                if isinstance(value, float):
                    self.writer.add_scalar(f"epoch/{name}", value, metrics["step"])
            self.writer.flush()
        if not self.show_bar:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                              if k.startswith(("train_loss", "val_loss", "val_kl", "val_reconstruction")))
            print(f"epoch {metrics['epoch']} step {metrics['step']}: {shown} ({metrics['epoch_seconds']:.1f}s)",
                  file=sys.stderr, flush=True)
        else:
            tqdm.write(f"epoch {metrics['epoch']}: train loss {metrics.get('train_loss', float('nan')):.4g}, "
                       f"val loss {metrics['val_loss']:.4g} ({metrics['epoch_seconds']:.1f}s)", file=sys.stderr)


def _truncate_metrics(path: Path, completed_epochs: int) -> None:
    """Drop metrics lines written after the checkpoint (epochs not completed, partial epochs)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and (entry := json.loads(line))["epoch"] <= completed_epochs
            and not entry.get("partial_epoch")]
    path.write_text("".join(line + "\n" for line in kept))
