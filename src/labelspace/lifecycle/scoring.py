"""The champion, scored on the challenger's test split: loaded from the registry, evaluated exactly as
labelspace.evaluation.evaluate scores a freshly trained label space (same features, same scores, same
metrics, same zero-shot ranking of the held-out labels), so the gate compares like with like.

When the champion cannot be compared on this data (its bundle cannot be loaded, or it was trained on
labels this dataset does not have) the reason comes back instead of metrics, and the gate decides by
the absolute minimums alone.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelspace.model.bundle import TrainedModel


@dataclass(frozen=True)
class Scored:
    report: dict[str, Any] | None  # {"labelspace": ..., "zero_shot": ...} as in reports/metrics.json
    note: str | None  # why there is no report, or what is missing from it


def load_version_bundle(model_name: str, version: str, client) -> TrainedModel:
    """The label-space bundle inside a registered version (the served pyfunc's `artifacts/bundle`)."""
    import mlflow

    root = client.get_model_version_download_uri(model_name, str(version)).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="labelspace-champion-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/artifacts/bundle", dst_path=tmp)
        return TrainedModel.load(Path(path))


def score_label_space(model: TrainedModel, manifest: pd.DataFrame, images: np.ndarray, concepts: list[str],
                      concept_vectors: np.ndarray, held_out: list[str], top_k: list[int], *,
                      reference_labels: list[str] | None = None, feature_batch_size: int = 128,
                      device: str = "auto") -> Scored:
    """The label space's test-split report on `manifest`/`images` (every concept of the dataset in
    `concepts`, their word vectors in `concept_vectors`; `held_out` ranked alone for zero-shot)."""
    from labelspace.data.splits import split_indices
    from labelspace.evaluation.evaluate import score_test_split, zero_shot_report
    from labelspace.model.inference import resolve_device

    missing = [label for label in model.labels if label not in concepts]
    if missing:
        return Scored(None, f"it was trained on label(s) this dataset lacks ({', '.join(missing)})")
    test_idx = split_indices(manifest)["test"]
    dev = resolve_device(device)
    scored = score_test_split(model, manifest, images, test_idx, tuple(top_k), dev, feature_batch_size,
                              desc="champion test features")
    report: dict[str, Any] = {"labelspace": scored.report}
    notes = []
    zero_shot = [label for label in held_out if label in concepts]
    trained_on = [label for label in zero_shot if label in model.labels]
    if trained_on:
        notes.append(f"it was trained on the held-out label(s) {', '.join(trained_on)}: no zero-shot figures")
    elif zero_shot:
        figures = zero_shot_report(scored.network, scored.features, manifest.iloc[test_idx], concepts,
                                   concept_vectors, zero_shot, dev, tuple(top_k))
        if figures["n_images"]:  # no test image holds a held-out label: no zero-shot figures to compare
            report["zero_shot"] = figures
    if reference_labels is not None and set(model.labels) != set(reference_labels):
        notes.append(f"its {len(model.labels)} trained labels differ from the challenger's {len(reference_labels)}")
    return Scored(report, "; ".join(notes) or None)


def champion_scorer(model_name: str, manifest: pd.DataFrame, prepared_data: dict[str, Any], concepts: list[str],
                    concept_vectors: np.ndarray, held_out: list[str], top_k: list[int], *,
                    reference_labels: list[str] | None = None, feature_batch_size: int = 128):
    """score(version) -> Scored: that registered version on this run's test split, at its own image size
    (decoded once into the data cache beside the run's own arrays when it differs)."""
    import dataclasses

    from labelspace.data.prepared import prepared
    from labelspace.lifecycle.retry import client as mlflow_client

    data = prepared(prepared_data)

    def score(version: str) -> Scored:
        bundle = load_version_bundle(model_name, version, mlflow_client())
        images = data if bundle.spec.image_size == data.image_size else dataclasses.replace(
            data, image_size=bundle.spec.image_size)
        return score_label_space(bundle, manifest, images.images(), concepts, concept_vectors, held_out, top_k,
                                 reference_labels=reference_labels, feature_batch_size=feature_batch_size)

    return score
