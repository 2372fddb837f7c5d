"""Step: log the label-space model as an MLflow pyfunc and register it as `challenger`, with lineage."""

from typing import Annotated

from zenml import get_step_context, log_metadata, step

from labelspace.config import RegisterConfig
from labelspace.model.bundle import TrainedModel


@step(experiment_tracker=True)
def register(
    model: TrainedModel, metrics: dict, prepared_data: dict, vectors_path: str, vectors_version: str,
    params_hash: str, register_config: RegisterConfig, project_root: str,
) -> Annotated[dict, "registered_model_version"]:
    """The same weights are never registered twice (the registry is searched by content hash)."""
    from labelspace.data.prepared import prepared
    from labelspace.lifecycle.registry import register_trained_model
    from labelspace.serving.package import package_inputs

    context = get_step_context()
    zenml_model = context.model
    record = register_trained_model(
        model, register_config, metrics=metrics, dataset_version=prepared(prepared_data).version,
        vectors_version=vectors_version, params_hash=params_hash, repo_root=project_root,
        zenml_run_id=str(context.pipeline_run.id),
        zenml_model=(zenml_model.name, str(zenml_model.version)) if zenml_model else None,
        package=lambda: package_inputs(prepared(prepared_data).images(), vectors_path,
                                      register_config.open_vocabulary_size),
    )
    if record["new"] and zenml_model is not None:  # link the ZenML model version to the MLflow one
        log_metadata(metadata={"mlflow_registered_model": record["name"], "mlflow_model_version": record["version"],
                               "mlflow_model_uri": record["model_uri"]}, infer_model=True)
    return record
