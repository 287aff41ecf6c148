"""Optimizers and learning-rate schedules by name, configured from TrainConfig."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from vaelab.compiled import CompiledWithFallback
from vaelab.config import TrainConfig
from vaelab.errors import ConfigError
from vaelab.precision import resolve_precision

# Adam, AdamW and SGD run fused (one kernel over all parameters, on CPU as on CUDA): the
# per-parameter loop of the default implementation was a third of a small VAE's training step on
# CPU (docs/performance.md). RMSprop has no fused kernel; it runs foreach.

def _adam(params, cfg: TrainConfig):
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _adamw(params, cfg: TrainConfig):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def _sgd(params, cfg: TrainConfig):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=True)


def _rmsprop(params, cfg: TrainConfig):
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               foreach=True)


OPTIMIZERS = {"adam": _adam, "adamw": _adamw, "sgd": _sgd, "rmsprop": _rmsprop}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](params, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule (the trainer calls .step() after every optimizer step)."""
    S = torch.optim.lr_scheduler
    schedules = {
        "constant": lambda: S.ConstantLR(optimizer, factor=1.0, total_iters=0),
        "cosine": lambda: S.CosineAnnealingLR(optimizer, T_max=max(1, total_steps)),
        "step": lambda: S.StepLR(optimizer, step_size=max(1, cfg.lr_step_size * steps_per_epoch),
                                 gamma=cfg.lr_gamma),
        # lr_gamma per epoch, applied smoothly per step
        "exponential": lambda: S.ExponentialLR(optimizer, gamma=cfg.lr_gamma ** (1.0 / max(1, steps_per_epoch))),
    }
    if cfg.schedule not in schedules:
        raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(schedules)}")
    return schedules[cfg.schedule]()


class NonFiniteStep(ArithmeticError):
    """A loss term or the gradients became NaN or infinite; the optimizer did not step."""

    def __init__(self, term: str, value: float):
        super().__init__(f"the loss term {term!r} became {value}")
        self.term, self.value = term, value


class Updater:
    """The one optimizer step of vaelab: every model's update goes through `minimize`.

    The trainer builds it from the train config; a model's train_step computes its terms inside
    `autocast()` (the configured precision) and hands the term to descend to `minimize`, which
    zeroes the gradients, back-propagates, clips the global gradient norm of that optimizer's
    parameters to grad_clip (0: no clipping) and steps the optimizer. A NaN or infinite objective or
    gradient raises NonFiniteStep naming the term (the first non-finite entry of `terms`, else the
    objective) before the optimizer steps, so the weights stay as they were.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], grad_clip: float = 0.0,
                 precision: str = "fp32", device_type: str = "cpu"):
        self.optimizers = optimizers
        self.grad_clip = grad_clip
        self.precision = resolve_precision(precision, device_type)  # "auto" -> bf16 only where it is native
        self.device_type = device_type
        self.replicated: torch.nn.Module | None = None  # DistributedDataParallel over the model's loss
        self.compiled_loss: CompiledWithFallback | None = None  # torch.compile of the model's loss

    def replicate(self, model: torch.nn.Module, device: torch.device) -> None:
        """Route `loss` through DistributedDataParallel (the process group must be initialized), so
        that every backward averages the gradients over the processes. Buffers are synced once, at
        construction, not before every forward: an RBM's persistent chains are each process's own."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device] if device.type == "cuda" else None
        self.replicated = DistributedDataParallel(_LossOf(model), device_ids=device_ids,
                                                  forward_sync_buffers=False)

    def compile_loss(self, model: Any) -> None:
        """Route `loss` through torch.compile of model.loss (inductor fuses the loss's elementwise
        work into few kernels, forward and backward), falling back to eager if compiling fails."""
        self.compiled_loss = CompiledWithFallback(model.loss, f"{type(model).__name__}.loss")

    def loss(self, model: Any, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """model.loss(batch, step=step): through DistributedDataParallel once `replicate` was
        called, through torch.compile once `compile_loss` was."""
        if self.replicated is not None:
            return self.replicated(batch, step=step)
        if self.compiled_loss is not None:
            # One static graph per batch size (the epoch's last batch is smaller): with a dynamic
            # batch dimension dynamo cannot trace the reparameterization's randn.
            torch._dynamo.mark_static(batch.x, 0)
            return self.compiled_loss(batch, step=step)
        return model.loss(batch, step=step)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on the model's device type under precision=bf16, else nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def minimize(self, objective: torch.Tensor, optimizer_index: int = 0,
                 terms: dict[str, torch.Tensor] | None = None, name: str = "loss") -> None:
        """One descent step of optimizers[optimizer_index] on the scalar `objective` (called `name`;
        `terms` are the loss terms it was computed from, to name the one that is not finite)."""
        optimizer = self.optimizers[optimizer_index]
        if not self._finite_everywhere(objective):
            raise _non_finite(terms or {}, name, objective)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        if not torch.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteStep(f"gradient of {name}", float(norm))
        optimizer.step()


    def _finite_everywhere(self, objective: torch.Tensor) -> bool:
        """The objective is finite in this process and, when distributed, in every other one: all
        skip the step together (a process that alone skipped backward would hang the others)."""
        finite = torch.isfinite(objective.detach())
        if self.replicated is not None:
            import torch.distributed as dist

            flag = finite.to(torch.float32).reshape(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag.squeeze(0) > 0
        return bool(finite)


class _LossOf(torch.nn.Module):
    """A model whose forward is its training loss, the shape DistributedDataParallel wraps."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self.model.loss(batch, step=step)


def _non_finite(terms: dict[str, torch.Tensor], name: str, objective: torch.Tensor) -> NonFiniteStep:
    """The first term of `terms` that is not finite (the culprit, e.g. "kl"), else the objective."""
    for term, value in terms.items():
        if term != name and value.numel() == 1 and not torch.isfinite(value.detach()):
            return NonFiniteStep(term, float(value.detach()))
    return NonFiniteStep(name, float(objective.detach()))
