"""Handing freed heap memory back to the operating system during long evaluations.

After a large block is freed, glibc's malloc raises its mmap threshold, so the big temporaries of a
chunked estimator come from the heap from then on. Their mixed sizes (bf16 decoder outputs beside
fp32 log-densities) fragment it, and the resident size grows with every image: a bf16 L_5000 of the
10,000 Fashion-MNIST test images grew to 20 GB and was killed. `malloc_trim` returns the free pages.
Trimming after every image costs about a third of the speed (the pages fault in again); trimming
four times a second cost nothing measurable and bounded it (docs/performance.md has the figures)."""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable

TRIM_INTERVAL_S = 0.25


@functools.cache
def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (macOS, musl)."""
    try:
        function = ctypes.CDLL(None).malloc_trim  # the symbols this process already has: libc's
    except (OSError, AttributeError):
        return None
    return lambda: function(0)


class HeapTrimmer:
    """Call maybe_trim() in a loop: it trims at most once per `interval` seconds."""

    def __init__(self, interval: float = TRIM_INTERVAL_S, trim: Callable[[], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self.trim = trim if trim is not None else _malloc_trim()
        self.last = clock()

    def maybe_trim(self) -> bool:
        """Trim if the interval has passed since the last trim; whether it did."""
        if self.trim is None or self.clock() - self.last < self.interval:
            return False
        self.trim()
        self.last = self.clock()
        return True
