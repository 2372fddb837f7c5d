"""run_training: the data versions, the held-out labels and the stack, then the training pipeline on
one typed config (its arguments from labelspace.pipelines.training.pipeline_arguments)."""

from __future__ import annotations

import json
import os
from typing import Any

from zenml.client import Client
from zenml.config.schedule import Schedule
from zenml.enums import StackComponentType

from labelspace.config import Config
from labelspace.data.dvc_versions import dataset_version
from labelspace.data.nuswide import read_concepts, unseen_labels
from labelspace.lifecycle.tracking import configure_mlflow, ensure_experiment
from labelspace.lifecycle.training_inputs import input_paths
from labelspace.pipelines.kubeflow import kubeflow_options, pipeline_graph
from labelspace.pipelines.stack import ensure_stack
from labelspace.pipelines.training import EXPERIMENT, pipeline_arguments, training_pipeline
from labelspace.training.fit import held_out_for


def run_training(config: Config, *, dataset: str | None = None, vectors: str | None = None,
                 no_cache: bool = False) -> dict[str, Any]:
    """Run `labelspace_training` on `config` (dataset and vectors default to params.yaml's); returns
    the metrics report. `no_cache` reruns every step and retrains from scratch (no checkpoint resume)."""
    return run_pipeline(config, dataset=dataset, vectors=vectors, no_cache=no_cache)[0]


def run_pipeline(config: Config, *, dataset: str | None = None, vectors: str | None = None,
                 no_cache: bool = False, schedule: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """As run_training, returning (metrics report, the gate step's `gate_report`). `schedule`, a cron
    expression, hands the pipeline to an orchestrator that supports schedules (Kubeflow, Airflow,
    Vertex, ...; not the local one) instead of running it: ({}, {}) then (docs/lifecycle.md)."""
    root = config.root
    dataset_path, vectors_path = input_paths(config, dataset=dataset, vectors=vectors)
    versions = {"dataset": dataset_version(dataset_path, root), "vectors": dataset_version(vectors_path, root)}
    print(f"dataset {dataset_path} @ {versions['dataset']}\nvectors {vectors_path} @ {versions['vectors']}")
    held_out = held_out_for(config.evaluate, read_concepts(dataset_path),
                            unseen=unseen_labels(dataset_path, config.ingest.labels))
    print(f"zero-shot labels ({held_out.rule}): {', '.join(held_out.labels) or 'none'}")

    tracking_uri = configure_mlflow(root)
    ensure_experiment(EXPERIMENT, root)
    ensure_stack(tracking_uri)
    options: dict[str, Any] = {"enable_cache": not no_cache}
    if schedule:
        options["schedule"] = Schedule(name="labelspace-retrain", cron_expression=schedule)
    options.update(orchestrator_options(config))
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        run = training_pipeline.with_options(**options)(**pipeline_arguments(
            config, dataset=dataset_path, vectors=vectors_path, dataset_version=versions["dataset"],
            vectors_version=versions["vectors"], held_out=held_out, resume=not no_cache))
    finally:
        # ZenML's MLflow tracker ends each step with mlflow.set_tracking_uri(""), which empties
        # $MLFLOW_TRACKING_URI here: a team's server would then read as the project's sqlite.
        if exported is not None:
            os.environ["MLFLOW_TRACKING_URI"] = exported
        configure_mlflow(root)
    if schedule:
        return {}, {}
    return json.loads(config.resolve(config.evaluate.report).read_text()), _gate_report(run)


def orchestrator_options(config: Config) -> dict[str, Any]:
    """On a Kubeflow stack, the image and per-step resources of the compiled spec (the train steps on a
    GPU node; labelspace.pipelines.kubeflow); nothing on the local orchestrator."""
    orchestrators = Client().active_stack_model.components.get(StackComponentType.ORCHESTRATOR) or []
    if not orchestrators or orchestrators[0].flavor_name != "kubeflow":
        return {}
    return kubeflow_options(pipeline_graph(config))


def _gate_report(run) -> dict[str, Any]:
    steps = Client().get_pipeline_run(run.id).steps
    if "gate" not in steps or not steps["gate"].outputs.get("gate_report"):
        return {}
    return steps["gate"].outputs["gate_report"][0].load()

