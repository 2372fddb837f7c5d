"""A thresholded decision beside top-k: calibrated scores and one threshold, both fitted on validation.

Platt scaling with a per-label offset: p = sigmoid(slope * score + intercept + offset_l), fitted by
penalised logistic regression over every (image, label) pair of the validation split. The slope and
intercept are shared; each training label's offset carries its prior (on real tags a frequent label
is present at a distance a rare one is not), and a Gaussian prior on the offsets (`OFFSET_PRIOR`,
the penalty offset^2 / 2 sigma^2 beside the summed log-loss) keeps a label with few validation
positives near the shared mapping. A word never trained on (open vocabulary, zero-shot) gets the
shared mapping with the mean offset. The probability threshold is the one that maximises O-F1 (micro
F1) of "predict every label with p >= threshold" on the same split. Both travel with the model
(`TrainedModel.calibration`): a served image gets the labels whose score passes, with their
probabilities. A calibration without offsets (method "platt", written before offsets existed) is the
shared mapping alone.

For the label space, score = -D, so the decision is D <= distance_threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labelspace.evaluation.metrics import _as_arrays, _f1

METHOD = "platt-label-offsets"
OFFSET_PRIOR = 1.0  # sigma of the Gaussian prior on each label's offset (in logits)


def calibrated_probabilities(scores: Any, calibration: dict[str, Any], offsets: Any = None) -> np.ndarray:
    """p = sigmoid(slope * score + intercept + offset), elementwise over (N, L) scores.

    `offsets` (L,) are the columns' offsets; by default the calibration's own, which need the columns
    to be its training labels in order (a subset or other words: pass `label_offsets(...)`)."""
    s = np.asarray(scores, dtype=np.float64)
    if offsets is None:
        offsets = calibration.get("offsets")
        if offsets is not None and (s.ndim != 2 or s.shape[1] != len(offsets)):
            raise ValueError(f"scores of shape {s.shape} are not the calibration's {len(offsets)} training labels: "
                             "pass their offsets (labelspace.evaluation.calibration.label_offsets)")
    z = calibration["slope"] * s + calibration["intercept"] + (0.0 if offsets is None else np.asarray(offsets))
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow warnings


def label_offsets(calibration: dict[str, Any], columns: Any) -> np.ndarray:
    """The offsets of `columns`: a training label's index (into the calibration's labels) or None for
    a word never trained on, which takes the mean offset."""
    if not calibration.get("offsets"):  # a shared mapping only (method "platt")
        return np.zeros(len(columns), dtype=np.float64)
    offsets = np.asarray(calibration["offsets"], dtype=np.float64)
    return np.array([offsets.mean() if c is None else offsets[c] for c in columns], dtype=np.float64)


def _fit_platt(scores: np.ndarray, relevant: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(slope, intercept, offsets (L,)) minimising the summed log-loss over (N, L) pairs plus
    sum(offset^2) / (2 OFFSET_PRIOR^2), by L-BFGS from the shared fit (offsets 0)."""
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    std = float(scores.std()) or 1.0
    x = scores / std
    shared = LogisticRegression(C=1e6, max_iter=1000).fit(x.reshape(-1, 1), relevant.ravel())
    y = relevant.astype(np.float64)
    penalty = 1.0 / (2 * OFFSET_PRIOR**2)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, c, b = theta[0], theta[1], theta[2:]
        z = a * x + c + b
        # log(1 + e^z) - y z, stably; its gradient in z is sigmoid(z) - y
        value = float((np.logaddexp(0.0, z) - y * z).sum() + penalty * (b**2).sum())
        g = 0.5 * (1.0 + np.tanh(0.5 * z)) - y
        return value, np.concatenate([[(g * x).sum(), g.sum()], g.sum(axis=0) + 2 * penalty * b])

    start = np.concatenate([[shared.coef_[0, 0], shared.intercept_[0]], np.zeros(scores.shape[1])])
    theta = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return float(theta[0] / std), float(theta[1]), theta[2:]


