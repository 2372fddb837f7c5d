"""A dataset prepared for training: its manifest and its decoded images, cached by data version.

`data/cache/<data version>/` holds the manifest (`labelspace ingest`) and the images decoded once at
one size (`labelspace preprocess`); another label set of the same data (`ingest.labels`, e.g.
NUS-WIDE's zero-shot split) has a folder of its own, `<data version>-<label set>/`. This is the one owner of that cache: it is content-addressed by
the data version and the image size, built on first use, and rebuilt whenever a piece is missing, so
a step that ZenML took from its cache never hands on a path to files that are gone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labelspace.data.nuswide import ingest, read_manifest, report_path
from labelspace.data.preprocess import build_image_arrays, load_image_arrays
from labelspace.data.shards import INDEX_FILE, ShardedImages, _read_json, write_shards


@dataclass(frozen=True)
class PreparedData:
    dataset: str  # absolute path of the dataset in the NUS-WIDE layout
    version: str  # its DVC hash (or a fingerprint when DVC does not track it)
    image_size: int
    cache_dir: str
    shard_size: int | None = None  # ingest.shard_size: decoded into shards of this many images, else one array
    labels: str = "concepts"  # ingest.labels: the label set the manifest reads (labelspace.data.nuswide)

    @property
    def folder(self) -> Path:
        suffix = "" if self.labels == "concepts" else f"-{self.labels}"
        return Path(self.cache_dir) / (self.version.replace("/", "_") + suffix)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.parquet"

    @property
    def arrays_dir(self) -> Path:
        suffix = f"-shards-{self.shard_size}" if self.shard_size else ""
        return self.folder / f"images-{self.image_size}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def ensure(self) -> dict[str, Any]:
        """Ingest and decode what is not cached yet; returns the ingest report."""
        if not self.manifest_path.is_file() or not report_path(self.manifest_path).is_file():
            ingest(self.dataset, self.manifest_path, labels=self.labels)
        if self.shard_size:
            self._ensure_shards()
        else:
            build_image_arrays(self.manifest_path, self.dataset, self.image_size, self.arrays_dir,
                               data_version=self.version)
        return json.loads(report_path(self.manifest_path).read_text(encoding="utf-8"))

    def manifest(self) -> tuple[pd.DataFrame, list[str]]:
        if not self.manifest_path.is_file():
            self.ensure()
        return read_manifest(self.manifest_path)

    def unseen_labels(self) -> list[str]:
        """The label set's own unseen labels (NUS-WIDE's zero-shot split: the concepts), else []."""
        from labelspace.data.nuswide import read_label_sets

        if not self.manifest_path.is_file():
            self.ensure()
        return list(read_label_sets(self.manifest_path)["unseen"])

    def images(self) -> np.ndarray | ShardedImages:
        """(N, S, S, 3) uint8, memory-mapped, in manifest row order (one array, or its shards)."""
        self.ensure()
        return ShardedImages(self.arrays_dir) if self.shard_size else load_image_arrays(self.arrays_dir)

    def _ensure_shards(self) -> None:
        from labelspace.data.preprocess import _file_sha256

        source = f"{_file_sha256(self.manifest_path)}:{self.version}"
        index = _read_json(self.arrays_dir / INDEX_FILE)
        if index is not None and index.get("source") == source:
            return
        manifest, _ = read_manifest(self.manifest_path)
        write_shards([Path(self.dataset) / rel for rel in manifest["path"]], self.image_size, self.arrays_dir,
                     shard_size=self.shard_size, source_hash=source)


def prepared(data: dict[str, Any] | PreparedData) -> PreparedData:
    return data if isinstance(data, PreparedData) else PreparedData(**data)
