"""A trained head as one portable bundle: its spec, label vocabulary and vectors, weights, history
and calibration. The one on-disk format, used by ZenML's materializer and inside the served model.

Plain files (JSON, .npy, a tensors-only state_dict), never a pickled module, so a model moves
between ZenML, MLflow and a serving process by `build_model(spec)` and `load_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelspace.model.spec import ModelSpec, build_model

FORMAT_VERSION = 2
FILES = ("bundle.json", "label_vectors.npy", "weights.pt")


@dataclass
class TrainedModel:
    spec: ModelSpec
    labels: list[str]  # the training labels, in the order of the BCE head's outputs
    label_vectors: np.ndarray  # (L, d) word vectors of `labels`
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    # Thresholded decision fitted on validation (labelspace.evaluation.calibration); {} = none.
    calibration: dict[str, Any] = field(default_factory=dict)
    # Where the backbone's pretrained weights came from (file and hash), for lineage.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.spec.head

    def build(self) -> torch.nn.Module:
        """The network with these weights, in eval mode; no pretrained file is read."""
        model = build_model(self.spec)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def content_hash(self) -> str:
        """Hash of the weights and vocabulary: the same model is never registered twice."""
        h = hashlib.sha256()
        for name in sorted(self.state_dict):
            h.update(name.encode())
            h.update(self.state_dict[name].detach().cpu().contiguous().numpy().tobytes())
        h.update("\n".join(self.labels).encode())
        return h.hexdigest()[:16]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "spec": self.spec.to_dict(), "labels": self.labels,
                "history": self.history, "calibration": self.calibration, "provenance": self.provenance}
        (folder / "bundle.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        np.save(folder / "label_vectors.npy", np.asarray(self.label_vectors, dtype=np.float32))
        torch.save({k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()}, folder / "weights.pt")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TrainedModel:
        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a labelspace model bundle: no {', '.join(missing)}")
        meta = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder} holds bundle format {meta.get('format_version')}, this labelspace reads "
                             f"{FORMAT_VERSION}: retrain, or load it with the labelspace version that wrote it")
        return cls(
            spec=ModelSpec.from_dict(meta["spec"]),
            labels=meta["labels"],
            label_vectors=np.load(folder / "label_vectors.npy"),
            state_dict=torch.load(folder / "weights.pt", map_location="cpu", weights_only=True),
            history=meta.get("history", []),
            calibration=meta.get("calibration", {}),
            provenance=meta.get("provenance", {}),
        )
