"""One rank of data-parallel training: `python -m labelspace.training.worker JOB`, started once per
process by torch's elastic launcher (labelspace.training.distributed, which also says why).

The same training as `labelspace.training.loop.train_model`, split across WORLD_SIZE processes so
that the result compares with one process:
- every rank draws the same epoch order, mirror flags and sampled negatives (the same seeded
  generators, consumed as one process consumes them); global batch b is perm[b*B:(b+1)*B] with
  B = train.batch_size, and rank r trains on rows r, r+W, r+2W... of it (a DistributedSampler-style
  split, without its padding), reading only those images from the memory-mapped arrays or shards;
- each rank's loss is weighted by its share of the global batch (images with a positive for the
  rank term, all images for the threshold and BCE terms), so DDP's gradient average is the gradient
  of the global batch's loss; the epoch's loss is summed over ranks once per epoch;
- with a frozen backbone each rank extracts the features of 1/W of the images and all gather them;
- a trained backbone's BatchNorm uses each rank's rows (per-rank statistics; DDP broadcasts rank 0's
  running statistics), or the global batch's on CUDA, where it becomes SyncBatchNorm;
- dropout draws differ from one process (each rank draws for its rows, seeded by seed, epoch, rank).
Rank 0 alone validates, writes the per-epoch checkpoint (the format and fingerprint of one process:
a run resumes on any number of processes), appends each epoch's record to the job's events.jsonl
and writes result.pt.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from labelspace.model.spec import build_model
from labelspace.training.distributed import KILL_HOOK_ENV, exit_with_parent, read_job
from labelspace.training.loop import (
    _CheckpointWriter,
    _Clock,
    amp_dtype,
    checkpoint_path,
    checkpoint_state,
    extract_features,
    make_scheduler,
    resolve_device,
    restore_checkpoint,
    seed_everything,
    to_input,
)
from labelspace.training.loss import bce_loss, label_space_terms, loss_scale, sample_negatives, uses_negatives
from labelspace.training.runtime import quiet_gc, steady_heap
from labelspace.training.threads import cpu_threads

log = logging.getLogger("labelspace.training.worker")
PEER_LOSS_GRACE_S = 5.0  # ten of the launcher's monitor intervals


class _Net(torch.nn.Module):
    """What DDP wraps: the model's forward from images or from cached features (DDP syncs gradients
    only for calls through its own forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, from_features: bool) -> torch.Tensor:
        return self.model.from_features(x) if from_features else self.model(x)


def shard_loss(spec, config, model, outputs, y, W, negatives, y_global: torch.Tensor, weight: float, scale: float):
    """This rank's part of the global batch's loss (`compute_loss` of labelspace.training.loop, each
    term scaled by this rank's share of what it averages over), and its skipped images. Summed over
    the ranks it is the loss one process computes on the whole batch."""
    n_global = len(y_global)
    if spec.head != "labelspace":
        return bce_loss(outputs.float(), y) * (weight * len(y) / n_global), 0
    distances = model.distances_from_output(outputs.float(), W)
    ranked, skipped, dense = label_space_terms(config, distances, y, negatives, scale)
    valid_global = int((y_global > 0).any(dim=1).sum())
    loss = (ranked * (weight * (len(y) - skipped) / max(valid_global, 1))
            + dense * (weight * len(y) / n_global))
    return loss, skipped if weight else 0


