"""The heap trimmer of long evaluations: it trims at most once per interval, and is a no-op where
the C library has no malloc_trim."""

from __future__ import annotations

import platform

import pytest

from vaelab.memory import HeapTrimmer, _malloc_trim


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_trims_once_per_interval():
    clock, calls = FakeClock(), []
    trimmer = HeapTrimmer(interval=1.0, trim=lambda: calls.append(clock.now), clock=clock)
    for step in range(1, 31):  # 3 seconds in steps of 0.1 s
        clock.now = step / 10
        trimmer.maybe_trim()
    assert calls == [1.0, 2.0, 3.0]


def test_without_malloc_trim_nothing_is_called():
    clock = FakeClock()
    trimmer = HeapTrimmer(interval=0.0, clock=clock)
    trimmer.trim = None
    clock.now = 10.0
    assert trimmer.maybe_trim() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_malloc_trim_is_found():
    trim = _malloc_trim()
    assert trim is not None and trim() in (0, 1)  # 1: memory was released, 0: none was
