"""Training of the label-space model and of its BCE baseline, with per-epoch checkpoints.

One loop serves both heads. With a frozen backbone, features are computed once (and once more for
the mirrored images) and only the head trains; otherwise images go through the whole network,
in mixed precision on a GPU. A checkpoint (model, optimizer, scheduler, RNG states, history) is
written atomically after every epoch (on a background thread, while the next epoch trains); a
restarted run with the same fingerprint resumes from it.

On a CPU, training and feature passes run at `training.threads.cpu_threads()`; the count is
recorded with every run (`TrainResult.threads`). On a GPU: bfloat16 autocast where supported (else
float16 with loss scaling), channels_last, cuDNN autotuning, pinned non-blocking copies of the
uint8 batches, converted and mirrored on the device, and larger inference batches. On either, the
process's heap is made steady and its garbage collector quiet (`training.runtime`).

About 430 lines: the one loop both heads and both backbone modes train through, with its resume,
checkpoint and device handling, is easier to check in one file than spread over several.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelspace.config import LossConfig, TrainConfig
from labelspace.model.networks import LabelSpaceModel
from labelspace.model.spec import ModelSpec, build_model
from labelspace.progress import progress, progress_mode
from labelspace.training.loss import bce_loss, label_space_terms, loss_scale, sample_negatives, uses_negatives
from labelspace.training.runtime import quiet_gc, steady_heap
from labelspace.training.threads import cpu_threads

log = logging.getLogger(__name__)

def fingerprint(spec: ModelSpec, loss: LossConfig, train: TrainConfig, pretrained: bool,
                weights_path: str | None, data_key: str) -> str:
    """Everything the trained weights depend on: a checkpoint resumes only a run with the same one.
    Where checkpoints go and the feature batch size change no weight, so they are left out; so are
    `devices` and `nodes`: the processes split the same global batches with the same random draws
    (labelspace.training.worker), so a checkpoint resumes on any number of them."""
    train_fields = {k: v for k, v in asdict(train).items()
                    if k not in ("checkpoint_dir", "feature_batch_size", "devices", "nodes")}
    blob = json.dumps({"spec": asdict(spec), "loss": asdict(loss), "train": train_fields, "pretrained": pretrained,
                       "weights_path": weights_path, "data": data_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def amp_dtype(device: torch.device) -> torch.dtype:
    """Mixed precision on CUDA: bfloat16 where the GPU has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16


