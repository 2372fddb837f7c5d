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
    assert result["trained_hit@3"] == pytest.approx(1 / 2)  # of images 1 and 2 (a, b): only image 1's a
    assert result["chance"]["trained_hit@3"] == pytest.approx(np.mean([3 / 5, 3 / 5]))
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


def test_conse_weights_a_hand_worked_image():
    import torch

    from labelspace.model.ranking import conse_distances, conse_weights

    # One image, three training labels at D 0.1, 0.3, 0.9; the two nearest share the weight by softmax(-D / s).
    seen_D = torch.tensor([[0.1, 0.3, 0.9]])
    weights = conse_weights(seen_D, 2, torch.tensor(0.2))
    e = math.exp(-0.2 / 0.2)
    torch.testing.assert_close(weights, torch.tensor([[1 / (1 + e), e / (1 + e), 0.0]]))
    # A word's ConSE distance is minus its weighted cosine to those labels.
    cosines = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 1.0]])
    torch.testing.assert_close(conse_distances(seen_D, cosines, 2, torch.tensor(0.2)),
                               -torch.tensor([[1 / (1 + e), 0.5]]))


def _conse_model(conse: int, prior: float, offset: float = 0.0, share: float = 0.0):
    import torch

    from labelspace.model.networks import LabelSpaceModel

    torch.manual_seed(0)
    model = LabelSpaceModel(backbone="resnet18", k=3, d=6, pretrained=False, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False, open_words="standardized").eval()
    training = torch.randn(4, 6)
    model.set_word_center(training)
    model.fit_open_words(training, reference_outputs=torch.randn(40, 3, 6), offset=offset, prior=prior, conse=conse,
                         share=share)
    return model, training


@pytest.mark.parametrize("prior", [0.0, 3.0])
def test_the_shared_prior_moves_other_words_by_what_else_the_request_ranks(prior):
    import torch

    from labelspace.model.networks import Vocabulary

    model, training = _conse_model(conse=2, prior=prior, offset=0.5, share=1.5)
    plain, _ = _conse_model(conse=2, prior=prior, offset=0.5)
    torch.manual_seed(1)
    A, few, many = torch.randn(5, 3, 6), torch.randn(2, 6), torch.randn(60, 6)
    unit = torch.nn.functional.normalize
    s = model.seen_scale[1]

    def normalizer(words: torch.Tensor) -> torch.Tensor:  # beta s log sum_v exp(-lambda (1 - c_v))
        c = (unit(words, dim=1) @ unit(training, dim=1).T).amax(dim=1)
        return 1.5 * s * torch.logsumexp(-prior * (1 - c), dim=0)

    with torch.no_grad():
        small = torch.cat([training, few])
        large = torch.cat([training, few, many])
        d_small, d_large = model.distances_from_output(A, small), model.distances_from_output(A, large)
        # Training labels keep their D; each other word moves by the same amount, set by the other words asked.
        torch.testing.assert_close(d_small[:, :4], plain.distances_from_output(A, training))
        torch.testing.assert_close(d_small[:, 4:] - plain.distances_from_output(A, small)[:, 4:],
                                   normalizer(few).expand(5, 2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(d_large[:, 4:] - plain.distances_from_output(A, large)[:, 4:],
                                   normalizer(torch.cat([few, many])).expand(5, 62), rtol=1e-5, atol=1e-5)
        # Asked beside 60 more words, the two are pushed back behind the training labels ...
        assert bool((d_large[:, 4:6] > d_small[:, 4:6]).all())
        # ... and rows of a vocabulary are a request of their own: the same D as asking for those words.
        rows = Vocabulary.cat([model.vocabulary(large).rows(torch.tensor([4, 0, 5]))])
        torch.testing.assert_close(model.distances_from_output(A, rows), d_small[:, [4, 0, 5]], rtol=1e-5, atol=1e-6)
        # A request of training labels only has nothing to share.
        torch.testing.assert_close(model.distances_from_output(A, training), plain.distances_from_output(A, training))
    # β travels with the weights; a model saved before it existed reads as none.
    again, _ = _conse_model(conse=2, prior=prior, offset=0.5)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.distances_from_output(A, small), d_small)
    again.load_state_dict({k: v for k, v in model.state_dict().items() if k != "open_share"})
    with torch.no_grad():
        torch.testing.assert_close(again.distances_from_output(A, small), plain.distances_from_output(A, small))


def test_conse_and_the_domain_prior_measure_other_words_and_never_a_training_label():
    import torch

    from labelspace.model.networks import Vocabulary, label_distances
    from labelspace.model.ranking import conse_distances

    model, training = _conse_model(conse=2, prior=3.0, offset=0.5)
    plain, _ = _conse_model(conse=0, prior=0.0)
    A, other = torch.randn(5, 3, 6), torch.randn(3, 6)
    with torch.no_grad():
        # A training label keeps its D in every mode.
        torch.testing.assert_close(model.distances_from_output(A, training), plain.distances_from_output(A, training))
        # Another word: m + s ((c - mu_c) / sigma_c + kappa + lambda (1 - cos to the nearest training label)),
        # c its ConSE distance, mu_c and sigma_c over the reference images.
        unit = torch.nn.functional.normalize
        cosines = unit(model.prepare_words(other), dim=1) @ unit(model.training_words, dim=1).T
        s = model.seen_scale[1]
        m = model.seen_scale[0] - 0.5 * s
        ref = conse_distances(label_distances(model.reference_A, model.training_words), cosines, 2, s)
        A_unit = A / A.flatten(1).norm(dim=1).view(-1, 1, 1)
        c = conse_distances(label_distances(A_unit, model.training_words), cosines, 2, s)
        nearest = (unit(other, dim=1) @ unit(training, dim=1).T).amax(dim=1)
        expected = m + s * ((c - ref.mean(dim=0)) / ref.std(dim=0) + 0.5 + 3.0 * (1 - nearest))
        torch.testing.assert_close(model.distances_from_output(A, other), expected, rtol=1e-5, atol=1e-6)
        # Rows of a vocabulary carry their own cosines and prior.
        W = torch.cat([training[[1]], other])
        vocabulary = model.vocabulary(W)
        joined = Vocabulary.cat([vocabulary.rows(torch.tensor([3, 0])), model.vocabulary(W[[2]])])
        torch.testing.assert_close(model.distances_from_output(A, joined),
                                   model.distances_from_output(A, W)[:, [3, 0, 2]], rtol=1e-5, atol=1e-6)
    # Both travel with the weights; a model saved before they existed reads as neither.
    again, _ = _conse_model(conse=0, prior=0.0)
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again.distances_from_output(A, other), expected, rtol=1e-5, atol=1e-6)
    older = {k: v for k, v in plain.state_dict().items() if k not in ("open_prior", "conse_top", "training_directions")}
    again.load_state_dict(older)
    with torch.no_grad():
        torch.testing.assert_close(again.distances_from_output(A, other), plain.distances_from_output(A, other))
