"""Step: test-split metrics of the label space and the BCE baseline, zero-shot, the report and plots."""

import json
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelspace.artifacts import TrainedModel


@step(experiment_tracker=True)
def evaluate(
    manifest: pd.DataFrame,
    image_arrays: str,
    labelspace_model: TrainedModel,
    bce_model: TrainedModel,
    labels: list[str],
    label_vectors: np.ndarray,
    params: dict,
    report_path: str,
) -> Annotated[dict, "metrics"]:
    """`params` is the evaluate section of params.yaml (top_k, zero_shot_labels, ...).

    top-k, mAP and the thresholded decision are over the trained labels; the held-out labels
    (evaluate.zero_shot_labels, never trained on) are ranked alone under "zero_shot".
    """
    import mlflow

    from labelspace import plots
    from labelspace.calibration import calibrated_probabilities
    from labelspace.dataset import split_indices, target_matrix
    from labelspace.evaluation import evaluate_scores, flat_metrics, metrics_table
    from labelspace.metrics import per_class_f1
    from labelspace.preprocess import load_image_arrays
    from labelspace.training import extract_features, resolve_device, scores_from_features
    from labelspace.zero_shot import zero_shot_metrics

    ks = tuple(params.get("top_k", (3, 5)))
    images = load_image_arrays(image_arrays)
    test_idx = split_indices(manifest)["test"]
    device = resolve_device("auto")
    report: dict = {}
    f1_bars: dict[str, np.ndarray] = {}
    calibration_inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    # Held-out labels that are not concepts of this dataset (e.g. `--dataset` NUS-WIDE with the
    # embedded set's defaults) are skipped, and said so in the report, so one params.yaml runs on both.
    wanted = list(params.get("zero_shot_labels", []))
    held_out = [label for label in wanted if label in labels and label not in labelspace_model.labels]
    not_concepts = [label for label in wanted if label not in labels]
    for name, trained in (("labelspace", labelspace_model), ("bce", bce_model)):
        model = trained.build().to(device)
        feats = extract_features(model, images, test_idx, device, desc=f"{name} test features")
        scores = scores_from_features(model, feats, trained.label_vectors, device)
        targets = target_matrix(manifest.iloc[test_idx], trained.labels)
        report[name] = evaluate_scores(scores, targets, ks, trained.calibration)
        f1_bars[name] = per_class_f1(scores, targets, ks[0])
        if trained.calibration:
            calibration_inputs[name] = (calibrated_probabilities(scores, trained.calibration), targets)
        if name == "labelspace" and held_out:
            rows = [labels.index(label) for label in held_out]
            held_scores = scores_from_features(model, feats, label_vectors[rows], device)
            held_targets = target_matrix(manifest.iloc[test_idx], held_out)
            if held_targets.any():
                report["zero_shot"] = {"model": "labelspace",
                                       **zero_shot_metrics(held_scores, held_targets, held_out, k=1)}
            else:
                report["zero_shot"] = {"labels": held_out, "n_images": 0,
                                       "note": "no test image holds a held-out label: nothing to rank"}
    if not held_out:  # nothing held out, or no held-out name is a concept of this dataset
        report["zero_shot"] = {"labels": [], "note": "no label held out: evaluate.zero_shot_labels names no "
                                                     "concept of this dataset"}
    if not_concepts:
        report["zero_shot"]["not_concepts"] = not_concepts
    report["data"] = {"n_test_images": int(len(test_idx)),
                      "n_test_images_without_labels": report["labelspace"][f"top{ks[0]}"]["n_images_without_labels"],
                      "evaluated_labels": list(labelspace_model.labels), "held_out_labels": held_out}

    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot_dir = path.parent / "plots"
    plot_dir.mkdir(exist_ok=True)
    figures = {
        "per_class_f1.png": plots.per_class_f1_bars(labelspace_model.labels, f1_bars, ks[0]),
        "training_curves.png": plots.training_curves({"labelspace": labelspace_model.history,
                                                      "bce": bce_model.history}),
        "label_vectors.png": plots.label_vector_map(labels, label_vectors, highlight=held_out),
    }
    if calibration_inputs:
        figures["reliability.png"] = plots.reliability_diagram(calibration_inputs)
    for name, fig in figures.items():
        plots.save(fig, plot_dir / name)
        mlflow.log_artifact(str(plot_dir / name), artifact_path="plots")
    mlflow.log_artifact(str(path), artifact_path="reports")
    flat = {**flat_metrics(report["labelspace"], "labelspace"), **flat_metrics(report["bce"], "bce"),
            **flat_metrics({k: v for k, v in report["zero_shot"].items() if k != "positives_per_label"}, "zero_shot")}
    mlflow.log_metrics({k.replace("-", "_"): v for k, v in flat.items()})
    log_metadata(metadata={k.replace("-", "_"): v for k, v in flat.items()})
    print(metrics_table(report))
    return report
