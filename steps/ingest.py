"""Step: read a NUS-WIDE-layout dataset into a manifest and decode its images once."""

from pathlib import Path
from typing import Annotated, Tuple

import pandas as pd
from zenml import log_metadata, step


def cache_paths(cache_dir: str, dataset_version: str, image_size: int) -> Tuple[Path, Path]:
    """Where a data version's manifest and decoded arrays live: one folder per version."""
    folder = Path(cache_dir) / dataset_version.replace("/", "_")
    return folder / "manifest.parquet", folder / f"images-{image_size}"


@step(experiment_tracker=True)
def ingest(
    dataset: str, dataset_version: str, image_size: int, cache_dir: str
) -> Tuple[
    Annotated[pd.DataFrame, "manifest"],
    Annotated[list[str], "concepts"],
    Annotated[dict, "ingest_report"],
    Annotated[str, "image_arrays"],
    Annotated[str, "dataset_version"],
]:
    """`dataset_version` (DVC's hash of the dataset) keys the cache: new data, new manifest."""
    import mlflow

    from labelspace.nuswide import ingest as ingest_dataset
    from labelspace.nuswide import read_manifest
    from labelspace.preprocess import build_image_arrays

    manifest_path, arrays_dir = cache_paths(cache_dir, dataset_version, image_size)
    report = ingest_dataset(dataset, manifest_path)
    manifest, concepts = read_manifest(manifest_path)
    arrays = build_image_arrays(manifest_path, dataset, image_size, arrays_dir)
    counts = {k: v for k, v in report.items() if isinstance(v, (int, float))}
    # Every skipped image and stray label value, with file and line, beside the run's metrics.
    mlflow.log_dict(report, "data/ingest_report.json")
    mlflow.log_metrics({f"ingest_{k}": float(v) for k, v in counts.items()})
    log_metadata(metadata={"dataset": dataset, "dataset_version": dataset_version, **counts})
    return manifest, concepts, report, str(arrays), dataset_version
