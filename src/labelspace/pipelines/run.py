"""run_training: the data versions, the stack, then the training pipeline on one typed config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labelspace.config import Config


def run_training(config: Config, *, dataset: str | None = None, vectors: str | None = None,
                 no_cache: bool = False) -> dict[str, Any]:
    """Run `labelspace_training` on `config` (dataset and vectors default to params.yaml's); returns
    the metrics report. `no_cache` reruns every step and retrains from scratch (no checkpoint resume)."""
    from labelspace.data.versions import dataset_version
    from labelspace.lifecycle.tracking import configure_mlflow, ensure_experiment
    from labelspace.training.fit import held_out_labels

    root = config.root
    dataset_path = config.resolve(dataset or config.ingest.dataset)
    vectors_path = config.resolve(vectors or config.vectors.path)
    for what, path, fix in (("dataset", dataset_path, "run `dvc repro sample` or pass --dataset"),
                            ("word vectors", vectors_path, "run `dvc repro vectors` or pass --vectors")):
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist: {fix}")
    versions = {"dataset": dataset_version(dataset_path, root), "vectors": dataset_version(vectors_path, root)}
    print(f"dataset {dataset_path} @ {versions['dataset']}\nvectors {vectors_path} @ {versions['vectors']}")
    from labelspace.data.nuswide import read_concepts

    held_out = held_out_labels(config.evaluate.zero_shot_labels, read_concepts(dataset_path))

    tracking_uri = configure_mlflow(root)
    from labelspace.pipelines.stack import ensure_stack
    from labelspace.pipelines.training import EXPERIMENT, training_pipeline

    ensure_experiment(EXPERIMENT, root)
    ensure_stack(tracking_uri)
    report_path = config.resolve(config.evaluate.report)
    training_pipeline.with_options(enable_cache=not no_cache)(
        dataset=str(dataset_path), dataset_version=versions["dataset"], image_size=config.ingest.image_size,
        cache_dir=str(config.resolve(config.ingest.cache_dir)), vectors_path=str(vectors_path),
        vectors_version=versions["vectors"], vectors=config.vectors, embedding=config.embedding, model=config.model,
        loss=config.loss, train_config=config.train, evaluate_config=config.evaluate,
        register_config=config.register, held_out=held_out.labels, not_concepts=held_out.not_concepts,
        params_hash=config.hash, project_root=str(root),
        checkpoint_dir=str(config.resolve(config.train.checkpoint_dir)), report_path=str(report_path),
        resume=not no_cache,
    )
    return json.loads(Path(report_path).read_text())
