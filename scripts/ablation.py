"""Ablation study of the label-space head against its BCE baseline, on cached frozen features.

Every choice is made on the validation split carved from train (dataset.split_indices); the test
split is never read here. Backbone features are computed once (plain and mirrored) and cached, so
each head trains in seconds through the library's own `train_model(features=...)`.

    .venv/bin/python scripts/ablation.py                 # the whole table, 3 seeds per row
    .venv/bin/python scripts/ablation.py --rows paper,chosen --seeds 1
    .venv/bin/python scripts/ablation.py --fine-tune 1   # also end-to-end training, 1 epoch per head
    .venv/bin/python scripts/ablation.py --vectors minilm=data/vectors/minilm-l6-v2.bin

Rows are cumulative: each adds one change to the row above it, up to the project's choice; then
one-factor sweeps around that choice. Results go to reports/ablation.json and a Markdown table.
Selection score = mean of validation top-3 C-F1, top-3 O-F1 and mAP. Open words measured
"standardized" are at no offset (model.open_words_offset 0, as in every table of docs/ablation.md);
scripts/open_word_offset.py measures the offset.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # hundreds of short runs: progress bars would drown the results

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from labelspace.config import Config, LossConfig, ModelConfig, TrainConfig, load_config  # noqa: E402
from labelspace.data.splits import split_indices, target_matrix  # noqa: E402
from labelspace.evaluation.metrics import mean_average_precision, topk_metrics  # noqa: E402
from labelspace.evaluation.open_vocabulary import (  # noqa: E402
    nearest_words,
    open_vocabulary_metrics,
    open_vocabulary_words,
)
from labelspace.evaluation.zero_shot import generalized_zero_shot_metrics, zero_shot_metrics  # noqa: E402
from labelspace.model.inference import extract_features, scores_from_features  # noqa: E402
from labelspace.model.networks import LabelSpaceModel  # noqa: E402
from labelspace.model.spec import ModelSpec, build_model  # noqa: E402
from labelspace.training.fit import held_out_for, training_labels  # noqa: E402
from labelspace.training.loop import train_model  # noqa: E402

LR_GRID = (1e-3, 3e-3, 1e-2)
PAPER = dict(normalize=False, center_words=False, learn_scale=False, variant="paper", margin=1.0,
             threshold_weight=0.0, open_words="raw", units="absolute")
NORMALIZED = dict(PAPER, normalize=True, margin=0.1, open_words="absent")
PAIRWISE = dict(NORMALIZED, variant="pairwise")
THRESHOLD = dict(PAIRWISE, threshold=0.1, threshold_weight=1.0)
CENTRED = dict(THRESHOLD, center_words=True)
CHOSEN = dict(CENTRED, threshold=0.2)
SPAN = dict(CHOSEN, units="span", margin=0.7, threshold=1.4)  # the same m and tau at r = 7, scaled by 1/r elsewhere
SIGMOID = dict(SPAN, variant="sigmoid", margin=0.2, threshold=0.25, threshold_weight=0.0)  # BCE on every label, -D the logit

# name -> (what changes, head, overrides, search the learning rate)
ROWS: dict[str, tuple[str, str, dict, bool]] = {
    "bce": ("baseline: linear sigmoid head, BCE", "bce", {}, True),
    "default": ("params.yaml's label-space head and loss as they are", "labelspace", {}, True),
    "paper": ("paper: ||Aw||^2, eq. 3 hinge, m=1", "labelspace", PAPER, True),
    "paper-m10": ("paper, m=10 (margin only rescales A)", "labelspace", dict(PAPER, margin=10.0), False),
    "normalized": ("+ unit A (Frobenius) and unit w, m=0.1", "labelspace", NORMALIZED, False),
    "normalized-scale": ("+ learned temperature on D", "labelspace", dict(NORMALIZED, learn_scale=True), False),
    "pairwise": ("+ pairwise hinge (every positive vs every negative)", "labelspace", PAIRWISE, False),
    "threshold": ("+ threshold term, tau=0.1, weight 1", "labelspace", THRESHOLD, False),
    "centred": ("+ words centred on the training labels' mean", "labelspace", CENTRED, True),
    "chosen": ("+ tau=0.2", "labelspace", CHOSEN, True),
    "span": ("+ m and tau in units of 1/rank of the labels' span (0.7, 1.4)", "labelspace", SPAN, True),
    "sigmoid": ("span units, sigmoid loss on every label: logit (tau - D) / m, tau 0.25, m 0.2", "labelspace",
                SIGMOID, True),
    "pairwise-sigmoid": ("span, pairwise hinge plus the sigmoid loss (weight 1) for the threshold term, tau 0.25, "
                         "m 0.2", "labelspace", dict(SPAN, variant="pairwise+sigmoid", threshold=0.25, margin=0.2),
                         False),
    "span-no-threshold": ("span, rank term only", "labelspace", dict(SPAN, threshold_weight=0.0), False),
    "span-tau2": ("span, tau=2.5", "labelspace", dict(SPAN, threshold=2.5), False),
    "paper-rank": ("chosen, eq. 3 rank term instead of pairwise", "labelspace", dict(CHOSEN, variant="paper"), False),
    "no-rank": ("chosen, threshold term only (rank weight 0)", "labelspace", dict(CHOSEN, rank_weight=0.0), False),
    "no-threshold": ("chosen, rank term only (threshold weight 0)", "labelspace",
                     dict(CHOSEN, threshold_weight=0.0), False),
    "uncentred": ("chosen, words not centred", "labelspace", dict(CHOSEN, center_words=False), False),
    "m0.05": ("chosen, m=0.05", "labelspace", dict(CHOSEN, margin=0.05), False),
    "m0.2": ("chosen, m=0.2", "labelspace", dict(CHOSEN, margin=0.2), False),
    "tau0.1": ("chosen, tau=0.1 (= centred)", "labelspace", dict(CHOSEN, threshold=0.1), False),
    "tau0.15": ("chosen, tau=0.15", "labelspace", dict(CHOSEN, threshold=0.15), False),
    "tau0.3": ("chosen, tau=0.3", "labelspace", dict(CHOSEN, threshold=0.3), False),
    "w0.3": ("chosen, threshold weight 0.3", "labelspace", dict(CHOSEN, threshold_weight=0.3), False),
    "w3": ("chosen, threshold weight 3", "labelspace", dict(CHOSEN, threshold_weight=3.0), False),
    "k5": ("chosen, k=5", "labelspace", dict(CHOSEN, k=5), False),
    "k25": ("chosen, k=25", "labelspace", dict(CHOSEN, k=25), False),
    "k50": ("chosen, k=50", "labelspace", dict(CHOSEN, k=50), False),
    "k100": ("chosen, k=100 (paper's k)", "labelspace", dict(CHOSEN, k=100), False),
    "neg1": ("chosen, 1 sampled negative", "labelspace", dict(CHOSEN, n_negatives=1), False),
    "neg3": ("chosen, 3 sampled negatives", "labelspace", dict(CHOSEN, n_negatives=3), False),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--dataset", help="a dataset in the NUS-WIDE layout instead of params.yaml's ingest.dataset")
    p.add_argument("--open-vocabulary", type=int, default=5000,
                   help="rank the concepts among this many most frequent words too (0: not measured)")
    p.add_argument("--rows", default="all", help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--vectors", action="append", default=[],
                   help="NAME=PATH of other word2vec files: the `chosen` row is rerun with each")
    p.add_argument("--grid", default="",
                   help="extra rows around `chosen`: every combination of KEY=V1,V2 groups joined by ';', "
                        "e.g. 'threshold=0.2,0.25;k=5,10'")
    p.add_argument("--grid-base", default="chosen", help="the row whose overrides the --grid rows change")
    p.add_argument("--grid-lrs", default="", help="comma-separated learning rates of the --grid rows (default: the "
                                                   "lr the base row picked)")
    p.add_argument("--fine-tune", type=int, default=0, metavar="EPOCHS",
                   help="also train rows end to end (backbone unfrozen) for EPOCHS epochs")
    p.add_argument("--fine-tune-rows", default="bce,chosen", help="rows trained end to end")
    p.add_argument("--fine-tune-lrs", default="0.001", help="comma-separated learning rates of those runs")
    p.add_argument("--fine-tune-seeds", type=int, default=1, help="seeds of each end-to-end run")
    p.add_argument("--fine-tune-first-seed", type=int, default=0,
                   help="the first of those seeds (another process can run the next ones)")
    p.add_argument("--fine-tune-frozen", action="store_true", help="also frozen runs at the same budget")
    p.add_argument("--fine-tune-set", action="append", default=[], metavar="KEY=V1,V2",
                   help="a params.yaml key (model, loss or train) every end-to-end run sets, one run per value; "
                        "repeat for a grid, e.g. --fine-tune-set frozen_stages=0,3")
    p.add_argument("--cache", default=str(ROOT / "data" / "ablation"))
    p.add_argument("--out", default=str(ROOT / "reports" / "ablation.json"))
    return p.parse_args(argv)


def load_data(config: Config, cache: Path, vectors_path: Path):
    """Manifest, images, labels and their word vectors, prepared by the pipeline's own code into `cache`."""
    from labelspace.data.prepared import PreparedData
    from labelspace.data.word_vectors import load_word_vectors, resolve_label_vectors

    data = PreparedData(dataset=str(config.resolve(config.ingest.dataset)), version=f"ablation-{Path(config.ingest.dataset).name}",
                        image_size=config.ingest.image_size, cache_dir=str(cache))
    manifest, concepts = data.manifest()
    resolved = resolve_label_vectors(load_word_vectors(vectors_path), concepts, config.embedding.aliases)
    return manifest, data.images(), resolved.labels, resolved.matrix


