"""Timing helpers shared by the benchmarks (imported from the benchmark's own folder)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int = 3, warm_up: bool = False) -> float:
    """Best wall seconds of `repeats` calls (the least disturbed by other jobs), after one untimed
    call when `warm_up`."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
