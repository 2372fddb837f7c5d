"""The torch thread count for a shared CPU: the caller's choice wins, else the cores other jobs leave idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from labelspace.training import threads


def test_free_cores_reads_the_idle_share_of_each_cpu_and_sees_a_busy_one():
    cpus = os.sched_getaffinity(0)
    idle = threads._free_cores(cpus, seconds=0.3)
    assert 0.0 <= idle <= len(cpus) + 1e-6
    # A process spinning on one of our CPUs takes most of that CPU's idle share.
    cpu = min(cpus)
    spin = subprocess.Popen([sys.executable, "-c", f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\n"
                             "end = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        busy = threads._free_cores({cpu}, seconds=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy < 0.5


def test_the_environment_and_the_caller_decide_before_the_probe(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.choose_threads() == 3
    monkeypatch.setenv(threads.THREADS_ENV, "none")
    with pytest.raises(ValueError, match="number of threads"):
        threads.choose_threads()
    monkeypatch.setenv(threads.THREADS_ENV, "auto")
    monkeypatch.setattr(threads, "_chosen_threads", None)
    monkeypatch.setattr(threads, "_free_cores", lambda cpus, seconds=0.3: 0.1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if threads.torch.get_num_threads() == threads._TORCH_DEFAULT_THREADS:
        assert threads.choose_threads() == 1  # no core free: one thread, never zero
