"""Training of the label-space model and of its BCE baseline: one loop, in one process or in N.

One loop serves both heads, both backbone modes, and both one process and the N processes of a
data-parallel run (train.devices x train.nodes > 1). It takes nanoGPT's road rather than
torchtune's: one loop with `if ddp:` at the few places where processes differ, and a master
process (rank 0) that alone validates, logs, calls `on_epoch` and writes the checkpoint. A second,
distributed copy of the loop had to change with every change to this one; the differences are
small enough to read inline:
- every process draws the same epoch order, mirror flags and sampled negatives (the same seeded
  generators, consumed as one process consumes them); global batch b is perm[b*B:(b+1)*B] with
  B = train.batch_size, and rank r trains on rows r, r+W, r+2W... of it (a DistributedSampler-style
  split, without its padding), reading only those images from the memory-mapped arrays or shards.
  One process is rank 0 of 1: all rows, the same code;
- each rank's loss is its share of the global batch's (`training.loss.shard_loss`), so DDP's
  gradient average is the gradient of the global batch's loss; the epoch's loss is summed over
  ranks once per epoch. A whole batch's share is `compute_loss`'s value, bit for bit;
- with a frozen backbone each rank extracts the features of 1/W of the images and all gather them;
- a trained backbone's BatchNorm uses each rank's rows (per-rank statistics; DDP broadcasts rank 0's
  running statistics), or the global batch's on CUDA, where it becomes SyncBatchNorm;
- dropout draws differ from one process (each rank draws for its rows, seeded by seed, epoch, rank).
Starting, watching and ending the processes is labelspace.training.distributed's work (the caller's
side) and labelspace.training.worker's (each rank's); the checkpoint format and fingerprint are
labelspace.training.checkpoints', the same for any number of processes, so a run resumes on any.

With a frozen backbone, features are computed once (and once more for the mirrored images) and only
the head trains; otherwise images go through the whole network, in mixed precision on a GPU. A
checkpoint is written after every epoch (on a background thread, while the next epoch trains); a
restarted run with the same fingerprint resumes from it. On a CPU, training and feature passes run at
`training.threads.cpu_threads()`, recorded with every run (`TrainResult.threads`). On a GPU: bfloat16
autocast where supported (else float16 with loss scaling), channels_last, cuDNN autotuning, and the
input pipeline of labelspace.model.inference. On either, the process's heap is made steady and its
garbage collector quiet (`training.runtime`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from labelspace.config import LossConfig, TrainConfig
from labelspace.model.inference import extract_features, resolve_device, to_input
from labelspace.model.spec import ModelSpec, build_model
from labelspace.progress import progress, progress_mode
from labelspace.training.checkpoints import (
    CheckpointWriter,
    checkpoint_path,
    checkpoint_state,
    load_checkpoint,
    restore_checkpoint,
)
from labelspace.training.distributed import train_distributed
from labelspace.training.loss import loss_scale, sample_negatives, shard_loss, uses_negatives
from labelspace.training.runtime import quiet_gc, steady_heap
from labelspace.training.threads import cpu_threads

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]
    resumed_from_epoch: int
    checkpoint: Path | None
    skipped_images: int
    threads: int = 0  # torch threads it trained at (CPU); the count fixes the order of float sums
    # Wall seconds by phase: setup (model, optimizer, resume), features (frozen backbone), epochs
    # (forward, backward, step) and epochs_cpu (their CPU seconds), validation (the `validate`
    # callback), checkpoints, logging (`on_epoch`); with N processes also processes (starting and
    # ending them).
    seconds: dict[str, float] = field(default_factory=dict)
    processes: int = 1  # train.devices x train.nodes: data-parallel ranks it trained on


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel job, made by labelspace.training.worker once the process
    group is up: its rank of `world`, the device collectives reduce on (the GPU with NCCL, the CPU with
    gloo), and a test's request that one rank die once an epoch is checkpointed (kill_rank, kill_epoch;
    -1 for none). The loop takes None for a job of one process."""

    rank: int
    world: int
    comm: torch.device
    kill_rank: int = -1
    kill_epoch: int = -1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision on CUDA: bfloat16 where the GPU has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_decay == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.lr_decay == "step":  # paper-style: divide by 10 at 2/3 of the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, 2 * total // 3), gamma=0.1)
    if config.lr_decay == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown train.lr_decay {config.lr_decay!r}: use cosine, step or none")


