"""One rank of data-parallel training: `labelspace.training.worker.run(JOB)`, forked once per process
by torch's elastic launcher (labelspace.training.launcher; labelspace.training.distributed says why).

It joins the process group (gloo on the CPU, NCCL on CUDA, one GPU per local rank) and runs the one
training loop, `labelspace.training.loop.train_process`, as its rank: the loop's module doc says what
a rank does differently from one process. Rank 0 appends each epoch's record to the job's
events.jsonl (the caller calls `on_epoch` with them) and writes result.pt. A rank that loses a peer
waits before failing, so that the launcher names the rank that died.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from labelspace.model.inference import resolve_device
from labelspace.training.distributed import KILL_HOOK_ENV, exit_with_parent, read_job, write_atomic
from labelspace.training.loop import Ranks, train_process

log = logging.getLogger("labelspace.training.worker")
PEER_LOSS_GRACE_S = 5.0  # ten of the launcher's monitor intervals


def worker_device(name: str, local_rank: int) -> torch.device:
    """CPU, or the GPU of this local rank (train.device cuda:N picks the first rank's GPU only with one process)."""
    device = resolve_device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def run(folder: str | os.PathLike) -> None:
    """One rank's whole job: the entry point the launcher forks (labelspace.training.launcher)."""
    folder = Path(folder)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    exit_with_parent()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, force=True,
                        format=f"[rank {rank}] %(name)s: %(message)s")
    job = read_job(folder)
    device = worker_device(job["config"].device, int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Rank 0 validates alone while the others wait in the next collective: a generous timeout.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    hook = os.environ.get(KILL_HOOK_ENV, "")
    kill_rank, kill_epoch = (int(v) for v in hook.split(":")) if hook else (-1, -1)
    ranks = Ranks(rank=rank, world=world, comm=device if device.type == "cuda" else torch.device("cpu"),
                  kill_rank=kill_rank, kill_epoch=kill_epoch)  # NCCL reduces CUDA tensors

    def append_event(epoch: int, record_: dict[str, float]) -> None:
        with open(folder / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record_) + "\n")

    try:
        result = train_process(**job, device=device, on_epoch=append_event, ranks=ranks)
        if rank == 0:
            out = {"model": result.model.state_dict(), "history": result.history,
                   "resumed_from_epoch": result.resumed_from_epoch, "skipped_images": result.skipped_images,
                   "seconds": result.seconds, "threads": result.threads}
            write_atomic(folder / "result.pt", lambda path: torch.save(out, path))
        dist.barrier()
    except RuntimeError as e:
        if lost_peer(e):
            # Another rank died: this one waits before failing, so that the launcher (which reports the
            # first process it sees end) names the rank that died, not the ones that lost it.
            log.error("rank %d lost a peer (%s); waiting %.0f s for the launcher", rank, str(e)[:200],
                      PEER_LOSS_GRACE_S)
            time.sleep(PEER_LOSS_GRACE_S)
        raise
    finally:
        dist.destroy_process_group()


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process went away (gloo, NCCL)."""
    text = str(error)
    return any(s in text for s in ("by peer", "Connection", "Broken pipe", "NCCL communicator", "Socket Timeout"))


@record
def main(argv: list[str] | None = None) -> int:
    """`python -m labelspace.training.worker JOB`: the same as a binary (torchrun) entry point."""
    run((argv or sys.argv[1:])[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
