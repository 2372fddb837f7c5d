"""Open-vocabulary figures: the concepts ranked among other words, hubs, and exact chance."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from labelspace.evaluation.open_vocabulary import (
    chance_hit_at_k,
    open_vocabulary_metrics,
    open_vocabulary_words,
)


def test_open_words_drop_the_concepts_own_names():
    words, vectors = open_vocabulary_words(["Shirt", "bag"], ["the", "shirt", "car", "BAG"], np.arange(8).reshape(4, 2))
    assert words == ["the", "car"] and vectors.tolist() == [[0, 1], [4, 5]]


def test_hits_shares_and_hubs_on_a_hand_worked_ranking():
    concepts, words = ["a", "b", "c"], ["x", "y"]  # ranked list: a b c x y (indices 0..4)
    targets = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [0, 0, 0]])
    nearest = np.array([[3, 0, 1, 2, 4], [3, 4, 0, 1, 2], [2, 3, 0, 1, 4], [3, 4, 0, 1, 2]])
    result = open_vocabulary_metrics(nearest, concepts, targets, words, held_out=["c"], ks=(1, 3))
    assert result["n_images"] == 3  # the image without a concept is left out
    assert result["hit@1"] == pytest.approx(1 / 3)  # only image 3 has a true label first
    assert result["hit@3"] == pytest.approx(2 / 3)  # image 1 (a at 2nd), image 3; image 2's b, c come 4th, 5th
    assert result["held_out_hit@3"] == pytest.approx(1 / 2)  # of images 2 and 3, which hold c
    assert result["concept_share@1"] == pytest.approx(1 / 3)
    assert result["hubs"][0] == {"word": "x", "top1_share": pytest.approx(2 / 3)}
    assert result["chance"]["hit@1"] == pytest.approx(np.mean([1 / 5, 2 / 5, 1 / 5]))
    assert result["ratio"]["hit@3"] == pytest.approx(result["hit@3"] / result["chance"]["hit@3"])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_chance_hit_at_k_is_the_share_of_every_ranking(k):
    positives = np.array([1, 2])
    hits = [np.mean([any(r in set(perm[:k]) for r in range(p)) for p in positives])
            for perm in itertools.permutations(range(5))]
    assert chance_hit_at_k(5, positives, k) == pytest.approx(np.mean(hits))
    assert chance_hit_at_k(20000, np.array([1]), 5) == pytest.approx(5 / 20000)
    assert math.isclose(chance_hit_at_k(3, np.array([3]), 5), 1.0)
