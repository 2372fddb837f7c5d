"""Evaluation of ranking scores in the shape `reports/metrics.json` uses, and its table."""

from __future__ import annotations

from typing import Any

import numpy as np

from labelspace.metrics import mean_average_precision, topk_metrics

TABLE_KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")


def evaluate_scores(scores: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (3, 5)) -> dict[str, Any]:
    """{"top3": topk_metrics(...), "top5": ..., "mAP": x} for one model's scores on one split."""
    result: dict[str, Any] = {f"top{k}": topk_metrics(scores, targets, k) for k in ks}
    result["mAP"] = mean_average_precision(scores, targets)
    return result


def flat_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """MLflow-friendly keys: `labelspace_top3_C-F1`, `labelspace_mAP`, ... (fractions)."""
    flat = {}
    for key, value in result.items():
        if isinstance(value, dict):
            for name, v in value.items():
                if isinstance(v, (int, float)):
                    flat[f"{prefix}_{key}_{name}"] = float(v)
        elif isinstance(value, (int, float)):
            flat[f"{prefix}_{key}"] = float(value)
    return flat


def metrics_table(report: dict[str, Any], models: tuple[str, ...] = ("labelspace", "bce")) -> str:
    """Plain-text table, in percent, of every model's top-k metrics and mAP."""
    present = [m for m in models if m in report]
    ks = sorted({key for m in present for key in report[m] if key.startswith("top")}, key=lambda s: int(s[3:]))
    header = f"{'model':<12}{'top-k':>6}" + "".join(f"{k:>8}" for k in TABLE_KEYS) + f"{'mAP':>8}"
    lines = [header, "-" * len(header)]
    for m in present:
        for k in ks:
            row = report[m][k]
            lines.append(f"{m:<12}{k[3:]:>6}" + "".join(f"{100 * row[key]:>8.1f}" for key in TABLE_KEYS)
                         + f"{100 * report[m]['mAP']:>8.1f}")
    return "\n".join(lines)
