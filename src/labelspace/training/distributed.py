"""Data-parallel training (train.devices x train.nodes > 1): the caller's side, and the job folder.

`train_model` hands a run with more than one process to `train_distributed`, which
1. writes a job folder: `job.pkl` with everything `train_model` got (memory-mapped images and
   shards travel by reference, `JobPickler`; large in-memory arrays as .npy files beside it) and
   `job.json` with the launch settings;
2. starts `python -m labelspace.training.launcher JOB` in its own session: a small launcher
   process that calls torch's elastic launcher (`torch.distributed.launcher.api.elastic_launch`, what
   `torchrun` runs), which forks the ranks (labelspace.training.worker, each running the one
   training loop of labelspace.training.loop), c10d rendezvous on 127.0.0.1 and a free port, no
   restarts;
3. while it runs, reads the per-epoch records rank 0 appends to `events.jsonl` and calls `on_epoch`
   with each, here: only this process talks to MLflow or ZenML;
4. returns rank 0's `result.pt`, from which `train_model` makes the `TrainResult` one process
   would have returned.

Why a launcher process instead of elastic_launch here or a bare torchrun subprocess: elastic_launch
writes os.environ and installs signal handlers in the process that calls it (a ZenML step, a test
runner), and torchrun reports a dead worker only as text; the launcher catches the
`ChildFailedError` and writes each failed rank's exit code, signal and error message to
`failure.json`, from which `DistributedTrainingError` says which rank died, how, and from which
epoch a rerun resumes (rank 0 writes the usual atomic per-epoch checkpoint, so a rerun resumes as
with one process). Every process of the job ends with its parent: a launcher or worker whose parent
died stops itself.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelspace.config import TrainConfig
from labelspace.data.shards import ShardedImages
from labelspace.model.inference import resolve_device
from labelspace.training.checkpoints import checkpoint_path, load_checkpoint
from labelspace.training.threads import choose_threads

log = logging.getLogger(__name__)

RDZV_ENV = "LABELSPACE_RDZV_ENDPOINT"  # host:port of node 0's rendezvous, needed with train.nodes > 1
KILL_HOOK_ENV = "LABELSPACE_DDP_TEST_KILL"  # "RANK:EPOCH": that rank SIGKILLs itself once EPOCH is checkpointed (tests)
INLINE_ARRAY_BYTES = 64 << 20  # in-memory arrays larger than this go to .npy files, memory-mapped by every rank


class DistributedTrainingError(RuntimeError):
    """A rank of a data-parallel run failed (or the launcher did); the message says which and how."""


# ---------------------------------------------------------------- the job folder


class JobPickler(pickle.Pickler):
    """Pickles a job with its images by reference: a memory-mapped .npy file by its path, shards by
    their folder, so each rank maps them itself and reads only the rows it trains on."""

    def __init__(self, file, folder: Path) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder = folder
        self.saved: dict[int, str] = {}

    def persistent_id(self, obj: Any):
        if isinstance(obj, ShardedImages):
            return ("shards", str(obj.folder), obj.max_open)
        if isinstance(obj, np.memmap) and _whole_npy(obj):
            return ("npy", str(Path(obj.filename).resolve()))
        if isinstance(obj, np.ndarray) and obj.nbytes > INLINE_ARRAY_BYTES:
            if id(obj) not in self.saved:
                path = self.folder / f"array-{len(self.saved)}.npy"
                np.save(path, obj)
                self.saved[id(obj)] = str(path)
            return ("npy", self.saved[id(obj)])
        return None


class JobUnpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        kind, *args = pid
        if kind == "shards":
            return ShardedImages(args[0], max_open=args[1])
        if kind == "npy":
            return np.load(args[0], mmap_mode="r")
        raise pickle.UnpicklingError(f"unknown reference {kind!r} in a labelspace job")


def _whole_npy(array: np.memmap) -> bool:
    """Whether `array` is all of the .npy file it maps (not a view of part of it)."""
    filename = getattr(array, "filename", None)
    if not filename or not str(filename).endswith(".npy") or not Path(filename).is_file():
        return False
    try:
        whole = np.load(filename, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (whole.shape == array.shape and whole.dtype == array.dtype and whole.strides == array.strides
            and whole.offset == array.offset)


def read_job(folder: str | os.PathLike) -> dict[str, Any]:
    with open(Path(folder) / "job.pkl", "rb") as f:
        return JobUnpickler(f).load()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def exit_with_parent(interval: float = 1.0) -> None:
    """Stop this process (SIGTERM, then SIGKILL) when its parent dies: a launcher or a worker never
    outlives the job that started it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="labelspace-parent-watch", daemon=True).start()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the caller's side


