"""From an ingested manifest to what training needs: a 0/1 target matrix and the splits.

The validation split is carved from train by a hash of each image id, so it is stable when images
are added or removed, and the test split is never used for any choice.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def target_matrix(manifest: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """(N, L) uint8: targets[i, j] = 1 when labels[j] is among row i's labels. Other labels are ignored."""
    column = {label: j for j, label in enumerate(labels)}
    targets = np.zeros((len(manifest), len(labels)), dtype=np.uint8)
    for i, row_labels in enumerate(manifest["labels"]):
        for label in row_labels:
            j = column.get(label)
            if j is not None:
                targets[i, j] = 1
    return targets


def _unit_hash(image_id: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_indices(manifest: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices of `train`, `val` (carved from the release's train split) and `test`."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"train.val_fraction must be in [0, 1), got {val_fraction}")
    split = manifest["split"].to_numpy()
    in_val = np.array([_unit_hash(str(i), seed) < val_fraction for i in manifest["image_id"]], dtype=bool)
    return {
        "train": np.flatnonzero((split == "train") & ~in_val),
        "val": np.flatnonzero((split == "train") & in_val),
        "test": np.flatnonzero(split == "test"),
    }
