"""What a model card says, as blocks (labelspace.evaluation.card_render renders them to Markdown and HTML).

Block kinds: h2, h3, p (a line of text with `code` and **bold**), ul (items), table (header, rows,
caption), img (name of a plot in CardInputs.plots, caption), pre (preformatted text).
"""

from __future__ import annotations

from typing import Any

from labelspace.evaluation.analysis_run import diversity_text

METRIC_KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")
HEADS = {"labelspace": "label space", "bce": "BCE baseline"}
NO_GATE = "no gate decision recorded"

# Plots, in the card's order: (file name, caption). The analyses' plots replace the evaluation's
# per-class bars and label-vector map when `labelspace analyze` has run.
PLOTS = (
    ("per_class_f1_heads.png", "Per-class top-3 F1 of both heads on the test split, side by side on the same axes."),
    ("k_sweep.png", "k sweep (paper Fig. 8): top-3 and top-5 C-F1 and O-F1 of label spaces trained with one "
                    "budget for each k."),
    ("label_map.png", "Label map (paper Fig. 7): the label vectors, then for a few test images the labels after "
                      "that image's A; the distance from the image (star) is exactly sqrt(D)."),
    ("row_diversity.png", "Row diversity (paper Fig. 9): per test image, the mean Jaccard of the top-5 label sets "
                          "of two rows of A."),
    ("label_confusion.png", "Confusion between the most frequent labels, both heads, the same colour scale."),
    ("worst_images.png", "The test images with the highest label-space loss, their true labels and top-3."),
    ("training_curves.png", "Training loss and validation metrics per epoch, both heads."),
    ("reliability.png", "Reliability of the calibrated scores behind the thresholded decision."),
)
FALLBACK_PLOTS = (
    ("per_class_f1.png", "Per-class top-3 F1 of both heads on the test split."),
    ("label_vectors.png", "The label word vectors in 2-D (PCA); held-out labels in red."),
)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


def sections(c) -> list[dict[str, Any]]:
    """Every block of the card of `c` (labelspace.evaluation.card_render.CardInputs), in order."""
    tags, report, analysis = c.tags, c.report or {}, c.analysis or {}
    spec = c.spec
    aliases = " ".join(f"`@{a}`" for a in c.aliases) or "no alias"
    blocks: list[dict[str, Any]] = [
        p(f"{aliases} · registered {c.created} · MLflow run `{c.run_id}` · {spec['backbone']}, "
          f"k = {spec['k']}, d = {spec['d']} · tracking `{c.tracking_uri}`"),
        p(f"**Promotion gate:** {_gate_line(tags)}"),
        h2("Intended use"),
        p("Multilabel tagging of images like the training data: the model maps an image to a k×d matrix A and "
          "ranks every label (any word with a vector) by D = ||A w||², small = relevant (Li & Yeh, "
          "arXiv:1802.07460). The served pyfunc returns the top-k labels with their distances and the "
          "thresholded decision (`decided`: labels whose calibrated probability passes the threshold chosen on "
          "validation)."),
        ul([f"Trained labels: {', '.join(c.labels)}.",
            "Words outside the training labels (the open vocabulary) are ranked too; only the held-out labels "
            "below measure how well (zero-shot).",
            "Not for: images unlike the training data, decisions about people, or any use where a wrong tag "
            "causes harm without a person checking it."]),
        h2("Model"),
        table(["", ""], _model_rows(c)),
        h2("Training data"),
        table(["", ""], _data_rows(c, report, analysis)),
        h2("Labels and their word vectors"),
        *_label_blocks(c, report, analysis),
        h2("Metrics"),
        *_metric_blocks(report),
        *[img(name, caption) for name, caption in PLOTS[:1] if name in c.plots],
        h2("Zero-shot"),
        *_zero_shot_blocks(report),
        h2("Promotion gate"),
        *_gate_blocks(tags),
        h2("Analyses"),
        *_analysis_blocks(c, analysis),
        h2("Known limitations"),
        ul(_limitations(c, report, analysis)),
        h2("Lineage"),
        table(["tag", "value"], [[f"`{k}`", f"`{v}`"] for k, v in sorted(tags.items())
                                 if not k.startswith(("gate.", "metrics."))]),
    ]
    return blocks


# ---------------------------------------------------------------- blocks