class Clock:
    """Wall seconds by phase; `with clock("epochs"):` adds the block's time to that phase. The
    process's CPU seconds of the epochs go beside them (`epochs_cpu`): on a machine shared with other
    jobs the wall time moves with their load, the CPU time of a single-threaded run much less."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, since: float, cpu_since: float | None = None) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - since
        if cpu_since is not None:
            self.seconds[f"{phase}_cpu"] = self.seconds.get(f"{phase}_cpu", 0.0) + time.process_time() - cpu_since

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, start)


def train_model(
    spec: ModelSpec,
    loss_config: LossConfig,
    config: TrainConfig,
    images: np.ndarray,
    targets: np.ndarray,
    train_idx: np.ndarray,
    label_vectors: np.ndarray,
    *,
    pretrained: bool = True,
    weights_path: str | None = None,
    data_key: str = "",
    resume: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    features: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> TrainResult:
    """Train one head on images[train_idx] (uint8 N,H,W,3) with 0/1 targets (N, L).

    label_vectors (L, d) are the word vectors W of the training labels. Each finished epoch is
    checkpointed; a run with the same spec, configs, weights and `data_key` resumes where it stopped
    (a finished one returns its weights without training), unless `resume` is False.
    With a frozen backbone, `features` = (features, mirrored features or None) of images[train_idx]
    from `extract_features` skips that pass (a study trains many heads on the same features).
    On a CPU it runs at `cpu_threads()`, `validate` included. With train.devices x train.nodes > 1
    it trains data-parallel in that many processes (labelspace.training.distributed); `validate`
    must then be picklable (it runs in rank 0's process), `on_epoch` runs here.
    """
    if label_vectors.shape != (spec.n_labels, spec.d):
        raise ValueError(f"label vectors {label_vectors.shape} do not match the spec's {spec.n_labels} labels of d={spec.d}")
    if features is not None:
        if not spec.freeze_backbone:
            raise ValueError("precomputed features need model.freeze_backbone: true (a trained backbone changes them)")
        if len(features[0]) != len(train_idx):
            raise ValueError(f"{len(features[0])} precomputed feature rows for {len(train_idx)} training images")
    job = {"spec": spec, "loss_config": loss_config, "config": config, "images": images, "targets": targets,
           "train_idx": train_idx, "label_vectors": label_vectors, "pretrained": pretrained,
           "weights_path": weights_path, "data_key": data_key, "resume": resume, "checkpoint_dir": checkpoint_dir,
           "validate": validate, "features": features}
    device = resolve_device(config.device)
    processes = config.devices * config.nodes
    if processes == 1:
        return train_process(**job, device=device, on_epoch=on_epoch)
    out = train_distributed(job, on_epoch)  # rank 0's result, or a finished checkpoint's
    model = build_model(spec, pretrained=pretrained, weights_path=weights_path)
    model.load_state_dict(out["model"])
    return TrainResult(model=model.to(device).eval(), history=out["history"],
                       resumed_from_epoch=out["resumed_from_epoch"], checkpoint=out["checkpoint"],
                       skipped_images=out["skipped_images"], threads=out["threads"], seconds=out["seconds"],
                       processes=processes)


def train_process(spec, loss_config, config, images, targets, train_idx, label_vectors, *, device: torch.device,
                  pretrained, weights_path, data_key, resume, checkpoint_dir, on_epoch, validate, features,
                  ranks: Ranks | None = None) -> TrainResult:
    """The loop in this process: the whole run, or one rank of a data-parallel one (`ranks`)."""
    steady_heap()  # buffers reused from the heap, not faulted in afresh each step (training.runtime)
    with cpu_threads(device) as threads, quiet_gc():
        result = _train(spec, loss_config, config, images, targets, train_idx, label_vectors, device,
                        pretrained=pretrained, weights_path=weights_path, data_key=data_key, resume=resume,
                        checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, validate=validate, features=features,
                        ranks=ranks)
    result.threads = threads
    return result


class _Forward(torch.nn.Module):
    """The model's forward from images or from cached features, as one module: what DDP wraps (it
    syncs gradients only for calls through its own forward)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, from_features: bool) -> torch.Tensor:
        return self.model.from_features(x) if from_features else self.model(x)


