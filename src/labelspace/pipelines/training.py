"""The training pipeline, ingest -> embed_labels -> train (label space, BCE baseline) -> evaluate ->
register -> gate (the challenger against the champion on the same test split), and the one function
that builds its arguments from the typed config: `labelspace run` and the Kubeflow compiler call it.

Sections of params.yaml travel whole and typed; each step takes the ones it reads, and ZenML's cache
keys a step on those fields (plus its code and inputs), so a change reruns exactly the steps that
read the changed key. A section named like a step (ingest, train, evaluate, register) is passed as
`<name>_config`, never under the step's own name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from zenml import Model, pipeline
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

from labelspace.app import params_hash
from labelspace.config import (
    Config,
    EmbeddingConfig,
    EvaluateConfig,
    IngestConfig,
    LossConfig,
    ModelConfig,
    PromoteConfig,
    RegisterConfig,
    TrainConfig,
    VectorsConfig,
)
from labelspace.steps.embed_labels import embed_labels
from labelspace.steps.evaluate import evaluate
from labelspace.steps.gate import gate
from labelspace.steps.ingest import ingest
from labelspace.steps.register import register
from labelspace.steps.train import train
from labelspace.training.fit import HeldOut

EXPERIMENT = "labelspace"


@pipeline(
    name="labelspace_training",
    model=Model(name="labelspace", description="Image-conditioned label space for multilabel tagging"),
    settings={"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=EXPERIMENT)},
)
def training_pipeline(
    ingest_config: IngestConfig,
    dataset_version: str,
    vectors: VectorsConfig,
    vectors_version: str,
    embedding: EmbeddingConfig,
    model: ModelConfig,
    loss: LossConfig,
    train_config: TrainConfig,
    evaluate_config: EvaluateConfig,
    register_config: RegisterConfig,
    promote: PromoteConfig,
    held_out: HeldOut,
    params: dict,
    project_root: str,
    resume: bool = True,
) -> None:
    """Build the arguments with `pipeline_arguments` (what each one holds is said there)."""
    manifest, concepts, _, data = ingest(ingest_config=ingest_config, dataset_version=dataset_version)
    labels, label_vectors, _ = embed_labels(concepts=concepts, vectors=vectors, vectors_version=vectors_version,
                                            embedding=embedding)
    # The heads need the held-out labels only: ZenML's cache keys them on those, not on the rule's wording.
    common = dict(manifest=manifest, labels=labels, label_vectors=label_vectors, prepared_data=data, model=model,
                  loss=loss, train_config=train_config, held_out=held_out.labels, resume=resume)
    labelspace_model = train(head="labelspace", id="train", **common)
    baseline = train(head="bce", id="train_baseline", **common)
    # Not cached: it writes reports/ (DVC's metrics and plots), which must exist after every run.
    metrics = evaluate.with_options(enable_cache=False)(
        manifest=manifest, prepared_data=data, labelspace_model=labelspace_model, bce_model=baseline, labels=labels,
        label_vectors=label_vectors, evaluate_config=evaluate_config, held_out=held_out,
        feature_batch_size=train_config.feature_batch_size, vectors_path=vectors.path,
        open_vocabulary_size=register_config.open_vocabulary_size,
    )
    registered = register(model=labelspace_model, metrics=metrics, prepared_data=data, vectors_path=vectors.path,
                          vectors_version=vectors_version, params_hash=params_hash(params),
                          register_config=register_config, project_root=project_root)
    # The registry is the gate's state (who is champion): never taken from ZenML's cache.
    gate.with_options(enable_cache=False)(
        registered=registered, metrics=metrics, manifest=manifest, prepared_data=data, labels=labels,
        label_vectors=label_vectors, held_out=held_out.labels, evaluate_config=evaluate_config, promote=promote,
        params=params, feature_batch_size=train_config.feature_batch_size,
    )


def pipeline_arguments(config: Config, *, dataset_version: str, vectors_version: str, held_out: HeldOut,
                       dataset: str | Path | None = None, vectors: str | Path | None = None,
                       resume: bool = True) -> dict[str, Any]:
    """`training_pipeline`'s arguments: every section of `config` it reads, with the paths the steps
    read and write made absolute against the project root (ingest.dataset and cache_dir, vectors.path,
    train.checkpoint_dir, evaluate.report; `dataset` and `vectors` replace the first and the third),
    the DVC versions of the dataset and the vectors, the held-out zero-shot labels, params.yaml itself
    (logged with the run, hashed for lineage) and the project root (its git commit is lineage too).
    `resume=False` retrains from scratch, ignoring checkpoints.

    The held-out labels are decided before the pipeline runs (labelspace.training.fit.held_out_for,
    from the dataset's concept list): as a parameter of the train steps they key ZenML's cache on
    the labels held out and nothing else. Reads no file: the Kubeflow compiler passes placeholders."""
    return dict(
        ingest_config=dataclasses.replace(config.ingest, dataset=str(config.resolve(dataset or config.ingest.dataset)),
                                          cache_dir=str(config.resolve(config.ingest.cache_dir))),
        dataset_version=dataset_version,
        vectors=dataclasses.replace(config.vectors, path=str(config.resolve(vectors or config.vectors.path))),
        vectors_version=vectors_version,
        embedding=config.embedding,
        model=config.model,
        loss=config.loss,
        train_config=dataclasses.replace(config.train, checkpoint_dir=str(config.resolve(config.train.checkpoint_dir))),
        evaluate_config=dataclasses.replace(config.evaluate, report=str(config.resolve(config.evaluate.report))),
        register_config=config.register,
        promote=config.promote,
        held_out=held_out,
        params=config.params,
        project_root=str(config.root),
        resume=resume,
    )