def _best_threshold(probabilities: np.ndarray, relevant: np.ndarray) -> float:
    """The threshold on p maximising micro F1 = 2 TP / (predicted + positives); ties keep the higher p."""
    p, rel = probabilities.ravel(), relevant.ravel()
    order = np.argsort(-p, kind="stable")
    p, rel = p[order], rel[order]
    last_of_tie = np.r_[p[1:] != p[:-1], True]  # a threshold takes every pair with an equal p
    tp = np.cumsum(rel)[last_of_tie]
    predicted = np.arange(1, p.size + 1)[last_of_tie]
    f1 = 2 * tp / (predicted + rel.sum())
    best = int(np.argmax(f1))
    cut = np.flatnonzero(last_of_tie)[best]
    below = p[cut + 1] if cut + 1 < p.size else 0.0
    return float((p[cut] + below) / 2)  # midway to the next lower probability: robust to rounding


def threshold_metrics(scores: Any, targets: Any, calibration: dict[str, Any]) -> dict[str, float | int]:
    """P/R/F1 (per class and overall, as in topk_metrics) of predicting labels with p >= threshold."""
    s, t = _as_arrays(scores, targets)
    has_label = t.any(axis=1)
    s, t = s[has_label], t[has_label]
    if t.shape[0] == 0:
        raise ValueError("no image has a positive label: nothing to evaluate")
    pred = calibrated_probabilities(s, calibration) >= calibration["probability_threshold"]
    correct = (pred & t).sum(axis=0).astype(np.float64)
    predicted = pred.sum(axis=0).astype(np.float64)
    positives = t.sum(axis=0).astype(np.float64)
    evaluated = positives > 0
    per_class_p = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    cp = float(per_class_p[evaluated].mean())
    cr = float((correct[evaluated] / positives[evaluated]).mean())
    op = float(correct.sum() / predicted.sum()) if predicted.sum() else 0.0
    orr = float(correct.sum() / positives.sum())
    return {
        "n_images": int(has_label.size), "n_images_without_labels": int((~has_label).sum()),
        "C-P": cp, "C-R": cr, "C-F1": _f1(cp, cr), "O-P": op, "O-R": orr, "O-F1": _f1(op, orr),
        "labels_per_image": float(pred.sum(axis=1).mean()),
        "probability_threshold": float(calibration["probability_threshold"]),
    }


def fit_calibration(scores: Any, targets: Any, head: str = "labelspace") -> dict[str, Any]:
    """Platt scaling with label offsets and the O-F1-best threshold from validation scores (N, L) and
    0/1 targets (columns: the training labels, in order).

    Images without any positive label are left out, as in evaluation. The result is plain JSON:
    method, slope, intercept, offsets, probability_threshold, score_threshold and distance_threshold
    (label space only: score = -D; both for the mean offset), n_images and the validation metrics of
    the decision.
    """
    s, t = _as_arrays(scores, targets)
    keep = t.any(axis=1)
    s, t = s[keep], t[keep]
    if t.shape[0] == 0 or t.all():
        raise ValueError("calibration needs validation images with both positive and negative labels; "
                         "raise train.val_fraction in params.yaml")
    slope, intercept, offsets = _fit_platt(s, t)
    if slope <= 0:
        raise ValueError(f"calibration found scores anti-correlated with the labels (slope {slope:.3g}): "
                         "the model has not learned; check the training curves")
    threshold = _best_threshold(calibrated_probabilities(s, {"slope": slope, "intercept": intercept}, offsets), t)
    # The score (and distance) at which a word with the mean offset is decided: the open vocabulary's.
    score_threshold = (math.log(threshold / (1 - threshold)) - intercept - float(offsets.mean())) / slope
    calibration: dict[str, Any] = {
        "method": METHOD, "slope": slope, "intercept": intercept, "offsets": [float(b) for b in offsets],
        "offset_prior": OFFSET_PRIOR, "probability_threshold": threshold, "score_threshold": score_threshold,
        "fitted_on": "validation", "n_images": int(t.shape[0]), "selected_by": "O-F1",
    }
    if head == "labelspace":
        calibration["distance_threshold"] = -score_threshold
    calibration["validation"] = {k: v for k, v in threshold_metrics(s, t, calibration).items()
                                 if k not in ("n_images", "n_images_without_labels", "probability_threshold")}
    return calibration
