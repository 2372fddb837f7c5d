"""Helpers shared by test modules: the project's typed params with some fields changed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from labelspace.config import Config, SampleConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_config() -> Config:
    return load_config(REPO_ROOT / "params.yaml")


def sample_config(**changes) -> SampleConfig:
    """params.yaml's `sample` section with `changes` (a small embedded dataset for a test)."""
    return dataclasses.replace(project_config().sample, **changes)


def labelspace_bundle(labels, vectors, *, k=4, image_size=64, seed=0, calibration=None, **options):
    """A real label-space TrainedModel (pretrained EfficientNet-Lite0, untrained head seeded by `seed`);
    `options` set normalize / center_words / learn_scale. Returns (bundle, the network itself)."""
    import numpy as np
    import torch

    from labelspace.model.bundle import TrainedModel
    from labelspace.model.spec import ModelSpec, build_model

    vectors = np.asarray(vectors, dtype=np.float32)
    shape = {"normalize": False, "center_words": False, "learn_scale": False, **options}
    spec = ModelSpec(head="labelspace", backbone="efficientnet_lite0", k=k, d=int(vectors.shape[1]),
                     n_labels=len(labels), dropout=0.0, freeze_backbone=True, image_size=image_size, **shape)
    torch.manual_seed(seed)
    model = build_model(spec, pretrained=True).eval()
    bundle = TrainedModel(spec=spec, labels=list(labels), label_vectors=vectors, state_dict=model.state_dict(),
                          calibration=calibration or {})
    return bundle, model