def p(text: str) -> dict[str, Any]:
    return {"kind": "p", "text": text}


def h2(text: str) -> dict[str, Any]:
    return {"kind": "h2", "text": text}


def h3(text: str) -> dict[str, Any]:
    return {"kind": "h3", "text": text}


def ul(items: list[str]) -> dict[str, Any]:
    return {"kind": "ul", "items": items}


def table(header: list[str], rows: list[list[Any]], caption: str = "") -> dict[str, Any]:
    return {"kind": "table", "header": header, "rows": rows, "caption": caption}


def img(name: str, caption: str) -> dict[str, Any]:
    return {"kind": "img", "name": name, "caption": caption}


# ---------------------------------------------------------------- sections


def _model_rows(c) -> list[list[Any]]:
    s, params = c.spec, c.params
    frozen = s.get("frozen_stages", 0)
    training = ("frozen backbone, head only" if s["freeze_backbone"]
                else f"end to end, its first {frozen} stages kept pretrained" if frozen
                else "end to end (backbone and head)")
    rows = [["head", f"label space, D = ||A w||² (A: {s['k']}×{s['d']})"],
            ["backbone", f"{s['backbone']} ({training}), input {s['image_size']}×{s['image_size']} px"],
            ["shape options", f"normalize {s['normalize']}, center_words {s['center_words']}, "
                              f"learn_scale {s['learn_scale']}, dropout {s['dropout']}"]]
    loss = {k.split(".")[-1]: v for k, v in params.items() if k.startswith("labelspace.loss.")}
    if loss:
        rows.append(["loss", ", ".join(f"{k} {v}" for k, v in sorted(loss.items()))])
    train = {k.split(".")[-1]: params.get(f"labelspace.train.{k}") for k in ("epochs", "batch_size", "lr", "lr_decay")}
    if any(train.values()):
        rows.append(["training", ", ".join(f"{k} {v}" for k, v in train.items() if v is not None)])
    elif c.epochs:  # a run whose training steps ZenML took from its cache logged no training params
        rows.append(["training", f"{c.epochs} epochs (from the model's history; the run holds no training params)"])
    cal = c.calibration
    if cal:
        offsets = "with a shrunk offset per label, " if cal.get("offsets") else ""
        rows.append(["thresholded decision", f"Platt scaling {offsets}on {cal.get('n_images', '?')} validation "
                                             f"images, probability ≥ {cal['probability_threshold']:.3f}"
                     + (f" (D ≤ {cal['distance_threshold']:.4f} for a label of mean offset)"
                        if "distance_threshold" in cal else "")])
    else:
        rows.append(["thresholded decision", "none: the model only ranks (no validation split to calibrate on)"])
    return rows


def _data_rows(c, report: dict, analysis: dict) -> list[list[Any]]:
    tags, data = c.tags, report.get("data", {})
    rows = [["dataset version (DVC)", f"`{tags.get('data.dataset_version', 'unknown')}`"],
            ["word vectors version (DVC)", f"`{tags.get('data.vectors_version', 'unknown')}`"],
            ["code", f"`{tags.get('code.git_commit', 'unknown')}` (dirty: {tags.get('code.git_dirty', 'unknown')})"],
            ["params hash", f"`{tags.get('params.hash', 'unknown')}`"]]
    a_data = analysis.get("data", {})
    if "n_train_images" in a_data:
        rows.append(["train / validation images", f"{a_data['n_train_images']} / {a_data['n_val_images']}"])
    if data:
        rows.append(["test split", f"{data['n_test_images']} images "
                                   f"({data.get('n_test_images_without_labels', 0)} without any label, left out of metrics)"])
    if a_data.get("dataset"):
        same = a_data.get("dataset_version") == tags.get("data.dataset_version")
        rows.append(["analyses ran on", f"`{a_data['dataset']}` @ `{a_data.get('dataset_version')}`"
                                        + ("" if same else " (**not** the training data version)")])
    return rows


