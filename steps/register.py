"""Step: log the label-space model as an MLflow pyfunc and register it as `challenger`, with lineage."""

import hashlib
import io
from typing import Annotated

import numpy as np
from zenml import get_step_context, log_metadata, step

from labelspace.artifacts import TrainedModel


def weights_content_hash(model: TrainedModel) -> str:
    """Hash of the trained weights and vocabulary: the same model is never registered twice."""
    h = hashlib.sha256()
    for name in sorted(model.state_dict):
        h.update(name.encode())
        h.update(model.state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    h.update("\n".join(model.labels).encode())
    return h.hexdigest()[:16]


@step(experiment_tracker=True)
def register(
    model: TrainedModel,
    metrics: dict,
    image_arrays: str,
    dataset_version: str,
    vectors_path: str,
    vectors_version: str,
    params_hash: str,
    params: dict,
    code_root: str,
) -> Annotated[dict, "registered_model_version"]:
    """`params` is the register section of params.yaml (model_name, alias, open_vocabulary_size, gates)."""
    from PIL import Image

    from labelspace.backbones import file_sha256
    from labelspace.lineage import lineage_tags
    from labelspace.preprocess import load_image_arrays
    from labelspace.registry import find_version_by_tag, register_model
    from labelspace.serving import log_labelspace_model
    from labelspace.word_vectors import load_word_vectors

    name, alias = params.get("model_name", "labelspace"), params.get("alias", "challenger")
    content_hash = weights_content_hash(model)
    existing = find_version_by_tag(name, "model.content_hash", content_hash)
    if existing is not None:
        print(f"{name} version {existing.version} already holds these weights: nothing registered")
        return {"name": name, "version": str(existing.version), "new": False}

    context = get_step_context()
    weights_file = model.config.get("weights_path")
    if weights_file is None and model.config.get("pretrained"):
        from labelspace.backbones import create_backbone

        weights_file = create_backbone(model.config["backbone"], pretrained=True).weights_file
    zenml_model = context.model
    top3 = metrics.get("labelspace", {}).get("top3", {})
    tags = lineage_tags(
        dataset_version=dataset_version, vectors_version=vectors_version, params_hash=params_hash,
        zenml_run_id=str(context.pipeline_run.id), backbone=model.config["backbone"],
        weights_hash=file_sha256(weights_file), repo_root=code_root,
        zenml_model_name=zenml_model.name if zenml_model else None,
        zenml_model_version=str(zenml_model.version) if zenml_model else None,
        extra={"model.content_hash": content_hash,
               **{f"metrics.top3.{k}": f"{top3[k]:.4f}" for k in ("C-F1", "O-F1") if k in top3}},
    )

    n_open = int(params.get("open_vocabulary_size", 0))
    open_vocabulary = None
    if n_open > 0:
        kv = load_word_vectors(vectors_path, limit=n_open)
        open_vocabulary = (list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32))
    arrays = load_image_arrays(image_arrays)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(arrays[0])).save(buffer, format="JPEG", quality=95)
    image_size = int(arrays.shape[1])
    info = log_labelspace_model(
        model.build(), model.labels, model.label_vectors,
        {**model.config, "image_size": image_size, "calibration": model.calibration},
        open_vocabulary=open_vocabulary, input_example_image=buffer.getvalue(),
    )
    version = register_model(info.model_uri, model_name=name, alias=alias, tags=tags,
                             description=f"labelspace {model.config['backbone']} k={model.config['k']}")
    record = {"name": name, "version": str(version.version), "alias": alias, "model_uri": info.model_uri,
              "new": True}
    if zenml_model is not None:  # link the ZenML model version to the MLflow one
        log_metadata(metadata={"mlflow_registered_model": name, "mlflow_model_version": str(version.version),
                               "mlflow_model_uri": info.model_uri}, infer_model=True)
    print(f"registered {name} version {version.version} as @{alias}")
    return record
