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

docs/ablation.md, round 3, measures both against CSLS and inverted softmax on validation.
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
