"""Running a network on images: their input tensors, backbone features, and ranking scores.

What training's validation, evaluation, the gate's scoring of the champion, the analyses, serving
and the scripts all do with a network once it exists, so that every one of them sees the same
pixels and the same scores. A frozen backbone's features are computed once and ranked against any
words (`scores_from_features`): a study or an evaluation ranks many vocabularies on one pass.

On a GPU the uint8 batches are copied from pinned memory without blocking, converted and mirrored
there, and handed over channels_last, in larger batches than training's; on a CPU the passes run
at `training.threads.cpu_threads()`.
"""

from __future__ import annotations

import numpy as np
import torch

from labelspace.model.networks import LabelSpaceModel
from labelspace.progress import progress, progress_mode
from labelspace.training.threads import cpu_threads


def resolve_device(name: str) -> torch.device:
    """The device a `train.device`-style name means: "auto" is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


@torch.no_grad()
def predict_scores(
    model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, label_vectors: np.ndarray | None,
    batch_size: int = 128, device: str = "auto",
) -> np.ndarray:
    """Ranking scores (N, L) of images[indices], higher = more relevant: -D, or the BCE logits."""
    dev = resolve_device(device)
    model = model.to(dev).eval()
    feats = extract_features(model, images, indices, dev, batch_size, desc="scoring")
    with cpu_threads(dev):
        return scores_from_features(model, feats, label_vectors, dev)
