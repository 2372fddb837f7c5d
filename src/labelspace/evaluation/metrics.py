"""Top-k multilabel metrics (CNN-RNN / paper protocol) and mean average precision.

Scores: (N, L), higher = more relevant. Targets: (N, L) of 0/1. Images without any positive label
are left out and counted. Per-class means run over classes with >= 1 positive among the images kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_arrays(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    def to_numpy(x: Any) -> np.ndarray:
        if hasattr(x, "detach"):  # torch tensor, without importing torch here
            # double, not float: float32 would turn nearly equal float64 scores into ties and
            # change the top-k, so numpy and torch inputs would disagree.
            x = x.detach().cpu().double().numpy()
        return np.asarray(x)

    s = to_numpy(scores).astype(np.float64)
    t = to_numpy(targets)
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(f"scores and targets must both be (N, L); got {s.shape} and {t.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be 0/1")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, t.astype(bool)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N, L): the k highest scores of each row; ties go to the lower label index."""
    n, n_labels = scores.shape
    k = min(k, n_labels)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros((n, n_labels), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def _per_class_counts(s: np.ndarray, t: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Per class: correct, predicted and positive counts of top-k predictions, and P_c, R_c
    (0 where the denominator is 0)."""
    pred = topk_mask(s, k)
    correct = (pred & t).sum(axis=0).astype(np.float64)
    predicted = pred.sum(axis=0).astype(np.float64)
    positives = t.sum(axis=0).astype(np.float64)
    p = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    r = np.divide(correct, positives, out=np.zeros_like(correct), where=positives > 0)
    return correct, predicted, positives, p, r


def topk_metrics(scores: Any, targets: Any, k: int) -> dict[str, float | int]:
    """C-P, C-R, C-F1, O-P, O-R, O-F1 (fractions) of top-k predictions, with the counts behind them.

    `n_images` is every image given; `n_images_without_labels` of them were left out.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    s, t = _as_arrays(scores, targets)
    has_label = t.any(axis=1)
    s, t = s[has_label], t[has_label]
    result: dict[str, float | int] = {
        "n_images": int(has_label.size),
        "n_images_without_labels": int((~has_label).sum()),
    }
    if t.shape[0] == 0:
        raise ValueError("no image has a positive label: nothing to evaluate")
    correct, predicted, positives, per_class_p, per_class_r = _per_class_counts(s, t, k)
    evaluated = positives > 0
    cp = float(per_class_p[evaluated].mean())
    cr = float(per_class_r[evaluated].mean())
    op = float(correct.sum() / predicted.sum())
    orr = float(correct.sum() / positives.sum())
    result.update(
        {
            "C-P": cp,
            "C-R": cr,
            "C-F1": _f1(cp, cr),
            "O-P": op,
            "O-R": orr,
            "O-F1": _f1(op, orr),
            "n_classes_evaluated": int(evaluated.sum()),
        }
    )
    return result


def per_class_f1(scores: Any, targets: Any, k: int) -> np.ndarray:
    """F1 of top-k predictions per class (NaN for classes without positives), for plots."""
    s, t = _as_arrays(scores, targets)
    keep = t.any(axis=1)
    _, _, positives, p, r = _per_class_counts(s[keep], t[keep], k)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    f1[positives == 0] = np.nan
    return f1


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: sum over distinct score thresholds of (R_n - R_{n-1}) * P_n.

    Tied scores form one threshold, so the result does not depend on the order of ties
    (it equals scikit-learn's average_precision_score). Without ties it is the mean of the
    precision at the rank of each relevant item.
    """
    order = np.argsort(-scores, kind="stable")
    s, rel = scores[order], relevant[order].astype(np.float64)
    n_rel = rel.sum()
    if n_rel == 0:
        raise ValueError("average precision needs at least one relevant item")
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # not np.diff: inf - inf is NaN, which would split a tie
    tp = np.cumsum(rel)[last_of_tie]
    seen = (np.arange(1, s.size + 1))[last_of_tie]
    precision = tp / seen
    recall_gain = np.diff(np.r_[0.0, tp]) / n_rel
    return float((precision * recall_gain).sum())


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Mean over classes with >= 1 positive of the AP of that class's scores over images.

    Images without any positive label are left out, as in `topk_metrics`.
    """
    s, t = _as_arrays(scores, targets)
    keep = t.any(axis=1)
    s, t = s[keep], t[keep]
    classes = np.flatnonzero(t.any(axis=0))
    if classes.size == 0:
        raise ValueError("no class has a positive label: nothing to evaluate")
    return float(np.mean([average_precision(s[:, c], t[:, c]) for c in classes]))
