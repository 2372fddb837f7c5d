"""Step: test-split metrics of the label space and the BCE baseline, the report file and the plots."""

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
    """`params` is the evaluate section of params.yaml (top_k, ...)."""
    import mlflow

    from labelspace import plots
    from labelspace.dataset import split_indices, target_matrix
    from labelspace.evaluation import evaluate_scores, flat_metrics, metrics_table
    from labelspace.metrics import per_class_f1
    from labelspace.preprocess import load_image_arrays
    from labelspace.training import predict_scores

    ks = tuple(params.get("top_k", (3, 5)))
    images = load_image_arrays(image_arrays)
    test_idx = split_indices(manifest)["test"]
    report: dict = {}
    f1_bars: dict[str, np.ndarray] = {}
    for name, trained in (("labelspace", labelspace_model), ("bce", bce_model)):
        scores = predict_scores(trained.build(), images, test_idx, trained.label_vectors)
        targets = target_matrix(manifest.iloc[test_idx], trained.labels)
        report[name] = evaluate_scores(scores, targets, ks)
        f1_bars[name] = per_class_f1(scores, targets, ks[0])
    report["data"] = {"n_test_images": int(len(test_idx)),
                      "n_test_images_without_labels": report["labelspace"][f"top{ks[0]}"]["n_images_without_labels"]}

    path = Path(report_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot_dir = path.parent / "plots"
    plot_dir.mkdir(exist_ok=True)
    figures = {
        "per_class_f1.png": plots.per_class_f1_bars(labelspace_model.labels, f1_bars, ks[0]),
        "training_curves.png": plots.training_curves({"labelspace": labelspace_model.history,
                                                      "bce": bce_model.history}),
        "label_vectors.png": plots.label_vector_map(labels, label_vectors,
                                                    highlight=sorted(set(labels) - set(labelspace_model.labels))),
    }
    for name, fig in figures.items():
        plots.save(fig, plot_dir / name)
        mlflow.log_artifact(str(plot_dir / name), artifact_path="plots")
    mlflow.log_artifact(str(path), artifact_path="reports")
    flat = {**flat_metrics(report["labelspace"], "labelspace"), **flat_metrics(report["bce"], "bce")}
    mlflow.log_metrics({k.replace("-", "_"): v for k, v in flat.items()})
    log_metadata(metadata={k.replace("-", "_"): v for k, v in flat.items()})
    print(metrics_table(report))
    return report
