"""One real trained pair of heads on the tiny dataset, and its analysis, shared by test_analysis and
test_card (computed once per session: a label space and a BCE baseline, 1 epoch at 32 px)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

HELD_OUT = ["sandal", "shirt"]
_CACHE: dict[str, Any] = {}


@dataclass
class Trained:
    manifest: Any
    concepts: list[str]
    images: np.ndarray
    vectors: np.ndarray  # (len(concepts), 50), every concept
    how: dict[str, str]
    model: Any  # label-space TrainedModel
    baseline: Any  # BCE TrainedModel
    config: Any  # the project's Config with the small changes below


def trained_pair(tiny_dataset, small_vectors, project_config) -> Trained:
    if "trained" not in _CACHE:
        from labelspace.data.word_vectors import load_word_vectors, resolve_label_vectors
        from labelspace.training.fit import fit_head

        _, manifest, concepts, images = tiny_dataset
        kv = load_word_vectors(small_vectors, limit=100_000)  # every garment word is among them; 4x faster
        resolved = resolve_label_vectors(kv, concepts)
        config = project_config.replace(
            model={"k": 6, "freeze_backbone": True},
            train={"epochs": 4, "batch_size": 32, "lr": 3e-3, "val_fraction": 0.2, "mirror": False},
            analyze={"sweep_k": [2, 6], "short_epochs": 2, "map_images": 3, "worst_images": 6, "confusion_labels": 6})
        heads = {head: fit_head(head, config.model, config.loss, config.train, manifest, concepts, resolved.matrix,
                                images, dataset_version="tiny", held_out=HELD_OUT).model
                 for head in ("labelspace", "bce")}
        _CACHE["trained"] = Trained(manifest, concepts, images, resolved.matrix, resolved.how, heads["labelspace"],
                                    heads["bce"], config)
    return _CACHE["trained"]


def analysed(trained: Trained) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, figures) of analyze_model on the trained pair, with a short k sweep, computed once."""
    if "analysed" not in _CACHE:
        from labelspace.evaluation.analysis_plots import k_sweep as sweep_figure
        from labelspace.evaluation.analysis_run import analyze_model, k_sweep
        from labelspace.training.fit import training_labels

        c = trained.config
        summary, figures = analyze_model(trained.model, trained.baseline, trained.manifest, trained.images,
                                         trained.concepts, trained.vectors, c.analyze, c.loss, top_k=c.analyze.top_k)
        labels, vectors = training_labels(trained.concepts, trained.vectors, HELD_OUT)
        rows, note = k_sweep(list(c.analyze.sweep_k), "short", c.analyze, c.model, c.loss, c.train, trained.manifest,
                             trained.images, labels, vectors, dataset_version="tiny")
        summary["k_sweep"] = {"budget": "short", "note": note, "rows": rows}
        figures["k_sweep.png"] = sweep_figure(rows, trained.model.spec.k, note)
        summary["labels"].update(resolution=trained.how, aliases={}, vectors="glove-6b-50d.bin (50-d)")
        summary["data"].update(dataset="tiny/fashion-canvas", dataset_version="tiny", n_train_images=77,
                               n_val_images=19)
        _CACHE["analysed"] = (summary, figures)
    return _CACHE["analysed"]


def evaluated(trained: Trained) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(reports/metrics.json's report, the evaluation's plots as PNG bytes) of the trained pair, once."""
    if "evaluated" not in _CACHE:

        from labelspace.evaluation import plots
        from labelspace.evaluation.evaluate import evaluate_models
        from labelspace.training.fit import held_out_labels

        c = trained.config
        report, figures = evaluate_models(trained.manifest, trained.images,
                                          {"labelspace": trained.model, "bce": trained.baseline}, trained.concepts,
                                          trained.vectors, c.evaluate, held_out_labels(HELD_OUT, trained.concepts))
        _CACHE["evaluated"] = (report, {name: _png(fig, plots) for name, fig in figures.items()})
    return _CACHE["evaluated"]


def _png(fig, plots) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plots.plt.close(fig)
    return buffer.getvalue()


def card_inputs(trained: Trained, **changes):
    """CardInputs of the trained pair as `labelspace card` gathers them from MLflow, without MLflow."""
    from labelspace.evaluation.card_render import CardInputs

    summary, figures = analysed(trained)
    report, plots = evaluated(trained)
    if "pngs" not in _CACHE:
        from labelspace.evaluation import plots as plot_module

        _CACHE["pngs"] = {name: _png(fig, plot_module) for name, fig in figures.items()}
    fields = dict(
        model_name="labelspace", version="7", aliases=["challenger"], created="2026-01-02 03:04 UTC",
        run_id="0123abcd", tracking_uri="sqlite:///mlflow/mlflow.db",
        tags={"data.dataset_version": "tiny", "data.vectors_version": "glove", "code.git_commit": "f" * 40,
              "code.git_dirty": "false", "params.hash": "abc", "zenml.run_id": "unknown"},
        spec=trained.model.spec.to_dict(), labels=list(trained.model.labels), calibration=trained.model.calibration,
        params={"labelspace.loss.variant": "pairwise", "labelspace.train.epochs": "4"}, report=report,
        analysis=json_round_trip(summary), plots={**plots, **_CACHE["pngs"]})
    fields.update(changes)
    return CardInputs(**fields)


def json_round_trip(value):
    import json

    from labelspace.evaluation.analysis_run import _plain

    return json.loads(json.dumps(value, default=_plain))
