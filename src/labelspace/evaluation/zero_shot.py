"""Zero-shot evaluation: rank labels never trained on, beside the exact figures of a random ranking.

Protocol: the held-out labels have no positives in training and their word vectors are never seen.
On the test images with at least one held-out label, only the held-out labels are ranked; top-k
metrics (k=1 by default) and mAP are computed as in `labelspace.evaluation.metrics`.

Chance is the expected value of each metric when every image's scores are i.i.d. continuous random
numbers, so each image's ranking is a uniformly random permutation (and each label's ranking of the
images too). It is computed exactly, never simulated:
- each image puts a given label in its top k with probability q = k/L, independently of the others;
- O-F1 = 2C / (kN + P) is linear in the number C of correct predictions, so E[O-F1] = 2qP / (kN + P);
- given that m images predict class c, they are a uniformly random m-subset of the N images, so
  E[P_c] = (pos_c / N) * (1 - (1 - q)^N) and E[R_c] = q;
- E[AP] of a class with R relevant among N images is (H_N + (R-1)/(N-1) * (N - H_N)) / N;
- C-F1 is not linear in the counts: its expectation is a sum over the exact joint distribution of
  every class's (correct, predicted) counts, built type by type (images with the same positive set
  share a multinomial over the possible top-k sets). When that distribution would exceed
  `max_states`, C-F1's chance is left out (None) rather than estimated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

from labelspace.evaluation.metrics import (
    _f1,
    average_precision,
    mean_average_precision,
    topk_mask,
    topk_metrics,
)

MAX_STATES = 5_000_000


def _kept(targets: Any) -> np.ndarray:
    t = np.asarray(targets).astype(bool)
    if t.ndim != 2:
        raise ValueError(f"targets must be (N, L), got shape {t.shape}")
    t = t[t.any(axis=1)]  # images without a positive are left out, as in labelspace.evaluation.metrics
    if t.shape[0] == 0:
        raise ValueError("no image has a positive label: no chance figure to compute")
    return t


def expected_average_precision(n_items: int, n_relevant: int) -> float:
    """E[AP] of a uniformly random ranking of n_items holding n_relevant relevant ones."""
    if not 1 <= n_relevant <= n_items:
        raise ValueError(f"need 1 <= n_relevant <= n_items, got {n_relevant} of {n_items}")
    if n_items == 1:
        return 1.0
    harmonic = sum(1.0 / r for r in range(1, n_items + 1))
    return (harmonic + (n_relevant - 1) / (n_items - 1) * (n_items - harmonic)) / n_items


def chance_mean_average_precision(targets: Any) -> float:
    """E[mAP] under random scores: the mean of E[AP] over classes with >= 1 positive."""
    t = _kept(targets)
    n = t.shape[0]
    return float(np.mean([expected_average_precision(n, int(r)) for r in t.sum(axis=0) if r > 0]))


def _compositions(n: int, parts: int) -> np.ndarray:
    """Every (x_1..x_parts) of non-negative ints summing to n, as rows (stars and bars)."""
    rows = []
    for bars in combinations(range(n + parts - 1), parts - 1):
        edges = (-1, *bars, n + parts - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(parts)])
    return np.array(rows, dtype=np.int64)


def _expected_class_f1(t: np.ndarray, k: int, max_states: int) -> float | None:
    """E[C-F1] by the exact joint distribution of the evaluated classes' counts; None if too large."""
    n_labels = t.shape[1]
    evaluated = np.flatnonzero(t.any(axis=0))
    choices = [np.isin(np.arange(n_labels), c) for c in combinations(range(n_labels), k)]
    choices = np.array(choices)[:, evaluated]  # (m, E): which evaluated classes each top-k set holds
    m, n_eval = choices.shape
    types, counts = np.unique(t[:, evaluated], axis=0, return_counts=True)
    size = 1.0
    for count in counts:
        size *= math.comb(int(count) + m - 1, m - 1)
    if size > max_states:
        return None
    # State: correct counts (E) then predicted counts (E) of the evaluated classes.
    states = np.zeros((1, 2 * n_eval), dtype=np.int64)
    probs = np.ones(1)
    for positive_set, count in zip(types, counts, strict=True):
        outcomes = _compositions(int(count), m)  # how many images of this type pick each top-k set
        log_p = (math.lgamma(count + 1) - np.sum([[math.lgamma(x + 1) for x in row] for row in outcomes], axis=1)
                 - count * math.log(m))
        predicted = outcomes @ choices  # (O, E)
        correct = outcomes @ (choices & positive_set)
        increments = np.concatenate([correct, predicted], axis=1)
        states = (states[:, None, :] + increments[None, :, :]).reshape(-1, 2 * n_eval)
        probs = (probs[:, None] * np.exp(log_p)[None, :]).ravel()
        states, inverse = np.unique(states, axis=0, return_inverse=True)
        probs = np.bincount(inverse.ravel(), weights=probs, minlength=len(states))
    correct, predicted = states[:, :n_eval].astype(float), states[:, n_eval:].astype(float)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0).mean(axis=1)
    recall = (correct / t[:, evaluated].sum(axis=0)).mean(axis=1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    return float(probs @ f1)


def chance_topk_metrics(targets: Any, k: int, max_states: int = MAX_STATES) -> dict[str, float | None]:
    """Exact expected C-P, C-R, C-F1, O-P, O-R, O-F1 of top-k predictions under random scores."""
    t = _kept(targets)
    n, n_labels = t.shape
    k = min(k, n_labels)
    q = k / n_labels
    positives = t.sum(axis=0)
    total = float(positives.sum())
    evaluated = positives > 0
    class_p = positives[evaluated] / n * (1 - (1 - q) ** n)
    return {
        "C-P": float(class_p.mean()),
        "C-R": q,
        "C-F1": _expected_class_f1(t, k, max_states),
        "O-P": q * total / (k * n),
        "O-R": q,
        "O-F1": 2 * q * total / (k * n + total),
    }


def zero_shot_metrics(scores: Any, targets: Any, labels: list[str], k: int = 1,
                      more_ks: Sequence[int] = ()) -> dict[str, Any]:
    """Top-k metrics and mAP of ranking only the held-out `labels`, beside their exact chance figures.

    scores and targets: (N, len(labels)) for the evaluated images; rows without any held-out
    positive are left out (and counted). `ratio` divides each figure by its chance. `more_ks`: other
    top-k figures, each where k is below the number of labels (NUS-WIDE's 81 unseen: F1@3, F1@5).
    """
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if s.shape != t.shape or s.shape[1] != len(labels):
        raise ValueError(f"scores {s.shape} and targets {t.shape} must both be (N, {len(labels)})")
    keep = t.astype(bool).any(axis=1)
    if not keep.any():
        raise ValueError(f"no evaluated image has any of the held-out labels {labels}: nothing to evaluate")
    s, t = s[keep], t[keep]
    top = topk_metrics(s, t, k)
    chance_top = chance_topk_metrics(t, k)
    result: dict[str, Any] = {
        "labels": list(labels),
        "n_images": int(keep.sum()),
        "positives_per_label": {label: int(c) for label, c in zip(labels, t.sum(axis=0), strict=True)},
        f"top{k}": top,
        "mAP": mean_average_precision(s, t),
        "chance": {f"top{k}": chance_top, "mAP": chance_mean_average_precision(t)},
    }
    result["ratio"] = {}
    for kk in dict.fromkeys([k, *(kk for kk in more_ks if kk < len(labels))]):
        if kk != k:
            result[f"top{kk}"], result["chance"][f"top{kk}"] = topk_metrics(s, t, kk), chance_topk_metrics(t, kk)
        top, chance_top = result[f"top{kk}"], result["chance"][f"top{kk}"]
        result["ratio"].update({f"top{kk}_{key}": (top[key] / chance_top[key] if chance_top[key] else None)
                                for key in ("O-F1", "C-F1")})
    result["ratio"]["mAP"] = result["mAP"] / result["chance"]["mAP"]
    return result


def _hypergeometric_pmf(population: int, successes: int, draws: int) -> np.ndarray:
    """P(X = x), x = 0..draws, of the successes among `draws` items drawn without replacement."""
    total = math.comb(population, draws)
    return np.array([math.comb(successes, x) * math.comb(population - successes, draws - x) / total
                     for x in range(draws + 1)])


def _sum_pmf(pmf: np.ndarray, n: int) -> np.ndarray:
    """The pmf of the sum of n independent copies of a variable with `pmf` (FFT convolutions by
    repeated squaring: exact up to float rounding, clipped at 0 and renormalised)."""
    from scipy.signal import fftconvolve

    result, power = np.ones(1), pmf
    while n:
        if n & 1:
            result = np.clip(fftconvolve(result, power), 0, None)
        n >>= 1
        if n:
            power = np.clip(fftconvolve(power, power), 0, None)
        result, power = result / result.sum(), power / power.sum()
    return result


def chance_restricted_topk(targets: Any, columns: np.ndarray, k: int) -> dict[str, float | None]:
    """Exact expected O-P, O-R, O-F1, C-P, C-R of top-k predictions over all L labels, counted on
    `columns` only, when each image's top-k is a uniformly random k-subset of the labels.

    With u = len(columns), q = k/L, P positives on the columns over N images: the number m_i of the
    columns in image i's top-k is hypergeometric (L, u, k), independent over images; given m_i the
    columns predicted are a uniform m_i-subset, so E[correct_i | m_i] = m_i pos_i / u, and given the
    total M = sum m_i, E[m_i | M] = M / N (the m_i are exchangeable). Hence E[correct | M] = M P / (N u),
    E[O-P] = P / (N u) * Pr(M > 0), E[O-R] = q, E[O-F1] = sum_M Pr(M) * 2 M P / (N u) / (M + P), with
    M's exact distribution (the N-fold convolution). Per class, as in `chance_topk_metrics`.
    C-F1 is not linear in the counts and is left out (None)."""
    t = _kept(targets)
    n, n_labels = t.shape
    columns = np.asarray(columns)
    u, k = len(columns), min(k, n_labels)
    q = k / n_labels
    positives = t[:, columns].sum(axis=0)
    total = float(positives.sum())
    pmf = _sum_pmf(_hypergeometric_pmf(n_labels, u, k), n)
    m = np.arange(len(pmf), dtype=np.float64)
    expected_correct = m * total / (n * u)
    evaluated = positives > 0
    return {
        "C-P": float((positives[evaluated] / n * (1 - (1 - q) ** n)).mean()) if evaluated.any() else 0.0,
        "C-R": q,
        "C-F1": None,
        "O-P": float(total / (n * u) * (1 - pmf[0])),
        "O-R": q,
        "O-F1": float(pmf @ np.divide(2 * expected_correct, m + total, out=np.zeros_like(m), where=m + total > 0)),
    }


def _trained_f1(scores: np.ndarray, targets: np.ndarray, joint: np.ndarray, trained: np.ndarray, k: int) -> dict:
    """The training labels' O-F1 in the joint top-k (`joint`, every label ranked) and in their own top-k,
    both on the images holding a training label (as labelspace.evaluation.metrics counts them)."""
    rows = targets[:, trained].any(axis=1)
    if not len(trained) or not rows.any():
        return {}
    t = targets[rows][:, trained]
    predicted = joint[rows][:, trained]
    return {"trained_O-F1": float(2 * (predicted & t).sum() / (predicted.sum() + t.sum())),
            "trained_alone_O-F1": topk_metrics(scores[rows][:, trained], t, k)["O-F1"]}


def generalized_zero_shot_metrics(scores: Any, targets: Any, labels: list[str], held_out: list[str],
                                  ks: tuple[int, ...] = (3, 5)) -> dict[str, Any]:
    """GZSL: every label (trained and held out) ranked together on every test image with a positive;
    top-k precision, recall and F1 counted on the held-out labels, their mAP over those images,
    `unseen_share` (the share of top-k slots the held-out labels take: 0 when the trained labels
    crowd them out), each beside exact chance (`chance_restricted_topk`, `expected_average_precision`),
    and what the training labels keep: their O-F1 in the joint top-k (`trained_O-F1`) beside their
    top-k ranked alone (`trained_alone_O-F1`)."""
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if s.shape != t.shape or s.shape[1] != len(labels):
        raise ValueError(f"scores {s.shape} and targets {t.shape} must both be (N, {len(labels)})")
    columns = np.array([labels.index(label) for label in held_out])
    keep = t.any(axis=1)
    s, t = s[keep], t[keep]
    n = int(keep.sum())
    positives = t[:, columns].sum(axis=0)
    evaluated = positives > 0
    if not evaluated.any():
        raise ValueError(f"no test image holds any of the held-out labels {held_out}: nothing to evaluate")
    result: dict[str, Any] = {"labels": list(held_out), "n_labels_ranked": len(labels), "n_images": n,
                              "chance": {}, "ratio": {}}
    trained = np.setdiff1d(np.arange(len(labels)), columns)
    for k in ks:
        mask = topk_mask(s, k)
        pred = mask[:, columns]
        correct, predicted = (pred & t[:, columns]).sum(axis=0).astype(float), pred.sum(axis=0).astype(float)
        p = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)[evaluated]
        r = (correct[evaluated] / positives[evaluated])
        op = float(correct.sum() / predicted.sum()) if predicted.sum() else 0.0
        orr = float(correct.sum() / positives.sum())
        cp, cr = float(p.mean()), float(r.mean())
        result[f"top{k}"] = {"C-P": cp, "C-R": cr, "C-F1": _f1(cp, cr), "O-P": op, "O-R": orr, "O-F1": _f1(op, orr),
                             "unseen_share": float(predicted.sum() / (n * min(k, len(labels)))),
                             # the training labels' own O-F1 in this joint top-k, beside theirs ranked alone
                             **_trained_f1(s, t, mask, trained, k)}
        chance = chance_restricted_topk(t, columns, k)
        chance["unseen_share"] = len(columns) / len(labels)
        result["chance"][f"top{k}"] = chance
        result["ratio"][f"top{k}_O-F1"] = result[f"top{k}"]["O-F1"] / chance["O-F1"] if chance["O-F1"] else None
    result["mAP"] = float(np.mean([average_precision(s[:, c], t[:, c]) for c in columns[evaluated]]))
    result["chance"]["mAP"] = float(np.mean([expected_average_precision(n, int(r)) for r in positives[evaluated]]))
    result["ratio"]["mAP"] = result["mAP"] / result["chance"]["mAP"]
    return result


