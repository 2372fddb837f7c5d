"""The analyses of one trained label space (and its BCE baseline) on a dataset's test split, the k
sweep, and the files they leave (labelspace.evaluation.analysis for the numbers). No ZenML, no MLflow.

`analyze_model` computes everything but the sweep; `k_sweep` retrains label spaces for several k with
one budget: "short" trains heads on a frozen backbone's cached features (minutes on a CPU), "full"
trains as params.yaml says (end to end when it does), resuming from checkpoints like the pipeline.
`write_analysis` writes analysis.json (everything), metrics.json (the numbers, for `dvc metrics`),
k_sweep.csv and history.csv (for `dvc plots`) and the figures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from labelspace.config import AnalyzeConfig, LossConfig, ModelConfig, TrainConfig
from labelspace.data.splits import split_indices, target_matrix
from labelspace.evaluation import analysis, analysis_plots, plots
from labelspace.evaluation.metrics import per_class_f1, topk_metrics
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import extract_features, resolve_device, scores_from_features
from labelspace.model.spec import ModelSpec
from labelspace.training.loop import train_model

SWEEP_COLUMNS = ("k", *(f"top{t}_{key}" for t in (3, 5) for key in analysis.COMMITTEE_KEYS), "train_seconds")
HISTORY_KEYS = ("loss", "val_mAP", "val_top3_C-F1", "val_top3_O-F1")


def analyze_model(
    model: TrainedModel, baseline: TrainedModel | None, manifest: pd.DataFrame, images: np.ndarray,
    concepts: list[str], concept_vectors: np.ndarray, config: AnalyzeConfig, loss_config: LossConfig, *,
    top_k: int = 3, device: str = "auto", feature_batch_size: int = 128,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, figures by file name) of `model` on the test split of `manifest` (images aligned with it).

    `concepts`/`concept_vectors` are every label of the dataset with its vector; those the model did
    not train on appear as held out in the label maps and the contact sheet."""
    started = time.perf_counter()
    dev = resolve_device(device)
    test = split_indices(manifest)["test"]
    if len(test) == 0:
        raise ValueError("the dataset has no test split: nothing to analyse")
    trained, held_out = list(model.labels), [c for c in concepts if c not in model.labels]
    targets = target_matrix(manifest.iloc[test], trained)
    if not targets.any():
        raise ValueError(f"no test image holds any of the model's labels ({', '.join(trained)}): this dataset "
                         "cannot evaluate this model")
    network = model.build().to(dev)
    feats = extract_features(network, images, test, dev, feature_batch_size, desc="labelspace test features")
    scores = {"labelspace": scores_from_features(network, feats, model.label_vectors, dev)}
    heads = {"labelspace": model}
    if baseline is not None:
        bce = baseline.build().to(dev)
        bce_feats = extract_features(bce, images, test, dev, feature_batch_size, desc="bce test features")
        scores["bce"] = scores_from_features(bce, bce_feats, None, dev)
        heads["bce"] = baseline

    committee, diversity = analysis.committee_over_images(network, feats, model.label_vectors,
                                                          config.committee_top_n, config.diversity_top)
    chance = analysis.expected_jaccard(len(trained), config.diversity_top)
    summary: dict[str, Any] = {
        "data": {"n_test_images": int(len(test)), "n_test_images_without_labels": int((~targets.any(axis=1)).sum())},
        "labels": {"trained": trained, "held_out": held_out},
        "committee": {"k": top_k, "n_rows": model.spec.k, "top_n": list(config.committee_top_n),
                      "table": {name: analysis.topk_summary(s, targets, top_k) for name, s in committee.items()}},
        "row_diversity": {"top_n": min(config.diversity_top, len(trained)), "n_images": int(len(test)),
                          "pairs": "the k(k-1) ordered pairs of distinct rows", "mean": float(np.nanmean(diversity)),
                          "std": float(np.nanstd(diversity)), "chance": chance},
    }
    figures: dict[str, Any] = {}
    if model.spec.k >= 2:
        figures["row_diversity.png"] = analysis_plots.row_diversity_histogram(
            diversity, chance, summary["row_diversity"]["top_n"], model.spec.k)

    positives = targets.sum(axis=0).tolist()
    f1 = {head: per_class_f1(s, targets, top_k) for head, s in scores.items()}
    summary["per_class_f1"] = {"k": top_k, "labels": trained, "positives": positives,
                               **{head: [None if np.isnan(v) else float(v) for v in values] for head, values in f1.items()}}
    figures["per_class_f1_heads.png"] = analysis_plots.per_class_f1_side_by_side(trained, f1, top_k, positives)

    # One kind of decision for both heads (thresholded only when both carry a calibration), so they compare.
    thresholded = all(heads[head].calibration for head in scores)
    confusion, kinds = {}, {}
    for head, s in scores.items():
        predicted, kinds[head] = analysis.decisions(s, heads[head].calibration if thresholded else None, top_k)
        confusion[head] = analysis.label_confusion(predicted, targets, trained, config.confusion_labels)
    summary["confusion"] = {"decision": kinds, **confusion}
    figures["label_confusion.png"] = analysis_plots.confusion_heatmaps(confusion, kinds)

    summary["worst_images"], figures["worst_images.png"] = _worst(
        model, network, feats, targets, scores["labelspace"], manifest.iloc[test], images[test], held_out,
        loss_config, config.worst_images)

    all_vectors = np.asarray(concept_vectors, dtype=np.float32)
    prepared = network.prepare_words(torch.as_tensor(all_vectors, device=dev)).cpu().numpy()
    xy, method = analysis.map_2d(prepared, config.tsne_min_labels)
    picks = _map_images(manifest.iloc[test], trained, held_out, config.map_images)
    maps = analysis.image_label_map(network, feats[picks], all_vectors) if len(picks) else []
    entries = [{"image": images[test[p]], "xy": m["xy"], "distance": m["distance"],
                "true": list(manifest.iloc[test[p]]["labels"]), "threshold": model.calibration.get("distance_threshold"),
                "title": f"{manifest.iloc[test[p]]['image_id']}: {', '.join(manifest.iloc[test[p]]['labels'])}"}
               for p, m in zip(picks, maps, strict=True)]
    summary["label_map"] = {"method": method, "images": [str(manifest.iloc[test[p]]["image_id"]) for p in picks]}
    figures["label_map.png"] = analysis_plots.label_map(concepts, xy, method, held_out, entries)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary, figures