def to_input(batch: np.ndarray, model: torch.nn.Module, device: torch.device, mirror: np.ndarray | None = None):
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W); rows flagged in `mirror` are flipped. On a GPU
    the uint8 batch is copied from pinned memory without blocking, converted and mirrored there, and
    handed over channels_last (the layout cuDNN's convolutions prefer)."""
    if device.type == "cuda":
        pinned = torch.from_numpy(np.ascontiguousarray(batch)).pin_memory()
        x = pinned.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    if mirror is not None and mirror.any():
        flip = torch.from_numpy(mirror).to(device)
        x[flip] = x[flip].flip(-1)
    mean = torch.tensor(model.backbone.input_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.backbone.input_std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def extract_features(
    model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, device: torch.device,
    batch_size: int = 128, mirrored: bool = False, desc: str = "features",
) -> torch.Tensor:
    """Backbone features (N, F) of images[indices], in eval mode, on the CPU (at `cpu_threads()`)."""
    model.backbone.eval()
    out = []
    if device.type == "cuda":  # inference holds no activations for backward: larger batches fill a GPU
        batch_size = max(batch_size, 512)
    flags = np.ones(batch_size, dtype=bool) if mirrored else None
    # Per-batch bars only on a terminal: a log gets the one line per epoch that train_model writes.
    with cpu_threads(device):
        for start in progress(range(0, len(indices), batch_size), desc=desc, unit="batch",
                              disable=progress_mode() != "bar"):
            idx = indices[start : start + batch_size]
            x = to_input(images[idx], model, device, flags[: len(idx)] if flags is not None else None)
            out.append(model.backbone(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.backbone.num_features)


def compute_loss(spec: ModelSpec, config: LossConfig, model, outputs, targets, W, generator,
                 scale: float | None = None) -> tuple[torch.Tensor, int]:
    """The head's loss on a batch and the images it skipped. `scale` is `loss_scale(model, W, config.units)`;
    a loop over many batches computes it once and passes it (it depends on the words only)."""
    if spec.head == "labelspace":
        distances = model.distances_from_output(outputs.float(), W)
        if scale is None:
            scale = loss_scale(model, W, config.units)
        negatives = sample_negatives(targets, config.n_negatives, generator) if uses_negatives(config) else None
        ranked, skipped, dense = label_space_terms(config, distances, targets, negatives, scale)
        return ranked + dense, skipped
    return bce_loss(outputs.float(), targets), 0


def make_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_decay == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.lr_decay == "step":  # paper-style: divide by 10 at 2/3 of the run
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, 2 * total // 3), gamma=0.1)
    if config.lr_decay == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown train.lr_decay {config.lr_decay!r}: use cosine, step or none")


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # per process: two runs never write one file
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


class _CheckpointWriter:
    """Writes each epoch's checkpoint on a background thread while the next epoch trains: the state
    is copied on the training thread first (tensors cloned: a few ms for EfficientNet-Lite0 and its
    Adam moments), then serialised and written atomically. One write at a time; `close()` waits for
    the last one and raises its error, so a finished `train_model` has its checkpoint on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, state: dict[str, Any]) -> None:
        self.close()
        snapshot = copy.deepcopy(state)

        def save() -> None:
            try:
                _save_checkpoint(self.path, snapshot)
            except BaseException as e:  # reported by close(), on the training thread
                self._error = e

        self._thread = threading.Thread(target=save, name="labelspace-checkpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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
    # callback), checkpoints, logging (`on_epoch`).
    seconds: dict[str, float] = field(default_factory=dict)
    processes: int = 1  # train.devices x train.nodes: data-parallel ranks it trained on


def checkpoint_path(checkpoint_dir: str | os.PathLike, spec: ModelSpec, loss: LossConfig, train: TrainConfig,
                    pretrained: bool, weights_path: str | None, data_key: str) -> Path:
    return Path(checkpoint_dir) / f"{spec.head}-{fingerprint(spec, loss, train, pretrained, weights_path, data_key)}.pt"


def checkpoint_state(model, optimizer, scheduler, scaler, generator, order_rng, history, epoch, spec) -> dict[str, Any]:
    """What a checkpoint holds after `epoch` finished epochs (one format for one process and many)."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "generator": generator.get_state(), "order_rng": order_rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "history": history, "epoch": epoch, "spec": asdict(spec)}


def restore_checkpoint(state, model, optimizer, scheduler, scaler, generator, order_rng) -> tuple[list, int]:
    """Load a `checkpoint_state` into the training objects; returns its history and epoch."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator"])
    order_rng.bit_generator.state = state["order_rng"]
    torch.set_rng_state(state["torch_rng"])
    return state["history"], state["epoch"]


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
    if config.devices * config.nodes > 1:
        from labelspace.training.distributed import train_distributed

        return train_distributed(spec, loss_config, config, images, targets, train_idx, label_vectors,
                                 pretrained=pretrained, weights_path=weights_path, data_key=data_key, resume=resume,
                                 checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, validate=validate,
                                 features=features)
    device = resolve_device(config.device)
    steady_heap()  # buffers reused from the heap, not faulted in afresh each step (training.runtime)
    with cpu_threads(device) as threads, quiet_gc():
        result = _train(spec, loss_config, config, images, targets, train_idx, label_vectors, device,
                        pretrained=pretrained, weights_path=weights_path, data_key=data_key, resume=resume,
                        checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, validate=validate, features=features)
    result.threads = threads
    return result


class _Clock:
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


def _train(spec, loss_config, config, images, targets, train_idx, label_vectors, device, *, pretrained,
           weights_path, data_key, resume, checkpoint_dir, on_epoch, validate, features) -> TrainResult:
    clock, setup_start = _Clock(), time.perf_counter()
    seed_everything(config.seed)
    if label_vectors.shape != (spec.n_labels, spec.d):
        raise ValueError(f"label vectors {label_vectors.shape} do not match the spec's {spec.n_labels} labels of d={spec.d}")
    model = build_model(spec, pretrained=pretrained, weights_path=weights_path).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
        model = model.to(memory_format=torch.channels_last)
    W = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)
    if spec.head == "labelspace" and spec.center_words:
        model.set_word_center(W)
    scale = loss_scale(model, W, loss_config.units) if spec.head == "labelspace" else 1.0
    y_all = torch.as_tensor(targets, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused: one kernel for every parameter's update instead of a loop over ~200 tensors (2% of a CPU step).
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    steps_per_epoch = max(1, -(-len(train_idx) // config.batch_size))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
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
            # On the CPU: the RNG states must stay there (torch.set_rng_state); weights move on loading.
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            history, start_epoch = restore_checkpoint(state, model, optimizer, scheduler, scaler, generator, order_rng)
            log.info("resuming %s training from %s after epoch %d/%d", spec.head, ckpt_path, start_epoch, config.epochs)
    clock.add("setup", setup_start)

    cached = None
    if features is not None:
        if not spec.freeze_backbone:
            raise ValueError("precomputed features need model.freeze_backbone: true (a trained backbone changes them)")
        if len(features[0]) != len(train_idx):
            raise ValueError(f"{len(features[0])} precomputed feature rows for {len(train_idx)} training images")
        cached = features if config.mirror else (features[0], None)
    elif spec.freeze_backbone and start_epoch < config.epochs:
        # Frozen backbone: one pass over the images (two with mirroring) instead of one per epoch.
        with clock("features"):
            feats = extract_features(model, images, train_idx, device, config.feature_batch_size, desc="features")
            flipped = (extract_features(model, images, train_idx, device, config.feature_batch_size, mirrored=True,
                                        desc="mirrored features") if config.mirror else None)
        cached = (feats, flipped)

    skipped_total = 0
    writer = _CheckpointWriter(ckpt_path) if ckpt_path is not None else None
    for epoch in range(start_epoch, config.epochs):
        epoch_start, epoch_cpu = time.perf_counter(), time.process_time()
        model.train()
        if spec.freeze_backbone:
            model.backbone.eval()
        perm = order_rng.permutation(len(train_idx))
        mirror_flags = order_rng.random(len(train_idx)) < 0.5 if config.mirror else np.zeros(len(train_idx), bool)
        total, seen, skipped = 0.0, 0, 0
        bar = progress(range(0, len(perm), config.batch_size), desc=f"{spec.head} epoch {epoch + 1}/{config.epochs}",
                       unit="batch", disable=progress_mode() != "bar")
        for start in bar:
            pos = perm[start : start + config.batch_size]  # positions within train_idx
            y = y_all[train_idx[pos]].to(device)
            with torch.autocast(device_type=device.type, dtype=amp_dtype(device), enabled=use_amp):
                if cached is not None:
                    feats, flipped = cached
                    x = feats[pos]
                    if flipped is not None:
                        flip = torch.from_numpy(mirror_flags[pos])
                        x = torch.where(flip.unsqueeze(1), flipped[pos], x)
                    outputs = model.from_features(x.to(device))
                else:
                    outputs = model(to_input(images[train_idx[pos]], model, device, mirror_flags[pos]))
                loss, n_skipped = compute_loss(spec, loss_config, model, outputs, y, W, generator, scale)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = loss.item()  # one device sync per step
            total += value * len(pos)
            seen += len(pos)
            skipped += n_skipped
            bar.set_postfix(loss=f"{value:.4f}")
        clock.add("epochs", epoch_start, epoch_cpu)
        record = {"epoch": epoch + 1, "loss": total / max(seen, 1), "lr": scheduler.get_last_lr()[0],
                  "skipped_images": skipped}
        if validate is not None:
            with clock("validation"):
                record.update(validate(model, epoch + 1))
        history.append(record)
        skipped_total = skipped
        log.info("%s epoch %d/%d: %s", spec.head, epoch + 1, config.epochs,
                 ", ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        if on_epoch is not None:
            with clock("logging"):
                on_epoch(epoch + 1, record)
        if writer is not None:
            with clock("checkpoints"):
                writer.write(checkpoint_state(model, optimizer, scheduler, scaler, generator, order_rng, history,
                                              epoch + 1, spec))
    if writer is not None:
        with clock("checkpoints"):
            writer.close()
    model.eval()
    return TrainResult(model=model, history=history, resumed_from_epoch=start_epoch, checkpoint=ckpt_path,
                       skipped_images=skipped_total, seconds=clock.seconds)


@torch.no_grad()
def predict_scores(
    model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, label_vectors: np.ndarray | None,
    batch_size: int = 128, device: str = "auto",
) -> np.ndarray:
    """Ranking scores (N, L), higher = more relevant: -D, or the BCE logits."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    feats = extract_features(model, images, indices, dev, batch_size, desc="scoring")
    with cpu_threads(dev):
        return scores_from_features(model, feats, label_vectors, dev)


@torch.no_grad()
def scores_from_features(model, feats: torch.Tensor, label_vectors: np.ndarray | None, device=None) -> np.ndarray:
    """Scores (N, L) from backbone features; label_vectors may hold any words (open vocabulary)."""
    device = device or next(model.parameters()).device
    model.eval()
    out = model.from_features(feats.to(device))
    if isinstance(model, LabelSpaceModel):
        W = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)
        return (-model.distances_from_output(out.float(), W)).cpu().numpy()
    return out.float().cpu().numpy()
