"""Zero-shot chance figures: a hand-worked example, and every ranking enumerated on small cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labelspace.evaluation.metrics import average_precision, topk_metrics
from labelspace.evaluation.zero_shot import (
    chance_mean_average_precision,
    chance_topk_metrics,
    expected_average_precision,
    zero_shot_metrics,
)

KEYS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1")


def test_hand_worked_example_two_images_two_labels():
    # Image 1 holds a; image 2 holds a and b. Top-1 of a random ranking picks a or b, 1/2 each:
    #   picks (a,a): C-P .5  C-R .5   C-F1 .5    O-F1 2*2/(2+3) = .8
    #   picks (a,b): C-P 1   C-R .75  C-F1 6/7   O-F1 .8
    #   picks (b,a): C-P .5  C-R .25  C-F1 1/3   O-F1 2*1/5 = .4
    #   picks (b,b): C-P .25 C-R .5   C-F1 1/3   O-F1 .4
    targets = np.array([[1, 0], [1, 1]])
    chance = chance_topk_metrics(targets, k=1)
    assert chance["C-P"] == pytest.approx((0.5 + 1 + 0.5 + 0.25) / 4)
    assert chance["C-R"] == pytest.approx(0.5)
    assert chance["C-F1"] == pytest.approx((0.5 + 6 / 7 + 1 / 3 + 1 / 3) / 4)
    assert chance["O-P"] == pytest.approx(0.75)
    assert chance["O-R"] == pytest.approx(0.5)
    assert chance["O-F1"] == pytest.approx(0.6)
    # AP of a: both images relevant, always 1; of b: 1 at rank 1, 1/2 at rank 2.
    assert chance_mean_average_precision(targets) == pytest.approx((1 + 0.75) / 2)


def _enumerated(targets: np.ndarray, k: int) -> dict[str, float]:
    """Mean of topk_metrics over every combination of per-image label permutations."""
    n, n_labels = targets.shape
    permutations = list(itertools.permutations(range(n_labels)))
    totals = dict.fromkeys(KEYS, 0.0)
    for combo in itertools.product(permutations, repeat=n):
        scores = np.array([[-order.index(j) for j in range(n_labels)] for order in combo], dtype=float)
        metrics = topk_metrics(scores, targets, k)
        for key in KEYS:
            totals[key] += metrics[key]
    return {key: value / len(permutations) ** n for key, value in totals.items()}


@pytest.mark.parametrize("k", [1, 2])
def test_chance_equals_the_mean_over_every_ranking(k):
    targets = np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0], [0, 0, 1]])
    expected = _enumerated(targets, k)
    chance = chance_topk_metrics(targets, k)
    for key in KEYS:
        assert chance[key] == pytest.approx(expected[key], rel=1e-9), key


def test_images_without_positives_are_left_out_of_chance():
    targets = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert chance_topk_metrics(targets, 1) == pytest.approx(chance_topk_metrics(targets[:2], 1))


@pytest.mark.parametrize(("n_items", "n_relevant"), [(1, 1), (2, 1), (5, 2), (6, 6), (6, 3)])
def test_expected_average_precision_equals_the_mean_over_every_permutation(n_items, n_relevant):
    relevant = np.array([1] * n_relevant + [0] * (n_items - n_relevant))
    aps = [average_precision(-np.array(order, dtype=float), relevant)
           for order in itertools.permutations(range(n_items))]
    assert expected_average_precision(n_items, n_relevant) == pytest.approx(np.mean(aps), rel=1e-12)


def test_zero_shot_metrics_rank_only_images_holding_a_held_out_label():
    targets = np.array([[1, 0], [0, 1], [0, 1], [0, 0]])  # the last image holds neither: left out
    scores = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, 1.0], [5.0, 1.0]])  # image 3 is wrong
    result = zero_shot_metrics(scores, targets, ["sandal", "shirt"])
    assert result["n_images"] == 3
    assert result["positives_per_label"] == {"sandal": 1, "shirt": 2}
    assert result["top1"]["O-F1"] == pytest.approx(2 / 3)  # 2 correct of 3 predicted and 3 positives
    chance = result["chance"]["top1"]
    assert chance["O-F1"] == pytest.approx(0.5)  # q = 1/2, P = N = 3: 2 * 1.5 / 6
    assert result["ratio"]["top1_O-F1"] == pytest.approx((2 / 3) / 0.5)
    assert result["ratio"]["mAP"] == pytest.approx(result["mAP"] / result["chance"]["mAP"])


def test_class_f1_chance_is_left_out_rather_than_estimated_when_too_large():
    targets = np.eye(3, dtype=int).repeat(20, axis=0)
    chance = chance_topk_metrics(targets, 1, max_states=100)
    assert chance["C-F1"] is None
    assert chance["O-F1"] == pytest.approx(1 / 3)


def test_zero_shot_without_any_held_out_positive_is_a_clear_error():
    with pytest.raises(ValueError, match="no evaluated image has any of the held-out labels"):
        zero_shot_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["sandal", "shirt"])


def _scores_for(top_sets: tuple[tuple[int, ...], ...], n_labels: int) -> np.ndarray:
    """Scores whose top-k per image is exactly the given set (k = its size)."""
    s = np.zeros((len(top_sets), n_labels))
    for i, chosen in enumerate(top_sets):
        s[i, list(chosen)] = 1.0 + np.arange(len(chosen))  # distinct, above every other label
    return s


@pytest.mark.parametrize("k", [1, 2])
def test_gzsl_chance_equals_the_mean_over_every_random_top_k(k):
    from labelspace.evaluation.zero_shot import chance_restricted_topk, generalized_zero_shot_metrics

    # 3 images, 4 labels, held out: c and d (columns 2, 3); each image's top-k is one of C(4, k) sets.
    targets = np.array([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 1]])
    labels = ["a", "b", "c", "d"]
    sets = list(itertools.combinations(range(4), k))
    figures = []
    for choice in itertools.product(sets, repeat=3):
        result = generalized_zero_shot_metrics(_scores_for(choice, 4), targets, labels, ["c", "d"], (k,))
        figures.append([result[f"top{k}"][key] for key in ("O-P", "O-R", "O-F1", "C-P", "C-R", "unseen_share")])
    expected = np.mean(figures, axis=0)
    chance = chance_restricted_topk(targets, np.array([2, 3]), k)
    got = [chance[key] for key in ("O-P", "O-R", "O-F1", "C-P", "C-R")] + [2 / 4]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert result["chance"][f"top{k}"]["O-F1"] == pytest.approx(expected[2])


def test_gzsl_counts_only_the_held_out_labels_and_reports_how_often_they_are_crowded_out():
    from labelspace.evaluation.zero_shot import generalized_zero_shot_metrics

    labels = ["a", "b", "c"]
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    scores = np.array([[3, 0, 2], [0, 3, 2], [1, 0, 2], [0, 0, 1.0]])  # top-1: a, b, c; no label on the last
    result = generalized_zero_shot_metrics(scores, targets, labels, ["c"], (1, 2))
    assert result["n_images"] == 3  # the image without any label is left out
    # top-1 predicts c once (image 3, correct); c has 2 positives.
    assert result["top1"]["O-P"] == 1.0 and result["top1"]["O-R"] == 0.5
    assert result["top1"]["unseen_share"] == pytest.approx(1 / 3)
    # top-2 holds c on all three images: two correct of three.
    assert result["top2"]["O-P"] == pytest.approx(2 / 3) and result["top2"]["O-R"] == 1.0
    # What the training labels a, b keep, on the two images holding one: a and b, right, in both rankings.
    assert result["top1"]["trained_O-F1"] == result["top1"]["trained_alone_O-F1"] == 1.0
    # When c outranks a on image 1, the joint top-1 has b alone right of 2 positives: 2*1/(1+2).
    crowded = generalized_zero_shot_metrics(np.array([[2, 0, 3], [0, 3, 2], [1, 0, 2]]), targets[:3], labels, ["c"], (1,))
    assert crowded["top1"]["trained_O-F1"] == pytest.approx(2 / 3) and crowded["top1"]["trained_alone_O-F1"] == 1.0
    assert result["mAP"] == pytest.approx(average_precision(scores[:3, 2], targets[:3, 2].astype(bool)))
    assert result["ratio"]["mAP"] == pytest.approx(result["mAP"] / result["chance"]["mAP"])
    with pytest.raises(ValueError, match="no test image holds"):
        generalized_zero_shot_metrics(scores, np.array([[1, 0, 0]] * 4), labels, ["c"], (1,))


def test_zero_shot_top_k_beyond_one_only_where_k_is_below_the_label_count():
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 6)) < 0.3).astype(int)
    targets[targets.sum(axis=1) == 0, 0] = 1
    scores = rng.random((30, 6))
    result = zero_shot_metrics(scores, targets, list("abcdef"), k=1, more_ks=(3, 5, 6, 9))
    assert {key for key in result if key.startswith("top")} == {"top1", "top3", "top5"}  # 6 and 9: not below 6
    for k in (1, 3, 5):
        assert result[f"top{k}"] == topk_metrics(scores, targets, k)
        assert result["chance"][f"top{k}"] == chance_topk_metrics(targets, k)
        assert result["ratio"][f"top{k}_O-F1"] == pytest.approx(result[f"top{k}"]["O-F1"]
                                                               / result["chance"][f"top{k}"]["O-F1"])
    assert zero_shot_metrics(scores, targets, list("abcdef")).keys() == {
        "labels", "n_images", "positives_per_label", "top1", "mAP", "chance", "ratio"}


def test_the_unseen_shift_is_the_smallest_step_that_keeps_the_training_labels_within_the_cost():
    from labelspace.evaluation.zero_shot import unseen_shift_for_cost

    rng = np.random.default_rng(0)
    seen_targets = np.argsort(rng.random((40, 5)), axis=1) < 3  # three true training labels of five per image
    seen = 0.1 * rng.normal(size=(40, 5)) + 3 * seen_targets  # ranked alone, they are each image's top 3
    unseen = rng.normal(size=(40, 2)) + 6  # two words never trained on, mostly ahead of every training label
    alone = unseen_shift_for_cost(seen, unseen - 100, seen_targets, 0.0)
    assert alone["shift"] == 0 and alone["cost"] == 0 and alone["share"] == 0
    found = unseen_shift_for_cost(seen, unseen, seen_targets, 0.2, step=0.5, limit=20)
    # They take 2 of the 3 slots: one true training label of three is left (O-F1 1/2 instead of 1).
    assert found["cost_before"] == pytest.approx(0.5) and found["share_before"] == pytest.approx(2 / 3)
    assert found["cost"] <= 0.2 < unseen_shift_for_cost(seen, unseen - found["shift"] + 0.5, seen_targets, 1)["cost"]
    assert found["shift"] % 0.5 == 0 and 0 < found["share"] < found["share_before"]
    assert unseen_shift_for_cost(seen, unseen, seen_targets, 1.0)["shift"] == 0  # a loose bound moves nothing
    capped = unseen_shift_for_cost(seen, unseen, seen_targets, 0.0, step=0.5, limit=1)
    assert capped["shift"] == 1 and capped["cost"] > 0  # the limit stops the search, and says what is left
    with pytest.raises(ValueError, match=r"\(N, S\)"):
        unseen_shift_for_cost(seen, unseen[:3], seen_targets, 0.01)
