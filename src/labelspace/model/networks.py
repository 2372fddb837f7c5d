"""The image-conditioned label space model and its BCE baseline.

Image -> backbone features -> linear head -> A (k x d). A label with word vector w is at distance
D = ||A w||^2 from the image (small = relevant); the ranking score is -D. Any word with a vector
can be ranked, so the label set at inference need not be the training set.

`normalize=True` measures D = ||Â ŵ||^2 with Â = A / ||A||_F and ŵ = w / ||w||: D lies in [0, 1] for
every image and word, so a margin and an absolute threshold mean the same thing on every image (the
paper's D has no fixed scale: a margin only sets how large A grows). `center_words=True` first
subtracts the mean of the training labels' vectors (a buffer in the state_dict), which removes the
direction every garment word shares and leaves the directions that tell labels apart.

`unseen_directions="absent"` fixes how words far from every training label are measured. Training
only ever shows A the span of the training labels' (prepared) vectors; under the unit-Frobenius
normalisation A puts its whole norm there, so the part of a word outside that span gets almost no
distance, and the words farthest from every training label (their vectors mostly outside the span)
come out nearest to every image: hubs. With "absent", D = ||Â P ŵ||^2 + δ ||(I - P) ŵ||^2, where P
projects onto that span and δ is the median distance of an absent training label on validation
(`fit_unseen_directions`, after training): the part of a word the model never learnt about counts
as what a typical absent label measures. A training label lies in the span, so its D is unchanged;
a word wholly outside it scores δ for every image (a typical absent label, never a hub); a near
synonym scores between its projection's D and δ, by how much of it lies in the span.
"""

from __future__ import annotations

import torch
from torch import nn

from labelspace.model.backbones import create_backbone


def label_distances(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """D[b, l] = ||A_b w_l||^2 for A (B, k, d) and W (L, d), as one batched matmul -> (B, L)."""
    if A.ndim != 3 or W.ndim != 2 or A.shape[2] != W.shape[1]:
        raise ValueError(f"A must be (B, k, d) and W (L, d) with the same d; got {tuple(A.shape)}, {tuple(W.shape)}")
    projected = A @ W.t().to(A.dtype)  # (B, k, L)
    return projected.pow(2).sum(dim=1)  # (B, L)


class LabelSpaceModel(nn.Module):
    """backbone -> Linear(features, k*d) -> A (B, k, d). Built through labelspace.model.spec.build_model."""

    def __init__(
        self,
        *,
        backbone: str,
        k: int,
        d: int,
        pretrained: bool,
        weights_path: str | None = None,
        freeze_backbone: bool,
        dropout: float,
        normalize: bool,
        center_words: bool,
        learn_scale: bool,
        unseen_directions: str = "raw",
    ) -> None:
        super().__init__()
        self.k, self.d = k, d
        self.normalize, self.center_words, self.learn_scale = normalize, center_words, learn_scale
        if unseen_directions not in ("raw", "absent"):
            raise ValueError(f"unseen_directions must be raw or absent, got {unseen_directions!r}")
        self.unseen_directions = unseen_directions
        if center_words:
            # Set from the training labels by set_word_center(); saved and restored with the weights.
            self.register_buffer("word_center", torch.zeros(d))
        if unseen_directions == "absent":
            # Set after training by fit_unseen_directions(); until then (while training) D is raw.
            self.register_buffer("label_span", torch.zeros(d, d))
            self.register_buffer("absent_distance", torch.full((), -1.0))  # below 0: not fitted
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))  # D is multiplied by exp(log_scale)
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

    def set_word_center(self, training_vectors: torch.Tensor) -> None:
        """Centre every word on the mean of the training labels' vectors (needs center_words=True)."""
        if not self.center_words:
            raise ValueError("set_word_center needs a model built with center_words=True (model.center_words)")
        self.word_center.copy_(torch.as_tensor(training_vectors, dtype=torch.float32).mean(dim=0))

    def prepare_words(self, W: torch.Tensor) -> torch.Tensor:
        """The word vectors as this model measures them: centred and/or unit-length per its options."""
        if not (self.center_words or self.normalize):
            return W
        W = W.float()
        if self.center_words:
            W = W - self.word_center
        if self.normalize:
            W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return W

    def fit_unseen_directions(self, training_vectors: torch.Tensor, absent_distance: float) -> None:
        """P, the projector onto the span of the training labels' prepared vectors, and δ, the distance
        of a typical absent label (the module docstring); needs unseen_directions="absent"."""
        if self.unseen_directions != "absent":
            raise ValueError("fit_unseen_directions needs a model built with unseen_directions='absent'")
        W = self.prepare_words(torch.as_tensor(training_vectors, dtype=torch.float32).to(self.label_span.device))
        _, singular, vh = torch.linalg.svd(W.double(), full_matrices=False)
        basis = vh[: int((singular > singular[0] * 1e-6).sum())]
        self.label_span.copy_((basis.T @ basis).float())
        self.absent_distance.fill_(float(absent_distance))

    @property
    def unseen_fitted(self) -> bool:
        return self.unseen_directions == "absent" and bool(self.absent_distance >= 0)

    def distances_from_output(self, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """D (B, L) from the head's output A (B, k, d) and raw word vectors W (L, d)."""
        if self.normalize:
            A = A / A.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)  # ||A||_F = 1 per image
        W = self.prepare_words(W.to(A.device))
        if self.unseen_fitted:
            inside = W @ self.label_span
            D = label_distances(A, inside) + self.absent_distance * (W - inside).pow(2).sum(dim=1)
        else:
            D = label_distances(A, W)
        return D * self.log_scale.exp() if self.learn_scale else D

    def distances(self, images: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return self.distances_from_output(self(images), W)  # (B, L)

    def scores(self, images: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """Ranking scores, higher = more relevant: -D."""
        return -self.distances(images, W)


class BCEBaselineModel(nn.Module):
    """The baseline always reported beside the label space: same backbone, linear sigmoid head."""

    def __init__(
        self,
        *,
        n_labels: int,
        backbone: str,
        pretrained: bool,
        weights_path: str | None = None,
        freeze_backbone: bool,
        dropout: float,
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
