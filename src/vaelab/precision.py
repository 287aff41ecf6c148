"""The float precision a computation runs in, and whether bf16 pays on this hardware.

Every precision option of vaelab (the trainer's `precision`, L_k's `iw_precision`, decoder AIS's
`ais_gradients`, the comparison budgets' `decoder_ais_gradients`) takes one of PRECISIONS:

- "fp32": no autocast.
- "bf16": bf16 autocast, as asked, wherever it runs.
- "auto": bf16 where the hardware multiplies bf16 natively, fp32 elsewhere.

bf16 is fast only where the hardware has it: CUDA GPUs that report bf16 support, and x86 CPUs with
AVX-512 BF16 or AMX. Elsewhere PyTorch emulates bf16 matmuls, and they are far slower than fp32.
Measured on an AMD EPYC with AVX2 and no AVX-512 (2026-12-03, one thread, torch 2.13.0; the
commands are in docs/performance.md): bf16 matmuls at the training benchmark's shapes ran at
2.8 GFLOP/s against fp32's 86, a bf16-autocast training epoch took 7.6 times the fp32 one, and bf16
decoder-AIS gradients 16 times as long as fp32 ones. So an explicit "bf16" on such a machine warns
(once per process and option), and "auto" picks fp32 there.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vaelab.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used, so that the CLI can import PRECISIONS cheaply
    import torch

PRECISIONS = ("fp32", "bf16", "auto")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls on this device type run in hardware (not emulated)."""
    import torch

    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def check_precision(precision: str, name: str = "precision") -> None:
    """A ConfigError naming the option `name` unless precision is one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device_type: str, name: str = "precision") -> str:
    """"fp32" or "bf16": what `precision` (one of PRECISIONS) runs as on `device_type`. "auto" follows
    native_bf16; an explicit "bf16" without native support is kept, with a warning that it is slow."""
    check_precision(precision, name)
    if precision == "auto":
        return "bf16" if native_bf16(device_type) else "fp32"
    if precision == "bf16" and not native_bf16(device_type):
        _warn_emulated(name, device_type)
    return precision


def autocast_dtype(precision: str, device_type: str, name: str = "precision") -> torch.dtype | None:
    """The autocast dtype of a precision option on `device_type` (None: fp32, no autocast)."""
    import torch

    return torch.bfloat16 if resolve_precision(precision, device_type, name) == "bf16" else None


@functools.cache  # once per option and device type
def _warn_emulated(name: str, device_type: str) -> None:
    warnings.warn(f"{name}=bf16 on a {device_type} without native bf16 matmuls: they are emulated and many times "
                  f"slower than fp32 here; {name}=auto picks fp32 on this machine", UserWarning, stacklevel=3)


@contextlib.contextmanager
def subnormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush subnormal floats to zero on the CPU inside the block (when enabled); IEEE subnormals
    again after it.

    Why training wants it: a weight whose gradient is exactly zero at every step (one into a dead
    ReLU unit, or from a pixel that is 0 in every image) has Adam's first moment multiplied by
    beta1 = 0.9 each step. That moment decays into the subnormal range and stays there, because
    round-to-nearest keeps 0.9 times the smallest subnormal at the smallest subnormal. Every
    arithmetic operation on a subnormal takes a slow microcode path. After three epochs of the
    training benchmark's VAE, 43 % of its first layer's moments were subnormal, and its third
    epoch ran 1.35-1.37 times slower than with flushing (docs/performance.md). Values that small carry no
    information for training.

    It covers torch's intra-op worker threads too, even ones started before the block
    (tests/test_training_speed_options.py counts the subnormals left in a product split over two
    threads).
    """
    import torch

    flushed = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)