def _label_blocks(c, report: dict, analysis: dict) -> list[dict[str, Any]]:
    labels_info = analysis.get("labels", {})
    held = labels_info.get("held_out") or report.get("data", {}).get("held_out_labels", [])
    resolution = labels_info.get("resolution", {})
    positives = dict(zip(analysis.get("per_class_f1", {}).get("labels", []),
                         analysis.get("per_class_f1", {}).get("positives", []), strict=False))
    rows = [[f"`{label}`", "trained", resolution.get(label, "not recorded"), positives.get(label, "–")]
            for label in c.labels]
    rows += [[f"`{label}`", "held out (zero-shot)", resolution.get(label, "not recorded"), "–"] for label in held]
    aliases = labels_info.get("aliases")
    alias_text = ("none" if not aliases else ", ".join(f"`{k}` → `{v}`" for k, v in aliases.items())) \
        if aliases is not None else "not recorded (run `labelspace analyze`)"
    return [
        p("Policy for a label's vector, in order: the alias table (`embedding.aliases`), the exact word, its lower "
          "case, then the mean of the words of a multi-word or hyphenated label. A label none of these resolves "
          "stops training with an error naming it: no label is ever dropped or given a random vector."
          f" Aliases: {alias_text}. Vectors: {labels_info.get('vectors', 'the file of data.vectors_version')}."),
        table(["label", "role", "word-vector rule", "test positives"], rows),
    ]


def _metric_row(name: str, kind: str, row: dict[str, Any], mAP: Any) -> list[str]:
    return [name, kind, *(_pct(row.get(k)) for k in METRIC_KEYS), _pct(mAP) if mAP is not None else "–"]


def _metric_blocks(report: dict) -> list[dict[str, Any]]:
    if not report.get("labelspace"):
        return [p("No metrics report in the version's run (reports/metrics.json).")]
    rows = []
    for head, name in HEADS.items():
        result = report.get(head)
        if not result:
            continue
        for key in sorted((k for k in result if k.startswith("top")), key=lambda s: int(s[3:])):
            rows.append(_metric_row(name, f"top-{key[3:]}", result[key], result.get("mAP")))
        if "threshold" in result:
            rows.append(_metric_row(name, "thr", result["threshold"], None))
    data = report.get("data", {})
    n = data.get("n_test_images", "?")
    caption = (f"Test split, {n} images ({data.get('n_test_images_without_labels', 0)} without a label left out), "
               f"in %, over the {len(data.get('evaluated_labels', []))} trained labels; thr: labels whose calibrated "
               "score passes the threshold chosen on validation (what serving returns as `decided`).")
    return [table(["model", "", *METRIC_KEYS, "mAP"], rows, caption)]


def _zero_shot_blocks(report: dict) -> list[dict[str, Any]]:
    z = report.get("zero_shot", {})
    if not z.get("labels") or "top1" not in z:
        return [p(z.get("note", "No zero-shot measurement in the version's run."))]
    chance = z["chance"]
    rows = [[key + "@1", _pct(z["top1"][key]), _pct(chance["top1"].get(key)),
             f"{z['ratio'].get('top1_' + key):.2f}×" if z["ratio"].get("top1_" + key) else "–"]
            for key in ("O-F1", "C-F1")]
    rows.append(["mAP", _pct(z["mAP"]), _pct(chance["mAP"]), f"{z['ratio']['mAP']:.2f}×"])
    return [p(f"The held-out labels {', '.join(f'`{x}`' for x in z['labels'])} were never trained on (no positives, "
              f"vectors unseen); they are ranked alone on the {z['n_images']} test images holding one, beside the "
              "exact expectation of a random ranking."),
            table(["metric", "model (%)", "chance (%)", "ratio"], rows)]


def _gate_line(tags: dict[str, str]) -> str:
    if "gate.decision" not in tags:
        return NO_GATE
    line = f"**{tags['gate.decision']}**"
    if tags.get("gate.compared_with"):
        line += f" against {tags['gate.compared_with']}"
    return line


def _gate_blocks(tags: dict[str, str]) -> list[dict[str, Any]]:
    if "gate.decision" not in tags:
        return [p(f"{NO_GATE.capitalize()} for this version (tags `gate.decision`, `gate.compared_with`, "
                  "`gate.reason` are absent).")]
    rows = [["decision", tags["gate.decision"]],
            ["compared with", tags.get("gate.compared_with") or "no champion (absolute thresholds only)"],
            ["reason", tags.get("gate.reason", "not recorded")]]
    rows += [[k.removeprefix("gate."), v] for k, v in sorted(tags.items())
             if k.startswith("gate.") and k not in ("gate.decision", "gate.compared_with", "gate.reason")]
    return [table(["", ""], rows)]


