"""How many torch threads a CPU job runs at, chosen for a machine that other jobs share.

On a CPU the number of torch threads matters more than anything else on a shared machine: OpenMP's
threads spin-wait on each other, and with other jobs on the cores one descheduled thread stalls the
rest: on 2 cores, EfficientNet-Lite0 training at 64 px ran at 200 images/s with 2 threads and 112
with 1 on an idle machine, but 8-13 with 2 threads and 60-70 with 1 under a load of 8.
`cpu_threads()` picks the count once per process: $LABELSPACE_TORCH_THREADS when set, the caller's
own `torch.set_num_threads` when it made one, else as many threads as there are cores free right
now (a 0.2 s probe). The count changes the order of floating-point sums, so it is recorded with
every training run (`TrainResult.threads`); a run is bit-for-bit repeatable at the same count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

THREADS_ENV = "LABELSPACE_TORCH_THREADS"  # a number of torch threads, or "auto" (the default)
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import: the cores, or $OMP_NUM_THREADS
_chosen_threads: int | None = None


def _free_cores(cores: int, seconds: float = 0.2) -> float:
    """How many cores this process gets right now: `cores` threads each run single-threaded matrix
    products for `seconds`; the CPU time they got over the wall time (2.0 on an idle 2-core machine,
    about 1.3 with one other busy job, less under more load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # each probe thread computes on itself
    cpu = [0.0] * cores
    a = torch.ones(192, 192)

    def spin(i: int) -> None:
        start, deadline = time.thread_time(), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            torch.mm(a, a)  # releases the GIL
        cpu[i] = time.thread_time() - start

    start = time.perf_counter()
    threads = [threading.Thread(target=spin, args=(i,), daemon=True) for i in range(cores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    torch.set_num_threads(previous)
    return sum(cpu) / max(wall, 1e-9)


def choose_threads() -> int:
    """The torch thread count for training and scoring in this process (see the module doc); decided
    once per process, so the two heads of a pipeline run train at the same count."""
    global _chosen_threads
    value = os.environ.get(THREADS_ENV, "auto").strip().lower()
    if value not in ("", "auto"):
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"${THREADS_ENV} must be a number of threads (1 or more) or auto, got {value!r}")
        return threads
    current = torch.get_num_threads()
    if current != _TORCH_DEFAULT_THREADS or os.environ.get("OMP_NUM_THREADS"):
        return current  # the caller (or $OMP_NUM_THREADS) decided
    if _chosen_threads is None:
        cores = min(current, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else current)
        # Rounded down unless nearly whole: one thread too many costs several-fold, one too few under 2x.
        _chosen_threads = max(1, min(cores, math.floor(_free_cores(cores) + 0.25))) if cores > 1 else 1
        log.info("torch threads: %d of %d (cores free now; set $%s to choose)", _chosen_threads, cores, THREADS_ENV)
    return _chosen_threads


@contextlib.contextmanager
def cpu_threads(device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block at `choose_threads()` torch threads (CPU work only); yields the count."""
    if torch.device(device).type != "cpu":
        yield torch.get_num_threads()
        return
    previous, threads = torch.get_num_threads(), choose_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
