"""Step: test-split report of both heads, zero-shot, the plots (labelspace.evaluation.evaluate)."""

from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelspace.config import EvaluateConfig
from labelspace.model.bundle import TrainedModel
from labelspace.training.fit import HeldOut


@step(experiment_tracker=True)
def evaluate(
    manifest: pd.DataFrame, prepared_data: dict, labelspace_model: TrainedModel, bce_model: TrainedModel,
    labels: list[str], label_vectors: np.ndarray, evaluate_config: EvaluateConfig, held_out: HeldOut,
    feature_batch_size: int, vectors_path: str = "", open_vocabulary_size: int = 0,
) -> Annotated[dict, "metrics"]:
    """Writes evaluate_config.report (DVC's metrics; absolute) and the plots beside it; logs both to MLflow.
    The labels are also ranked among the `open_vocabulary_size` most frequent words of `vectors_path`, as served."""
    from labelspace.data.prepared import prepared
    from labelspace.data.word_vectors import load_open_vocabulary
    from labelspace.evaluation.evaluate import evaluate_models, write_report
    from labelspace.evaluation.report import metrics_table
    from labelspace.lifecycle.tracking import log_evaluation

    report, figures = evaluate_models(
        manifest, prepared(prepared_data).images(), {"labelspace": labelspace_model, "bce": bce_model}, labels,
        label_vectors, evaluate_config, held_out, feature_batch_size=feature_batch_size,
        open_vocabulary=load_open_vocabulary(vectors_path, open_vocabulary_size))
    flat = log_evaluation(report, write_report(report, figures, evaluate_config.report))
    log_metadata(metadata=flat)
    print(metrics_table(report))
    return report