def unseen_shift_for_cost(seen_scores: Any, unseen_scores: Any, seen_targets: Any, max_cost: float, *, k: int = 3,
                          step: float = 0.25, limit: float = 8.0) -> dict[str, float]:
    """How far back words never trained on must go so that they cost the training labels at most
    `max_cost` of O-F1 in the joint top-k (GZSL's `trained_O-F1` against `trained_alone_O-F1`).

    `seen_scores` (N, S) and `unseen_scores` (N, H) are one model's scores of N images (validation:
    the held-out labels' annotations are not needed, only the training labels'), `step` and `limit`
    in the units the unseen scores are lowered by. Returns the smallest shift in {0, step, 2 step, ...,
    limit} that meets the bound (`limit` when none does), with the cost and the unseen words' share of
    the top-k slots before and after it."""
    seen, unseen = np.asarray(seen_scores, dtype=np.float64), np.asarray(unseen_scores, dtype=np.float64)
    t = np.asarray(seen_targets).astype(bool)
    if seen.shape != t.shape or unseen.shape[0] != seen.shape[0]:
        raise ValueError(f"seen scores {seen.shape}, seen targets {t.shape} and unseen scores {unseen.shape} "
                         "must be (N, S), (N, S) and (N, H)")
    trained = np.arange(seen.shape[1])
    targets = np.concatenate([t, np.zeros(unseen.shape, dtype=bool)], axis=1)

    def measure(shift: float) -> tuple[float, float]:
        scores = np.concatenate([seen, unseen - shift], axis=1)
        mask = topk_mask(scores, k)
        f1 = _trained_f1(scores, targets, mask, trained, k)
        cost = f1["trained_alone_O-F1"] - f1["trained_O-F1"] if f1 else 0.0
        return float(cost), float(mask[:, seen.shape[1]:].sum() / (len(scores) * min(k, scores.shape[1])))

    cost_before, share_before = measure(0.0)
    shift, (cost, share) = 0.0, (cost_before, share_before)
    while cost > max_cost and shift < limit:
        shift = min(shift + step, limit)
        cost, share = measure(shift)
    return {"shift": shift, "cost_before": cost_before, "share_before": share_before, "cost": cost, "share": share}
