"""Hinge rank loss (docs/design.md, paper eq. 3) against a per-image loop, negative sampling, gradients."""

from __future__ import annotations

import pytest
import torch

from labelspace.model.networks import LabelSpaceModel
from labelspace.training.loss import bce_loss, hinge_rank_loss, loss_scale, sample_negatives, sigmoid_loss


def reference_loss(distances, targets, margin, negative_mask):
    """Paper eq. 3 written as plainly as possible, one image and one label at a time."""
    per_image, skipped = [], 0
    for b in range(distances.shape[0]):
        positives = [lab for lab in range(distances.shape[1]) if targets[b, lab] > 0]
        if not positives:
            skipped += 1
            continue
        mean_positive = sum(float(distances[b, lab]) for lab in positives) / len(positives)
        total = 0.0
        for lab in range(distances.shape[1]):
            if negative_mask[b, lab] and targets[b, lab] <= 0:
                total += max(0.0, margin + mean_positive - float(distances[b, lab]))
        per_image.append(total)
    return (sum(per_image) / len(per_image) if per_image else 0.0), skipped


def random_batch(seed: int, batch: int = 6, n_labels: int = 9):
    g = torch.Generator().manual_seed(seed)
    distances = torch.rand(batch, n_labels, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(batch, n_labels, generator=g) < 0.3).float()
    targets[0] = 0  # an image without positives: skipped and counted
    targets[1] = 1  # an image without negatives: contributes zero
    targets[2, :2] = 1
    return distances, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.5, 1.0])
def test_equals_loop_reference_with_a_fixed_negative_mask(seed, margin):
    distances, targets = random_batch(seed)
    g = torch.Generator().manual_seed(100 + seed)
    negative_mask = torch.rand(distances.shape, generator=g) < 0.5  # may cover positives: they must be ignored
    loss, skipped = hinge_rank_loss(
        distances, targets, margin=margin, negative_mask=negative_mask, return_skipped=True
    )
    expected, expected_skipped = reference_loss(distances, targets, margin, negative_mask)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert skipped == expected_skipped >= 1


