"""Several processes, one run: PyTorch's own torch.distributed, launched by torchrun.

    torchrun --nproc-per-node 2 -m vaelab train vae --data fashion-mnist --out runs/vae

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `join_world` reads them and joins the process group
(gloo on CPU, NCCL on CUDA). Without them a command runs as one process and nothing here is used.

What each process does (docs/distributed.md):
- training: every process holds the whole model; DistributedDataParallel averages the gradients;
  each global minibatch of batch_size images is drawn, binarized and split into one contiguous
  shard per process (`shard_of`), so the data seen per step is that of a one-process run;
- only the main process (rank 0) writes: checkpoints, metrics, logs, weights;
- evaluation: the images (or, for an RBM's log Z, the AIS runs) are split across processes and the
  per-image values gathered (`gather_rows`), so every process ends with the same estimate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vaelab.data.datasets import Split
from vaelab.data.loader import contiguous_share, derive_seed
from vaelab.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def shard(self) -> tuple[int, int]:
        """(rank, size), the `shard` a BatchIterator takes."""
        return self.rank, self.size


SINGLE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join_world(device_type: str) -> World:
    """The World torchrun launched this process into (joining its process group on first call),
    or SINGLE when it was not launched by torchrun with more than one process."""
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return current_world()


def leave_world(succeeded: bool) -> None:
    """Close the process group, if one was joined, before the interpreter exits.

    Left to interpreter shutdown, a gloo group whose peer has already exited can abort the process
    ("terminate called without an active exception", seen about once in 30 two-process evals).
    After a command that succeeded every process first waits for the others; after a failure it
    does not (the others may never arrive; torchrun stops them)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if succeeded:
        dist.barrier()
    dist.destroy_process_group()


def current_world() -> World:
    """The World of an initialized process group, else SINGLE (estimators call this)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def process_seed(seed: int, world: World) -> int:
    """Rank 0's seed is `seed` itself (its draws are a one-process run's); rank r > 0 gets one
    derived from (seed, r), so the processes' random numbers are independent."""
    return seed if world.rank == 0 else derive_seed(seed, world.rank)


def shard_of(count: int, world: World) -> slice:
    """This process's contiguous share of `count` items (see contiguous_share)."""
    return contiguous_share(count, world.rank, world.size)


def check_batch_size(batch_size: int, world: World) -> None:
    """Equal shards make the average of the processes' mean losses the mean over the global batch."""
    if world.distributed and batch_size % world.size:
        raise ConfigError(f"batch_size={batch_size} does not split evenly over {world.size} processes: "
                          f"use a multiple of {world.size}")


def gather_rows(values: torch.Tensor, world: World) -> torch.Tensor:
    """Every process's `values` (n_r, ...) concatenated in rank order, on every process.

    all_gather needs equal shapes, so each shard is padded to the longest and trimmed after; gloo
    gathers CPU tensors, NCCL CUDA ones, so the values travel on the backend's device."""
    if not world.distributed:
        return values
    device = _backend_device(world)
    local = values.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[:len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:int(size.item())] for rows, size in zip(gathered, sizes, strict=True)]).to(values.device)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def sum_over_processes(values: dict[str, float], world: World) -> dict[str, float]:
    """Each named value summed over every process (the same names, built by the same code, in
    every process), in float64; the values themselves in one process."""
    if not world.distributed:
        return dict(values)
    names = list(values)
    totals = torch.tensor([values[name] for name in names], dtype=torch.float64, device=_backend_device(world))
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return dict(zip(names, totals.tolist(), strict=True))


def _backend_device(world: World) -> torch.device:
    """Where collectives run: this process's GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", world.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


# -- evaluation across processes ------------------------------------------------------------------


def local_split(split: Split, world: World) -> Split:
    """This process's contiguous share of the split's images (the whole split in one process)."""
    if not world.distributed:
        return split
    rows = shard_of(len(split), world)
    return Split(split.images[rows], None if split.labels is None else split.labels[rows])


def process_generator(generator: torch.Generator, world: World) -> torch.Generator:
    """The generator itself in rank 0, and in rank r > 0 a fresh one on the same device seeded by
    (its initial seed, r): the processes' random numbers are independent, rank 0's as in one process."""
    if world.rank == 0:
        return generator
    return torch.Generator(generator.device).manual_seed(process_seed(generator.initial_seed(), world))
