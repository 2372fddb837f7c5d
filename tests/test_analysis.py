"""The paper's analyses (labelspace.evaluation.analysis*): hand-worked examples of the committee, row
diversity and confusion, then the whole analysis of a real label space and BCE baseline trained on the
tiny dataset, and the files it writes."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch
from analysis_support import HELD_OUT, analysed, trained_pair
from PIL import Image

from labelspace.evaluation import analysis
from labelspace.evaluation.analysis_run import committee_text, diversity_text, sweep_text, write_analysis
from labelspace.model.inference import extract_features, scores_from_features


@pytest.fixture(scope="module")
def trained(tiny_dataset, small_vectors, project_config):
    return trained_pair(tiny_dataset, small_vectors, project_config)


# ---------------------------------------------------------------- hand-worked examples


def test_committee_votes_over_each_rows_top_n():
    # One image, 3 rows, 4 labels: rows 1 and 2 put label 2 first, row 0 puts label 0 first.
    rows = np.array([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 0.0, 1.0], [2.0, 3.0, 0.0, 1.0]]])
    top1 = analysis.committee_scores(rows, 1)
    assert np.argmax(top1[0]) == 2 and top1[0, 2] == pytest.approx(2 - (2 / 3) / 4)  # 2 votes, mean rank 2/3
    # Top-2: labels 2 and 3 have 2 votes, 0 and 1 one each; ties go to the lower mean rank (2: 0.67 before 3: 1.67,
    # 0: 1.67 before 1: 2).
    top2 = analysis.committee_scores(rows, 2)
    assert list(np.argsort(-top2[0], kind="stable")) == [2, 3, 0, 1]
    targets = np.array([[0, 0, 1, 0]])
    table = analysis.committee_table(rows, targets, [1, 2], k=1)
    assert table["vote_top1"]["O-P"] == 1.0
    assert table["full"]["O-P"] == 1.0  # D = sums (5, 6, 2, 5): label 2 first too


def test_row_diversity_is_one_for_identical_rows_and_zero_for_disjoint_ones():
    same = np.tile(np.arange(6.0), (1, 4, 1))  # 4 identical rows
    assert analysis.row_diversity(same, 3) == pytest.approx([1.0])
    disjoint = np.array([[[0, 1, 2, 9, 9, 9], [9, 9, 9, 0, 1, 2]]], dtype=float)
    assert analysis.row_diversity(disjoint, 3) == pytest.approx([0.0])


@pytest.mark.parametrize(("n_labels", "top_n"), [(8, 5), (6, 2), (5, 5), (20, 5)])
def test_expected_jaccard_is_the_mean_over_every_pair_of_sets(n_labels, top_n):
    if n_labels > 10:  # every pair of C(20, 5) sets is too many: one fixed set against every other (symmetry)
        fixed = set(range(top_n))
        values = [len(fixed & set(s)) / len(fixed | set(s)) for s in itertools.combinations(range(n_labels), top_n)]
    else:
        sets = [set(s) for s in itertools.combinations(range(n_labels), top_n)]
        values = [len(a & b) / len(a | b) for a in sets for b in sets]
    assert analysis.expected_jaccard(n_labels, top_n) == pytest.approx(np.mean(values))


def test_confusion_counts_wrong_labels_among_images_holding_another():
    labels = ["a", "b", "c"]
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    predicted = np.array([[1, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=bool)
    result = analysis.label_confusion(predicted, targets, labels, 3)
    assert result["labels"] == ["a", "b"]  # by frequency; c has no positive
    matrix = np.array(result["matrix"])
    assert matrix[0, 0] == pytest.approx(2 / 3)  # recall of a
    assert matrix[0, 1] == pytest.approx(1 / 2)  # of the 2 images with a but not b, one predicts b
    assert matrix[1, 0] == pytest.approx(0.0)
    assert result["most_confused"][0] == {"true": "a", "predicted": "b", "rate": 0.5}


# ---------------------------------------------------------------- a real trained model


def test_rows_add_up_to_the_models_distance(trained):
    model = trained.model.build()
    test = np.flatnonzero(trained.manifest["split"].to_numpy() == "test")[:8]
    feats = extract_features(model, trained.images, test, torch.device("cpu"))
    rows = analysis.row_projections(model, feats, trained.model.label_vectors)
    assert rows.shape == (8, trained.model.spec.k, len(trained.model.labels))
    scores = scores_from_features(model, feats, trained.model.label_vectors)
    np.testing.assert_allclose(-rows.sum(axis=1), scores, rtol=1e-4, atol=1e-6)
    # A few images at a time (NUS-WIDE's rows of A do not fit in memory at once) gives the same numbers.
    chunked, diversity = analysis.committee_over_images(model, feats, trained.model.label_vectors, [1, 3], 5, chunk=3)
    np.testing.assert_allclose(chunked["vote_top3"], analysis.committee_scores(rows, 3), rtol=1e-5)
    np.testing.assert_allclose(chunked["full"], -rows.sum(axis=1), rtol=1e-5)  # float32 batches differ a hair
    np.testing.assert_allclose(diversity, analysis.row_diversity(rows, 5))
    # The label map puts every label at exactly sqrt(D) from the image.
    maps = analysis.image_label_map(model, feats[:2], trained.model.label_vectors)
    np.testing.assert_allclose(np.linalg.norm(maps[0]["xy"], axis=1), np.sqrt(-scores[0]), rtol=1e-4)


def test_the_whole_analysis_of_a_trained_pair(trained, tmp_path):
    summary, figures = analysed(trained)
    n_test = int((trained.manifest["split"] == "test").sum())
    assert summary["data"]["n_test_images"] == n_test
    assert summary["labels"]["held_out"] == HELD_OUT and not set(HELD_OUT) & set(summary["labels"]["trained"])
    table = summary["committee"]["table"]
    assert list(table) == ["full", "vote_top1", "vote_top3", "vote_top5"]
    assert all(0 <= row[key] <= 1 for row in table.values() for key in analysis.COMMITTEE_KEYS)
    diversity = summary["row_diversity"]
    assert 0 <= diversity["mean"] <= 1 and diversity["std"] >= 0
    assert diversity["chance"] == pytest.approx(analysis.expected_jaccard(len(trained.model.labels), 5))
    assert set(summary["per_class_f1"]) >= {"labelspace", "bce", "labels", "positives"}
    assert summary["confusion"]["decision"]["labelspace"] == summary["confusion"]["decision"]["bce"]
    assert len(summary["worst_images"]) == trained.config.analyze.worst_images
    losses = [w["loss"] for w in summary["worst_images"]]
    assert losses == sorted(losses, reverse=True)
    assert [r["k"] for r in summary["k_sweep"]["rows"]] == [2, 6]

    text = committee_text(summary["committee"])
    assert "full model (D)" in text and "vote over top-5" in text
    assert "±" in diversity_text(diversity) and "k sweep" in sweep_text(summary["k_sweep"])

    files = write_analysis(summary, figures, tmp_path, {"labelspace": trained.model.history,
                                                         "bce": trained.baseline.history})
    names = {f.name for f in files}
    assert {"analysis.json", "metrics.json", "k_sweep.csv", "history.csv", "k_sweep.png", "label_map.png",
            "row_diversity.png", "per_class_f1_heads.png", "label_confusion.png", "worst_images.png"} <= names
    for png in (f for f in files if f.suffix == ".png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width >= 400 and im.height >= 300
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"committee", "row_diversity", "k_sweep"} and "k6" in metrics["k_sweep"]
    sweep = list(csv.DictReader((tmp_path / "k_sweep.csv").open()))
    assert [row["k"] for row in sweep] == ["2", "6"] and float(sweep[0]["top3_O-F1"]) > 0
    history = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert len(history) == len(trained.model.history) and history[0]["bce_loss"]
    assert json.loads((tmp_path / "analysis.json").read_text())["committee"]["n_rows"] == trained.model.spec.k


def test_without_a_baseline_the_label_space_is_shown_alone(trained):
    c = trained.config
    summary, figures = analysis_run_without_baseline(trained, c)
    assert "bce" not in summary["per_class_f1"] and list(summary["confusion"]["decision"]) == ["labelspace"]
    assert "per_class_f1_heads.png" in figures


def analysis_run_without_baseline(trained, c):
    from labelspace.evaluation.analysis_run import analyze_model

    small = c.replace(analyze={"map_images": 0, "worst_images": 2})
    return analyze_model(trained.model, None, trained.manifest, trained.images, trained.concepts, trained.vectors,
                         small.analyze, c.loss, top_k=3)
