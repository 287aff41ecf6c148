"""The matmul rate a benchmark's limit is computed from: the best time of the forward matmuls of a
network's layer shapes, measured in the benchmark's own process (shared by train_throughput.py and
eval_speed.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch


def best_matmul_seconds(shapes: Sequence[tuple[int, int]], rows: int, dtype: torch.dtype, repeats: int = 20,
                        inner: int = 10) -> float:
    """Seconds for one pass of (rows x a) @ (a x b) over every (a, b) in `shapes`: the best of
    `repeats` timings, each averaging `inner` passes, after a warm-up pass."""
    inputs = [torch.randn(rows, a, dtype=dtype) for a, _ in shapes]
    weights = [torch.randn(a, b, dtype=dtype) for a, b in shapes]
    for x, w in zip(inputs, weights, strict=True):
        x @ w  # warm up
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            for x, w in zip(inputs, weights, strict=True):
                x @ w
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def forward_flops(shapes: Sequence[tuple[int, int]], rows: int) -> int:
    return 2 * rows * sum(a * b for a, b in shapes)