def _gather_features(model, images, train_idx, device, batch_size, rank, world, comm, mirrored) -> torch.Tensor:
    """Backbone features of every training image: this rank's contiguous 1/W, then an all-gather."""
    chunk = -(-len(train_idx) // world)
    local = extract_features(model, images, train_idx[rank * chunk:(rank + 1) * chunk], device, batch_size,
                             mirrored=mirrored, desc="mirrored features" if mirrored else "features")
    padded = torch.zeros(chunk, model.backbone.num_features)
    padded[:len(local)] = local
    parts = [torch.empty(chunk, model.backbone.num_features, device=comm) for _ in range(world)]
    dist.all_gather(parts, padded.to(comm))
    return torch.cat(parts)[:len(train_idx)].cpu()


def train_rank(job: dict, folder: Path, rank: int, world: int, device: torch.device) -> dict | None:
    spec, loss_config, config = job["spec"], job["loss_config"], job["config"]
    images, train_idx, label_vectors = job["images"], job["train_idx"], job["label_vectors"]
    pretrained, weights_path, validate = job["pretrained"], job["weights_path"], job["validate"]
    clock, setup_start = _Clock(), time.perf_counter()
    comm = device if device.type == "cuda" else torch.device("cpu")  # NCCL reduces CUDA tensors
    seed_everything(config.seed)
    model = build_model(spec, pretrained=pretrained, weights_path=weights_path).to(device)
    W = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)
    if spec.head == "labelspace" and spec.center_words:
        model.set_word_center(W)
    scale = loss_scale(model, W, loss_config.units) if spec.head == "labelspace" else 1.0
    if device.type == "cuda" and not spec.freeze_backbone:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, global batch statistics
    y_all = torch.as_tensor(job["targets"], dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    B = config.batch_size
    scheduler = make_scheduler(optimizer, config, max(1, -(-len(train_idx) // B)))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype(device) == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    order_rng = np.random.default_rng(config.seed)
    history, start_epoch, ckpt = [], 0, None
    if job["checkpoint_dir"] is not None:
        ckpt = checkpoint_path(job["checkpoint_dir"], spec, loss_config, config, pretrained, weights_path,
                               job["data_key"])
        if job["resume"] and ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            history, start_epoch = restore_checkpoint(state, model, optimizer, scheduler, scaler, generator,
                                                      order_rng)
            if rank == 0:
                log.info("resuming %s training from %s after epoch %d/%d", spec.head, ckpt, start_epoch,
                         config.epochs)
    net = torch.nn.parallel.DistributedDataParallel(
        _Net(model), device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=not spec.freeze_backbone)
    clock.add("setup", setup_start)

    cached = None
    if job["features"] is not None:
        features = job["features"]
        cached = features if config.mirror else (features[0], None)
    elif spec.freeze_backbone and start_epoch < config.epochs:
        with clock("features"):
            args = (model, images, train_idx, device, config.feature_batch_size, rank, world, comm)
            cached = (_gather_features(*args, mirrored=False),
                      _gather_features(*args, mirrored=True) if config.mirror else None)

    hook = os.environ.get(KILL_HOOK_ENV, "")
    kill_rank, kill_epoch = (int(v) for v in hook.split(":")) if hook else (-1, -1)
    writer = _CheckpointWriter(ckpt) if ckpt is not None and rank == 0 else None
    n = len(train_idx)
    for epoch in range(start_epoch, config.epochs):
        epoch_start, epoch_cpu = time.perf_counter(), time.process_time()
        if rank > 0:  # dropout: other draws than rank 0's, the same ones on a rerun
            torch.manual_seed(config.seed * 1_000_003 + epoch * 1009 + rank)
        model.train()
        if spec.freeze_backbone:
            model.backbone.eval()
        perm = order_rng.permutation(n)
        mirror_flags = order_rng.random(n) < 0.5 if config.mirror else np.zeros(n, bool)
        total, skipped = 0.0, 0
        for start in range(0, n, B):
            batch = perm[start:start + B]  # the global batch, positions within train_idx
            y_global = y_all[train_idx[batch]]
            # Drawn for the whole batch on every rank, as one process draws them.
            negatives = (sample_negatives(y_global, loss_config.n_negatives, generator)
                         if spec.head == "labelspace" and uses_negatives(loss_config) else None)
            rows, weight = np.arange(rank, len(batch), world), 1.0
            if len(rows) == 0:  # a last batch smaller than the world: a row that counts for nothing
                rows, weight = np.arange(1), 0.0
            pos = batch[rows]
            y = y_global[rows].to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=use_amp):
                if cached is not None:
                    feats, flipped = cached
                    x = feats[pos]
                    if flipped is not None:
                        x = torch.where(torch.from_numpy(mirror_flags[pos]).unsqueeze(1), flipped[pos], x)
                    outputs = net(x.to(device), from_features=True)
                else:
                    outputs = net(to_input(images[train_idx[pos]], model, device, mirror_flags[pos]),
                                  from_features=False)
                loss, n_skipped = shard_loss(spec, loss_config, model, outputs, y, W,
                                             None if negatives is None else negatives[rows].to(device),
                                             y_global, weight, scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * world).backward()  # DDP averages over the ranks: the sum of the shares
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            total += loss.item() * len(batch)
            skipped += n_skipped
        sums = torch.tensor([total, skipped], dtype=torch.float64, device=comm)
        dist.all_reduce(sums)
        clock.add("epochs", epoch_start, epoch_cpu)
        record_ = {"epoch": epoch + 1, "loss": sums[0].item() / max(n, 1), "lr": scheduler.get_last_lr()[0],
                   "skipped_images": int(sums[1].item())}
        if rank == 0:
            if validate is not None:
                with clock("validation"):
                    record_.update(validate(model, epoch + 1))
            log.info("%s epoch %d/%d (%d processes): %s", spec.head, epoch + 1, config.epochs, world,
                     ", ".join(f"{k}={v:.4g}" for k, v in record_.items() if k != "epoch"))
            with clock("logging"), open(folder / "events.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record_) + "\n")
        history.append(record_)
        if writer is not None:
            with clock("checkpoints"):
                writer.write(checkpoint_state(model, optimizer, scheduler, scaler, generator, order_rng, history,
                                              epoch + 1, spec))
        if epoch + 1 == kill_epoch:  # test hook: a worker dies once this epoch is on disk
            if writer is not None:
                writer.close()
            dist.barrier()
            if rank == kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
    if writer is not None:
        with clock("checkpoints"):
            writer.close()
    if rank != 0:
        return None
    return {"model": model.state_dict(), "history": history, "resumed_from_epoch": start_epoch,
            "skipped_images": int(history[-1]["skipped_images"]) if start_epoch < config.epochs else 0,
            "seconds": clock.seconds}


def worker_device(name: str, local_rank: int) -> torch.device:
    """CPU, or the GPU of this local rank (train.device cuda:N picks the first rank's GPU only with one process)."""
    device = resolve_device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def run(folder: str | os.PathLike) -> None:
    """One rank's whole job: the entry point the launcher forks (labelspace.training.distributed)."""
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
    steady_heap()
    try:
        with cpu_threads(device) as threads, quiet_gc():
            out = train_rank(job, folder, rank, world, device)
        if out is not None:
            out["threads"] = threads
            tmp = folder / f".result.{os.getpid()}.tmp"
            torch.save(out, tmp)
            os.replace(tmp, folder / "result.pt")
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
