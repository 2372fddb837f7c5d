"""A trained head as one portable artifact: config, label vocabulary and vectors, and weights.

Saved as plain files (JSON, .npy, a tensors-only state_dict), never as a pickled module, so a model
moves between ZenML, MLflow and a serving process by rebuilding it from its config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelspace.training import TrainConfig, build_model


@dataclass
class TrainedModel:
    config: dict[str, Any]  # TrainConfig as a dict
    labels: list[str]  # the training labels, in the order of the BCE head's outputs
    label_vectors: np.ndarray  # (L, d) word vectors of `labels`
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    # Thresholded decision fitted on validation (labelspace.calibration.fit_calibration); {} = none.
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.config["head"]

    def build(self) -> torch.nn.Module:
        """The model with these weights; no pretrained file is read (the weights are all here)."""
        config = TrainConfig(**{**self.config, "pretrained": False, "weights_path": None})
        model = build_model(config, n_labels=len(self.labels), d=self.label_vectors.shape[1])
        model.load_state_dict(self.state_dict)
        return model.eval()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config, "labels": self.labels, "history": self.history,
                "calibration": self.calibration}
        (folder / "model.json").write_text(json.dumps(meta, indent=1, default=str))
        np.save(folder / "label_vectors.npy", np.asarray(self.label_vectors, dtype=np.float32))
        torch.save({k: v.detach().cpu() for k, v in self.state_dict.items()}, folder / "weights.pt")

    @classmethod
    def load(cls, folder: str | Path) -> TrainedModel:
        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        return cls(
            config=meta["config"],
            labels=meta["labels"],
            label_vectors=np.load(folder / "label_vectors.npy"),
            state_dict=torch.load(folder / "weights.pt", map_location="cpu", weights_only=True),
            history=meta.get("history", []),
            calibration=meta.get("calibration", {}),
        )
