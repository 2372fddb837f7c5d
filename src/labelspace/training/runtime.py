"""The Python process a training loop runs in, made quiet (a steady heap and a garbage collector that
leaves the autograd graph alone; neither changes any arithmetic), and described (`describe_runtime`:
the packages, device and thread count the arithmetic does depend on, recorded with the weights).

**Heap.** glibc serves a request above its mmap threshold with a fresh mmap and returns it to the
kernel on free; the threshold starts at 128 KiB and adapts upward as such blocks are freed, but
never beyond 32 MiB, and how far it has climbed depends on the process's whole allocation history.
A CPU training step allocates and frees the same activation and gradient buffers (a few MiB each at
batch 64 and 64 px) hundreds of times an epoch; each time one lands above the threshold, every page
of it is faulted in again and zeroed by the kernel. In a process that had imported ZenML, MLflow,
pandas and scikit-learn, two epochs on 640 canvases took 426,000 minor page faults with glibc's
defaults and 182,000 with `steady_heap()`, which fixes the mmap threshold at 256 MiB (this also stops
its adaptation) and the trim threshold at 1 GiB: buffers below 256 MiB come from the heap and freed
ones stay there for the next step. The cost is memory a process keeps after freeing it (about the
peak of one training step, plus at most 1 GiB of free heap top). $LABELSPACE_STEADY_HEAP=0 leaves
glibc's defaults; on other C libraries (musl, macOS) it does nothing.

**Garbage collector.** Python's collector runs a young-generation pass every 700 net new container
objects. A CPU training step of EfficientNet-Lite0 at batch 64 sets off about 20 of those passes,
at about 2 ms each; every tenth goes on to an older generation, and a full pass scans the whole
process: 430,000 objects where ZenML and MLflow are loaded. Measured over the same two
epochs (640 canvases, one thread): 414 collections taking 0.80 s with the defaults in that process,
0.21 s inside `quiet_gc()`, which freezes every object that exists when training starts (moved out
of the collector's sight: a cycle among them that becomes garbage during training is collected
after it) and raises the young threshold to 10,000 for the loop. The loop's own cycles are still collected, and the previous
thresholds come back (and the frozen objects are unfrozen) when it ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

STEADY_HEAP_ENV = "LABELSPACE_STEADY_HEAP"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30
_applied: bool | None = None


def steady_heap() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once; module doc). True when
    they are set, now or earlier; False where $LABELSPACE_STEADY_HEAP=0 or the C library is not glibc."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(STEADY_HEAP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        _ = libc.gnu_get_libc_version  # glibc only: musl has mallopt as a stub that ignores its arguments
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("steady heap (mmap threshold %d MiB, trim threshold %d MiB): %s", MMAP_THRESHOLD >> 20,
              TRIM_THRESHOLD >> 20, _applied)
    return _applied


YOUNG_THRESHOLD = 10_000  # net new container objects between two young-generation passes in quiet_gc


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Within the block, the collector skips every object older than it and runs its young pass
    every YOUNG_THRESHOLD allocations instead of 700 (module doc). Nested blocks keep the outer one's
    settings; the thresholds and the frozen objects are restored on leaving the outermost."""
    thresholds = gc.get_threshold()
    if gc.get_freeze_count() or thresholds[0] >= YOUNG_THRESHOLD or not gc.isenabled():
        yield  # an outer block (or the caller) already decided
        return
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


# ---------------------------------------------------------------- what the arithmetic depends on


def installed_packages() -> dict[str, str]:
    """{distribution name (lower case, '-' separated): version} of every package this interpreter sees."""
    from importlib import metadata

    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip().lower().replace("_", "-").replace(".", "-")
        if name:
            found.setdefault(name, dist.version)
    return dict(sorted(found.items()))


def packages_hash(packages: dict[str, str]) -> str:
    """sha256 (16 hex digits) of `name==version` lines: equal exactly when the same versions are installed."""
    import hashlib

    return hashlib.sha256("".join(f"{n}=={v}\n" for n, v in sorted(packages.items())).encode()).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_runtime(device, threads: int, processes: int = 1) -> dict[str, str]:
    """What a training's weights depend on besides its inputs, every value a string: the exact torch,
    torchvision, numpy and Python versions, a hash of every installed package, the device (CPU model,
    GPU name, CUDA and cuDNN versions), the torch threads each process ran at and the processes."""
    import platform

    import numpy as np
    import torch

    try:
        import torchvision

        vision = torchvision.__version__
    except ImportError:
        vision = "none"
    device = torch.device(device)
    gpu = "none"
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": vision,
        "numpy": np.__version__, "packages_hash": packages_hash(installed_packages()),
        "device": device.type, "cpu": cpu_model(), "gpu": gpu,
        "cuda": torch.version.cuda or "none", "cudnn": str(cudnn) if cudnn else "none",
        "torch_threads": str(threads), "train_processes": str(processes),
    }
