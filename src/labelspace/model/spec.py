"""One description of a network, and the one function that builds it.

A `ModelSpec` holds everything the architecture depends on (head, backbone, k, d, the number of
labels, the label-space options, the input size). Training, the ZenML materializer, evaluation and
serving all rebuild a model with `build_model(spec)`; pretrained weights are read only when a
model is first created for training (`pretrained=True`), never when trained weights follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

HEADS = ("labelspace", "bce")


@dataclass(frozen=True)
class ModelSpec:
    head: str  # "labelspace" (||A w||^2) or "bce" (the linear sigmoid baseline)
    backbone: str
    k: int  # rows of A (label space only)
    d: int  # word-vector dimension
    n_labels: int  # training labels (the BCE head's outputs)
    dropout: float
    normalize: bool
    center_words: bool
    learn_scale: bool
    freeze_backbone: bool
    image_size: int  # side of the square input the model was trained on
    # "raw", "absent" or "standardized" (labelspace.model.networks); bundles written before it existed are "raw".
    open_words: str = "raw"
    # Leading backbone stages kept at their pretrained weights end to end (0 before it existed).
    frozen_stages: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}: choose one of {', '.join(HEADS)}")

    @classmethod
    def from_config(cls, model, *, head: str, n_labels: int, d: int, image_size: int) -> ModelSpec:
        """The spec of `model` (config.ModelConfig) for `n_labels` labels of dimension `d`."""
        return cls(head=head, backbone=model.backbone, k=model.k, d=d, n_labels=n_labels, dropout=model.dropout,
                   normalize=model.normalize, center_words=model.center_words, learn_scale=model.learn_scale,
                   freeze_backbone=model.freeze_backbone, image_size=image_size,
                   open_words=model.open_words, frozen_stages=model.frozen_stages)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"not a labelspace model spec: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; "
                             "the bundle was written by another labelspace version: retrain or use that version")
        return cls(**data)


def build_model(spec: ModelSpec, *, pretrained: bool = False, weights_path: str | None = None) -> nn.Module:
    """The network `spec` describes. `pretrained` loads the backbone's ImageNet weights (from the
    packaged file or `weights_path`); leave it False when a state_dict follows."""
    from labelspace.model.networks import BCEBaselineModel, LabelSpaceModel

    common = dict(backbone=spec.backbone, pretrained=pretrained, weights_path=weights_path if pretrained else None,
                  freeze_backbone=spec.freeze_backbone, frozen_stages=spec.frozen_stages, dropout=spec.dropout)
    if spec.head == "labelspace":
        return LabelSpaceModel(k=spec.k, d=spec.d, normalize=spec.normalize, center_words=spec.center_words,
                               learn_scale=spec.learn_scale, open_words=spec.open_words, **common)
    return BCEBaselineModel(n_labels=spec.n_labels, **common)
