"""The paper's analyses of a trained label space (Li & Yeh 2018, sec. 5), as numbers. No ZenML, no MLflow.

A label space maps an image to A (k x d) and ranks a word w by D = ||A w||^2 = sum_i (a_i . w)^2, so
each row a_i of A is itself a classifier: it ranks the labels by (a_i . w)^2, small = relevant.
- the committee (paper Table 5): every row votes for its top-N labels; labels are ranked by votes
  (ties broken by the rows' mean rank of the label, so the committee never looks at D itself);
- row diversity (paper Fig. 9): per image, the mean Jaccard coefficient of the rows' top-n label
  sets over the k(k-1) ordered pairs of distinct rows (the k pairs of a row with itself are always 1
  and are left out), beside the exact Jaccard of two random n-sets of the same labels;
- the label map (paper Fig. 7): the label vectors in 2-D, and per image the transformed vectors
  A w, placed at their exact distance sqrt(D) from the image (the origin);
- the confusion between frequent labels, and the images the model fits worst (per-image loss).

Rows and words are taken as the model measures them: Â = A/||A||_F when the model normalises (a
per-image scale never changes a row's ranking), and centred, unit words when it does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from labelspace.config import LossConfig
from labelspace.evaluation.calibration import calibrated_probabilities
from labelspace.evaluation.metrics import topk_mask, topk_metrics
from labelspace.model.networks import LabelSpaceModel

COMMITTEE_KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")


# ---------------------------------------------------------------- the rows of A


@torch.no_grad()
def row_projections(model: LabelSpaceModel, feats: torch.Tensor, label_vectors: np.ndarray) -> np.ndarray:
    """(N, k, L): (a_i . w_l)^2 for every image, row i of A and label l, as the model measures them.

    Their sum over rows is D (times the learned scale, when the model has one)."""
    device = next(model.parameters()).device
    model.eval()
    A = model.from_features(feats.to(device)).float()
    if model.normalize:
        A = A / A.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    W = model.prepare_words(torch.as_tensor(label_vectors, dtype=torch.float32, device=device))
    return (A @ W.t()).pow(2).double().cpu().numpy()


def _row_ranks(rows: np.ndarray) -> np.ndarray:
    """(N, k, L): the rank (0 = most relevant) of each label in each row's ranking; ties to the lower index."""
    order = np.argsort(rows, axis=2, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(rows.shape[2])[None, None, :], axis=2)
    return ranks


def committee_scores(rows: np.ndarray, top_n: int) -> np.ndarray:
    """(N, L) scores (higher = more relevant) of the committee where each row votes for its top_n labels.

    score = votes - mean rank / L: the number of votes decides, the rows' mean rank breaks ties."""
    n_labels = rows.shape[2]
    ranks = _row_ranks(rows)
    votes = (ranks < min(top_n, n_labels)).sum(axis=1)
    return votes - ranks.mean(axis=1) / n_labels


def committee_table(rows: np.ndarray, targets: np.ndarray, top_n: tuple[int, ...] | list[int],
                    k: int) -> dict[str, dict[str, float]]:
    """Top-k metrics of the full model (D = the sum of the rows) and of each committee voting over top-N.

    Keys "full" and "vote_top{N}"; values hold C-P, C-R, C-F1, O-P, O-R, O-F1 (fractions)."""
    table = {"full": topk_summary(-rows.sum(axis=1), targets, k)}
    for n in top_n:
        table[f"vote_top{n}"] = topk_summary(committee_scores(rows, n), targets, k)
    return table


