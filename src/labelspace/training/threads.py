"""How many torch threads a CPU job runs at, chosen for a machine that other jobs share.

On a CPU the number of torch threads matters more than anything else on a shared machine: OpenMP's
threads spin-wait on each other, and with other jobs on the cores one descheduled thread stalls the
rest: on 2 cores, EfficientNet-Lite0 training at 64 px ran at 200 images/s with 2 threads and 112
with 1 on an idle machine, but 8-13 with 2 threads and 60-70 with 1 under a load of 8.
`cpu_threads()` picks the count once per process: $LABELSPACE_TORCH_THREADS when set, the caller's
own `torch.set_num_threads` when it made one, else as many threads as there are cores free right
now (the idle share of each core over 0.3 s, from /proc/stat). The count changes the order of floating-point sums, so it is recorded with
every training run (`TrainResult.threads`); a run is bit-for-bit repeatable at the same count.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

THREADS_ENV = "LABELSPACE_TORCH_THREADS"  # a number of torch threads, or "auto" (the default)
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import: the cores, or $OMP_NUM_THREADS
_chosen_threads: int | None = None


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]] | None:
    """(idle, total) jiffies of each CPU in `cpus`, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))  # idle + iowait, all
    return times or None


def _free_cores(cpus: set[int], seconds: float = 0.3) -> float:
    """How many of `cpus` other processes leave idle right now: the idle share of each over `seconds`
    (this process sleeps meanwhile), summed; 2.0 on an idle 2-core machine, about 1 while another job
    keeps one core busy, near 0 under a load of 8. Without /proc/stat: cores less the 1-min load."""
    before = _cpu_times(cpus)
    if before is None:
        return max(0.0, len(cpus) - os.getloadavg()[0])
    time.sleep(seconds)
    after = _cpu_times(cpus) or {}
    free = 0.0
    for cpu, (idle, total) in after.items():
        idle0, total0 = before.get(cpu, (idle, total))
        if total > total0:
            free += (idle - idle0) / (total - total0)
    return free


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
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        cores = min(current, len(cpus))
        # Rounded down unless nearly whole: one thread too many costs several-fold, one too few under 2x.
        _chosen_threads = max(1, min(cores, math.floor(_free_cores(cpus) + 0.25))) if cores > 1 else 1
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
