"""Step: the promotion gate, the pipeline's last (labelspace.lifecycle.promotion_gate): the challenger and
the champion scored on this run's test split, the decision recorded, champion moved when it passes."""

from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from labelspace.config import EvaluateConfig, PromoteConfig
from labelspace.steps.model_stages import zenml_stage_hook


@step(experiment_tracker=True)
def gate(
    registered: dict, metrics: dict, manifest: pd.DataFrame, prepared_data: dict, labels: list[str],
    label_vectors: np.ndarray, held_out: list[str], evaluate_config: EvaluateConfig, promote: PromoteConfig,
    params: dict, feature_batch_size: int,
) -> tuple[Annotated[str, "gate_decision"], Annotated[str, "champion_version"], Annotated[dict, "gate_report"]]:
    """gate_decision: promoted | passed (promote.auto false) | rejected | unchanged."""
    import mlflow

    from labelspace.lifecycle.promotion_gate import record_params, run_gate
    from labelspace.lifecycle.retry import client
    from labelspace.lifecycle.scoring import champion_scorer

    name, version = registered["name"], registered["version"]
    active = mlflow.active_run()
    record_params(client(), name, version, params, active.info.run_id if active else None)
    scorer = champion_scorer(name, manifest, prepared_data, labels, label_vectors, held_out, evaluate_config.top_k,
                             reference_labels=metrics.get("data", {}).get("evaluated_labels"),
                             feature_batch_size=feature_batch_size)
    result = run_gate(name, version, metrics, promote, scorer, stage_hook=zenml_stage_hook)
    print(result.line())
    log_metadata(metadata={"gate_decision": result.decision, "challenger_version": version,
                           "champion_version": result.champion or "none",
                           "compared_with": result.compared_with or "none", "reasons": "; ".join(result.reasons),
                           "gate_run_id": result.gate_run_id or ""})
    return result.decision, result.champion or "", result.to_dict()
