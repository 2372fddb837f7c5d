"""What a constant offset on the standardized open words does (calibrated stacking), per loss.

`model.open_words: standardized` puts every word that is no training label on the training labels'
scale: D' = m + s (D - mu_w) / sigma_w. Calibrated stacking adds kappa * s to every such word, a prior
that a word never trained on applies less often than a training label. This script trains rows of
scripts/ablation.py on its cached frozen features (validation split only), then for each kappa
prints the open vocabulary's hit@5 (a true concept among an image's 5 nearest of the concepts and
5,000 more words) and GZSL's top-3 O-F1 and held-out share of the top-3 slots. The offset moves
non-training words only: training labels, ZSL (held-out labels ranked among themselves) and every
per-label mAP are unchanged.

    .venv/bin/python scripts/open_word_offset.py [--params datasets/openmoji/params.yaml]
        [--rows span,pairwise-sigmoid] [--kappas 0,0.25,0.5,0.75,1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation  # noqa: E402  (scripts/ablation.py: its rows, data and cached features)

from labelspace.config import load_config  # noqa: E402
from labelspace.data.splits import split_indices, target_matrix  # noqa: E402
from labelspace.data.word_vectors import load_word_vectors  # noqa: E402
from labelspace.evaluation.open_vocabulary import (  # noqa: E402
    nearest_words,
    open_vocabulary_metrics,
    open_vocabulary_words,
)
from labelspace.evaluation.zero_shot import generalized_zero_shot_metrics  # noqa: E402
from labelspace.model.inference import scores_from_features  # noqa: E402
from labelspace.training.fit import held_out_for, training_labels  # noqa: E402
from labelspace.training.loop import train_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(ablation.ROOT / "params.yaml"))
    p.add_argument("--rows", default="span,pairwise-sigmoid")
    p.add_argument("--kappas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cache", default=str(ablation.ROOT / "data" / "ablation"))
    args = p.parse_args(argv)
    base = load_config(args.params)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    manifest, images, labels, vectors = ablation.load_data(base, cache, base.resolve(base.vectors.path))
    held = held_out_for(base.evaluate, labels).labels
    trained, _ = training_labels(labels, vectors, held)
    keep = [labels.index(label) for label in trained]
    targets = target_matrix(manifest, labels)
    splits = split_indices(manifest, base.train.val_fraction, base.train.seed)
    train_idx, val_idx = splits["train"], splits["val"]
    plain, mirrored = ablation.cached_features(base, images, cache)
    kv = load_word_vectors(base.resolve(base.vectors.path), limit=5000)
    words, word_vectors = open_vocabulary_words(labels, list(kv.index_to_key), kv.vectors)
    everything = np.concatenate([vectors, word_vectors])
    for row in args.rows.split(","):
        _, head, overrides, _ = ablation.ROWS[row]
        parts = ablation.parts(base, head, {"freeze_backbone": True, **overrides, "lr": args.lr, "seed": 0},
                               len(keep), vectors.shape[1], base.ingest.image_size)
        trained_model = train_model(*parts, None, targets[:, keep], train_idx, vectors[keep],
                                    pretrained=base.model.pretrained, weights_path=base.model.weights_path,
                                    features=(plain[train_idx], mirrored[train_idx])).model
        model = ablation.in_open_words_mode(trained_model, "standardized")
        with torch.no_grad():
            model.fit_open_words(torch.as_tensor(vectors[keep]), reference_outputs=model.from_features(plain[train_idx[:256]]))
        m, s = (float(x) for x in model.seen_scale)
        for kappa in (float(k) for k in args.kappas.split(",")):
            model.seen_scale = torch.tensor([m + kappa * s, s])  # m applies to non-training words only
            ov = open_vocabulary_metrics(nearest_words(model, plain[val_idx], everything, torch.device("cpu"), 5),
                                         labels, targets[val_idx], words, list(held))
            g = generalized_zero_shot_metrics(scores_from_features(model, plain[val_idx], vectors), targets[val_idx],
                                              labels, list(held), (3,))
            print(f"{row} kappa={kappa:g}: open vocabulary hit@5 {100 * ov['hit@5']:.1f} "
                  f"(chance {100 * ov['chance']['hit@5']:.2f}); GZSL top-3 O-F1 {100 * g['top3']['O-F1']:.1f} "
                  f"(chance {100 * g['chance']['top3']['O-F1']:.1f}), held-out share {100 * g['top3']['unseen_share']:.0f}%; "
                  f"most often first: {', '.join(h['word'] for h in ov['hubs'][:3])}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
