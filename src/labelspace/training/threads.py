"""How many torch threads a CPU job runs at: the same count on every run of a machine, whatever its load.

The count changes the order of floating-point sums inside torch's kernels, so it is part of what the
weights depend on: the same small run at 1 and at 2 threads gave different weights (top-3 O-F1 49.6
and 51.1). `choose_threads()` picks it once per process, and never from how busy the machine is:

* $LABELSPACE_TORCH_THREADS=N: N threads (what `labelspace reproduce` sets to the recorded count);
* the caller's own `torch.set_num_threads`, or $OMP_NUM_THREADS: that count;
* otherwise ("auto", the default) the cores this process may run on (its CPU affinity, at most
  torch's own default): two runs of the same inputs on one machine give the same weights;
* $LABELSPACE_TORCH_THREADS=free: the cores other jobs leave idle right now (the idle share of each
  core over 0.3 s, from /proc/stat). Faster on a shared machine (on 2 cores, EfficientNet-Lite0 at
  64 px trained at 200 images/s with 2 threads and 112 with 1 when idle, but 8-13 with 2 threads and
  60-70 with 1 under a load of 8: OpenMP's threads spin-wait on each other, and one descheduled
  thread stalls the rest), but two runs can then pick different counts and give different weights.

Whichever way it was chosen, the count is recorded with every training run (`TrainResult.threads`) and
on the registered version (`env.torch_threads`); `labelspace reproduce` trains at that count.
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

THREADS_ENV = "LABELSPACE_TORCH_THREADS"  # a number of torch threads, "auto" (the default) or "free"
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
    if value not in ("", "auto", "free"):
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise ValueError(f"${THREADS_ENV} must be a number of threads (1 or more), auto or free, got {value!r}")
        return threads
    current = torch.get_num_threads()
    if current != _TORCH_DEFAULT_THREADS or os.environ.get("OMP_NUM_THREADS"):
        return current  # the caller (or $OMP_NUM_THREADS) decided
    if _chosen_threads is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        cores = max(1, min(current, len(cpus)))
        if value == "free":
            # Rounded down unless nearly whole: one thread too many costs several-fold, one too few under 2x.
            _chosen_threads = max(1, min(cores, math.floor(_free_cores(cpus) + 0.25))) if cores > 1 else 1
            log.info("torch threads: %d of %d (cores free now, $%s=free)", _chosen_threads, cores, THREADS_ENV)
        else:
            _chosen_threads = cores
            log.info("torch threads: %d (the cores of this process; set $%s to choose)", cores, THREADS_ENV)
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
