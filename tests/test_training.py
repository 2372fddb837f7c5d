"""Training: a run killed mid-way resumes from its checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from labelspace.data.splits import split_indices, target_matrix
from labelspace.model.inference import predict_scores
from labelspace.training.loop import train_model

MODEL = {"k": 4, "freeze_backbone": True}
TRAIN = {"epochs": 4, "batch_size": 16, "lr": 1e-3, "mirror": True, "seed": 3}


def _inputs(tiny_dataset):
    _, manifest, concepts, images = tiny_dataset
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(concepts), 8)).astype(np.float32)
    return images, target_matrix(manifest, concepts), split_indices(manifest, 0.1)["train"], vectors


@pytest.mark.parametrize("head", ["labelspace", "bce"])
def test_training_lowers_the_loss_and_logs_every_epoch(tiny_dataset, recipe, head):
    images, targets, train_idx, vectors = _inputs(tiny_dataset)
    seen = []
    parts = recipe(head, n_labels=len(vectors), model=MODEL, train={**TRAIN, "epochs": 3})
    result = train_model(*parts, images, targets, train_idx, vectors, on_epoch=lambda e, r: seen.append(e))
    assert seen == [1, 2, 3]
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0]
    scores = predict_scores(result.model, images, train_idx[:5], vectors)
    assert scores.shape == (5, len(vectors)) and np.isfinite(scores).all()


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tiny_dataset, recipe, repo_root, tmp_path):
    images, targets, train_idx, vectors = _inputs(tiny_dataset)
    parts = recipe(n_labels=len(vectors), model=MODEL, train=TRAIN)
    np.save(tmp_path / "images.npy", np.asarray(images))
    np.save(tmp_path / "targets.npy", targets)
    np.save(tmp_path / "train_idx.npy", train_idx)
    np.save(tmp_path / "vectors.npy", vectors)
    torch.set_num_threads(1)  # same reduction order in both processes
    reference = train_model(*parts, images, targets, train_idx, vectors, checkpoint_dir=tmp_path / "reference")

    # The same training in another process, killed (SIGKILL, no clean-up) once epoch 2 is checkpointed.
    script = textwrap.dedent(f"""
        import sys, time, numpy as np, torch
        torch.set_num_threads(1)
        from labelspace.config import load_config
        from labelspace.model.spec import ModelSpec
        from labelspace.training.loop import train_model
        d = {str(tmp_path)!r}
        config = load_config({str(repo_root / "params.yaml")!r}).replace(model={MODEL!r}, train={TRAIN!r})
        spec = ModelSpec(**{parts[0].to_dict()!r})
        def on_epoch(epoch, record):
            print("epoch", epoch, flush=True)
        def slow_validate(model, epoch):
            if epoch >= 3:
                time.sleep(600)  # stands in for a long epoch; the parent kills us here
            return {{}}
        train_model(spec, config.loss, config.train, np.load(d + "/images.npy"), np.load(d + "/targets.npy"),
                    np.load(d + "/train_idx.npy"), np.load(d + "/vectors.npy"), checkpoint_dir=d + "/crash",
                    on_epoch=on_epoch, validate=slow_validate)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stdout.readline()
            if line.strip() == "epoch 2":
                break
            assert line, "training process ended before epoch 2"
        time.sleep(0.5)  # the checkpoint of epoch 2 is written right after on_epoch
        ckpts = list((tmp_path / "crash").glob("*.pt"))
        assert ckpts and torch.load(ckpts[0], weights_only=False)["epoch"] >= 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    resumed = train_model(*parts, images, targets, train_idx, vectors, checkpoint_dir=tmp_path / "crash")
    assert resumed.resumed_from_epoch in (2, 3)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in reference.history], rel=1e-5)


def test_a_finished_run_is_not_trained_again_unless_resume_is_off(tiny_dataset, recipe, tmp_path):
    images, targets, train_idx, vectors = _inputs(tiny_dataset)
    parts = recipe(n_labels=len(vectors), model=MODEL, train={**TRAIN, "epochs": 2})
    first = train_model(*parts, images, targets, train_idx, vectors, checkpoint_dir=tmp_path)
    calls = []
    again = train_model(*parts, images, targets, train_idx, vectors, checkpoint_dir=tmp_path,
                        on_epoch=lambda e, r: calls.append(e))
    assert calls == [] and again.resumed_from_epoch == 2
    for name, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value)
    # A different configuration never picks up that checkpoint.
    other = train_model(*recipe(n_labels=len(vectors), model=MODEL, train={**TRAIN, "epochs": 2, "lr": 5e-4}),
                        images, targets, train_idx, vectors, checkpoint_dir=tmp_path)
    assert other.resumed_from_epoch == 0
    # resume=False (`labelspace run --no-cache`) trains again from scratch, to the same weights.
    fresh = train_model(*parts, images, targets, train_idx, vectors, checkpoint_dir=tmp_path, resume=False,
                        on_epoch=lambda e, r: calls.append(e))
    assert calls == [1, 2] and fresh.resumed_from_epoch == 0
    for name, value in first.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[name], value, msg=name)
