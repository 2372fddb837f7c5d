"""The process a CPU job trains in: the torch thread count (the caller's choice wins, else
the cores of the process, or with $LABELSPACE_TORCH_THREADS=free the cores other jobs leave idle), a steady heap and a quiet garbage collector (labelspace.training.runtime)."""

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
    monkeypatch.setenv(threads.THREADS_ENV, "free")
    monkeypatch.setattr(threads, "_chosen_threads", None)
    monkeypatch.setattr(threads, "_free_cores", lambda cpus, seconds=0.3: 0.1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if threads.torch.get_num_threads() == threads._TORCH_DEFAULT_THREADS:
        assert threads.choose_threads() == 1  # no core free: one thread, never zero


def test_the_default_count_is_the_cores_whatever_the_load(monkeypatch):
    """auto never probes the load: two runs on one machine train at the same count."""
    monkeypatch.setenv(threads.THREADS_ENV, "auto")
    monkeypatch.setattr(threads, "_chosen_threads", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    if threads.torch.get_num_threads() != threads._TORCH_DEFAULT_THREADS:
        pytest.skip("the test process chose its own torch thread count")
    cores = min(threads._TORCH_DEFAULT_THREADS, len(os.sched_getaffinity(0)))
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        assert threads.choose_threads() == cores  # one core busy: the same count as on an idle machine
    finally:
        spin.kill()
        spin.wait()


_FAULTS_OF_BIG_BUFFERS = """
import resource
import torch
from labelspace.training.runtime import steady_heap
print(steady_heap())
for i in range(20):
    if i == 10:  # the heap has grown to fit the buffer by now: count the last ten
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.ones(16 << 20)  # 64 MiB, above the 32 MiB glibc's own threshold can climb to
    del buffer
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(steady: str) -> tuple[str, int]:
    env = {**os.environ, "LABELSPACE_STEADY_HEAP": steady}
    out = subprocess.run([sys.executable, "-c", _FAULTS_OF_BIG_BUFFERS], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_steady_heap_reuses_freed_buffers_instead_of_faulting_them_in_again():
    applied, steady = _faults("1")
    off, default = _faults("0")
    assert (applied, off) == ("True", "False")
    # glibc's default maps and unmaps each 64 MiB buffer: 16,384 fresh pages, ten times over.
    assert default > 8 * 16_384
    assert steady < default / 10, (steady, default)


def test_quiet_gc_freezes_what_exists_raises_the_young_threshold_and_restores_both():
    import gc

    from labelspace.training.runtime import YOUNG_THRESHOLD, quiet_gc

    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with quiet_gc():
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 1000  # the test process's objects: out of the collector's sight
        # A frozen object is out of get_objects()' sight, one made after the freeze is not. (The
        # freeze count itself is no witness: a frozen object another thread frees leaves it.)
        made_inside = []
        with quiet_gc():  # nested: the outer block's settings stay, and nothing more is frozen
            assert gc.get_threshold()[0] == YOUNG_THRESHOLD
            assert any(o is made_inside for o in gc.get_objects())
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 1000  # leaving the nested block unfroze nothing
        # Cycles made inside the block are still collected.
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