def parts(config: Config, head: str, overrides: dict, n_labels: int, d: int, image_size: int):
    """(ModelSpec, LossConfig, TrainConfig) of `config` with a row's flat `overrides` (k, margin, lr, ...)
    sent to the section that holds each key."""
    sections = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig}
    changes = {name: {k: v for k, v in overrides.items() if k in cls.__dataclass_fields__}
               for name, cls in sections.items()}
    unknown = set(overrides) - {k for c in changes.values() for k in c}
    if unknown:
        raise KeyError(f"row overrides name no params.yaml key: {sorted(unknown)}")
    changed = config.replace(**changes)
    spec = ModelSpec.from_config(changed.model, head=head, n_labels=n_labels, d=d, image_size=image_size)
    return spec, changed.loss, changed.train


def cached_features(config: Config, images, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-backbone features of every image, plain and mirrored, computed once per backbone."""
    backbone = config.model.backbone
    path = cache / f"features-{Path(config.ingest.dataset).name}-{backbone}-{images.shape[0]}x{images.shape[1]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return saved["plain"], saved["mirrored"]
    spec, _, _ = parts(config, "bce", {"freeze_backbone": True}, 1, 1, images.shape[1])
    model = build_model(spec, pretrained=True, weights_path=config.model.weights_path)
    everything = np.arange(images.shape[0])
    plain = extract_features(model, images, everything, torch.device("cpu"), desc="features")
    mirrored = extract_features(model, images, everything, torch.device("cpu"), mirrored=True, desc="mirrored")
    torch.save({"plain": plain, "mirrored": mirrored}, path)
    return plain, mirrored


OPEN: dict = {}  # "labels", "vectors", "targets" (every concept, all images), "words", "word_vectors"


def evaluate_val(model, feats, vectors, targets, held_vectors=None, held_targets=None, held_labels=(), val_idx=None):
    scores = scores_from_features(model, feats, vectors)
    top3 = topk_metrics(scores, targets, 3)
    row = {"C-F1": top3["C-F1"], "O-F1": top3["O-F1"], "mAP": mean_average_precision(scores, targets)}
    row["score"] = (row["C-F1"] + row["O-F1"] + row["mAP"]) / 3
    if held_vectors is not None and held_targets.any():
        z = zero_shot_metrics(scores_from_features(model, feats, held_vectors), held_targets, list(held_labels))
        row.update({"zs_O-F1@1": z["top1"]["O-F1"], "zs_C-F1@1": z["top1"]["C-F1"], "zs_mAP": z["mAP"],
                    "zs_chance_O-F1@1": z["chance"]["top1"]["O-F1"], "zs_chance_mAP": z["chance"]["mAP"],
                    "zs_n": z["n_images"]})
        if OPEN and val_idx is not None:
            all_targets = OPEN["targets"][val_idx]
            g = generalized_zero_shot_metrics(scores_from_features(model, feats, OPEN["vectors"]), all_targets,
                                              OPEN["labels"], list(held_labels), (3,))
            row.update({"gzsl_O-F1@3": g["top3"]["O-F1"], "gzsl_chance_O-F1@3": g["chance"]["top3"]["O-F1"],
                        "gzsl_mAP": g["mAP"], "gzsl_chance_mAP": g["chance"]["mAP"],
                        "gzsl_unseen_share@3": g["top3"]["unseen_share"]})
            if "words" in OPEN:
                W = np.concatenate([OPEN["vectors"], OPEN["word_vectors"]])
                o = open_vocabulary_metrics(nearest_words(model, feats, W, torch.device("cpu"), 5), OPEN["labels"],
                                            all_targets, OPEN["words"], list(held_labels))
                row.update({"ov_hit@5": o["hit@5"], "ov_chance_hit@5": o["chance"]["hit@5"],
                            "ov_held_out_hit@5": o.get("held_out_hit@5", 0.0),
                            "ov_hubs": ", ".join(h["word"] for h in o["hubs"][:3])})
    return row


def in_open_words_mode(model, mode: str) -> LabelSpaceModel:
    """A copy of a trained normalised label space measuring other words in `mode`, not yet fitted."""
    other = LabelSpaceModel(backbone=model.backbone_name, k=model.k, d=model.d, pretrained=False,
                            freeze_backbone=True, dropout=0.0, normalize=True, center_words=model.center_words,
                            learn_scale=model.learn_scale, open_words=mode)
    other.load_state_dict({k: v for k, v in model.state_dict().items() if k in other.state_dict()}, strict=False)
    return other.eval()


def evaluate_both(model, feats, vectors, targets, hv, ht, held_labels, val_idx, reference_feats=None) -> dict:
    """Validation figures with words measured raw, and for a normalised label space in the other
    `model.open_words` modes on the same weights (labelspace.model.networks): "absent" with δ from
    the validation negatives, "standardized" with 256 training images as its reference set (so the
    images it standardises on are never the ones it is scored on)."""
    row = evaluate_val(model, feats, vectors, targets, hv, ht, held_labels, val_idx)
    if not getattr(model, "normalize", False) or not len(targets) or reference_feats is None:
        return row
    for mode in ("absent", "standardized"):
        other = in_open_words_mode(model, mode)
        with torch.no_grad():
            if mode == "absent":
                D = -scores_from_features(other, feats, vectors)
                other.fit_open_words(torch.as_tensor(vectors), absent_distance=float(np.median(D[~targets.astype(bool)])))
            else:
                other.fit_open_words(torch.as_tensor(vectors), reference_outputs=other.from_features(reference_feats))
        fitted = evaluate_val(other, feats, vectors, targets, hv, ht, held_labels, val_idx)
        row.update({f"{mode}_{k}": v for k, v in fitted.items()})
    return row


def run_row(name, head, overrides, lrs, seeds, base: Config, data, feats, held):
    labels, vectors, all_vectors, targets, splits = data
    plain, mirrored = feats
    train_idx, val_idx = splits["train"], splits["val"]
    results = {}
    for lr in lrs:
        per_seed = []
        for seed in range(seeds):
            row_parts = parts(base, head, {"freeze_backbone": True, **overrides, "lr": lr, "seed": seed},
                              len(labels), vectors.shape[1], base.ingest.image_size)
            start = time.perf_counter()
            result = train_model(*row_parts, None, targets, train_idx, vectors, pretrained=base.model.pretrained,
                                 weights_path=base.model.weights_path,
                                 features=(plain[train_idx], mirrored[train_idx]))
            seconds = time.perf_counter() - start
            hv = ht = None
            if head == "labelspace" and held["labels"]:
                hv, ht = held["vectors"], held["targets"][val_idx]
            row = evaluate_both(result.model, plain[val_idx], vectors, targets[val_idx], hv, ht, held["labels"], val_idx,
                                plain[train_idx[:256]])
            row["seconds"] = seconds
            per_seed.append(row)
        results[lr] = {k: (float(np.mean([r[k] for r in per_seed])) if not isinstance(per_seed[0][k], str)
                           else per_seed[0][k]) for k in per_seed[0]}
        results[lr].update({f"{k}_std": float(np.std([r[k] for r in per_seed]))
                            for k in ("C-F1", "O-F1", "mAP", "zs_O-F1@1", "zs_mAP", "gzsl_O-F1@3", "ov_hit@5",
                                      "absent_zs_O-F1@1", "absent_zs_mAP", "absent_gzsl_O-F1@3", "absent_ov_hit@5")
                            if k in per_seed[0]})
        shown = [f"{k}={v}" if isinstance(v, str) else f"{k}={v:.1f}" if k == "seconds" or "zs_n" in k
                 else f"{k}={100 * v:.1f}" for k, v in results[lr].items() if not k.endswith("_std")]
        print(f"  {name} lr={lr:g}: " + ", ".join(shown), flush=True)
    best_lr = max(results, key=lambda lr: results[lr]["score"])
    return {"lr": best_lr, **results[best_lr], "lr_search": {str(k): v["score"] for k, v in results.items()}}


def fine_tune_rows(rows, epochs, lrs, base, data, held, images, with_frozen, seeds=1, first_seed=0, grid=()):
    """End-to-end training (backbone unfrozen) of table rows at a small epoch budget, one seed each
    (an end-to-end epoch takes tens of seconds on a CPU) unless `seeds` says more, optionally beside
    frozen training at the same budget: validation metrics, zero-shot, and seconds per epoch."""
    labels, vectors, _, targets, splits = data
    val_idx = splits["val"]
    out = {}
    settings = [dict(zip([key for key, _ in grid], combo, strict=True))
                for combo in itertools.product(*[values for _, values in grid])]
    for name in rows:
        _, head, overrides, _ = ROWS[name]
        for lr, frozen, seed, setting in itertools.product(lrs, (True, False) if with_frozen else (False,),
                                                           range(first_seed, first_seed + seeds), settings):
            row_parts = parts(base, head, {**overrides, **setting, "lr": lr, "epochs": epochs,
                                           "freeze_backbone": frozen, "seed": seed},
                              len(labels), vectors.shape[1], images.shape[1])
            start = time.perf_counter()
            result = train_model(*row_parts, images, targets, splits["train"], vectors,
                                 pretrained=base.model.pretrained, weights_path=base.model.weights_path)
            seconds = time.perf_counter() - start
            feats = extract_features(result.model, images, val_idx, torch.device("cpu"))
            hv, ht = (held["vectors"], held["targets"][val_idx]) if head == "labelspace" else (None, None)
            row = evaluate_both(result.model, feats, vectors, targets[val_idx], hv, ht, held["labels"], val_idx)
            row.update(seconds=seconds, seconds_per_epoch=seconds / epochs, epochs=epochs, lr=lr, **setting)
            key = (f"{name} {'frozen' if frozen else 'fine-tuned'} {epochs}ep lr={lr:g}"
                   + "".join(f" {k}={v:g}" for k, v in setting.items())
                   + (f" seed={seed}" if seeds > 1 or first_seed else ""))
            out[key] = row
            print(f"  {key}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                           for k, v in row.items()), flush=True)
    return out


def parse_values(spec: str) -> tuple[str, list]:
    """'key=1,2.5' -> ('key', [1, 2.5])."""
    key, _, values = spec.partition("=")
    if not values:
        raise SystemExit(f"a grid wants KEY=V1,V2,..., got {spec!r}")
    return key, [float(v) if "." in v else int(v) for v in values.split(",")]


def markdown(table: dict) -> str:
    lines = ["| row | change | lr | val top-3 C-F1 | val top-3 O-F1 | val mAP | zero-shot O-F1@1 (chance) | s/run |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        zs = (f"{100 * row['zs_O-F1@1']:.1f} ± {100 * row['zs_O-F1@1_std']:.1f} "
              f"({100 * row['zs_chance_O-F1@1']:.1f})" if "zs_O-F1@1" in row else "–")
        lines.append(f"| {name} | {row['what']} | {row['lr']:g} | {100 * row['C-F1']:.1f} ± {100 * row['C-F1_std']:.1f}"
                     f" | {100 * row['O-F1']:.1f} ± {100 * row['O-F1_std']:.1f} | {100 * row['mAP']:.1f} ± "
                     f"{100 * row['mAP_std']:.1f} | {zs} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from labelspace.data.word_vectors import load_word_vectors, resolve_label_vectors

    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("LABELSPACE_THREADS", "2")))
    base = load_config(args.params)
    if args.dataset:
        base = base.replace(ingest={"dataset": str(Path(args.dataset).resolve())})
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    manifest, images, labels, label_vectors = load_data(base, cache, base.resolve(base.vectors.path))
    held_labels = held_out_for(base.evaluate, labels).labels
    trained, _ = training_labels(labels, label_vectors, held_labels)
    keep = [labels.index(label) for label in trained]
    held_idx = [labels.index(label) for label in held_labels]
    all_targets = target_matrix(manifest, labels)
    splits = split_indices(manifest, base.train.val_fraction, base.train.seed)
    feats = cached_features(base, images, cache)
    OPEN.update(labels=labels, vectors=label_vectors, targets=all_targets)
    if args.open_vocabulary:
        kv = load_word_vectors(base.resolve(base.vectors.path), limit=args.open_vocabulary)
        OPEN["words"], OPEN["word_vectors"] = open_vocabulary_words(labels, list(kv.index_to_key), kv.vectors)

    def data_for(vectors_matrix):
        held = {"labels": held_labels, "vectors": vectors_matrix[held_idx], "targets": all_targets[:, held_idx]}
        return (([labels[i] for i in keep], vectors_matrix[keep], vectors_matrix, all_targets[:, keep], splits),
                held)

    wanted = list(ROWS) if args.rows == "all" else [name for name in args.rows.split(",") if name]
    table: dict = {}
    print(f"train {len(splits['train'])} / val {len(splits['val'])} images; trained labels "
          f"{[labels[i] for i in keep]}; held out {held_labels}", flush=True)
    # Rows with a learning-rate search first: the others train at the lr the `chosen` row picked.
    for name in sorted(wanted, key=lambda n: not ROWS[n][3]):
        what, head, overrides, search = ROWS[name]
        data, held = data_for(label_vectors)
        lrs = LR_GRID if search else (table.get("chosen", {}).get("lr", base.train.lr),)
        table[name] = {"what": what, **run_row(name, head, overrides, lrs, args.seeds, base, data, feats, held)}
    table = {name: table[name] for name in wanted}
    if args.grid:
        groups = [parse_values(group) for group in args.grid.split(";")]
        data, held = data_for(label_vectors)
        lrs = ([float(lr) for lr in args.grid_lrs.split(",")] if args.grid_lrs
               else [table.get(args.grid_base, {}).get("lr", base.train.lr)])
        for combo in itertools.product(*[values for _, values in groups]):
            overrides = dict(ROWS[args.grid_base][2], **{key: value for (key, _), value in zip(groups, combo, strict=True)})
            name = args.grid_base + " " + " ".join(f"{key}={value:g}" for (key, _), value in zip(groups, combo, strict=True))
            table[name] = {"what": name, **run_row(name, "labelspace", overrides, lrs, args.seeds, base, data,
                                                   feats, held)}
    for spec in args.vectors:
        name, path = spec.split("=", 1)
        kv = load_word_vectors(path)
        other = resolve_label_vectors(kv, labels, base.embedding.aliases).matrix
        data, held = data_for(other)
        lr = table.get("chosen", {}).get("lr", base.train.lr)
        for suffix, overrides in (("", CHOSEN), ("-uncentred", dict(CHOSEN, center_words=False))):
            table[f"{name}{suffix}"] = {"what": f"chosen{', words not centred' if suffix else ''}, {name} vectors "
                                                f"(d={other.shape[1]})",
                                        **run_row(name + suffix, "labelspace", overrides, (lr,), args.seeds, base,
                                                  data, feats, held)}
    if args.fine_tune:
        data, held = data_for(label_vectors)
        table["fine_tune"] = fine_tune_rows(args.fine_tune_rows.split(","), args.fine_tune,
                                            [float(lr) for lr in args.fine_tune_lrs.split(",")], base, data, held,
                                            images, args.fine_tune_frozen, args.fine_tune_seeds,
                                            args.fine_tune_first_seed,
                                            [parse_values(spec) for spec in args.fine_tune_set])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "n_train": int(len(splits["train"])),
                               "n_val": int(len(splits["val"])), "held_out": held_labels, "rows": table},
                              indent=1, default=float) + "\n")
    rows = {k: v for k, v in table.items() if k != "fine_tune"}
    if rows:
        print("\n" + markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
