"""The training pipeline: ingest -> embed_labels -> train (label space, BCE baseline) -> evaluate -> register."""

from __future__ import annotations

from zenml import Model, pipeline
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

from steps.embed_labels import embed_labels
from steps.evaluate import evaluate
from steps.ingest import ingest
from steps.register import register
from steps.train import train

EXPERIMENT = "labelspace"


@pipeline(
    name="labelspace_training",
    model=Model(name="labelspace", description="Image-conditioned label space for multilabel tagging"),
    settings={"experiment_tracker": MLFlowExperimentTrackerSettings(experiment_name=EXPERIMENT)},
)
def training_pipeline(
    dataset: str,
    dataset_version: str,
    vectors_path: str,
    vectors_version: str,
    params: dict,
    params_hash: str,
    code_root: str,
    cache_dir: str,
    checkpoint_dir: str,
    report_path: str,
) -> None:
    """All parameters come from params.yaml (`params`); paths are absolute; versions are DVC hashes."""
    held_out = params.get("evaluate", {}).get("zero_shot_labels", [])
    training_params = {name: params.get(name, {}) for name in ("model", "loss", "train")}
    manifest, concepts, _, image_arrays, data_version = ingest(
        dataset=dataset, dataset_version=dataset_version, image_size=params["ingest"]["image_size"],
        cache_dir=cache_dir,
    )
    labels, label_vectors, _ = embed_labels(
        concepts=concepts, vectors_path=vectors_path, vectors_version=vectors_version,
        aliases=params.get("embedding", {}).get("aliases") or {}, limit=params["vectors"].get("limit"),
    )
    common = dict(manifest=manifest, labels=labels, label_vectors=label_vectors, image_arrays=image_arrays,
                  dataset_version=data_version, params=training_params, checkpoint_dir=checkpoint_dir,
                  held_out=held_out)
    model = train(head="labelspace", id="train", **common)
    baseline = train(head="bce", id="train_baseline", **common)
    # Not cached: it writes reports/ (DVC's metrics and plots), which must exist after every run.
    metrics = evaluate.with_options(enable_cache=False)(
        manifest=manifest, image_arrays=image_arrays, labelspace_model=model, bce_model=baseline,
        labels=labels, label_vectors=label_vectors, params=params.get("evaluate", {}), report_path=report_path,
    )
    register(
        model=model, metrics=metrics, image_arrays=image_arrays, dataset_version=data_version,
        vectors_path=vectors_path, vectors_version=vectors_version, params_hash=params_hash,
        params=params.get("register", {}), code_root=code_root,
    )
