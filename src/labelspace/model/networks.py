"""The image-conditioned label space model and its BCE baseline.

Image -> backbone features -> linear head -> A (k x d). A label with word vector w is at distance
D = ||A w||^2 from the image (small = relevant); the ranking score is -D. Any word with a vector
can be ranked, so the label set at inference need not be the training set.

`normalize=True` measures D = ||Â ŵ||^2 with Â = A / ||A||_F and ŵ = w / ||w||: D lies in [0, 1] for
every image and word, so a margin and an absolute threshold mean the same thing on every image (the
paper's D has no fixed scale: a margin only sets how large A grows). `center_words=True` first
subtracts the mean of the training labels' vectors (a buffer in the state_dict), which removes the
direction every garment word shares and leaves the directions that tell labels apart.

`open_words` fixes how words that are no training label are measured (open vocabulary, zero-shot).
Training only ever shows A the training labels, so other words land on distances nobody checked:
the words nearest to every image, whatever it shows, are hubs of the geometry, not tags.
- "raw": D as A measures it (the paper).
- "absent": when the training labels span fewer directions than the words have (8 garments in 50
  GloVe dimensions), A puts its whole unit norm in that span and the part of a word outside it gets
  almost no distance. D = ||Â P ŵ||^2 + δ ||(I - P) ŵ||^2 instead, P the projector onto the span and
  δ the median distance of an absent training label on validation: the part of a word the model
  never learnt about counts as what a typical absent label measures.
- "standardized": any word that is no training label is put on the training labels' scale by
  reference images carried in the model (`reference_A`, the head's output on up to 256 validation
  images): D' = m + s (D - mu_w) / sigma_w, with mu_w, sigma_w the word's distances over the
  reference images and m, s the mean of the training labels' own. A word near every image (small
  mu_w) is no longer nearer than a relevant label: what ranks it is how much nearer this image is
  than the others. Works whether or not the labels span every direction (64 noisy tags in 50-d do).
  `offset` κ (calibrated stacking) adds κ s to every such word: D' = m + s (κ + (D - mu_w) / sigma_w),
  a prior that a word never trained on applies less often than a training label does.
  `conse` T > 0 standardizes ConSE's score instead of D: the cosine of the word to the image's T
  nearest training labels, weighted by softmax(-D / s) (labelspace.model.ranking). `prior` λ (a
  domain prior) adds λ s (1 - c_w), c_w the word's largest cosine to a training label (as given).
  `share` β adds β s log sum_v exp(-λ (1 - c_v)) over the request's words v that are no training
  label (ranking.shared_prior): two held-out labels move a little, 20,000 open words far back.
A training label's D is unchanged in every mode. All are fitted after training (`fit_open_words`);
until then (while training) D is raw.

What a mode needs per word (prepared vector, δ's term, mu_w, sigma_w) is made once per vocabulary
(`LabelSpaceModel.vocabulary`, a `Vocabulary`), so ranking it over many batches costs only the
k d multiply-adds per image and word; serving makes one for every bundled word at load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from labelspace.choices import OPEN_WORDS
from labelspace.model import ranking
from labelspace.model.backbones import Backbone, create_backbone

WORD_BLOCK = 2048  # words per block when no gradient is needed: its (B k, block) projection stays in cache


def label_distances(A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """D[b, l] = ||A_b w_l||^2 for A (B, k, d) and W (L, d) -> (B, L): k d multiply-adds per image and word.

    With a gradient to follow, one batched matmul. Without (inference, on the CPU), the words go
    in blocks of WORD_BLOCK, each squared in place and summed over k while still in cache: the same
    products and sums, without a (B, k, L) tensor (25 MB for 32 images and 20,000 words) written
    and read twice."""
    if A.ndim != 3 or W.ndim != 2 or A.shape[2] != W.shape[1]:
        raise ValueError(f"A must be (B, k, d) and W (L, d) with the same d; got {tuple(A.shape)}, {tuple(W.shape)}")
    Wt = W.t().to(A.dtype)
    if A.device.type != "cpu" or (torch.is_grad_enabled() and (A.requires_grad or W.requires_grad)):
        return (A @ Wt).pow(2).sum(dim=1)  # (B, k, L) -> (B, L)
    B, k, _ = A.shape
    L = W.shape[0]
    out = A.new_empty(B, L)
    for start in range(0, L, WORD_BLOCK):
        projected = A @ Wt[:, start : start + WORD_BLOCK]  # (B, k, block)
        torch.sum(projected.square_(), dim=1, out=out[:, start : start + WORD_BLOCK])
    return out


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Words prepared once for one model (LabelSpaceModel.vocabulary): what `distances_from_output`
    needs per word besides the distances themselves, so ranking them over many batches costs only
    the k d L multiply-adds. Valid for the model buffers it was made from (`state`: the tensors and
    their in-place version counters); a model whose buffers changed since rebuilds it from `raw`."""

    raw: torch.Tensor  # (L, d) the vectors as given
    words: torch.Tensor  # (L, d) as label_distances takes them: prepared (and, "absent", in the label span)
    add: torch.Tensor | None = None  # (L,) "absent": δ ||(I - P) ŵ||^2, added to D; "standardized": the prior λ s (1 - c_w)
    mu: torch.Tensor | None = None  # (L,) "standardized": the word's D over the reference images ...
    sigma: torch.Tensor | None = None  # (L,) ... and its standard deviation
    seen: torch.Tensor | None = None  # (L,) bool "standardized": a training label, whose D is kept
    cosines: torch.Tensor | None = None  # (L, S) "standardized" with ConSE: the words' cosines to the training labels
    state: tuple = ()  # LabelSpaceModel._vocabulary_state

    def __len__(self) -> int:
        return self.raw.shape[0]

    def rows(self, index: torch.Tensor) -> Vocabulary:
        """The words at `index` (a 1-d integer tensor), in that order."""
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index.to(t.device))

        return Vocabulary(take(self.raw), take(self.words), take(self.add), take(self.mu), take(self.sigma),
                          take(self.seen), take(self.cosines), self.state)

    @staticmethod
    def cat(parts: list[Vocabulary]) -> Vocabulary:
        """One vocabulary of `parts` (made for one model state), in order."""
        def join(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return Vocabulary(*(join(f.name) for f in dataclasses.fields(Vocabulary) if f.name != "state"),
                          state=parts[0].state)

    def holds(self, W: torch.Tensor) -> bool:
        """Whether W is exactly the vectors this was made from (same shape, type, device, values)."""
        return (W.shape == self.raw.shape and W.dtype == self.raw.dtype and W.device == self.raw.device
                and torch.equal(W, self.raw))


def _same_state(a: tuple, b: tuple) -> bool:
    """Two LabelSpaceModel._vocabulary_state: equal options, the same buffer tensors at the same versions."""
    if not a or not b or a[0] != b[0] or len(a[1]) != len(b[1]):
        return False
    return all(x is y and vx == vy for (x, vx), (y, vy) in zip(a[1], b[1], strict=True))


def _backbone(name: str, pretrained: bool, weights_path: str | None, freeze_backbone: bool,
              frozen_stages: int) -> Backbone:
    """The backbone both heads share: wholly frozen (model.freeze_backbone), or trained end to end
    with its first `frozen_stages` stages kept at their pretrained weights."""
    backbone = create_backbone(name, pretrained=pretrained, weights_path=weights_path)
    if freeze_backbone:
        backbone.requires_grad_(False)
    else:
        backbone.freeze_stages(frozen_stages)
    return backbone


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
        open_words: str = "raw",
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        self.k, self.d = k, d
        self.normalize, self.center_words, self.learn_scale = normalize, center_words, learn_scale
        if open_words not in OPEN_WORDS:
            raise ValueError(f"open_words must be one of {', '.join(OPEN_WORDS)}, got {open_words!r}")
        self.open_words = open_words
        if center_words:
            # Set from the training labels by set_word_center(); saved and restored with the weights.
            self.register_buffer("word_center", torch.zeros(d))
        if open_words == "absent":
            # Set after training by fit_open_words(); until then (while training) D is raw.
            self.register_buffer("label_span", torch.zeros(d, d))
            self.register_buffer("absent_distance", torch.full((), -1.0))  # below 0: not fitted
        if open_words == "standardized":
            self.register_buffer("reference_A", torch.zeros(0, k, d))  # (R, k, d), unit Frobenius; R = 0: not fitted
            self.register_buffer("training_words", torch.zeros(0, d))  # the training labels, prepared
            self.register_buffer("seen_scale", torch.zeros(2))  # m, s
            self.register_buffer("training_directions", torch.zeros(0, d))  # the training labels' unit vectors, as given
            self.register_buffer("open_prior", torch.zeros(()))  # λ of the domain prior; 0: none
            self.register_buffer("conse_top", torch.zeros((), dtype=torch.long))  # ConSE's T; 0: D standardized
            self.register_buffer("open_share", torch.zeros(()))  # β of the shared prior; 0: none
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))  # D is multiplied by exp(log_scale)
        self.backbone_name = backbone
        self.freeze_backbone, self.frozen_stages = freeze_backbone, frozen_stages
        self.backbone = _backbone(backbone, pretrained, weights_path, freeze_backbone, frozen_stages)
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

    def fit_open_words(self, training_vectors: torch.Tensor, absent_distance: float | None = None,
                       reference_outputs: torch.Tensor | None = None, offset: float = 0.0, prior: float = 0.0,
                       conse: int = 0, share: float = 0.0) -> None:
        """Fit the `open_words` mode (the module docstring) after training: "absent" needs δ,
        "standardized" the head's outputs A (R, k, d) on reference (validation) images and takes the
        offset κ, in units of the training labels' mean spread s (kept in `seen_scale` as m + κ s), and
        the domain prior λ (`open_prior`) and the shared prior's β (`open_share`), in the same units, and
        ConSE's T (`conse_top`, 0: off)."""
        given = torch.as_tensor(training_vectors, dtype=torch.float32).to(self.head.weight.device)
        W = self.prepare_words(given)
        if self.open_words == "absent":
            _, singular, vh = torch.linalg.svd(W.double(), full_matrices=False)
            basis = vh[: int((singular > singular[0] * 1e-6).sum())]
            self.label_span.copy_((basis.T @ basis).float())
            self.absent_distance.fill_(float(absent_distance))
        elif self.open_words == "standardized":
            A = torch.as_tensor(reference_outputs, dtype=torch.float32).to(W.device)
            self.reference_A = self._unit(A)
            self.training_words = W
            mu, sigma = self._reference_stats(W)
            self.seen_scale = torch.stack([mu.mean() + offset * sigma.mean(), sigma.mean()])
            self.training_directions = torch.nn.functional.normalize(given, dim=1)
            self.open_prior = torch.tensor(float(prior), device=W.device)
            self.conse_top = torch.tensor(int(conse), device=W.device)
            self.open_share = torch.tensor(float(share), device=W.device)
        else:
            raise ValueError("fit_open_words needs a model built with open_words absent or standardized")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The reference set's size is known only once fitted: take the saved one's shape.
        if prefix + "reference_A" in state_dict and prefix + "open_prior" not in state_dict:
            state_dict[prefix + "open_prior"] = torch.zeros(())  # saved before the domain prior existed: none
            state_dict[prefix + "training_directions"] = torch.zeros(0, self.d)
            state_dict[prefix + "conse_top"] = torch.zeros((), dtype=torch.long)
        if prefix + "reference_A" in state_dict and prefix + "open_share" not in state_dict:
            state_dict[prefix + "open_share"] = torch.zeros(())  # saved before the shared prior existed: none
        for name in ("reference_A", "training_words", "training_directions"):
            if prefix + name in state_dict and name in self._buffers:
                self._buffers[name] = torch.empty_like(state_dict[prefix + name], device=self._buffers[name].device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def open_words_fitted(self) -> bool:
        if self.open_words == "absent":
            return bool(self.absent_distance >= 0)
        return self.open_words == "standardized" and self.reference_A.shape[0] > 0

    def _unit(self, A: torch.Tensor) -> torch.Tensor:
        return A / A.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1) if self.normalize else A

    def _reference_stats(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of each prepared word's D over the reference images."""
        D = label_distances(self.reference_A, W)
        return D.mean(dim=0), D.std(dim=0).clamp_min(1e-6)

    def _vocabulary_state(self) -> tuple:
        """What a Vocabulary depends on: the options, and the buffers each with its version counter
        (bumped by every in-place change, load_state_dict's copy included; a reassigned buffer is
        another tensor)."""
        names = ("word_center", "label_span", "absent_distance", "reference_A", "training_words", "seen_scale",
                 "training_directions", "open_prior", "conse_top", "open_share")
        buffers = tuple((t, t._version) for t in (self._buffers.get(n) for n in names) if t is not None)
        return (self.center_words, self.normalize, self.open_words), buffers

    def vocabulary(self, W: torch.Tensor, device: torch.device | None = None) -> Vocabulary:
        """The words W (L, d) prepared for ranking by this model, in its current state: prepared
        vectors and, per `open_words`, what each word adds ("absent") or its reference statistics and
        whether it is a training label ("standardized"). `distances_from_output` takes it in place
        of W; serving makes it once per vocabulary, or once for every bundled word and gathers rows."""
        raw = W.to(device if device is not None else self.head.weight.device)
        W = self.prepare_words(raw)
        state = self._vocabulary_state()
        if not self.open_words_fitted:
            return Vocabulary(raw, W, state=state)
        if self.open_words == "absent":
            inside = W @ self.label_span
            return Vocabulary(raw, inside, add=self.absent_distance * (W - inside).pow(2).sum(dim=1), state=state)
        with torch.no_grad():
            unit = torch.nn.functional.normalize
            cosines = unit(W, dim=1) @ unit(self.training_words, dim=1).T  # (L, S)
            seen = cosines.amax(dim=1) > 1 - 1e-5
            if int(self.conse_top):
                reference = ranking.conse_distances(label_distances(self.reference_A, self.training_words), cosines,
                                                    int(self.conse_top), self.seen_scale[1])
                mu, sigma = reference.mean(dim=0), reference.std(dim=0).clamp_min(1e-6)
            else:
                (mu, sigma), cosines = self._reference_stats(W), None
            prior = None
            if float(self.open_prior) and self.training_directions.shape[0]:
                prior = ranking.domain_prior(raw, self.training_directions, self.open_prior, self.seen_scale[1])
        return Vocabulary(raw, W, add=prior, mu=mu, sigma=sigma, seen=seen, cosines=cosines, state=state)

    def _vocabulary_for(self, W: torch.Tensor | Vocabulary, device: torch.device) -> Vocabulary:
        """W as a Vocabulary of this model's current state. Raw vectors without a gradient to follow
        (inference, evaluation) are remembered for the next call: one vocabulary is ranked over many
        batches, and checking that W is the same one costs one comparison of its values."""
        if isinstance(W, Vocabulary):
            if (_same_state(W.state, self._vocabulary_state()) and W.words.device == device
                    and not (torch.is_grad_enabled() and W.words.is_inference())):
                return W
            return self.vocabulary(W.raw, device)  # made for other weights: rebuilt for these
        if torch.is_grad_enabled():
            return self.vocabulary(W, device)  # training: the gradient may reach W
        last = getattr(self, "_last_vocabulary", None)
        if (last is not None and last.words.device == device and _same_state(last.state, self._vocabulary_state())
                and last.holds(W)):
            return last
        vocabulary = self.vocabulary(W, device)
        self._last_vocabulary = dataclasses.replace(vocabulary, raw=W.clone())  # W's caller may change it in place
        return vocabulary

    def distances_from_output(self, A: torch.Tensor, W: torch.Tensor | Vocabulary) -> torch.Tensor:
        """D (B, L) from the head's output A (B, k, d) and raw word vectors W (L, d), or a Vocabulary
        made by `vocabulary` (the same D, without preparing the words again)."""
        A = self._unit(A)  # ||A||_F = 1 per image when normalize
        words = self._vocabulary_for(W, A.device)
        D = label_distances(A, words.words)
        if words.mu is None and words.add is not None:
            D = D + words.add
        elif words.mu is not None and not bool(words.seen.all()):
            # D' = m + s (D - mu) / sigma, in place (the same operations in the same order); a training
            # label keeps its own D: its prepared vector is one of training_words.
            m, s = self.seen_scale[0], self.seen_scale[1]
            if words.cosines is not None:  # ConSE's score, from the image's D of the training labels
                seen_D = label_distances(A, self.training_words)
                standardized = ranking.conse_distances(seen_D, words.cosines, int(self.conse_top), s) - words.mu
            else:
                standardized = D - words.mu
            standardized.mul_(s).div_(words.sigma).add_(m)
            if words.add is not None:
                standardized.add_(words.add)  # the domain prior
            if float(self.open_share):
                standardized.add_(ranking.shared_prior(words.add, words.seen, self.open_share, s))
            if bool(words.seen.any()):
                standardized = torch.where(words.seen, D, standardized)
            D = standardized
        return D * self.log_scale.exp() if self.learn_scale else D

    def distances(self, images: torch.Tensor, W: torch.Tensor | Vocabulary) -> torch.Tensor:
        return self.distances_from_output(self(images), W)  # (B, L)

    def scores(self, images: torch.Tensor, W: torch.Tensor | Vocabulary) -> torch.Tensor:
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
        frozen_stages: int = 0,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.freeze_backbone, self.frozen_stages = freeze_backbone, frozen_stages
        self.backbone = _backbone(backbone, pretrained, weights_path, freeze_backbone, frozen_stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, n_labels)

    features = LabelSpaceModel.features

    def from_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(feats))  # (B, L) logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(images))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)
