"""The thresholded decision: Platt scaling, the O-F1-best threshold, its metrics, and its trip with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labelspace.evaluation.calibration import calibrated_probabilities, fit_calibration, threshold_metrics
from labelspace.model.bundle import TrainedModel


def _synthetic(n_images=3000, n_labels=20, slope=2.0, intercept=-1.0, seed=0):
    """Scores whose true probability of relevance is sigmoid(slope * score + intercept); with 20 labels
    nearly every image has a positive, so leaving out those without one hardly biases the fit."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_images, n_labels))
    p = 1 / (1 + np.exp(-(slope * scores + intercept)))
    return scores, (rng.random(p.shape) < p).astype(int)


def test_platt_scaling_recovers_the_true_mapping():
    scores, targets = _synthetic()
    calibration = fit_calibration(scores, targets, head="bce")
    assert calibration["slope"] == pytest.approx(2.0, rel=0.1)
    assert calibration["intercept"] == pytest.approx(-1.0, abs=0.1)
    assert calibration["method"] == "platt-label-offsets" and calibration["fitted_on"] == "validation"
    assert np.abs(calibration["offsets"]).max() < 0.2  # every label has the same mapping here
    assert "distance_threshold" not in calibration  # BCE scores are logits, not distances


def test_the_threshold_maximises_micro_f1_over_every_possible_cut():
    scores, targets = _synthetic(n_images=300, seed=1)
    calibration = fit_calibration(scores, targets)
    keep = targets.any(axis=1)
    p, t = calibrated_probabilities(scores[keep], calibration).ravel(), targets[keep].ravel().astype(bool)
    best = max(2 * (t & (p >= cut)).sum() / ((p >= cut).sum() + t.sum()) for cut in np.unique(p))
    assert calibration["validation"]["O-F1"] == pytest.approx(best)
    # Per label, the score at which the probability passes the threshold makes the same decision.
    logit = np.log(calibration["probability_threshold"] / (1 - calibration["probability_threshold"]))
    per_label = (logit - calibration["intercept"] - np.array(calibration["offsets"])) / calibration["slope"]
    assert np.array_equal((scores[keep] >= per_label).ravel(), p >= calibration["probability_threshold"])
    assert calibration["distance_threshold"] == pytest.approx(-calibration["score_threshold"])
    assert calibration["score_threshold"] == pytest.approx(per_label.mean())  # the mean offset's


def test_label_offsets_carry_each_labels_prior_and_shrink_where_validation_is_thin():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3000, 20))  # 20 labels: nearly every image has one, so leaving out the rest hardly biases
    true_offsets = np.linspace(-1.5, 1.5, 20)
    p = 1 / (1 + np.exp(-(2.0 * scores - 1.0 + true_offsets)))
    targets = (rng.random(p.shape) < p).astype(int)
    calibration = fit_calibration(scores, targets)
    fitted = np.array(calibration["offsets"])
    np.testing.assert_allclose(fitted - fitted.mean(), true_offsets, atol=0.25)
    # The per-label decision beats one shared mapping on its own validation data.
    shared = fit_calibration(scores, targets) | {"offsets": [0.0] * 20}
    assert calibration["validation"]["O-F1"] > threshold_metrics(scores, targets, shared)["O-F1"] - 1e-9
    # A label without a validation positive would get an offset of minus infinity: the prior keeps it finite,
    # and a rare one sits below the frequent ones.
    rare = np.zeros((3000, 2), dtype=int)
    rare[:3, 1] = 1
    both = fit_calibration(np.hstack([scores, scores[:, :2]]), np.hstack([targets, rare]))
    assert np.isfinite(both["offsets"][20]) and both["offsets"][20] < both["offsets"][21] < min(both["offsets"][:20])
    # A column that is no training label takes the mean offset; a mismatched shape is refused.
    from labelspace.evaluation.calibration import label_offsets

    assert label_offsets(calibration, [0, None]).tolist() == pytest.approx(
        [calibration["offsets"][0], np.mean(calibration["offsets"])])
    with pytest.raises(ValueError, match="pass their offsets"):
        calibrated_probabilities(scores[:, :2], calibration)
    assert calibrated_probabilities(scores[:, :2], calibration, label_offsets(calibration, [0, 1])).shape == (3000, 2)


def test_threshold_metrics_hand_worked():
    scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.8, 0.7], [0.0, 0.0, 0.0]])
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]])  # the last image has no label: left out
    calibration = {"slope": 1.0, "intercept": 0.0, "probability_threshold": 1 / (1 + np.exp(-0.5))}
    # Decisions (score >= 0.5): image 1 -> {0, 2}, image 2 -> {1, 2}. Correct: 0, 1, 2(image 2).
    m = threshold_metrics(scores, targets, calibration)
    assert m["n_images_without_labels"] == 1
    assert m["O-P"] == pytest.approx(3 / 4) and m["O-R"] == pytest.approx(1.0)
    assert m["C-P"] == pytest.approx((1 + 1 + 0.5) / 3) and m["C-R"] == pytest.approx(1.0)
    assert m["labels_per_image"] == pytest.approx(2.0)


def test_scores_unrelated_to_the_labels_are_refused():
    scores, targets = _synthetic(slope=-2.0, intercept=0.0)
    with pytest.raises(ValueError, match="anti-correlated"):
        fit_calibration(scores, targets)
    with pytest.raises(ValueError, match="val_fraction"):
        fit_calibration(np.zeros((0, 3)), np.zeros((0, 3)))


def test_calibration_travels_with_the_saved_model(tmp_path):
    from labelspace.model.spec import ModelSpec, build_model

    scores, targets = _synthetic(n_images=200)
    calibration = fit_calibration(scores, targets)
    spec = ModelSpec(head="bce", backbone="resnet18", k=1, d=3, n_labels=2, dropout=0.0, normalize=False,
                     center_words=False, learn_scale=False, freeze_backbone=False, image_size=32)
    model = TrainedModel(spec=spec, labels=["a", "b"], label_vectors=np.zeros((2, 3), np.float32),
                         state_dict=build_model(spec).state_dict(), calibration=calibration)
    model.save(tmp_path)
    assert json.loads((tmp_path / "bundle.json").read_text())["calibration"]["slope"] == calibration["slope"]
    assert TrainedModel.load(tmp_path).calibration == calibration
    # A bundle without a calibration (no validation split) loads with none.
    meta = json.loads((tmp_path / "bundle.json").read_text())
    del meta["calibration"]
    (tmp_path / "bundle.json").write_text(json.dumps(meta))
    assert TrainedModel.load(tmp_path).calibration == {}