def train_distributed(job: dict[str, Any], on_epoch: Callable[[int, dict[str, float]], None] | None) -> dict[str, Any]:
    """`train_model`'s arguments (`job`, all but `on_epoch`) trained on train.devices x train.nodes
    processes (see the module doc). Returns rank 0's result: the weights ("model", a state_dict),
    "history", "resumed_from_epoch", "skipped_images", "threads", "seconds" and "checkpoint" (its
    path or None); a finished checkpoint's without starting any process."""
    started = time.perf_counter()
    spec, config, checkpoint_dir = job["spec"], job["config"], job["checkpoint_dir"]
    processes = config.devices * config.nodes
    device = resolve_device(config.device)
    if device.type == "cuda" and config.devices > torch.cuda.device_count():
        raise ValueError(f"train.devices is {config.devices} (one GPU per process) but this machine has "
                         f"{torch.cuda.device_count()} GPU(s): lower train.devices, or use device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.devices > 1 trains with gloo (cpu) or NCCL (cuda), not on {device.type}")
    if config.nodes > 1 and (not os.environ.get(RDZV_ENV) or checkpoint_dir is None):
        raise ValueError(f"train.nodes is {config.nodes}: set ${RDZV_ENV} to host:port of node 0's rendezvous "
                         "and a train.checkpoint_dir on a filesystem every node shares (docs/scale-out.md)")
    ckpt = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir).resolve()
        ckpt = checkpoint_path(checkpoint_dir, spec, job["loss_config"], config, job["pretrained"],
                               job["weights_path"], job["data_key"])
        finished = _finished(ckpt, config, spec) if job["resume"] else None
        if finished is not None:  # nothing left to train: no processes to start
            return finished
    threads = _worker_threads(device, config.devices)
    job = {**job, "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None}
    root = checkpoint_dir / ".distributed" if checkpoint_dir is not None else None
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.head}-", dir=root))
    try:
        _write_job(folder, job, job["validate"])
        endpoint = os.environ.get(RDZV_ENV) if config.nodes > 1 else f"127.0.0.1:{_free_port()}"
        (folder / "job.json").write_text(json.dumps({
            "nproc_per_node": config.devices, "nnodes": config.nodes, "rdzv_endpoint": endpoint,
            "run_id": uuid.uuid4().hex[:12], "local_addr": "127.0.0.1" if config.nodes == 1 else None,
        }), encoding="utf-8")
        if config.nodes > 1:
            log.info("data-parallel job waiting for %d nodes: on each other node run `%s -m "
                     "labelspace.training.launcher %s` with %s=%s", config.nodes, sys.executable, folder,
                     RDZV_ENV, endpoint)
        log.info("%s: training on %d processes (%d per node, %s, %s)", spec.head, processes, config.devices,
                 "NCCL" if device.type == "cuda" else "gloo", f"{threads} torch threads each"
                 if device.type == "cpu" else "one GPU each")
        _run_launcher(folder, threads, on_epoch, ckpt, config, processes)
        out = torch.load(folder / "result.pt", map_location="cpu", weights_only=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = dict(out["seconds"])
    seconds["processes"] = max(0.0, time.perf_counter() - started - sum(
        v for k, v in seconds.items() if not k.endswith("_cpu")))  # starting and ending the processes
    return {**out, "seconds": seconds, "checkpoint": ckpt}


def _finished(ckpt: Path, config: TrainConfig, spec) -> dict[str, Any] | None:
    """The result of a run whose checkpoint already holds every epoch, or None."""
    if not ckpt.is_file():
        return None
    state = load_checkpoint(ckpt)
    if state["epoch"] < config.epochs:
        return None
    log.info("resuming %s training from %s after epoch %d/%d", spec.head, ckpt, state["epoch"], config.epochs)
    return {"model": state["model"], "history": state["history"], "resumed_from_epoch": state["epoch"],
            "skipped_images": 0, "threads": 0, "seconds": {}, "checkpoint": ckpt}


def _worker_threads(device: torch.device, devices: int) -> int:
    """Torch threads of each worker on a CPU: this process's share of the cores, split between them."""
    if device.type != "cpu":
        return 1
    return max(1, choose_threads() // devices)


def _write_job(folder: Path, job: dict[str, Any], validate) -> None:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            JobPickler(f, folder).dump(job)

    try:
        write_atomic(folder / "job.pkl", write)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        raise TypeError(f"with train.devices > 1 validation runs in rank 0's process, so `validate` must pickle "
                        f"(a module-level function or class instance, like labelspace.training.fit.Validation); "
                        f"{validate!r} does not: {e}") from e


def _run_launcher(folder: Path, threads: int, on_epoch, ckpt: Path | None, config: TrainConfig,
                  processes: int) -> None:
    env = {**os.environ, "LABELSPACE_TORCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "labelspace.training.launcher", str(folder)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    tail: list[str] = []
    forward = threading.Thread(target=_forward_output, args=(proc.stdout, tail), daemon=True)
    forward.start()
    events, offset = folder / "events.jsonl", 0
    try:
        while True:
            finished = proc.poll() is not None
            offset = _read_events(events, offset, on_epoch)
            if finished:
                break
            time.sleep(0.2)
    except BaseException:  # on_epoch raised, or this process is being stopped: stop the job too
        _stop(proc)
        raise
    forward.join(timeout=5)
    if proc.returncode != 0:
        raise DistributedTrainingError(_failure_message(folder, proc.returncode, tail, ckpt, config, processes))


def _forward_output(stream, tail: list[str]) -> None:
    """The job's output (every rank's, through the launcher) onto this process's stderr, where a ZenML
    step's log catches it; the last lines are kept for the error message."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        tail.append(line.rstrip())
        del tail[:-20]
    stream.close()


def _read_events(path: Path, offset: int, on_epoch) -> int:
    """Calls `on_epoch` for each complete line rank 0 appended since `offset`; returns the new offset."""
    if not path.is_file():
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        record = json.loads(line)
        if on_epoch is not None:
            on_epoch(int(record["epoch"]), record)
    return offset + end


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the elastic agent stops its workers on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _failure_message(folder: Path, returncode: int, tail: list[str], ckpt: Path | None, config: TrainConfig,
                     processes: int) -> str:
    failures = []
    path = folder / "failure.json"
    if path.is_file():
        failures = json.loads(path.read_text(encoding="utf-8"))["failures"]
    # The root cause first: a rank killed by a signal or one that raised, before the ranks the launcher
    # then stopped (SIGTERM) or that lost their peers.
    failures.sort(key=lambda f: (f["signal"] == "SIGTERM", "by peer" in f["message"], f["exitcode"] >= 0,
                                 f["timestamp"], f["rank"]))
    if failures:
        parts = []
        for f in failures:
            how = (f"was killed by {f['signal']} (exit code {f['exitcode']})" if f["exitcode"] < 0
                   else f"exited with code {f['exitcode']}")
            detail = f["message"].strip().splitlines()[-1] if f["message"].strip() and f["exitcode"] >= 0 else ""
            parts.append(f"rank {f['rank']} (local rank {f['local_rank']}, pid {f['pid']}) {how}"
                         + (f": {detail[:300]}" if detail else ""))
        what = "; ".join(parts)
        if all("by peer" in f["message"] or "Connection" in f["message"] for f in failures):
            what += " (it lost a peer: another rank ended first, its output is above)"
    else:
        what = f"the launcher exited with code {returncode}" + (f": {tail[-1]}" if tail else "")
    epoch = 0
    if ckpt is not None and ckpt.is_file():
        try:
            epoch = int(load_checkpoint(ckpt)["epoch"])
        except Exception:  # noqa: BLE001 - a message about a failure must not fail itself
            epoch = 0
    if ckpt is None:
        resume = "There is no checkpoint (no checkpoint_dir): a rerun starts from scratch"
    elif epoch:
        resume = f"A rerun resumes from the last checkpoint, epoch {epoch} of {config.epochs} ({ckpt})"
    else:
        resume = "No epoch was checkpointed yet: a rerun starts from epoch 1"
    return f"data-parallel training on {processes} processes failed: {what}. {resume}."
