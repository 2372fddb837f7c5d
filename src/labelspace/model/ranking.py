"""How a label-space model ranks words it never trained on: ConSE's convex combination and a domain prior.

Both are arithmetic on what a fitted "standardized" model already holds (labelspace.model.networks):
its training labels' prepared vectors and the spread s of their distances.

- ConSE (Norouzi et al. 2014, "Zero-shot learning by convex combination of semantic embeddings"): an
  image's score for an unseen word is the cosine of the word to the image's `top` nearest training
  labels, weighted by softmax(-D / s) over them. The head is trained to rank training labels; what
  it says about them, not where A puts a word it never measured, decides the unseen word. Unlike a
  per-word correction (standardizing, CSLS, inverted softmax) it changes each label's ranking of
  the images too, so it moves zero-shot mAP.
- The domain prior λ s (1 - c_w), c_w the word's largest cosine to a training label (vectors as
  given): of 20,000 open words, a tag of this dataset is more likely near its tags than `cheers` is.
- The shared prior β s log sum_v exp(-λ (1 - c_v)), over the request's words v that are no training
  label (β s log of their number without a domain prior): calibrated stacking's offset, made to
  depend on what competes. That one such word applies has a prior; shared among two held-out labels
  each keeps much of it, shared among 20,000 open words each keeps little. One fixed offset cannot
  serve both (docs/ablation.md, round 3: low enough for held-out labels to take their share of a
  GZSL top 3, it floods the open vocabulary's top 5 with words near the tags).

docs/ablation.md, round 3, measures them against CSLS and inverted softmax on validation.
"""

from __future__ import annotations

import torch


def conse_weights(seen_distances: torch.Tensor, top: int, scale: torch.Tensor) -> torch.Tensor:
    """(B, S) weights over the training labels: softmax(-D / scale) over each image's `top` nearest
    (smallest D) of them, 0 for the others."""
    top = min(int(top), seen_distances.shape[1])
    near, index = torch.topk(seen_distances, top, dim=1, largest=False)
    weights = torch.softmax(-(near - near[:, :1]) / scale, dim=1)
    return torch.zeros_like(seen_distances).scatter_(1, index, weights)


def conse_distances(seen_distances: torch.Tensor, cosines: torch.Tensor, top: int, scale: torch.Tensor) -> torch.Tensor:
    """(B, L): minus ConSE's similarity of each word to each image; `cosines` (L, S) of the words to the
    training labels, `seen_distances` (B, S) the images' D of the training labels."""
    return -(conse_weights(seen_distances, top, scale) @ cosines.T.to(seen_distances.dtype))


def domain_prior(raw: torch.Tensor, directions: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(L,) λ s (1 - c_w): `raw` (L, d) the words as given, `directions` (S, d) the training labels'
    unit vectors as given."""
    nearest = (torch.nn.functional.normalize(raw.float(), dim=1) @ directions.T).amax(dim=1)
    return weight * scale * (1 - nearest)


def shared_prior(domain: torch.Tensor | None, seen: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """() β s log sum_v exp(-domain_v / s) over the words v not `seen` (L,) bool, `domain` (L,) the
    domain prior λ s (1 - c_v) or None (none: β s log of their number); 0 when every word is seen."""
    open_ = ~seen
    if not bool(open_.any()):
        return torch.zeros((), dtype=scale.dtype, device=scale.device)
    if domain is None:
        return weight * scale * torch.log(open_.sum().to(scale.dtype))
    return weight * scale * torch.logsumexp(-domain[open_] / scale, dim=0)