def _analysis_blocks(c, analysis: dict) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if not analysis:
        blocks.append(p(f"No analysis logged for this version: run `labelspace analyze --version {c.version}`."))
    else:
        a_data = analysis.get("data", {})
        seconds = f" in {analysis['seconds_total']:.0f} s" if analysis.get("seconds_total") else ""
        note = f" {analysis['baseline_note'].rstrip('.')}." if analysis.get("baseline_note") else ""
        blocks.append(p(f"`labelspace analyze` ran on the {a_data.get('n_test_images', '?')} test images of "
                        f"`{a_data.get('dataset', '?')}`{seconds}; the per-class F1 of both heads is under Metrics."
                        + note))
        committee = analysis["committee"]
        blocks += [h3("The committee of the rows of A (paper Table 5)"),
                   p(f"Each of the k = {committee['n_rows']} rows a_i of A ranks the labels by (a_i·w)²; each votes "
                     "for its top-N labels, labels are ranked by votes (ties: the rows' mean rank). Top-"
                     f"{committee['k']} on the test split, %:"),
                   table(["", *METRIC_KEYS],
                         [[("full model (D)" if name == "full" else f"vote over top-{name.removeprefix('vote_top')}"),
                           *(_pct(row[k]) for k in METRIC_KEYS)] for name, row in committee["table"].items()]),
                   h3("Row diversity (paper Fig. 9)"), p(diversity_text(analysis["row_diversity"]))]
        sweep = analysis.get("k_sweep")
        if sweep and sweep.get("rows"):
            blocks += [h3("k sweep (paper Fig. 8)"), p(sweep["note"] + "."),
                       table(["k", "top-3 C-F1", "top-3 O-F1", "top-5 C-F1", "top-5 O-F1", "train s"],
                             [[r["k"], _pct(r["top3_C-F1"]), _pct(r["top3_O-F1"]), _pct(r["top5_C-F1"]),
                               _pct(r["top5_O-F1"]), r.get("train_seconds", "–")] for r in sweep["rows"]])]
    shown = {name for name, _ in PLOTS if name in c.plots}
    plots = list(PLOTS[1:]) + [(name, cap) for name, cap in FALLBACK_PLOTS
                           if not ({"per_class_f1_heads.png", "label_map.png"} & shown)]
    blocks += [img(name, caption) for name, caption in plots if name in c.plots]
    return blocks


def _limitations(c, report: dict, analysis: dict) -> list[str]:
    items = [f"Trained on {len(c.labels)} labels at {c.spec['image_size']} px; images of other kinds or sizes are "
             "out of distribution and were never measured.",
             "One probability threshold for every label, on a calibration fitted on validation whose per-label offsets "
             "are shrunk toward the shared mapping: labels with few validation images are decided by the shared one.",
             "Open-vocabulary words are measured only by how often a true label still reaches the top 5 among them "
             "(reports/metrics.json, open_vocabulary); no open word is ever checked as a tag."]
    ls, bce = report.get("labelspace", {}), report.get("bce", {})
    if ls.get("mAP") is not None and bce.get("mAP") is not None and bce["mAP"] > ls["mAP"]:
        items.append(f"The BCE baseline beats the label space on mAP by {100 * (bce['mAP'] - ls['mAP']):.1f} points "
                     "on the test split; the label space's advantage is ranking words it never trained on.")
    z = report.get("zero_shot", {})
    if z.get("ratio", {}).get("mAP"):
        items.append(f"Zero-shot ranking of held-out labels is {z['ratio']['mAP']:.2f}× chance on mAP: far from "
                     "the trained labels' quality.")
    f1 = analysis.get("per_class_f1", {})
    weak = [f"`{label}` ({100 * v:.0f}%)" for label, v in zip(f1.get("labels", []), f1.get("labelspace", []),
                                                              strict=False) if v is not None and v < 0.5]
    if weak:
        items.append(f"Labels with a top-{f1.get('k', 3)} F1 below 50% on the test split: {', '.join(weak)}.")
    diversity = analysis.get("row_diversity", {})
    if diversity.get("mean") is not None and diversity.get("chance") and diversity["mean"] > diversity["chance"] + 0.2:
        items.append(f"The rows of A agree much more than chance (Jaccard {diversity['mean']:.2f} against "
                     f"{diversity['chance']:.2f}): they are partly redundant.")
    return items
