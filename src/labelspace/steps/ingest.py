"""Step: read a NUS-WIDE-layout dataset into a manifest and decode its images once (labelspace.data.prepared)."""

from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from labelspace.config import IngestConfig


@step(experiment_tracker=True)
def ingest(ingest_config: IngestConfig, dataset_version: str) -> tuple[
    Annotated[pd.DataFrame, "manifest"],
    Annotated[list[str], "concepts"],
    Annotated[dict, "ingest_report"],
    Annotated[dict, "prepared_data"],
]:
    """`dataset_version` (DVC's hash of the dataset) keys ZenML's cache and the data cache alike, with
    the label set read (ingest.labels); ingest_config.dataset and cache_dir are absolute paths."""
    from labelspace.data.prepared import PreparedData
    from labelspace.lifecycle.tracking import log_ingest_report

    c = ingest_config
    data = PreparedData(dataset=c.dataset, version=dataset_version, image_size=c.image_size, cache_dir=c.cache_dir,
                        shard_size=c.shard_size, labels=c.labels)
    report = data.ensure()
    manifest, concepts = data.manifest()
    counts = log_ingest_report(report)
    log_metadata(metadata={"dataset": c.dataset, "dataset_version": dataset_version, "label_set": c.labels, **counts})
    return manifest, concepts, report, data.to_dict()
