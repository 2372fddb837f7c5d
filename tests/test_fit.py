"""What training a head decides, without ZenML: held-out labels, the split, the checkpoint key, the
calibration fitted on validation, and the data cache the steps read from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelspace.data.splits import split_indices
from labelspace.evaluation.evaluate import evaluate_models, write_report
from labelspace.training.fit import (
    checkpoint_data_key,
    fit_head,
    held_out_for,
    held_out_labels,
    training_labels,
)

MODEL = {"k": 4, "freeze_backbone": True}
TRAIN = {"epochs": 2, "batch_size": 32, "lr": 3e-3, "val_fraction": 0.25}


def test_held_out_labels_split_concepts_from_names_the_dataset_lacks():
    held = held_out_labels(["shirt", "rainbow", "sandal"], ["shirt", "sandal", "bag"])
    assert held.labels == ["shirt", "sandal"] and held.not_concepts == ["rainbow"]
    labels, vectors = training_labels(["shirt", "sandal", "bag"], np.eye(3), held.labels)
    assert labels == ["bag"] and vectors.tolist() == [[0.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match="every label .* is held out.*evaluate.zero_shot_labels"):
        training_labels(["shirt"], np.eye(1), ["shirt"])


def test_the_checkpoint_key_changes_with_anything_the_weights_depend_on(tiny_dataset):
    _, manifest, concepts, images = tiny_dataset
    vectors = np.ones((len(concepts), 3), np.float32)
    splits = split_indices(manifest, 0.1, 0)
    key = checkpoint_data_key("v1", concepts, vectors, splits, images.shape)
    assert key == checkpoint_data_key("v1", concepts, vectors.copy(), splits, images.shape)
    assert key != checkpoint_data_key("v2", concepts, vectors, splits, images.shape)
    assert key != checkpoint_data_key("v1", concepts[::-1], vectors, splits, images.shape)
    assert key != checkpoint_data_key("v1", concepts, vectors * 2, splits, images.shape)
    assert key != checkpoint_data_key("v1", concepts, vectors, split_indices(manifest, 0.2, 0), images.shape)
    assert key != checkpoint_data_key("v1", concepts, vectors, splits, (1, 64, 64, 3))


@pytest.fixture(scope="module")
def fitted(tiny_dataset, project_config, tmp_path_factory):
    _, manifest, concepts, images = tiny_dataset
    vectors = np.random.default_rng(0).normal(size=(len(concepts), 8)).astype(np.float32)
    config = project_config.replace(model=MODEL, train=TRAIN)
    held = held_out_labels([concepts[0], "rainbow"], concepts)
    epochs = []
    fits = {head: fit_head(head, config.model, config.loss, config.train, manifest, concepts, vectors, images,
                           dataset_version="test", held_out=held.labels,
                           checkpoint_dir=tmp_path_factory.mktemp("ckpt"),
                           on_epoch=lambda e, r, head=head: epochs.append((head, e, r)))
            for head in ("labelspace", "bce")}
    return fits, held, concepts, vectors, manifest, images, epochs, config


def test_fit_head_trains_without_the_held_out_labels_and_validates_every_epoch(fitted):
    fits, held, concepts, _, manifest, _, epochs, _ = fitted
    for head, fit in fits.items():
        assert fit.model.labels == [c for c in concepts if c not in held.labels]
        assert fit.model.spec.head == head and fit.model.spec.n_labels == len(concepts) - 1
        splits = split_indices(manifest, TRAIN["val_fraction"], 0)
        assert (fit.n_train_images, fit.n_val_images) == (len(splits["train"]), len(splits["val"]))
        assert [e for h, e, _ in epochs if h == head] == [1, 2]
        assert all({"loss", "val_mAP", "val_top3_O-F1"} <= set(r) for h, _, r in epochs if h == head)
        assert fit.model.provenance["weights_hash"] not in ("", "random-init")


def test_the_decision_is_calibrated_on_validation_and_travels_with_the_model(fitted):
    fits = fitted[0]
    for head, fit in fits.items():
        calibration = fit.model.calibration
        assert calibration["fitted_on"] == "validation" and calibration["slope"] > 0
        assert 0 < calibration["probability_threshold"] < 1
        assert ("distance_threshold" in calibration) == (head == "labelspace")


def test_the_offset_for_held_out_labels_is_fitted_on_validation_and_saved_with_the_weights(fitted):
    from labelspace.data.splits import target_matrix
    from labelspace.evaluation.zero_shot import unseen_shift_for_cost
    from labelspace.model.inference import extract_features, scores_from_features

    fits, held, concepts, vectors, manifest, images, _, config = fitted
    found, model = fits["labelspace"].open_words, config.model
    assert not fits["bce"].open_words
    shift = found["fitted_offset"] - model.open_words_offset
    assert shift >= 0 and shift % 0.25 == 0
    assert (shift > 0) == (found["val_cost_before"] > model.open_words_cost)
    assert found["val_cost"] <= model.open_words_cost or shift == 8
    # The saved weights measure what the fit measured: the same validation cost from a rebuilt network,
    # its scores as serving returns them (one ranking of training labels and held-out words together).
    trained = fits["labelspace"].model
    network = trained.build().eval()
    val = split_indices(manifest, config.train.val_fraction, config.train.seed)["val"]
    feats = extract_features(network, images, val, torch.device("cpu"), config.train.feature_batch_size)  # as fit batched them
    ranked = np.concatenate([trained.label_vectors, vectors[[concepts.index(c) for c in held.labels]]])
    scores = scores_from_features(network, feats, ranked)
    n = len(trained.labels)
    again = unseen_shift_for_cost(scores[:, :n], scores[:, n:], target_matrix(manifest.iloc[val], trained.labels), 1.0)
    assert again["cost_before"] == pytest.approx(found["val_cost"], abs=1e-9)
    assert again["share_before"] == pytest.approx(found["val_share"], abs=1e-9)


def test_evaluate_models_writes_the_report_schema_and_its_plots(fitted, tmp_path):
    fits, held, concepts, vectors, manifest, images, _, config = fitted
    report, figures = evaluate_models(manifest, images, {h: f.model for h, f in fits.items()}, concepts, vectors,
                                      config.evaluate, held)
    for head in ("labelspace", "bce"):
        assert set(report[head]) == {"top3", "top5", "mAP", "threshold"}
        assert {"C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "n_images", "n_images_without_labels"} <= set(
            report[head]["top3"])
    test_idx = split_indices(manifest)["test"]
    assert report["data"]["n_test_images"] == len(test_idx)
    assert report["data"]["held_out_labels"] == held.labels
    assert report["zero_shot"]["not_concepts"] == ["rainbow"]
    assert report["zero_shot"]["labels"] == held.labels and "chance" in report["zero_shot"]
    written = write_report(report, figures, tmp_path / "reports" / "metrics.json")
    assert {p.name for p in written} == {"metrics.json", "per_class_f1.png", "training_curves.png",
                                         "label_vectors.png", "reliability.png"}
    assert all(p.stat().st_size > 0 for p in written)


def test_prepared_data_is_rebuilt_when_its_files_are_gone(tiny_dataset, tmp_path):
    import shutil

    from labelspace.data.prepared import PreparedData

    root = tiny_dataset[0]
    data = PreparedData(dataset=str(root), version="md5:abc/def", image_size=16, cache_dir=str(tmp_path))
    report = data.ensure()
    assert data.folder == tmp_path / "md5:abc_def" and report["ok"] == len(data.manifest()[0])
    first = np.asarray(data.images()).copy()
    shutil.rmtree(data.folder)  # what a cached ZenML step would otherwise point at
    assert np.array_equal(np.asarray(data.images()), first)
    assert data.images().shape == (len(first), 16, 16, 3)


def test_auto_holds_out_a_seeded_share_that_does_not_depend_on_concept_order():
    concepts = [f"label{i}" for i in range(20)]
    held = held_out_labels("auto", concepts, fraction=0.2, seed=3)
    assert len(held.labels) == 4 and set(held.labels) <= set(concepts) and held.not_concepts == []
    assert held_out_labels("auto", concepts[::-1], fraction=0.2, seed=3).labels == held.labels
    assert held_out_labels("auto", concepts, fraction=0.2, seed=4).labels != held.labels
    assert "4 of 20" in held.rule and "seed 3" in held.rule
    # At least one, and never so many that fewer than two labels train.
    assert len(held_out_labels("auto", concepts[:3], fraction=0.1).labels) == 1
    assert len(held_out_labels("auto", concepts[:4], fraction=0.9).labels) == 2
    assert held_out_labels("auto", concepts[:2]).labels == []
    with pytest.raises(ValueError, match="use auto or a list"):
        held_out_labels("all", concepts)


def test_a_label_set_with_its_own_unseen_labels_holds_out_exactly_those(project_config):
    concepts = [f"concept{i}" for i in range(81)]
    held = held_out_for(project_config.evaluate, concepts, unseen=concepts)
    assert held.labels == concepts and held.not_concepts == [] and "own 81 unseen" in held.rule
    listed = project_config.replace(evaluate={"zero_shot_labels": ["concept0"]}).evaluate
    with pytest.raises(ValueError, match="must be auto with a label set that has its own unseen labels"):
        held_out_for(listed, concepts, unseen=concepts)
    assert held_out_for(listed, concepts).labels == ["concept0"]  # without unseen labels, the list as it is