def _train(spec, loss_config, config, images, targets, train_idx, label_vectors, device, *, pretrained,
           weights_path, data_key, resume, checkpoint_dir, on_epoch, validate, features, ranks) -> TrainResult:
    ddp = ranks is not None
    rank, world = (ranks.rank, ranks.world) if ddp else (0, 1)
    master = rank == 0  # validates, logs, calls on_epoch and writes the checkpoint
    clock, setup_start = Clock(), time.perf_counter()
    seed_everything(config.seed)
    model = build_model(spec, pretrained=pretrained, weights_path=weights_path).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
        model = model.to(memory_format=torch.channels_last)
    W = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)
    if spec.head == "labelspace" and spec.center_words:
        model.set_word_center(W)
    scale = loss_scale(model, W, loss_config.units) if spec.head == "labelspace" else 1.0
    if ddp and device.type == "cuda" and not spec.freeze_backbone:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters, global batch statistics
    y_all = torch.as_tensor(targets, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused: one kernel for every parameter's update instead of a loop over ~200 tensors (2% of a CPU step).
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    n, B = len(train_idx), config.batch_size
    scheduler = make_scheduler(optimizer, config, max(1, -(-n // B)))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype(device) == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    order_rng = np.random.default_rng(config.seed)

    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = checkpoint_path(checkpoint_dir, spec, loss_config, config, pretrained, weights_path, data_key)
        if resume and ckpt_path.is_file():
            history, start_epoch = restore_checkpoint(load_checkpoint(ckpt_path), model, optimizer, scheduler,
                                                      scaler, generator, order_rng)
            if master:
                log.info("resuming %s training from %s after epoch %d/%d", spec.head, ckpt_path, start_epoch,
                         config.epochs)
    net = _Forward(model)
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=not spec.freeze_backbone)
    clock.add("setup", setup_start)

    cached = None
    if features is not None:
        cached = features if config.mirror else (features[0], None)
    elif spec.freeze_backbone and start_epoch < config.epochs:
        # Frozen backbone: one pass over the images (two with mirroring) instead of one per epoch.
        with clock("features"):
            args = (model, images, train_idx, device, config.feature_batch_size, ranks)
            cached = (_features(*args, mirrored=False), _features(*args, mirrored=True) if config.mirror else None)

    skipped = 0
    writer = CheckpointWriter(ckpt_path) if ckpt_path is not None and master else None
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
        bar = progress(range(0, n, B), desc=f"{spec.head} epoch {epoch + 1}/{config.epochs}", unit="batch",
                       disable=progress_mode() != "bar" or not master)
        for start in bar:
            batch = perm[start : start + B]  # the global batch, positions within train_idx
            y_batch = y_all[train_idx[batch]]
            # Drawn for the whole batch in every process, as one process draws them.
            negatives = (sample_negatives(y_batch, loss_config.n_negatives, generator)
                         if spec.head == "labelspace" and uses_negatives(loss_config) else None)
            rows, weight = np.arange(rank, len(batch), world), 1.0
            if len(rows) == 0:  # a last batch smaller than the world: a row that counts for nothing
                rows, weight = np.arange(1), 0.0
            pos = batch[rows]
            y = y_batch[rows].to(device)
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
                                             y_batch, weight, scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * world).backward()  # DDP averages over the ranks: the sum of the shares
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = loss.item()  # one device sync per step
            total += value * len(batch)
            skipped += n_skipped
            bar.set_postfix(loss=f"{value:.4f}")
        if ddp:
            sums = torch.tensor([total, skipped], dtype=torch.float64, device=ranks.comm)
            dist.all_reduce(sums)
            total, skipped = sums[0].item(), int(sums[1].item())
        clock.add("epochs", epoch_start, epoch_cpu)
        record = {"epoch": epoch + 1, "loss": total / max(n, 1), "lr": scheduler.get_last_lr()[0],
                  "skipped_images": skipped}
        if master and validate is not None:
            with clock("validation"):
                record.update(validate(model, epoch + 1))
        history.append(record)
        if master:
            log.info("%s epoch %d/%d%s: %s", spec.head, epoch + 1, config.epochs,
                     f" ({world} processes)" if ddp else "",
                     ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
            if on_epoch is not None:
                with clock("logging"):
                    on_epoch(epoch + 1, record)
        if writer is not None:
            with clock("checkpoints"):
                writer.write(checkpoint_state(model, optimizer, scheduler, scaler, generator, order_rng, history,
                                              epoch + 1, spec))
        if ddp and epoch + 1 == ranks.kill_epoch:  # a test's hook: a rank dies once this epoch is on disk
            if writer is not None:
                writer.close()
            dist.barrier()
            if rank == ranks.kill_rank:
                os.kill(os.getpid(), signal.SIGKILL)
    if writer is not None:
        with clock("checkpoints"):
            writer.close()
    model.eval()
    return TrainResult(model=model, history=history, resumed_from_epoch=start_epoch, checkpoint=ckpt_path,
                       skipped_images=skipped, seconds=clock.seconds, processes=world)


def _features(model, images, train_idx, device, batch_size, ranks: Ranks | None, mirrored: bool) -> torch.Tensor:
    """Backbone features of every training image; with N processes each computes a contiguous 1/N of
    them and all gather the rest."""
    desc = "mirrored features" if mirrored else "features"
    if ranks is None:
        return extract_features(model, images, train_idx, device, batch_size, mirrored=mirrored, desc=desc)
    chunk = -(-len(train_idx) // ranks.world)
    local = extract_features(model, images, train_idx[ranks.rank * chunk:(ranks.rank + 1) * chunk], device,
                             batch_size, mirrored=mirrored, desc=desc)
    padded = torch.zeros(chunk, model.backbone.num_features)
    padded[:len(local)] = local
    parts = [torch.empty(chunk, model.backbone.num_features, device=ranks.comm) for _ in range(ranks.world)]
    dist.all_gather(parts, padded.to(ranks.comm))
    return torch.cat(parts)[:len(train_idx)].cpu()
