"""Per-epoch checkpoints of a training run: where they go, what they hold, how they are written.

A checkpoint is named by the run's fingerprint (everything the trained weights depend on), so a run
resumes only from its own: the same spec, loss and training configs, pretrained weights and data.
It holds the model, optimizer, scheduler, loss scaler, every random state the loop draws from and
the history, after a number of finished epochs: a resumed run continues exactly where it stopped.
The format is the same for one process and for N data-parallel ones, and so is the fingerprint: a
run resumes on any number of processes. Files are written atomically, on a background thread.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from labelspace.config import LossConfig, TrainConfig
from labelspace.model.spec import ModelSpec


def fingerprint(spec: ModelSpec, loss: LossConfig, train: TrainConfig, pretrained: bool,
                weights_path: str | None, data_key: str) -> str:
    """Everything the trained weights depend on: a checkpoint resumes only a run with the same one.
    Where checkpoints go and the feature batch size change no weight, so they are left out; so are
    `devices` and `nodes`: the processes split the same global batches with the same random draws
    (labelspace.training.loop), so a checkpoint resumes on any number of them."""
    train_fields = {k: v for k, v in asdict(train).items()
                    if k not in ("checkpoint_dir", "feature_batch_size", "devices", "nodes")}
    blob = json.dumps({"spec": asdict(spec), "loss": asdict(loss), "train": train_fields, "pretrained": pretrained,
                       "weights_path": weights_path, "data": data_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(checkpoint_dir: str | os.PathLike, spec: ModelSpec, loss: LossConfig, train: TrainConfig,
                    pretrained: bool, weights_path: str | None, data_key: str) -> Path:
    return Path(checkpoint_dir) / f"{spec.head}-{fingerprint(spec, loss, train, pretrained, weights_path, data_key)}.pt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's state, on the CPU: the RNG states must stay there (torch.set_rng_state); weights
    move when they are loaded into a model."""
    return torch.load(path, map_location="cpu", weights_only=False)


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


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # per process: two runs never write one file
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


class CheckpointWriter:
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
                save_checkpoint(self.path, snapshot)
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
