"""A thresholded decision beside top-k: calibrated scores and one threshold, both fitted on validation.

Calibration is global, not per label (Platt scaling): p = sigmoid(slope * score + intercept), fitted
by logistic regression over every (image, label) pair of the validation split. One mapping for all
labels keeps it valid for words never trained on (the label space ranks any word with a vector).
The probability threshold is the one that maximises O-F1 (micro F1) of "predict every label with
p >= threshold" on the same split. Both travel with the model (`TrainedModel.calibration`): a
served image gets the labels whose score passes, with their probabilities.

For the label space, score = -D, so the decision is D <= distance_threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labelspace.evaluation.metrics import _as_arrays, _f1

METHOD = "platt"


def calibrated_probabilities(scores: Any, calibration: dict[str, Any]) -> np.ndarray:
    """p = sigmoid(slope * score + intercept), elementwise."""
    z = calibration["slope"] * np.asarray(scores, dtype=np.float64) + calibration["intercept"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow warnings


def _fit_platt(scores: np.ndarray, relevant: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    x = scores.reshape(-1, 1)
    std = float(x.std()) or 1.0
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(x / std, relevant.ravel())
    return float(fit.coef_[0, 0] / std), float(fit.intercept_[0])


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
    """Platt scaling and the O-F1-best threshold from validation scores (N, L) and 0/1 targets.

    Images without any positive label are left out, as in evaluation. The result is plain JSON:
    method, slope, intercept, probability_threshold, score_threshold, distance_threshold (label
    space only: score = -D), n_images and the validation metrics of the decision.
    """
    s, t = _as_arrays(scores, targets)
    keep = t.any(axis=1)
    s, t = s[keep], t[keep]
    if t.shape[0] == 0 or t.all():
        raise ValueError("calibration needs validation images with both positive and negative labels; "
                         "raise train.val_fraction in params.yaml")
    slope, intercept = _fit_platt(s, t)
    if slope <= 0:
        raise ValueError(f"calibration found scores anti-correlated with the labels (slope {slope:.3g}): "
                         "the model has not learned; check the training curves")
    threshold = _best_threshold(calibrated_probabilities(s, {"slope": slope, "intercept": intercept}), t)
    score_threshold = (math.log(threshold / (1 - threshold)) - intercept) / slope
    calibration: dict[str, Any] = {
        "method": METHOD, "slope": slope, "intercept": intercept,
        "probability_threshold": threshold, "score_threshold": score_threshold,
        "fitted_on": "validation", "n_images": int(t.shape[0]), "selected_by": "O-F1",
    }
    if head == "labelspace":
        calibration["distance_threshold"] = -score_threshold
    calibration["validation"] = {k: v for k, v in threshold_metrics(s, t, calibration).items()
                                 if k not in ("n_images", "n_images_without_labels", "probability_threshold")}
    return calibration