@pytest.mark.parametrize("n_negatives", [9, 40, None])
def test_n_negatives_at_least_the_label_count_uses_all_negatives(n_negatives):
    distances, targets = random_batch(5)
    loss = hinge_rank_loss(distances, targets, margin=1.0, n_negatives=n_negatives)
    expected, _ = reference_loss(distances, targets, 1.0, targets <= 0)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_sampled_negatives_equal_loop_reference_on_the_same_draw():
    distances, targets = random_batch(7, batch=8, n_labels=12)
    mask = sample_negatives(targets, 3, generator=torch.Generator().manual_seed(11))
    loss = hinge_rank_loss(distances, targets, n_negatives=3, generator=torch.Generator().manual_seed(11))
    expected, _ = reference_loss(distances, targets, 1.0, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_zero_when_every_margin_is_met():
    g = torch.Generator().manual_seed(0)
    targets = (torch.rand(5, 8, generator=g) < 0.4).float()
    targets[:, 0] = 1
    # Positives within [0, 0.5), negatives at >= 0.5 + margin: every hinge is max(0, <= 0) = 0,
    # including the boundary case of a negative exactly at mean_positive + margin.
    distances = torch.where(targets > 0, torch.rand(5, 8, generator=g) * 0.5, 1.5 + torch.rand(5, 8, generator=g))
    distances[0] = torch.where(targets[0] > 0, torch.tensor(0.25), torch.tensor(1.25))
    assert float(hinge_rank_loss(distances, targets, margin=1.0, n_negatives=None)) == 0.0
    # and not zero once one negative comes closer than the margin
    distances[1, targets[1] <= 0] = 0.0
    assert float(hinge_rank_loss(distances, targets, margin=1.0, n_negatives=None)) > 0.0


def test_images_without_positives_are_skipped_and_counted():
    distances = torch.tensor([[0.0, 5.0, 5.0], [0.0, 0.0, 0.0], [1.0, 2.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # Only image 0 counts: max(0, 1 + 0 - 5) twice = 0, so a skipped image adds no hinge.
    loss, skipped = hinge_rank_loss(distances, targets, n_negatives=None, return_skipped=True)
    assert float(loss) == 0.0 and skipped == 2
    # Image 0, positive at 0, negatives at 0.5 and 2: max(0, 1 + 0 - 0.5) + max(0, 1 + 0 - 2) = 0.5,
    # averaged over the one image that counts = 0.5
    distances[0] = torch.tensor([0.0, 0.5, 2.0])
    assert float(hinge_rank_loss(distances, targets, n_negatives=None)) == pytest.approx(0.5)


def test_a_batch_without_any_positive_gives_zero_and_a_usable_graph():
    distances = torch.rand(3, 4, requires_grad=True)
    loss, skipped = hinge_rank_loss(distances, torch.zeros(3, 4), return_skipped=True)
    loss.backward()
    assert float(loss.detach()) == 0.0 and skipped == 3
    assert torch.equal(distances.grad, torch.zeros(3, 4))


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        hinge_rank_loss(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("n_negatives", [0, 1, 3, 6, 11])
def test_samples_exactly_min_n_negatives_and_never_a_positive(n_negatives):
    g = torch.Generator().manual_seed(n_negatives)
    targets = (torch.rand(200, 12, generator=g) < torch.linspace(0.0, 1.0, 200).unsqueeze(1)).float()
    mask = sample_negatives(targets, n_negatives, generator=g)
    n_available = (targets <= 0).sum(dim=1)
    assert torch.equal(mask.sum(dim=1), n_available.clamp(max=n_negatives))
    assert not (mask & (targets > 0)).any()


def test_negatives_are_drawn_uniformly():
    # One image, 2 positives, 8 negatives, 3 drawn: each negative is picked with probability 3/8.
    targets = torch.zeros(4000, 10)
    targets[:, [2, 7]] = 1
    mask = sample_negatives(targets, 3, generator=torch.Generator().manual_seed(0))
    frequency = mask.float().mean(dim=0)
    negatives = [i for i in range(10) if i not in (2, 7)]
    assert torch.allclose(frequency[negatives], torch.full((8,), 3 / 8), atol=0.03)
    assert frequency[[2, 7]].sum() == 0


def test_bce_loss_is_binary_cross_entropy_of_sigmoid():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    targets = torch.tensor([[1, 0], [0, 1]])
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert float(bce_loss(logits, targets)) == pytest.approx(float(expected), rel=1e-6)


def test_every_parameter_of_the_model_gets_a_gradient():
    torch.manual_seed(0)
    model = LabelSpaceModel(backbone="efficientnet_lite0", k=4, d=8, pretrained=True, freeze_backbone=False, dropout=0.0,
                            normalize=False, center_words=False, learn_scale=False)
    model.train()
    images = torch.randn(2, 3, 32, 32)
    label_vectors = torch.randn(5, 8)
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]])
    loss = hinge_rank_loss(model.distances(images, label_vectors), targets, margin=1.0, n_negatives=2)
    assert loss.item() > 0  # random A: margins are not met, so the gradient is not trivially zero
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    assert model.head.weight.grad.abs().sum() > 0
    assert model.backbone.body.net._conv_stem.weight.grad.abs().sum() > 0


def test_a_float_negative_mask_means_the_same_as_a_boolean_one():
    distances, targets = random_batch(3)
    mask = torch.rand(distances.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    as_bool = hinge_rank_loss(distances, targets, negative_mask=mask)
    as_float = hinge_rank_loss(distances, targets, negative_mask=mask.float())
    assert float(as_float) == float(as_bool)


def test_a_negative_number_of_negatives_is_rejected():
    with pytest.raises(ValueError, match="n_negatives must be >= 0"):
        hinge_rank_loss(torch.zeros(2, 3), torch.ones(2, 3), n_negatives=-1)


def test_span_units_divide_margin_and_threshold_by_the_rank_of_the_training_labels():
    from labelspace.model.networks import LabelSpaceModel

    model = LabelSpaceModel(backbone="resnet18", k=2, d=6, pretrained=False, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False)
    W = torch.zeros(4, 6)
    W[0, 0], W[1, 1], W[2, 2], W[3, 3] = 1.0, 2.0, 3.0, 4.0
    model.set_word_center(W)  # four labels, centred: a span of rank 3
    assert loss_scale(model, W, "span") == pytest.approx(1 / 3)
    assert loss_scale(model, W, "absolute") == 1.0
    model.normalize = False  # an unbounded D has no span scale: the values stay as given
    assert loss_scale(model, W, "span") == 1.0
    with pytest.raises(ValueError, match="span or absolute"):
        loss_scale(model, W, "relative")


def test_sigmoid_loss_is_bce_of_the_distance_below_the_threshold_over_every_label():
    distances = torch.tensor([[0.05, 0.30, 0.10], [0.40, 0.02, 0.25]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
    tau, temperature = 0.2, 0.05
    p = torch.sigmoid((tau - distances) / temperature)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum(dim=1).mean()
    assert float(sigmoid_loss(distances, targets, tau, temperature)) == pytest.approx(float(expected), rel=1e-6)
    # An image without positives still counts: its labels are all negatives.
    empty = torch.zeros(1, 3)
    assert float(sigmoid_loss(distances[:1], empty, tau, temperature)) > 0
    with pytest.raises(ValueError, match="temperature"):
        sigmoid_loss(distances, targets, tau, 0.0)


def test_the_sigmoid_variant_trains_through_compute_loss_and_lowers_positive_distances():
    from labelspace.config import LossConfig
    from labelspace.model.spec import ModelSpec
    from labelspace.training.loss import compute_loss

    torch.manual_seed(0)
    model = LabelSpaceModel(backbone="efficientnet_lite0", k=4, d=8, pretrained=True, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=False, learn_scale=False)
    spec = ModelSpec(head="labelspace", backbone="efficientnet_lite0", n_labels=6, d=8, k=4, image_size=32,
                     freeze_backbone=True, dropout=0.0, normalize=True, center_words=False, learn_scale=False)
    config = LossConfig(variant="sigmoid", margin=0.3, n_negatives=2, threshold=1.0, threshold_weight=0.0,
                        rank_weight=1.0, units="span")
    feats = torch.randn(16, model.backbone.num_features)
    targets = (torch.rand(16, 6) < 0.3).float()
    W = torch.randn(6, 8)
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss, skipped = compute_loss(spec, config, model, model.from_features(feats), targets, W, None)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert skipped == 0
    assert float(loss.detach()) < 0.7 * first
    with torch.no_grad():
        D = model.distances_from_output(model.from_features(feats), W)
    assert D[targets > 0].mean() < D[targets == 0].mean()


@pytest.mark.parametrize("variant", ["paper", "pairwise", "sigmoid", "pairwise+sigmoid"])
def test_the_shares_of_two_data_parallel_ranks_sum_to_the_loss_of_one_process(variant):
    from labelspace.config import LossConfig
    from labelspace.model.spec import ModelSpec
    from labelspace.training.loss import compute_loss, shard_loss

    torch.manual_seed(1)
    model = LabelSpaceModel(backbone="efficientnet_lite0", k=4, d=8, pretrained=True, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False)
    spec = ModelSpec(head="labelspace", backbone="efficientnet_lite0", n_labels=6, d=8, k=4, image_size=32,
                     freeze_backbone=True, dropout=0.0, normalize=True, center_words=True, learn_scale=False)
    config = LossConfig(variant=variant, margin=0.7, n_negatives=3, threshold=1.4, threshold_weight=1.0,
                        rank_weight=1.0, units="span")
    outputs = model.from_features(torch.randn(9, model.backbone.num_features))
    targets = (torch.rand(9, 6) < 0.3).float()
    targets[4] = 0  # an image without positives: skipped by the rank terms, counted by the sigmoid loss
    W = torch.randn(6, 8)
    model.set_word_center(W)
    whole, skipped = compute_loss(spec, config, model, outputs, targets, W, torch.Generator().manual_seed(5))
    negatives = None if variant == "sigmoid" else sample_negatives(targets, 3, torch.Generator().manual_seed(5))
    scale = loss_scale(model, W, "span")
    shares = [shard_loss(spec, config, model, outputs[rank::2], targets[rank::2], W,
                         None if negatives is None else negatives[rank::2], targets, 1.0, scale) for rank in (0, 1)]
    assert float(sum(loss.detach() for loss, _ in shares)) == pytest.approx(float(whole.detach()), rel=1e-5)
    assert sum(n for _, n in shares) == skipped == (0 if variant == "sigmoid" else int((targets.sum(1) == 0).sum()))
