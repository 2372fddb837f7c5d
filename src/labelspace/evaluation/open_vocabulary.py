"""Open-vocabulary evaluation: the dataset's labels ranked among thousands of other words.

Serving ranks any word with a vector, so a request may hold the training labels, labels never
trained on and unrelated words together. This measures what such a request gets back: every test
image with a label ranks the dataset's concepts (trained and held out) together with the open
vocabulary (the most frequent words of the vectors file, less the concepts' own names), and
- `hit@k`: the share of images with at least one true concept in the top k, beside its exact chance
  (a uniformly random ranking of V words puts at least one of an image's p true ones in the top k
  with probability 1 - C(V - p, k) / C(V, k), averaged over images);
- `held_out_hit@k`: the same over the images holding a held-out concept, counting held-out ones only;
- `trained_hit@k`: the same over the images holding a trained concept, counting trained ones only;
- `concept_share@k`: the share of top-k slots the concepts take (chance: concepts / V);
- `hubs`: the words most often ranked first, with the share of images: a word that tops most images
  whatever they show is a hub of the geometry, not a tag.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch

HUBS = 10


def chance_hit_at_k(n_words: int, positives: np.ndarray, k: int) -> float:
    """E[hit@k] under a uniformly random ranking of `n_words` words, images with `positives` true ones."""
    k = min(k, n_words)
    total = math.comb(n_words, k)
    return float(np.mean([1.0 - math.comb(n_words - int(p), k) / total for p in positives]))


def open_vocabulary_words(concepts: list[str], words: list[str], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The open-vocabulary words that are not a concept's name (case-insensitive), with their vectors."""
    names = {c.lower() for c in concepts}
    keep = [i for i, w in enumerate(words) if w.lower() not in names]
    return [words[i] for i in keep], np.asarray(vectors)[keep]


def open_vocabulary_metrics(nearest: np.ndarray, concepts: list[str], targets: np.ndarray, words: list[str],
                            held_out: list[str] = (), ks: tuple[int, ...] = (1, 5)) -> dict[str, Any]:
    """`nearest` (N, >= max(ks)): each test image's nearest word indices, nearest first, into the
    ranked list: `concepts` first, then `words` (already without the concepts' names); targets
    (N, len(concepts)) 0/1. Images without a concept are left out."""
    t = np.asarray(targets).astype(bool)
    keep = t.any(axis=1)
    t = t[keep]
    if not t.shape[0]:
        raise ValueError("no test image has a label: nothing to rank")
    order = np.asarray(nearest)[keep][:, : max(ks)]
    n_concepts = len(concepts)
    n_words = n_concepts + len(words)
    in_concepts = order < n_concepts
    held = np.array([c in set(held_out) for c in concepts])
    result: dict[str, Any] = {"n_images": int(t.shape[0]), "n_words_ranked": int(n_words),
                              "n_concepts": n_concepts, "n_open_words": len(words), "chance": {}}
    true_at = np.zeros(order.shape, dtype=bool)
    true_at[in_concepts] = t[np.nonzero(in_concepts)[0], order[in_concepts]]
    for k in ks:
        result[f"hit@{k}"] = float(true_at[:, :k].any(axis=1).mean())
        result["chance"][f"hit@{k}"] = chance_hit_at_k(n_words, t.sum(axis=1), k)
        result[f"concept_share@{k}"] = float(in_concepts[:, :k].mean())
        result["chance"][f"concept_share@{k}"] = n_concepts / n_words
        trained_rows = t[:, ~held].any(axis=1)
        if trained_rows.any():
            trained_true = true_at & np.isin(order, np.flatnonzero(~held))
            result[f"trained_hit@{k}"] = float(trained_true[trained_rows, :k].any(axis=1).mean())
            result["chance"][f"trained_hit@{k}"] = chance_hit_at_k(n_words, t[trained_rows][:, ~held].sum(axis=1), k)
        rows = t[:, held].any(axis=1) if held.any() else np.zeros(len(t), dtype=bool)
        if rows.any():
            held_true = true_at & np.isin(order, np.flatnonzero(held))
            result[f"held_out_hit@{k}"] = float(held_true[rows, :k].any(axis=1).mean())
            result["chance"][f"held_out_hit@{k}"] = chance_hit_at_k(n_words, t[rows][:, held].sum(axis=1), k)
            result["n_images_held_out"] = int(rows.sum())
    names = list(concepts) + list(words)
    firsts = Counter(order[:, 0].tolist())
    result["hubs"] = [{"word": names[i], "top1_share": c / t.shape[0]} for i, c in firsts.most_common(HUBS)]
    result["ratio"] = {key: result[key] / result["chance"][key] for key in result["chance"]
                       if key in result and result["chance"][key]}
    return result


def nearest_words(model, feats: torch.Tensor, vectors: np.ndarray, device, k: int, chunk: int = 512) -> np.ndarray:
    """(N, k): the indices of the k words of `vectors` (L, d) nearest to each image (smallest D of a
    LabelSpaceModel, from cached backbone features), in chunks of images so memory stays bounded."""
    model.eval()
    W = torch.as_tensor(np.asarray(vectors), dtype=torch.float32, device=device)
    out = []
    with torch.inference_mode():
        for f in torch.split(feats, chunk):
            D = model.distances_from_output(model.from_features(f.to(device)).float(), W)
            out.append(torch.topk(D, min(k, W.shape[0]), dim=1, largest=False).indices.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)
