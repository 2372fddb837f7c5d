"""Evaluation of ranking scores in the shape `reports/metrics.json` uses, and its table.

Shape: {"labelspace": {"top3": {...}, "top5": {...}, "mAP": x, "threshold": {...}}, "bce": {same},
"zero_shot": {...}, "data": {...}}. top-k and mAP are over the trained labels only; held-out labels
are evaluated apart, under "zero_shot" (labelspace.evaluation.zero_shot).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelspace.evaluation.calibration import threshold_metrics
from labelspace.evaluation.metrics import mean_average_precision, topk_metrics

TABLE_KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")


def evaluate_scores(
    scores: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (3, 5), calibration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """{"top3": topk_metrics(...), "top5": ..., "mAP": x[, "threshold": ...]} for one model on one split.

    With a calibration (TrainedModel.calibration), "threshold" holds the P/R/F1 of its decision.
    """
    result: dict[str, Any] = {f"top{k}": topk_metrics(scores, targets, k) for k in ks}
    result["mAP"] = mean_average_precision(scores, targets)
    if calibration:
        result["threshold"] = threshold_metrics(scores, targets, calibration)
    return result


def flat_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """MLflow-friendly keys: `labelspace_top3_C-F1`, `labelspace_mAP`, ... (fractions), at any depth.

    Only numbers are kept (not booleans, strings, lists or None).
    """
    flat: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}_{key}"
        if isinstance(value, dict):
            flat.update(flat_metrics(value, name))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _row(name: str, kind: str, row: dict[str, Any], mAP: float | str) -> str:
    cells = "".join(f"{100 * row[key]:>8.1f}" for key in TABLE_KEYS)
    m = f"{100 * mAP:>8.1f}" if isinstance(mAP, float) else f"{mAP:>8}"
    return f"{name:<12}{kind:>6}{cells}{m}"


def metrics_table(report: dict[str, Any], models: tuple[str, ...] = ("labelspace", "bce")) -> str:
    """Plain-text table, in percent, of every model's top-k metrics, thresholded decision and mAP,
    then the zero-shot figures beside their chance."""
    present = [m for m in models if m in report]
    ks = sorted({key for m in present for key in report[m] if key.startswith("top")}, key=lambda s: int(s[3:]))
    header = f"{'model':<12}{'top-k':>6}" + "".join(f"{k:>8}" for k in TABLE_KEYS) + f"{'mAP':>8}"
    lines = [header, "-" * len(header)]
    for m in present:
        for k in ks:
            lines.append(_row(m, k[3:], report[m][k], report[m]["mAP"]))
        if "threshold" in report[m]:
            lines.append(_row(m, "thr", report[m]["threshold"], "-"))
    labels = report.get("data", {}).get("evaluated_labels")
    if labels:
        lines.append(f"(top-k, thr: the {len(labels)} trained labels; thr: labels whose calibrated score passes "
                     "the validation-chosen threshold)")
    zero_shot = report.get("zero_shot", {})
    if zero_shot.get("labels") and "top1" in zero_shot:
        chance, held = zero_shot["chance"], zero_shot["labels"]
        named = ", ".join(held) if len(held) <= 12 else f"{len(held)} labels ({', '.join(held[:8])}, ...)"
        lines.append(f"\nzero-shot, held-out {named} ranked alone on the "
                     f"{zero_shot['n_images']} test images holding one:")
        for top in sorted((key for key in zero_shot if key.startswith("top")), key=lambda key: int(key[3:])):
            for key in ("O-F1", "C-F1"):
                value, c = zero_shot[top][key], chance[top][key]
                lines.append(f"  {key}@{top[3:]} {100 * value:5.1f}  chance {'n/a' if c is None else f'{100 * c:5.1f}'}"
                             + (f"  ({value / c:.2f}x)" if c else ""))
        lines.append(f"  mAP    {100 * zero_shot['mAP']:5.1f}  chance {100 * chance['mAP']:5.1f}  "
                     f"({zero_shot['mAP'] / chance['mAP']:.2f}x)")
    gzsl = zero_shot.get("gzsl")
    if gzsl:
        lines.append(f"generalized zero-shot, all {gzsl['n_labels_ranked']} concepts ranked together on the "
                     f"{gzsl['n_images']} test images with a label; counted on the held-out labels:")
        for key in sorted((k for k in gzsl if k.startswith("top")), key=lambda k: int(k[3:])):
            row, c = gzsl[key], gzsl["chance"][key]
            lines.append(f"  O-F1@{key[3:]} {100 * row['O-F1']:5.1f}  chance {100 * c['O-F1']:5.1f}"
                         + (f"  ({row['O-F1'] / c['O-F1']:.2f}x)" if c["O-F1"] else "")
                         + f"   share of top-{key[3:]} slots {100 * row['unseen_share']:.1f} "
                         f"(chance {100 * c['unseen_share']:.1f})"
                         + (f"   training labels' O-F1@{key[3:]} {100 * row['trained_O-F1']:.1f} "
                            f"(alone {100 * row['trained_alone_O-F1']:.1f})" if "trained_O-F1" in row else ""))
        lines.append(f"  mAP    {100 * gzsl['mAP']:5.1f}  chance {100 * gzsl['chance']['mAP']:5.1f}  "
                     f"({gzsl['ratio']['mAP']:.2f}x)")
    open_vocabulary = report.get("open_vocabulary")
    if open_vocabulary:
        chance = open_vocabulary["chance"]
        lines.append(f"open vocabulary, the {open_vocabulary['n_concepts']} concepts ranked among "
                     f"{open_vocabulary['n_words_ranked']} words on {open_vocabulary['n_images']} test images:")
        for key in ("hit@1", "hit@5", "held_out_hit@5", "concept_share@5"):
            if key in open_vocabulary:
                lines.append(f"  {key:<16}{100 * open_vocabulary[key]:6.1f}  chance {100 * chance[key]:6.2f}")
        lines.append("  most often first: " + ", ".join(f"{h['word']} ({100 * h['top1_share']:.0f}%)"
                                                   for h in open_vocabulary["hubs"][:5]))
    return "\n".join(lines)
