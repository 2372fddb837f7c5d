"""The image-conditioned label space model and its BCE baseline.

Image -> backbone features -> linear head -> A (k x d). A label with word vector w is at distance
D = ||A w||^2 from the image (small = relevant); the ranking score is -D. Any word with a vector
can be ranked, so the label set at inference need not be the training set.
"""

from __future__ import annotations

import torch
from torch import nn

from labelspace.backbones import create_backbone


def label_distances(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """D[b, l] = ||A_b w_l||^2 for A (B, k, d) and W (L, d), as one batched matmul -> (B, L)."""
    if A.ndim != 3 or W.ndim != 2 or A.shape[2] != W.shape[1]:
        raise ValueError(f"A must be (B, k, d) and W (L, d) with the same d; got {tuple(A.shape)}, {tuple(W.shape)}")
    projected = A @ W.t().to(A.dtype)  # (B, k, L)
    return projected.pow(2).sum(dim=1)  # (B, L)


class LabelSpaceModel(nn.Module):
    """backbone -> Linear(features, k*d) -> A (B, k, d)."""

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        k: int = 100,
        d: int = 300,
        pretrained: bool = True,
        weights_path: str | None = None,
        freeze_backbone: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.k, self.d = k, d
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights_path=weights_path)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, k * d)
        # Scale the head so ||A w||^2 starts near ||w||^2 for unit-variance features: the margin
        # then has a meaning independent of k.
        nn.init.normal_(self.head.weight, std=(1.0 / (k * self.backbone.num_features)) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm keeps its ImageNet statistics
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Head only, for training on cached backbone features: (B, F) -> A (B, k, d)."""
        return self.head(self.dropout(feats)).view(-1, self.k, self.d)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(images))  # (B, k, d)

    def distances(self, images: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return label_distances(self(images), W)  # (B, L)

    def scores(self, images: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Ranking scores, higher = more relevant: -||A w||^2."""
        return -self.distances(images, W)


class BCEBaselineModel(nn.Module):
    """The baseline always reported beside the label space: same backbone, linear sigmoid head."""

    def __init__(
        self,
        n_labels: int,
        backbone: str = "efficientnet_lite0",
        pretrained: bool = True,
        weights_path: str | None = None,
        freeze_backbone: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights_path=weights_path)
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, n_labels)

    features = LabelSpaceModel.features

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats))  # (B, L) logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(images))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)
