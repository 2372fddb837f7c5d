"""Hinge rank loss of the image-conditioned label space (Li & Yeh 2018, eq. 3).

Per image: sum_j max(0, m + mean_i D(p_i) - D(n_j)) over positives p_i and sampled negatives n_j,
where D = ||A w||^2. Vectorised over the batch with masks; images without positives are skipped.
"""

from __future__ import annotations

import torch


def sample_negatives(
    targets: torch.Tensor, n_negatives: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean (B, L) mask of up to `n_negatives` negatives per image, uniformly without replacement.

    When an image has fewer negatives than asked for, all of them are used; None means all.
    """
    if n_negatives is not None and n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0, or None for all negatives (loss.n_negatives); got {n_negatives}")
    negatives = targets <= 0
    if n_negatives is None or n_negatives >= targets.shape[1]:
        return negatives
    # Random keys, positives pushed past every negative, then the n smallest keys per row.
    keys = torch.rand(targets.shape, generator=generator, device="cpu").to(targets.device)
    keys = keys.masked_fill(~negatives, 2.0)
    picked = keys.topk(n_negatives, dim=1, largest=False).indices
    mask = torch.zeros_like(negatives)
    mask.scatter_(1, picked, True)
    return mask & negatives


def hinge_rank_loss(
    distances: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 1.0,
    n_negatives: int | None = 40,
    generator: torch.Generator | None = None,
    negative_mask: torch.Tensor | None = None,
    return_skipped: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Mean over images with >= 1 positive of the per-image hinge rank loss.

    distances: (B, L) = ||A w_l||^2 (small = relevant); targets: (B, L) of 0/1.
    negative_mask fixes the negatives (otherwise sampled with `generator`). With
    return_skipped=True, also returns how many images had no positive label.
    """
    if distances.shape != targets.shape or distances.ndim != 2:
        raise ValueError(f"distances and targets must both be (B, L); got {distances.shape}, {targets.shape}")
    positives = targets > 0  # (B, L)
    if negative_mask is None:
        negative_mask = sample_negatives(targets, n_negatives, generator)
    negative_mask = negative_mask.bool() & ~positives  # a 0/1 float mask works too; never a positive
    n_pos = positives.sum(dim=1)  # (B,)
    has_pos = n_pos > 0
    pos_mean = (distances * positives).sum(dim=1) / n_pos.clamp(min=1)  # (B,)
    hinge = torch.relu(margin + pos_mean.unsqueeze(1) - distances) * negative_mask  # (B, L)
    per_image = hinge.sum(dim=1)  # (B,)
    n_valid = int(has_pos.sum())
    loss = (per_image * has_pos).sum() / max(n_valid, 1)
    if return_skipped:
        return loss, int(has_pos.numel() - n_valid)
    return loss


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of the baseline: binary cross-entropy of a linear sigmoid head."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
