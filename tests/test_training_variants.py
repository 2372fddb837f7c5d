"""Loss and model variants against explicit loop references, and models rebuilt exactly from their config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelspace.data.splits import split_indices, target_matrix
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import extract_features
from labelspace.model.spec import ModelSpec, build_model
from labelspace.training.loop import train_model
from labelspace.training.loss import compute_loss, hinge_rank_loss, threshold_loss

VARIANT_MODEL = {"normalize": True, "center_words": True, "learn_scale": True}
VARIANT_LOSS = {"variant": "pairwise", "margin": 0.1, "threshold": 0.1, "threshold_weight": 1.0, "units": "absolute"}
PAPER_MODEL = {"normalize": False, "center_words": False, "learn_scale": False, "open_words": "raw"}
PAPER_LOSS = {"variant": "paper", "margin": 1.0, "n_negatives": 40, "threshold_weight": 0.0, "rank_weight": 1.0,
              "units": "absolute"}


def _spec(**changes) -> ModelSpec:
    base = dict(head="labelspace", backbone="resnet18", k=3, d=5, n_labels=4, dropout=0.0, normalize=False,
                center_words=False, learn_scale=False, freeze_backbone=False, image_size=32)
    return ModelSpec(**{**base, **changes})


def _batch(seed=0, batch=5, n_labels=6):
    g = torch.Generator().manual_seed(seed)
    distances = torch.rand(batch, n_labels, generator=g, dtype=torch.float64)
    targets = (torch.rand(batch, n_labels, generator=g) < 0.35).float()
    targets[0] = 0  # an image without positives
    negatives = (torch.rand(batch, n_labels, generator=g) < 0.7) & (targets == 0)
    return distances, targets, negatives


def test_pairwise_rank_loss_equals_a_loop_over_every_positive_negative_pair():
    distances, targets, negatives = _batch()
    margin = 0.3
    per_image = []
    for b in range(len(targets)):
        pos = [i for i in range(targets.shape[1]) if targets[b, i] > 0]
        if not pos:
            continue
        neg = [j for j in range(targets.shape[1]) if negatives[b, j]]
        total = sum(max(0.0, margin + float(distances[b, i]) - float(distances[b, j])) for i in pos for j in neg)
        per_image.append(total / len(pos))
    loss, skipped = hinge_rank_loss(distances, targets, margin=margin, negative_mask=negatives,
                                    variant="pairwise", return_skipped=True)
    assert float(loss) == pytest.approx(np.mean(per_image), rel=1e-12)
    assert skipped == 1


def test_threshold_loss_equals_a_loop_and_counts_images_without_positives():
    distances, targets, negatives = _batch(seed=1)
    tau, margin = 0.4, 0.2
    per_image = []
    for b in range(len(targets)):
        total = 0.0
        for label in range(targets.shape[1]):
            d = float(distances[b, label])
            if targets[b, label] > 0:
                total += max(0.0, d - (tau - margin / 2))
            elif negatives[b, label]:
                total += max(0.0, (tau + margin / 2) - d)
        per_image.append(total)
    loss = threshold_loss(distances, targets, tau, margin, negative_mask=negatives)
    assert float(loss) == pytest.approx(np.mean(per_image), rel=1e-12)
    # Without a mask every negative counts.
    assert float(threshold_loss(distances, targets, tau, margin)) >= float(loss)


def test_an_unknown_rank_variant_names_the_param():
    with pytest.raises(ValueError, match="loss.variant"):
        hinge_rank_loss(torch.zeros(1, 2), torch.ones(1, 2), variant="warp")


def test_the_paper_variant_loss_is_exactly_the_paper_hinge(recipe):
    """model/loss sections set to the paper's method give eq. 3 and nothing else."""
    spec, loss_config, _ = recipe(n_labels=4, d=3, model={**PAPER_MODEL, "k": 2}, loss=PAPER_LOSS)
    model = build_model(spec)
    g = torch.Generator().manual_seed(0)
    A, W = torch.randn(6, 2, 3, generator=g), torch.randn(4, 3, generator=g)
    targets = (torch.rand(6, 4, generator=g) < 0.5).float()
    loss, _ = compute_loss(spec, loss_config, model, A, targets, W, torch.Generator().manual_seed(1))
    reference = hinge_rank_loss((A @ W.t()).pow(2).sum(1), targets, margin=1.0, n_negatives=40)
    assert float(loss) == pytest.approx(float(reference), rel=1e-6)