def committee_over_images(model: LabelSpaceModel, feats: torch.Tensor, label_vectors: np.ndarray,
                          top_n: tuple[int, ...] | list[int], diversity_top: int,
                          chunk: int = 1024) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores (N, L) of the full model ("full") and of each committee ("vote_top{N}"), and the row
    diversity (N,) of every image, a chunk of images at a time: the rows of A of NUS-WIDE's 100k test
    images (N x k x L) would not fit in memory at once."""
    scores: dict[str, list[np.ndarray]] = {"full": [], **{f"vote_top{n}": [] for n in top_n}}
    diversity = []
    for start in range(0, len(feats), chunk):
        rows = row_projections(model, feats[start : start + chunk], label_vectors)
        scores["full"].append(-rows.sum(axis=1))
        for n in top_n:
            scores[f"vote_top{n}"].append(committee_scores(rows, n))
        diversity.append(row_diversity(rows, diversity_top) if rows.shape[1] >= 2 else np.full(len(rows), np.nan))
    return {name: np.concatenate(parts) for name, parts in scores.items()}, np.concatenate(diversity)


def topk_summary(scores: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """C-P, C-R, C-F1, O-P, O-R, O-F1 (fractions) of top-k."""
    result = topk_metrics(scores, targets, k)
    return {key: float(result[key]) for key in COMMITTEE_KEYS}


def row_diversity(rows: np.ndarray, top_n: int) -> np.ndarray:
    """(N,): per image, the mean Jaccard coefficient of the top_n label sets of the k(k-1) ordered
    pairs of distinct rows (1 = every row picks the same labels)."""
    n_images, k, n_labels = rows.shape
    if k < 2:
        raise ValueError("row diversity needs at least 2 rows in A (model.k >= 2)")
    top_n = min(top_n, n_labels)
    sets = (_row_ranks(rows) < top_n).astype(np.float64)  # (N, k, L)
    inter = sets @ sets.transpose(0, 2, 1)  # (N, k, k)
    jaccard = inter / (2 * top_n - inter)
    off_diagonal = ~np.eye(k, dtype=bool)
    return jaccard[:, off_diagonal].mean(axis=1)


def expected_jaccard(n_labels: int, top_n: int) -> float:
    """E[Jaccard] of two independent, uniformly random top_n-subsets of n_labels labels (exact)."""
    n = min(top_n, n_labels)
    total = math.comb(n_labels, n)
    return sum(math.comb(n, j) * math.comb(n_labels - n, n - j) / total * j / (2 * n - j)
               for j in range(max(0, 2 * n - n_labels), n + 1))


# ---------------------------------------------------------------- decisions, confusion, losses


def decisions(scores: np.ndarray, calibration: dict[str, Any] | None, k: int) -> tuple[np.ndarray, str]:
    """(N, L) booleans of the labels a head predicts, and what they are: the thresholded decision when
    the head carries a calibration (what serving returns as `decided`), else its top-k."""
    if calibration:
        return calibrated_probabilities(scores, calibration) >= calibration["probability_threshold"], "thresholded"
    return topk_mask(np.asarray(scores, dtype=np.float64), k), f"top-{k}"


def label_confusion(predicted: np.ndarray, targets: np.ndarray, labels: list[str], n_labels: int) -> dict[str, Any]:
    """How often each of the `n_labels` most frequent labels is mistaken for another.

    matrix[i][j], i != j: the share of test images holding label i (and not j) where j is predicted;
    matrix[i][i]: the share holding i where i is predicted (its recall). Rows follow `labels` by
    descending frequency; labels without a test positive are left out."""
    t = np.asarray(targets).astype(bool)
    counts = t.sum(axis=0)
    order = [int(j) for j in np.argsort(-counts, kind="stable") if counts[j] > 0][:n_labels]
    matrix = np.zeros((len(order), len(order)))
    for a, i in enumerate(order):
        holding = t[:, i]
        for b, j in enumerate(order):
            rows = holding if a == b else holding & ~t[:, j]
            matrix[a, b] = predicted[rows, j].mean() if rows.any() else np.nan
    pairs = [(labels[order[a]], labels[order[b]], float(matrix[a, b]))
             for a in range(len(order)) for b in range(len(order)) if a != b and not np.isnan(matrix[a, b])]
    pairs.sort(key=lambda p: -p[2])
    return {"labels": [labels[i] for i in order], "positives": [int(counts[i]) for i in order],
            "matrix": matrix.tolist(), "most_confused": [{"true": a, "predicted": b, "rate": r} for a, b, r in pairs[:5]]}


@torch.no_grad()
def per_image_loss(model: torch.nn.Module, spec, loss_config: LossConfig, feats: torch.Tensor,
                   targets: np.ndarray, label_vectors: np.ndarray | None) -> np.ndarray:
    """(N,): each image's training loss alone, with every negative (no sampling, so it is deterministic)."""
    from labelspace.training.loss import compute_loss, loss_scale

    device = next(model.parameters()).device
    model.eval()
    config = dataclasses.replace(loss_config, n_negatives=None)
    W = torch.as_tensor(label_vectors if label_vectors is not None else np.zeros((0, 1)), dtype=torch.float32,
                        device=device)
    outputs = model.from_features(feats.to(device)).float()
    y = torch.as_tensor(targets, dtype=torch.float32, device=device)
    generator = torch.Generator().manual_seed(0)
    scale = loss_scale(model, W, config.units) if spec.head == "labelspace" else 1.0
    return np.array([float(compute_loss(spec, config, model, outputs[i : i + 1], y[i : i + 1], W, generator, scale)[0])
                     for i in range(len(y))])


def worst_images(losses: np.ndarray, n: int) -> np.ndarray:
    """Positions of the n highest losses, worst first (ties to the lower position)."""
    return np.argsort(-losses, kind="stable")[:n]


# ---------------------------------------------------------------- the label map


def map_2d(vectors: np.ndarray, tsne_min_labels: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """(L, 2) positions of the vectors and the method: t-SNE from `tsne_min_labels` labels on, PCA below
    (t-SNE of a handful of points says nothing PCA does not)."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2)), "PCA"
    if len(x) >= max(tsne_min_labels, 4):
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(x) - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x), "t-SNE"
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    return (xy if xy.shape[1] == 2 else np.c_[xy, np.zeros(len(x))]), "PCA"


@torch.no_grad()
def image_label_map(model: LabelSpaceModel, feats: torch.Tensor, label_vectors: np.ndarray) -> list[dict[str, Any]]:
    """Per image (row of feats): every label's transformed vector A w in 2-D, at its exact distance
    sqrt(D) from the origin (the image); the direction is the uncentred 2-D projection of the A w.

    Returns, per image, {"xy": (L, 2), "distance": (L,) D}."""
    device = next(model.parameters()).device
    model.eval()
    outputs = model.from_features(feats.to(device)).float()
    raw = torch.as_tensor(label_vectors, dtype=torch.float32, device=device)
    D = model.distances_from_output(outputs, raw)
    A = outputs / outputs.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1) if model.normalize else outputs
    W = model.prepare_words(raw)
    out = []
    for image in range(A.shape[0]):
        z = (A[image] @ W.t()).t().double().cpu().numpy()  # (L, k): A w per label
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        plane = z @ vt[:2].T if vt.shape[0] >= 2 else np.c_[z @ vt[:1].T, np.zeros(len(z))]
        norm = np.linalg.norm(plane, axis=1, keepdims=True)
        direction = np.divide(plane, norm, out=np.zeros_like(plane), where=norm > 1e-12)
        distance = D[image].double().cpu().numpy()
        out.append({"xy": direction * np.sqrt(np.clip(distance, 0, None))[:, None], "distance": distance})
    return out
