"""The training pipeline: ingest -> embed_labels -> train (label space, BCE baseline) -> evaluate -> register
-> gate (the challenger against the champion on the same test split; labelspace.lifecycle.gatekeeper)."""

from __future__ import annotations

from zenml import Model, pipeline
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

from labelspace.config import (
    EmbeddingConfig,
    EvaluateConfig,
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

EXPERIMENT = "labelspace"


@pipeline(
    name="labelspace_training",
    model=Model(name="labelspace", description="Image-conditioned label space for multilabel tagging"),
    settings={"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=EXPERIMENT)},
)
def training_pipeline(
    dataset: str,
    dataset_version: str,
    image_size: int,
    shard_size: int | None,
    labels_read: str,
    cache_dir: str,
    vectors_path: str,
    vectors_version: str,
    vectors: VectorsConfig,
    embedding: EmbeddingConfig,
    model: ModelConfig,
    loss: LossConfig,
    train_config: TrainConfig,
    evaluate_config: EvaluateConfig,
    register_config: RegisterConfig,
    promote_config: PromoteConfig,
    params: dict,
    held_out: list[str],
    not_concepts: list[str],
    params_hash: str,
    project_root: str,
    checkpoint_dir: str,
    report_path: str,
    resume: bool = True,
) -> None:
    """Sections come from params.yaml (labelspace.config), `params` is the whole file (logged with the
    run); paths are absolute; versions are DVC hashes."""
    manifest, concepts, _, data = ingest(dataset=dataset, dataset_version=dataset_version, image_size=image_size,
                                         shard_size=shard_size, cache_dir=cache_dir, labels=labels_read)
    labels, label_vectors, _ = embed_labels(concepts=concepts, vectors=vectors, vectors_path=vectors_path,
                                            vectors_version=vectors_version, embedding=embedding)
    common = dict(manifest=manifest, labels=labels, label_vectors=label_vectors, prepared_data=data, model=model,
                  loss=loss, train=train_config, held_out=held_out, checkpoint_dir=checkpoint_dir, resume=resume)
    labelspace_model = train(head="labelspace", id="train", **common)
    baseline = train(head="bce", id="train_baseline", **common)
    # Not cached: it writes reports/ (DVC's metrics and plots), which must exist after every run.
    metrics = evaluate.with_options(enable_cache=False)(
        manifest=manifest, prepared_data=data, labelspace_model=labelspace_model, bce_model=baseline, labels=labels,
        label_vectors=label_vectors, evaluate=evaluate_config, held_out=held_out, not_concepts=not_concepts,
        report_path=report_path, feature_batch_size=train_config.feature_batch_size, vectors_path=vectors_path,
        open_vocabulary_size=register_config.open_vocabulary_size,
    )
    registered = register(model=labelspace_model, metrics=metrics, prepared_data=data, vectors_path=vectors_path,
                          vectors_version=vectors_version, params_hash=params_hash, register_config=register_config,
                          project_root=project_root)
    # The registry is the gate's state (who is champion): never taken from ZenML's cache.
    gate.with_options(enable_cache=False)(
        registered=registered, metrics=metrics, manifest=manifest, prepared_data=data, labels=labels,
        label_vectors=label_vectors, held_out=held_out, evaluate=evaluate_config, promote=promote_config,
        params=params, feature_batch_size=train_config.feature_batch_size,
    )