def test_normalized_centred_distances_equal_an_explicit_computation():
    torch.manual_seed(0)
    model = build_model(_spec(normalize=True, center_words=True, learn_scale=True)).eval()
    W = torch.randn(4, 5)
    model.set_word_center(W[:3])
    with torch.no_grad():
        model.log_scale.fill_(0.7)
        feats = torch.randn(2, model.backbone.num_features)
        A = model.from_features(feats)
        D = model.distances_from_output(A, W)
    center = W[:3].mean(0)
    for b in range(2):
        A_hat = A[b] / A[b].norm()
        for label in range(4):
            w = (W[label] - center) / (W[label] - center).norm()
            expected = float((A_hat @ w).pow(2).sum()) * np.exp(0.7)
            assert float(D[b, label]) == pytest.approx(expected, rel=1e-5)
    # Without the learned scale, D lies in [0, 1]: ||Â ŵ||² <= ||Â||_F² ||ŵ||² = 1.
    assert float((D / np.exp(0.7)).max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="center_words"):
        build_model(_spec()).set_word_center(W)


@pytest.mark.parametrize("head", ["labelspace", "bce"])
def test_a_trained_model_rebuilds_exactly_from_its_bundle(tmp_path, head):
    """build_model(spec) + the saved state_dict (what the materializer and serving do) give the same scores."""
    spec = _spec(head=head, **VARIANT_MODEL)
    torch.manual_seed(1)
    model = build_model(spec)
    W = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    if head == "labelspace":
        model.set_word_center(torch.from_numpy(W))
        with torch.no_grad():
            model.log_scale.fill_(0.3)
        assert {"word_center", "log_scale"} <= set(model.state_dict())
    trained = TrainedModel(spec=spec, labels=list("abcd"), label_vectors=W, state_dict=model.state_dict(),
                           calibration={"slope": 1.0})
    trained.save(tmp_path)
    loaded = TrainedModel.load(tmp_path)
    assert loaded.spec == spec and loaded.calibration == {"slope": 1.0}
    assert loaded.content_hash() == trained.content_hash()
    rebuilt = loaded.build()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        args = (torch.from_numpy(W),) if head == "labelspace" else ()
        torch.testing.assert_close(rebuilt.scores(images, *args), model.eval().scores(images, *args))


def test_a_bundle_of_another_format_is_a_clear_error(tmp_path):
    import json

    spec = _spec()
    TrainedModel(spec=spec, labels=list("abcd"), label_vectors=np.zeros((4, 5), np.float32),
                 state_dict=build_model(spec).state_dict()).save(tmp_path)
    meta = json.loads((tmp_path / "bundle.json").read_text())
    (tmp_path / "bundle.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ValueError, match="bundle format 1, this labelspace reads 2"):
        TrainedModel.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a labelspace model bundle: no weights.pt"):
        (tmp_path / "weights.pt").unlink() or TrainedModel.load(tmp_path)
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        _spec(head="svm")


def test_training_on_precomputed_features_equals_training_on_images(tiny_dataset, recipe):
    """The ablation study trains on cached features: the same run as the pipeline's, bit for bit."""
    _, manifest, concepts, images = tiny_dataset
    vectors = np.random.default_rng(0).normal(size=(len(concepts), 8)).astype(np.float32)
    targets, train_idx = target_matrix(manifest, concepts), split_indices(manifest, 0.1)["train"]
    model = {**VARIANT_MODEL, "k": 4, "freeze_backbone": True}
    parts = recipe(n_labels=len(concepts), model=model, loss=VARIANT_LOSS,
                   train={"epochs": 2, "batch_size": 16, "seed": 2})
    direct = train_model(*parts, images, targets, train_idx, vectors)
    device = torch.device("cpu")
    features = (extract_features(direct.model, images, train_idx, device),
                extract_features(direct.model, images, train_idx, device, mirrored=True))
    cached = train_model(*parts, None, targets, train_idx, vectors, features=features)
    for name, value in direct.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], value, msg=name)
    assert [r["loss"] for r in cached.history] == pytest.approx([r["loss"] for r in direct.history])
    with pytest.raises(ValueError, match="freeze_backbone"):
        train_model(*recipe(n_labels=len(concepts), model={**model, "freeze_backbone": False}), None, targets,
                    train_idx, vectors, features=features)
