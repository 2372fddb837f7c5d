"""Losses of the image-conditioned label space, and the BCE loss of its baseline.

Rank term, per image with >= 1 positive (images without positives are skipped), over positives p_i
and sampled negatives n_j, with D = ||A w||^2 (small = relevant):
- "paper" (Li & Yeh 2018, eq. 3): sum_j max(0, m + mean_i D(p_i) - D(n_j)): the mean positive is
  ranked above each negative, so one badly placed positive can hide behind well placed ones;
- "pairwise": mean_i sum_j max(0, m + D(p_i) - D(n_j)): every positive above every negative;
- "sigmoid": sum_l BCE(sigmoid((tau - D_l) / m), y_l) over every label, no sampling: -D as the logit
  of a per-label decision at the one distance tau, m its temperature (the width of the transition, as
  the margin is the hinge's). Images without positives count too, as they do for the BCE baseline.
Threshold term (optional, `threshold_weight` > 0), per image, on the same negatives:
  sum_i max(0, D(p_i) - (tau - m/2)) + sum_j max(0, (tau + m/2) - D(n_j)),
so relevance is also decided by one global distance tau, which makes scores comparable across images
(mAP, thresholded decisions) where the rank term alone only orders labels within each image.
"pairwise+sigmoid" keeps the pairwise rank term and takes the sigmoid loss, on every label, as that
threshold term.

Units of m and tau (`loss.units`): "absolute" takes them on D as it is (the paper's, and the only
choice for an unnormalised D). "span" takes them in units of 1/r, r the rank of the training labels'
prepared vectors: with unit-Frobenius A and unit words, the D of the r orthonormal directions of
that span sum to at most 1, so 1/r is the mean distance a label can have when A spends its norm
there. With 8 garment labels (r = 7) m = 0.7 and tau = 1.4 are 0.1 and 0.2 on D; with 64 noisy tags
spanning all 50 GloVe dimensions the same values are 0.014 and 0.028, where 0.1 and 0.2 would ask
most negatives to sit above 0.25 while the 50 directions' distances sum to 1.
"""

from __future__ import annotations

import torch

RANK_VARIANTS = ("paper", "pairwise")  # the sampled hinge rank terms; "sigmoid" is sigmoid_loss


def loss_scale(model, W: torch.Tensor, units: str) -> float:
    """What `loss.units` multiplies m and tau by for this model and these training words (module doc)."""
    if units not in ("span", "absolute"):
        raise ValueError(f"unknown loss.units {units!r}: use span or absolute")
    if units == "absolute" or not getattr(model, "normalize", False):
        return 1.0
    with torch.no_grad():
        prepared = model.prepare_words(W.detach().float())
        return 1.0 / max(1, int(torch.linalg.matrix_rank(prepared.cpu())))


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


def _check_shapes(distances: torch.Tensor, targets: torch.Tensor) -> None:
    if distances.shape != targets.shape or distances.ndim != 2:
        raise ValueError(f"distances and targets must both be (B, L); got {distances.shape}, {targets.shape}")


