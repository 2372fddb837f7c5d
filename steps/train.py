"""Step: train one head (the label space or the BCE baseline) with MLflow curves and checkpoints.

After training, the thresholded decision (Platt scaling and an O-F1-best threshold) is fitted on the
validation split and stored in the model, so serving returns the same decision evaluation measured.
"""

from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelspace.artifacts import TrainedModel
from steps.materializers import TrainedModelMaterializer


@step(experiment_tracker=True, output_materializers=TrainedModelMaterializer)
def train(
    manifest: pd.DataFrame,
    labels: list[str],
    label_vectors: np.ndarray,
    image_arrays: str,
    dataset_version: str,
    head: str,
    params: dict,
    checkpoint_dir: str,
    held_out: list[str] | None = None,
) -> Annotated[TrainedModel, "model"]:
    """`params` holds the model, loss and train sections of params.yaml; held-out labels never train."""
    import hashlib

    import mlflow
    import torch

    from labelspace.calibration import fit_calibration
    from labelspace.dataset import split_indices, target_matrix
    from labelspace.evaluation import flat_metrics
    from labelspace.metrics import mean_average_precision, topk_metrics
    from labelspace.preprocess import load_image_arrays
    from labelspace.training import TrainConfig, extract_features, scores_from_features, train_model

    config = TrainConfig.from_params(params, head=head)
    train_params = params.get("train", {})
    held = set(held_out or [])
    keep = [i for i, label in enumerate(labels) if label not in held]
    train_labels = [labels[i] for i in keep]
    vectors = label_vectors[keep]
    images = load_image_arrays(image_arrays)
    targets = target_matrix(manifest, train_labels)
    splits = split_indices(manifest, train_params.get("val_fraction", 0.1), train_params.get("seed", 0))

    val_cache: dict[str, torch.Tensor] = {}

    def val_scores(model):
        device = next(model.parameters()).device
        if config.freeze_backbone:
            if "feats" not in val_cache:
                val_cache["feats"] = extract_features(model, images, splits["val"], device, desc="val features")
            feats = val_cache["feats"]
        else:
            feats = extract_features(model, images, splits["val"], device, desc="val features")
        return scores_from_features(model, feats, vectors, device)

    def validate(model, epoch: int) -> dict[str, float]:
        y = targets[splits["val"]]
        if len(y) == 0 or not y.any():
            return {}
        scores = val_scores(model)
        top3 = topk_metrics(scores, y, 3)
        return {"val_mAP": mean_average_precision(scores, y), "val_top3_C-F1": top3["C-F1"],
                "val_top3_O-F1": top3["O-F1"]}

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        mlflow.log_metrics({f"{head}/{k}": float(v) for k, v in record.items() if k != "epoch"}, step=epoch)

    mlflow.log_params({f"{head}.{k}": v for k, v in vars(config).items() if k != "extra"})
    # Everything the weights depend on besides the config: a checkpoint of other data, vectors,
    # resolution or split is never resumed from.
    data_key = hashlib.sha256(b"\0".join([
        dataset_version.encode(), "\n".join(train_labels).encode(), np.ascontiguousarray(vectors).tobytes(),
        splits["train"].tobytes(), splits["val"].tobytes(), str(images.shape).encode(),
    ])).hexdigest()
    result = train_model(
        config, images, targets, splits["train"], vectors, data_key=data_key,
        checkpoint_dir=checkpoint_dir, on_epoch=on_epoch, validate=validate,
    )
    calibration: dict = {}
    try:
        calibration = fit_calibration(val_scores(result.model), targets[splits["val"]], head=head)
    except ValueError as e:  # e.g. no validation split: the model still ranks, without a threshold
        print(f"{head}: no thresholded decision: {e}")
    if calibration:
        mlflow.log_metrics({f"{head}/calibration_{k}": float(v) for k, v in calibration.items()
                            if isinstance(v, float)})
        mlflow.log_metrics({f"{head}/val_threshold_{k.replace('-', '_')}": float(v)
                            for k, v in calibration["validation"].items()})
    final = result.history[-1] if result.history else {}
    log_metadata(metadata={"head": head, "resumed_from_epoch": result.resumed_from_epoch,
                           "n_train_images": len(splits["train"]), "n_val_images": len(splits["val"]),
                           **flat_metrics({"final": {k: v for k, v in final.items() if k != "epoch"}}, head)})
    return TrainedModel(config=vars(config).copy(), labels=train_labels, label_vectors=vectors,
                        state_dict=result.model.state_dict(), history=result.history, calibration=calibration)