def _worst(model: TrainedModel, network, feats, targets: np.ndarray, scores: np.ndarray, rows: pd.DataFrame,
           images: np.ndarray, held_out: list[str], loss_config: LossConfig, n: int):
    losses = analysis.per_image_loss(network, model.spec, loss_config, feats, targets, model.label_vectors)
    top3 = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    entries, records = [], []
    for p in analysis.worst_images(losses, n):
        labels = list(rows.iloc[p]["labels"])
        predicted = [(model.labels[j], float(-scores[p, j]), bool(targets[p, j])) for j in top3[p]]
        record = {"image_id": str(rows.iloc[p]["image_id"]), "loss": float(losses[p]),
                  "true": [label for label in labels if label in model.labels],
                  "held_out": [label for label in labels if label in held_out], "predicted": predicted}
        records.append(record)
        entries.append({**record, "image": images[p]})
    return records, analysis_plots.contact_sheet(entries)


def _map_images(rows: pd.DataFrame, trained: list[str], held_out: list[str], n: int) -> list[int]:
    """Test positions to map: half holding a held-out label (zero-shot), the rest with >= 2 trained labels."""
    label_sets = [set(labels) for labels in rows["labels"]]
    zero_shot = [i for i, s in enumerate(label_sets) if s & set(held_out) and s & set(trained)]
    several = [i for i, s in enumerate(label_sets) if len(s & set(trained)) >= 2 and i not in zero_shot]
    picks = zero_shot[: n // 2]
    picks += several[: n - len(picks)]
    picks += [i for i in zero_shot if i not in picks][: n - len(picks)]
    return sorted(picks)


# ---------------------------------------------------------------- the k sweep


def k_sweep(
    ks: list[int], budget: str, config: AnalyzeConfig, model_config: ModelConfig, loss_config: LossConfig,
    train_config: TrainConfig, manifest: pd.DataFrame, images: np.ndarray, labels: list[str],
    label_vectors: np.ndarray, *, dataset_version: str, checkpoint_dir: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """One row per k of top-3 and top-5 test metrics of a label space trained with `budget`
    ("short" or "full") on `labels` (the training labels), and a one-line note of the budget."""
    from labelspace.training.fit import fit_head

    dev = resolve_device(train_config.device)
    splits = split_indices(manifest, train_config.val_fraction, train_config.seed)
    targets = target_matrix(manifest, labels)
    test_targets = targets[splits["test"]]
    vectors = np.asarray(label_vectors, dtype=np.float32)
    rows: list[dict[str, Any]] = []
    if budget == "short":
        # No mirroring: a frozen head barely gains from it, and it would double the feature pass.
        train = dataclasses.replace(train_config, epochs=config.short_epochs, lr=config.short_lr, mirror=False)
        frozen = dataclasses.replace(model_config, freeze_backbone=True, dropout=0.0)
        note = (f"short budget: frozen pretrained {model_config.backbone}, {train.epochs} epochs of the head "
                f"at lr {train.lr:g} on cached features, no mirroring")
        spec0 = ModelSpec.from_config(frozen, head="labelspace", n_labels=len(labels), d=vectors.shape[1],
                                      image_size=int(images.shape[1]))
        from labelspace.model.spec import build_model

        backbone_model = build_model(spec0, pretrained=frozen.pretrained, weights_path=frozen.weights_path).to(dev)
        bs = train.feature_batch_size
        cached = (extract_features(backbone_model, images, splits["train"], dev, bs, desc="sweep train features"), None)
        test_feats = extract_features(backbone_model, images, splits["test"], dev, bs, desc="sweep test features")
        for k in ks:
            started = time.perf_counter()
            spec = dataclasses.replace(spec0, k=k)
            result = train_model(spec, loss_config, train, images, targets, splits["train"], vectors,
                                 pretrained=frozen.pretrained, weights_path=frozen.weights_path, features=cached)
            scores = scores_from_features(result.model, test_feats, vectors, dev)
            rows.append(_sweep_row(k, scores, test_targets, time.perf_counter() - started))
    elif budget == "full":
        note = (f"full budget: {'frozen' if model_config.freeze_backbone else 'end-to-end'} "
                f"{model_config.backbone}, {train_config.epochs} epochs at lr {train_config.lr:g}, as params.yaml says")
        for k in ks:
            started = time.perf_counter()
            fit = fit_head("labelspace", dataclasses.replace(model_config, k=k), loss_config, train_config, manifest,
                           labels, vectors, images, dataset_version=dataset_version, checkpoint_dir=checkpoint_dir)
            network = fit.model.build().to(dev)
            feats = extract_features(network, images, splits["test"], dev, train_config.feature_batch_size,
                                     desc=f"k={k} test features")
            scores = scores_from_features(network, feats, vectors, dev)
            rows.append(_sweep_row(k, scores, test_targets, time.perf_counter() - started))
    else:
        raise ValueError(f"unknown budget {budget!r}: short or full")
    return rows, note


def _sweep_row(k: int, scores: np.ndarray, targets: np.ndarray, seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"k": k}
    for top in (3, 5):
        metrics = topk_metrics(scores, targets, top)
        row.update({f"top{top}_{key}": float(metrics[key]) for key in analysis.COMMITTEE_KEYS})
    row["train_seconds"] = round(seconds, 2)
    return row


# ---------------------------------------------------------------- text and files


def committee_text(committee: dict[str, Any]) -> str:
    """The committee table (paper Table 5) in percent."""
    header = f"{'':<16}" + "".join(f"{key:>8}" for key in analysis.COMMITTEE_KEYS)
    lines = [f"committee of the k = {committee['n_rows']} rows of A, top-{committee['k']} on the test split (%):",
             header, "-" * len(header)]
    for name, row in committee["table"].items():
        title = "full model (D)" if name == "full" else f"vote over top-{name.removeprefix('vote_top')}"
        lines.append(f"{title:<16}" + "".join(f"{100 * row[key]:>8.1f}" for key in analysis.COMMITTEE_KEYS))
    return "\n".join(lines)


def diversity_text(diversity: dict[str, Any]) -> str:
    return (f"row diversity: mean Jaccard of the rows' top-{diversity['top_n']} label sets over "
            f"{diversity['pairs']}, on {diversity['n_images']} test images: {diversity['mean']:.4f} ± "
            f"{diversity['std']:.4f} (two random top-{diversity['top_n']} sets: {diversity['chance']:.4f}; "
            "paper, NUS-WIDE: 0.1001 ± 0.1288)")


def sweep_text(sweep: dict[str, Any]) -> str:
    keys = [f"top{t}_{key}" for t in (3, 5) for key in analysis_plots.SWEEP_KEYS]
    lines = [f"k sweep ({sweep['note']}), test split (%):", f"{'k':>5}" + "".join(f"{key:>12}" for key in keys)]
    for row in sweep["rows"]:
        lines.append(f"{row['k']:>5}" + "".join(f"{100 * row[key]:>12.1f}" for key in keys))
    return "\n".join(lines)


def dvc_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers DVC compares (`dvc metrics diff`): committee, row diversity, the sweep by k."""
    out: dict[str, Any] = {"committee": summary["committee"]["table"],
                           "row_diversity": {key: summary["row_diversity"][key] for key in ("mean", "std", "chance")}}
    if "k_sweep" in summary:
        out["k_sweep"] = {f"k{row['k']}": {key: row[key] for key in SWEEP_COLUMNS[1:-1]}
                          for row in summary["k_sweep"]["rows"]}
    return out


def write_analysis(summary: dict[str, Any], figures: dict[str, Any], out: str | Path,
                   histories: dict[str, list[dict[str, float]]]) -> list[Path]:
    """Write the analysis under `out`; returns every file written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "analysis.json", out / "metrics.json", out / "k_sweep.csv", out / "history.csv"]
    written[0].write_text(json.dumps(summary, indent=1, default=_plain) + "\n", encoding="utf-8")
    written[1].write_text(json.dumps(dvc_metrics(summary), indent=1) + "\n", encoding="utf-8")
    with written[2].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows(summary.get("k_sweep", {}).get("rows", []))
    epochs = sorted({int(r["epoch"]) for h in histories.values() for r in h})
    columns = ["epoch", *(f"{head}_{key}" for head in ("labelspace", "bce") for key in HISTORY_KEYS)]
    by_epoch = {head: {int(r["epoch"]): r for r in h} for head, h in histories.items()}
    with written[3].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for epoch in epochs:
            writer.writerow([epoch, *(by_epoch.get(head, {}).get(epoch, {}).get(key, "")
                                      for head in ("labelspace", "bce") for key in HISTORY_KEYS)])
    for name, fig in figures.items():
        plots.save(fig, out / name)
        written.append(out / name)
    return written


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
