"""run_training: the data versions, the stack, then the training pipeline on one typed config; the
ZenML side of a champion move (model version stages)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from labelspace.config import Config


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
    from labelspace.data.versions import dataset_version
    from labelspace.lifecycle.tracking import configure_mlflow, ensure_experiment
    from labelspace.training.fit import held_out_for

    root = config.root
    dataset_path = config.resolve(dataset or config.ingest.dataset)
    vectors_path = config.resolve(vectors or config.vectors.path)
    for what, path, fix in (("dataset", dataset_path, "run `dvc repro sample` or pass --dataset"),
                            ("word vectors", vectors_path, "run `dvc repro vectors` or pass --vectors")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist: {fix}")
    versions = {"dataset": dataset_version(dataset_path, root), "vectors": dataset_version(vectors_path, root)}
    print(f"dataset {dataset_path} @ {versions['dataset']}\nvectors {vectors_path} @ {versions['vectors']}")
    from labelspace.data.nuswide import read_concepts, unseen_labels

    held_out = held_out_for(config.evaluate, read_concepts(dataset_path),
                            unseen=unseen_labels(dataset_path, config.ingest.labels))
    print(f"zero-shot labels ({held_out.rule}): {', '.join(held_out.labels) or 'none'}")

    tracking_uri = configure_mlflow(root)
    from labelspace.pipelines.stack import ensure_stack
    from labelspace.pipelines.training import EXPERIMENT, training_pipeline

    ensure_experiment(EXPERIMENT, root)
    ensure_stack(tracking_uri)
    report_path = config.resolve(config.evaluate.report)
    options: dict[str, Any] = {"enable_cache": not no_cache}
    if schedule:
        from zenml.config.schedule import Schedule

        options["schedule"] = Schedule(name="labelspace-retrain", cron_expression=schedule)
    options.update(orchestrator_options(config))
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        run = _run(training_pipeline.with_options(**options), config, dataset_path, vectors_path, versions, held_out,
                   report_path, no_cache)
    finally:
        # ZenML's MLflow tracker ends each step with mlflow.set_tracking_uri(""), which empties
        # $MLFLOW_TRACKING_URI here: a team's server would then read as the project's sqlite.
        if exported is not None:
            os.environ["MLFLOW_TRACKING_URI"] = exported
        configure_mlflow(root)
    if schedule:
        return {}, {}
    return json.loads(Path(report_path).read_text()), _gate_report(run)


def orchestrator_options(config: Config) -> dict[str, Any]:
    """On a Kubeflow stack, the image and per-step resources of the compiled spec (the train steps on a
    GPU node; labelspace.pipelines.kubeflow); nothing on the local orchestrator."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    orchestrators = Client().active_stack_model.components.get(StackComponentType.ORCHESTRATOR) or []
    if not orchestrators or orchestrators[0].flavor_name != "kubeflow":
        return {}
    from labelspace.pipelines.kubeflow import kubeflow_options, pipeline_graph

    return kubeflow_options(pipeline_graph(config))


def _run(pipeline, config: Config, dataset_path, vectors_path, versions, held_out, report_path, no_cache):
    root = config.root
    return pipeline(
        dataset=str(dataset_path), dataset_version=versions["dataset"], image_size=config.ingest.image_size,
        shard_size=config.ingest.shard_size, labels_read=config.ingest.labels,
        cache_dir=str(config.resolve(config.ingest.cache_dir)), vectors_path=str(vectors_path),
        vectors_version=versions["vectors"], vectors=config.vectors, embedding=config.embedding, model=config.model,
        loss=config.loss, train_config=config.train, evaluate_config=config.evaluate,
        register_config=config.register, promote_config=config.promote, params=config.params,
        held_out=held_out.labels, not_concepts=held_out.not_concepts,
        params_hash=config.hash, project_root=str(root),
        checkpoint_dir=str(config.resolve(config.train.checkpoint_dir)), report_path=str(report_path),
        resume=not no_cache,
    )


def _gate_report(run) -> dict[str, Any]:
    from zenml.client import Client

    steps = Client().get_pipeline_run(run.id).steps
    if "gate" not in steps or not steps["gate"].outputs.get("gate_report"):
        return {}
    return steps["gate"].outputs["gate_report"][0].load()


def zenml_stage_hook(promoted, replaced) -> str:
    """ZenML's model versions follow a champion move: `production` for the MLflow version now champion
    (ZenML archives the one that was), `archived` for the one it replaced. The MLflow versions name their
    ZenML model version in the tags zenml.model_name / zenml.model_version. Returns what was done."""
    from zenml.client import Client
    from zenml.enums import ModelStages

    notes = []
    for version, stage in ((promoted, ModelStages.PRODUCTION), (replaced, ModelStages.ARCHIVED)):
        if version is None:
            continue
        name, number = version.tags.get("zenml.model_name"), version.tags.get("zenml.model_version")
        if not name or not number or "unknown" in (name, number):
            notes.append(f"MLflow version {version.version} names no ZenML model version")
            continue
        try:
            Client().update_model_version(name, number, stage=stage, force=True)
        except (KeyError, ValueError, RuntimeError) as e:
            notes.append(f"ZenML model {name} version {number} not updated ({str(e).splitlines()[0][:200]})")
            continue
        notes.append(f"ZenML model {name} version {number}: {stage.value}")
    return "; ".join(notes)