def hinge_rank_loss(
    distances: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 1.0,
    n_negatives: int | None = 40,
    generator: torch.Generator | None = None,
    negative_mask: torch.Tensor | None = None,
    return_skipped: bool = False,
    variant: str = "paper",
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Mean over images with >= 1 positive of the per-image hinge rank loss (see the module doc).

    distances: (B, L) = ||A w_l||^2 (small = relevant); targets: (B, L) of 0/1.
    negative_mask fixes the negatives (otherwise sampled with `generator`). With
    return_skipped=True, also returns how many images had no positive label.
    """
    _check_shapes(distances, targets)
    if variant not in RANK_VARIANTS:
        raise ValueError(f"unknown loss.variant {variant!r}: choose one of {RANK_VARIANTS}")
    positives = targets > 0  # (B, L)
    if negative_mask is None:
        negative_mask = sample_negatives(targets, n_negatives, generator)
    negative_mask = negative_mask.bool() & ~positives  # a 0/1 float mask works too; never a positive
    n_pos = positives.sum(dim=1)  # (B,)
    has_pos = n_pos > 0
    if variant == "paper":
        pos_mean = (distances * positives).sum(dim=1) / n_pos.clamp(min=1)  # (B,)
        hinge = torch.relu(margin + pos_mean.unsqueeze(1) - distances) * negative_mask  # (B, L)
        per_image = hinge.sum(dim=1)  # (B,)
    else:
        pairs = positives.unsqueeze(2) & negative_mask.unsqueeze(1)  # (B, L_pos, L_neg)
        hinge = torch.relu(margin + distances.unsqueeze(2) - distances.unsqueeze(1)) * pairs
        per_image = hinge.sum(dim=(1, 2)) / n_pos.clamp(min=1)  # (B,)
    n_valid = int(has_pos.sum())
    loss = (per_image * has_pos).sum() / max(n_valid, 1)
    if return_skipped:
        return loss, int(has_pos.numel() - n_valid)
    return loss


def threshold_loss(
    distances: torch.Tensor,
    targets: torch.Tensor,
    threshold: float,
    margin: float,
    negative_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over images of sum_p relu(D_p - (tau - m/2)) + sum_n relu((tau + m/2) - D_n).

    Every image counts, with or without positives: an image with none still says which labels it
    does not have. `negative_mask` limits the negatives (default: all of them).
    """
    _check_shapes(distances, targets)
    positives = targets > 0
    negatives = ~positives if negative_mask is None else negative_mask.bool() & ~positives
    above = torch.relu(distances - (threshold - margin / 2)) * positives
    below = torch.relu((threshold + margin / 2) - distances) * negatives
    return (above + below).sum(dim=1).mean()


def sigmoid_loss(distances: torch.Tensor, targets: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """Mean over images of sum_l BCE(sigmoid((threshold - D_l) / temperature), y_l): the "sigmoid"
    variant (module doc). Every label of every image counts."""
    _check_shapes(distances, targets)
    if temperature <= 0:
        raise ValueError(f"the sigmoid loss needs a temperature (loss.margin) above 0; got {temperature}")
    logits = (threshold - distances) / temperature
    per_label = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    return per_label.sum(dim=1).mean()


def label_space_terms(config, distances: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None,
                      scale: float) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The label-space loss of a LossConfig (the module doc) in two parts and the images skipped: `ranked`, a
    mean over the images with a positive (the hinge rank term; `skipped` = the others), and `dense`, a
    mean over every image (the threshold term, or the sigmoid loss). The loss is their sum; data-parallel
    ranks weight each by its own share (`shard_loss`). `negatives` is unused by sigmoid."""
    rank_variant, _, threshold_kind = config.variant.partition("+")
    tau, margin = config.threshold * scale, config.margin * scale
    dense = distances.new_zeros(())
    if rank_variant == "sigmoid":
        ranked, skipped = distances.new_zeros(()), 0
        dense = config.rank_weight * sigmoid_loss(distances, targets, tau, margin)
    else:
        rank, skipped = hinge_rank_loss(distances, targets, margin=margin, negative_mask=negatives,
                                        return_skipped=True, variant=rank_variant)
        ranked = config.rank_weight * rank
    if config.threshold_weight and threshold_kind == "sigmoid":
        dense = dense + config.threshold_weight * sigmoid_loss(distances, targets, tau, margin)
    elif config.threshold_weight:
        dense = dense + config.threshold_weight * threshold_loss(distances, targets, tau, margin,
                                                                 negative_mask=negatives)
    return ranked, skipped, dense


def uses_negatives(config) -> bool:
    """Whether the loss samples negatives (the hinge terms do; the sigmoid loss takes every label)."""
    return config.variant != "sigmoid"


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of the baseline: binary cross-entropy of a linear sigmoid head."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())


def compute_loss(spec, config, model, outputs, targets, W, generator, scale: float | None = None) -> tuple[torch.Tensor, int]:
    """The loss of a ModelSpec's head (`spec.head`) on a batch, and the images it skipped. `config` is a
    LossConfig; `scale` is `loss_scale(model, W, config.units)`: a loop over many batches computes it
    once and passes it (it depends on the words only)."""
    if spec.head == "labelspace":
        distances = model.distances_from_output(outputs.float(), W)
        if scale is None:
            scale = loss_scale(model, W, config.units)
        negatives = sample_negatives(targets, config.n_negatives, generator) if uses_negatives(config) else None
        ranked, skipped, dense = label_space_terms(config, distances, targets, negatives, scale)
        return ranked + dense, skipped
    return bce_loss(outputs.float(), targets), 0


def shard_loss(spec, config, model, outputs, y, W, negatives, y_global: torch.Tensor, weight: float, scale: float):
    """One process's part of a global batch's loss, and its skipped images: `compute_loss` with each term
    scaled by this part's share of what it averages over (images with a positive for the rank term,
    every image for the threshold and BCE terms), `negatives` drawn for the whole batch (rows of
    them). Summed over the data-parallel ranks it is the loss one process computes on the whole batch;
    the whole batch, weight 1, is `compute_loss` itself, bit for bit (its factors are 1, or multiply
    a term that is 0).
    `weight` 0 makes a row that counts for nothing (a last batch smaller than the ranks)."""
    n_global = len(y_global)
    if spec.head != "labelspace":
        return bce_loss(outputs.float(), y) * (weight * len(y) / n_global), 0
    distances = model.distances_from_output(outputs.float(), W)
    ranked, skipped, dense = label_space_terms(config, distances, y, negatives, scale)
    valid_global = int((y_global > 0).any(dim=1).sum())
    loss = (ranked * (weight * (len(y) - skipped) / max(valid_global, 1))
            + dense * (weight * len(y) / n_global))
    return loss, skipped if weight else 0
