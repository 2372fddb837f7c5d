"""Step: read a NUS-WIDE-layout dataset into a manifest and decode its images once (labelspace.data.prepared)."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step


@step(experiment_tracker=True)
def ingest(
    dataset: str, dataset_version: str, image_size: int, shard_size: int | None, cache_dir: str,
    labels: str = "concepts",
) -> tuple[
    Annotated[pd.DataFrame, "manifest"],
    Annotated[list[str], "concepts"],
    Annotated[dict, "ingest_report"],
    Annotated[dict, "prepared_data"],
]:
    """`dataset_version` (DVC's hash of the dataset) keys ZenML's cache and the data cache alike, with
    `labels`, the label set read (ingest.labels)."""
    from labelspace.data.prepared import PreparedData
    from labelspace.lifecycle.tracking import log_ingest_report

    data = PreparedData(dataset=dataset, version=dataset_version, image_size=image_size, cache_dir=cache_dir,
                        shard_size=shard_size, labels=labels)
    report = data.ensure()
    manifest, concepts = data.manifest()
    counts = log_ingest_report(report)
    log_metadata(metadata={"dataset": dataset, "dataset_version": dataset_version, "label_set": labels, **counts})
    return manifest, concepts, report, data.to_dict()
