"""evaluate_models: the test-split report of the label space and its BCE baseline, and its figures.

The report is what `reports/metrics.json` holds (schema in labelspace.evaluation.report): top-k,
mAP and the thresholded decision of each head over the trained labels, the zero-shot figures of the
held-out labels beside exact chance, and what was evaluated. No ZenML and no MLflow here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from labelspace.config import EvaluateConfig
from labelspace.data.splits import split_indices, target_matrix
from labelspace.evaluation import plots
from labelspace.evaluation.calibration import calibrated_probabilities
from labelspace.evaluation.metrics import per_class_f1
from labelspace.evaluation.open_vocabulary import (
    nearest_words,
    open_vocabulary_metrics,
    open_vocabulary_words,
)
from labelspace.evaluation.report import evaluate_scores
from labelspace.evaluation.zero_shot import generalized_zero_shot_metrics, zero_shot_metrics
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import extract_features, resolve_device, scores_from_features
from labelspace.training.fit import HeldOut

HEADS = ("labelspace", "bce")


def evaluate_models(
    manifest: pd.DataFrame,
    images: np.ndarray,
    models: dict[str, TrainedModel],
    labels: list[str],
    label_vectors: np.ndarray,
    config: EvaluateConfig,
    held_out: HeldOut,
    *,
    device: str = "auto",
    feature_batch_size: int = 128,
    open_vocabulary: tuple[list[str], np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, figures by file name) for `models` {"labelspace": ..., "bce": ...} on the test split.

    `labels`/`label_vectors` are every concept of the dataset; the held-out ones (never trained on)
    are ranked alone by the label space under "zero_shot".
    """
    ks = tuple(config.top_k)
    test_idx = split_indices(manifest)["test"]
    dev = resolve_device(device)
    report: dict[str, Any] = {}
    f1_bars: dict[str, np.ndarray] = {}
    reliability: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labelspace_model = models["labelspace"]
    # Held out and embedded: a held-out label without a word vector cannot be ranked (counted below).
    zero_shot_labels = [label for label in held_out.labels if label not in labelspace_model.labels and label in labels]
    no_vector = [label for label in held_out.labels if label not in labels]
    report["zero_shot"] = {"labels": [], "note": "no label held out: evaluate.zero_shot_labels names no "
                                                 "concept of this dataset"}
    for name in HEADS:
        trained = models[name]
        scored = score_test_split(trained, manifest, images, test_idx, ks, dev, feature_batch_size,
                                  desc=f"{name} test features")
        scores, targets = scored.scores, scored.targets
        report[name] = scored.report
        f1_bars[name] = per_class_f1(scores, targets, ks[0])
        if trained.calibration:
            reliability[name] = (calibrated_probabilities(scores, trained.calibration), targets)
        if name == "labelspace" and zero_shot_labels:
            report["zero_shot"] = zero_shot_report(scored.network, scored.features, manifest.iloc[test_idx], labels,
                                                   label_vectors, zero_shot_labels, dev, ks)
        if name == "labelspace" and open_vocabulary is not None:
            words, vectors = open_vocabulary_words(labels, *open_vocabulary)
            nearest = nearest_words(scored.network, scored.features, np.concatenate([label_vectors, vectors]), dev,
                                    max(5, *ks))
            report["open_vocabulary"] = open_vocabulary_metrics(
                nearest, labels, target_matrix(manifest.iloc[test_idx], labels), words, zero_shot_labels, (1, 5))
    if held_out.not_concepts:
        report["zero_shot"]["not_concepts"] = list(held_out.not_concepts)
    if no_vector:
        report["zero_shot"]["no_vector"] = no_vector
    report["data"] = {"n_test_images": int(len(test_idx)),
                      "n_test_images_without_labels": report["labelspace"][f"top{ks[0]}"]["n_images_without_labels"],
                      "evaluated_labels": list(labelspace_model.labels), "held_out_labels": zero_shot_labels}
    figures = {
        "per_class_f1.png": plots.per_class_f1_bars(labelspace_model.labels, f1_bars, ks[0]),
        "training_curves.png": plots.training_curves({name: models[name].history for name in HEADS}),
        "label_vectors.png": plots.label_vector_map(labels, label_vectors, highlight=zero_shot_labels),
    }
    if reliability:
        figures["reliability.png"] = plots.reliability_diagram(reliability)
    return report, figures


@dataclass(frozen=True)
class TestScores:
    """A trained head on the test split: its network and the test images' backbone features (ranked
    again for zero-shot and open-vocabulary words), the scores and 0/1 targets of its own labels, and
    their report (labelspace.evaluation.report.evaluate_scores)."""

    network: torch.nn.Module
    features: torch.Tensor
    scores: np.ndarray
    targets: np.ndarray
    report: dict[str, Any]


def score_test_split(trained: TrainedModel, manifest: pd.DataFrame, images: np.ndarray, test_idx: np.ndarray,
                     ks: tuple[int, ...], device: torch.device, feature_batch_size: int = 128, *,
                     desc: str = "test features") -> TestScores:
    """`trained` scored on images[test_idx] over its own labels: how `evaluate_models` scores each head,
    and the gate the champion (labelspace.lifecycle.scoring), so that both compare like with like."""
    network = trained.build().to(device)
    feats = extract_features(network, images, test_idx, device, feature_batch_size, desc=desc)
    scores = scores_from_features(network, feats, trained.label_vectors, device)
    targets = target_matrix(manifest.iloc[test_idx], trained.labels)
    return TestScores(network, feats, scores, targets, evaluate_scores(scores, targets, ks, trained.calibration))


def zero_shot_report(model, feats, test_rows: pd.DataFrame, labels: list[str], label_vectors: np.ndarray,
                     held_out: list[str], device, ks: tuple[int, ...]) -> dict[str, Any]:
    """ZSL (the held-out labels ranked alone: top-1, and top-k for each k below their number) and, under "gzsl", GZSL (every concept ranked
    together; the held-out labels' top-k and mAP), each beside exact chance. `feats` are the backbone
    features of `test_rows`' images; with no held-out label among them, "n_images" is 0 and a note says so."""
    scores = scores_from_features(model, feats, label_vectors, device)
    targets = target_matrix(test_rows, labels)
    rows = [labels.index(label) for label in held_out]
    if not targets[:, rows].any():
        return {"labels": held_out, "n_images": 0, "note": "no test image holds a held-out label: nothing to rank"}
    result = {"model": "labelspace", **zero_shot_metrics(scores[:, rows], targets[:, rows], held_out, k=1, more_ks=ks)}
    result["gzsl"] = generalized_zero_shot_metrics(scores, targets, labels, held_out, ks)
    return result


def write_report(report: dict[str, Any], figures: dict[str, Any], report_path: str | Path) -> list[Path]:
    """reports/metrics.json and reports/plots/*.png (DVC's metrics and plots); returns the files written."""
    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot_dir = path.parent / "plots"
    plot_dir.mkdir(exist_ok=True)
    written = [path]
    for name, fig in figures.items():
        plots.save(fig, plot_dir / name)
        written.append(plot_dir / name)
    return written
