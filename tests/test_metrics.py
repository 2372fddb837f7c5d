"""Top-k metrics and mAP against hand-worked values (the definitions in docs/design.md) and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from labelspace.evaluation.metrics import (
    average_precision,
    mean_average_precision,
    per_class_f1,
    topk_mask,
    topk_metrics,
)

# Four images, four classes. Image 3 has no label and must be left out (and counted).
# Class 1 is predicted but never positive: it counts in O-P, not in the class means.
# Class 3 has positives but is never in a top-2: P_3 = 0 by definition.
SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.0],  # top-2 {0, 1}
        [0.2, 0.9, 0.8, 0.1],  # top-2 {1, 2}
        [0.7, 0.1, 0.6, 0.0],  # top-2 {0, 2}
        [0.5, 0.4, 0.3, 0.2],  # no labels: excluded
    ]
)
TARGETS = np.array(
    [
        [1, 0, 1, 1],
        [0, 0, 1, 1],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ]
)


def test_top2_hand_worked():
    # Over images 0-2 with k=2:
    #   class 0: predicted 2 (img 0, 2), correct 2, positives 2 -> P 1,   R 1
    #   class 1: predicted 2 (img 0, 1), correct 0, positives 0 -> not in the class means
    #   class 2: predicted 2 (img 1, 2), correct 2, positives 3 -> P 1,   R 2/3
    #   class 3: predicted 0,            correct 0, positives 2 -> P 0,   R 0
    # C-P = (1 + 1 + 0)/3 = 2/3; C-R = (1 + 2/3 + 0)/3 = 5/9
    # C-F1 = 2 (2/3)(5/9) / (2/3 + 5/9) = (20/27) / (11/9) = 20/33
    # O-P = 4 correct / 6 predicted = 2/3; O-R = 4 / 7 positives
    # O-F1 = 2 (2/3)(4/7) / (2/3 + 4/7) = (16/21) / (26/21) = 8/13
    m = topk_metrics(SCORES, TARGETS, k=2)
    assert m["C-P"] == pytest.approx(2 / 3)
    assert m["C-R"] == pytest.approx(5 / 9)
    assert m["C-F1"] == pytest.approx(20 / 33)
    assert m["O-P"] == pytest.approx(2 / 3)
    assert m["O-R"] == pytest.approx(4 / 7)
    assert m["O-F1"] == pytest.approx(8 / 13)
    assert m["n_images"] == 4
    assert m["n_images_without_labels"] == 1
    assert m["n_classes_evaluated"] == 3


def test_top1_hand_worked():
    # Top-1: img 0 -> 0 (correct), img 1 -> 1 (wrong), img 2 -> 0 (correct).
    #   class 0: P 2/2 = 1, R 2/2 = 1; class 2: never predicted -> P 0, R 0/3; class 3: P 0, R 0
    # C-P = 1/3, C-R = 1/3, C-F1 = 1/3; O-P = 2/3, O-R = 2/7, O-F1 = 2(2/3)(2/7)/(2/3+2/7) = 2/5
    m = topk_metrics(SCORES, TARGETS, k=1)
    assert m["C-P"] == pytest.approx(1 / 3)
    assert m["C-R"] == pytest.approx(1 / 3)
    assert m["C-F1"] == pytest.approx(1 / 3)
    assert m["O-P"] == pytest.approx(2 / 3)
    assert m["O-R"] == pytest.approx(2 / 7)
    assert m["O-F1"] == pytest.approx(2 / 5)


def test_k_larger_than_positives_and_labels():
    # k=10 > 4 labels: every label of the 3 kept images is predicted.
    #   class 0: predicted 3, correct 2 -> P 2/3, R 1; class 2: P 3/3, R 1; class 3: P 2/3, R 1
    # C-P = (2/3 + 1 + 2/3)/3 = 7/9, C-R = 1, C-F1 = 2(7/9)/(16/9) = 7/8
    # O-P = 7 correct / 12 predicted, O-R = 7/7 = 1, O-F1 = 2(7/12)/(19/12) = 14/19
    m = topk_metrics(SCORES, TARGETS, k=10)
    assert m["C-P"] == pytest.approx(7 / 9)
    assert m["C-R"] == 1.0
    assert m["C-F1"] == pytest.approx(7 / 8)
    assert m["O-P"] == pytest.approx(7 / 12)
    assert m["O-R"] == 1.0
    assert m["O-F1"] == pytest.approx(14 / 19)


def test_perfect_ranking_with_fewer_positives_than_k():
    # Each image's positives are its top scores, but k=3 > 1 or 2 positives, so precision drops:
    # img 0: positives {0} among top-3 {0, 1, 2}; img 1: positives {2, 3} among top-3 {1, 2, 3}.
    #   class 0: P 1/1, R 1; class 2: P 1/2, R 1; class 3: P 1/1, R 1 (class 1: no positives)
    # C-P = (1 + 1/2 + 1)/3 = 5/6; O-P = 3/6 = 1/2; every recall is 1.
    scores = np.array([[0.9, 0.5, 0.4, 0.1], [0.1, 0.6, 0.9, 0.8]])
    targets = np.array([[1, 0, 0, 0], [0, 0, 1, 1]])
    m = topk_metrics(scores, targets, k=3)
    assert m["C-P"] == pytest.approx(5 / 6)
    assert m["O-P"] == pytest.approx(1 / 2)
    assert m["C-R"] == m["O-R"] == 1.0


def test_ties_go_to_the_lower_label_index():
    mask = topk_mask(np.array([[0.5, 0.5, 0.5, 0.9]]), k=2)
    assert mask.tolist() == [[True, False, False, True]]


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((20, 7))
    scores[0] = [0.1, 0.1 + 1e-12, -1, -1, -1, -1, -1]  # the top two: distinct in float64, tied in float32
    targets = (rng.random((20, 7)) < 0.3).astype(int)
    targets[0] = [0, 1, 0, 0, 0, 0, 0]
    targets[1] = 0
    expected = topk_metrics(scores, targets, k=1)
    for s, t in [
        (torch.tensor(scores), torch.tensor(targets)),
        (torch.tensor(scores), torch.tensor(targets).bool()),
        (torch.tensor(scores, requires_grad=True), torch.tensor(targets, dtype=torch.float32)),
    ]:
        assert topk_metrics(s, t, k=1) == expected
        assert mean_average_precision(s, t) == mean_average_precision(scores, targets)
    assert expected["n_images_without_labels"] >= 1


def test_per_class_f1_hand_worked():
    # From test_top2_hand_worked: F1_0 = 1, class 1 has no positives (NaN),
    # F1_2 = 2(1)(2/3)/(1 + 2/3) = 4/5, F1_3 = 0.
    f1 = per_class_f1(SCORES, TARGETS, k=2)
    assert f1[0] == pytest.approx(1.0)
    assert np.isnan(f1[1])
    assert f1[2] == pytest.approx(4 / 5)
    assert f1[3] == 0.0


@pytest.mark.parametrize(
    "scores, targets, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), "must both be"),
        (np.zeros(3), np.zeros(3), "must both be"),
        (np.zeros((2, 3)), np.full((2, 3), 2), "0/1"),
        (np.full((2, 3), np.nan), np.ones((2, 3)), "NaN"),
        (np.zeros((2, 3)), np.zeros((2, 3)), "no image has a positive label"),
    ],
)
def test_bad_inputs_are_rejected(scores, targets, match):
    with pytest.raises(ValueError, match=match):
        topk_metrics(scores, targets, k=1)


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_metrics(SCORES, TARGETS, k=0)


# ---- mean average precision ----


def test_average_precision_hand_worked():
    # Ranks 1..4 by score; relevant at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # One relevant item ranked last of 4: AP = 1/4
    assert average_precision(np.array([0.1, 0.4, 0.3, 0.2]), np.array([1, 0, 0, 0])) == pytest.approx(1 / 4)


def test_average_precision_of_ties_does_not_depend_on_their_order():
    # Scores 0.5, 0.5 tie at one threshold: 1 relevant of 2 seen, P = 1/2, recall gain 1/2;
    # then 0.1: 2 relevant of 3 seen, P = 2/3, recall gain 1/2. AP = 1/4 + 1/3 = 7/12.
    scores = np.array([0.5, 0.5, 0.1])
    assert average_precision(scores, np.array([0, 1, 1])) == pytest.approx(7 / 12)
    assert average_precision(scores, np.array([1, 0, 1])) == pytest.approx(7 / 12)
    # Infinite scores tie like any other.
    inf_scores = np.array([np.inf, np.inf, 0.1])
    assert average_precision(inf_scores, np.array([0, 1, 1])) == pytest.approx(7 / 12)


def test_average_precision_needs_a_relevant_item():
    with pytest.raises(ValueError, match="at least one relevant"):
        average_precision(np.array([0.3, 0.2]), np.array([0, 0]))


def test_mean_average_precision_hand_worked():
    # Over images 0-3 (image 4 has no label and is left out; kept, its top scores would push
    # every AP down):
    #   class A: scores 0.9 0.8 0.7 0.6, relevant at ranks 1 and 3 -> (1/1 + 2/3)/2 = 5/6
    #   class B: scores 0.1 0.4 0.3 0.2, image 3 relevant, ranked 3rd  -> 1/3
    #   class C: no positives                                           -> not averaged
    #   class D: scores 0.2 0.6 0.9 0.1, image 1 relevant, ranked 2nd  -> 1/2
    # mAP = (5/6 + 1/3 + 1/2) / 3 = (10/6) / 3 = 5/9
    scores = np.array(
        [
            [0.9, 0.1, 0.5, 0.2],
            [0.8, 0.4, 0.5, 0.6],
            [0.7, 0.3, 0.5, 0.9],
            [0.6, 0.2, 0.5, 0.1],
            [1.0, 1.0, 1.0, 1.0],
        ]
    )
    targets = np.array([[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert mean_average_precision(scores, targets) == pytest.approx(5 / 9)


def test_mean_average_precision_matches_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((60, 9)), 1)  # one decimal: many ties within each class
    targets = (rng.random((60, 9)) < 0.25).astype(int)
    targets[:, 8] = 0  # a class without positives: skipped by both
    targets[:5] = 0  # images without labels: left out
    kept = targets.any(axis=1)
    expected = np.mean(
        [average_precision_score(targets[kept, c], scores[kept, c]) for c in range(8) if targets[kept, c].any()]
    )
    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
    for c in range(8):
        assert average_precision(scores[kept, c], targets[kept, c]) == pytest.approx(
            average_precision_score(targets[kept, c], scores[kept, c]), abs=1e-12
        )
