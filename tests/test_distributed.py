"""Data-parallel training (train.devices > 1): 2 gloo processes on the CPU train the same curve as one
process, a killed worker fails the run with a clear message, and a rerun resumes from its checkpoint.

Tolerance: the per-epoch losses and validation mAP of 2 processes match 1 process within a relative
1e-4 (measured: about 1e-7). The backbone is frozen (its BatchNorm in eval mode, so per-rank batch
statistics play no part) and dropout is 0; what is left is the order of floating-point sums: the
gradient of a global batch is the sum of two half-batch gradients instead of one sum, the features
are computed in other batches, and each process runs at 1 torch thread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelspace.config import ConfigError
from labelspace.training.distributed import KILL_HOOK_ENV, DistributedTrainingError
from labelspace.training.fit import fit_head

TOLERANCE = 1e-4
MODEL = {"k": 4, "freeze_backbone": True, "dropout": 0.0}
# 70 training images: 4 full global batches of 16 and a last one of 6, split 3 + 3.
TRAIN = {"epochs": 3, "batch_size": 16, "lr": 3e-3, "mirror": True, "seed": 3, "val_fraction": 0.25,
         "device": "cpu"}


def _fit(tiny_dataset, project_config, checkpoint_dir, devices, epochs=None):
    _, manifest, concepts, images = tiny_dataset
    vectors = np.random.default_rng(0).normal(size=(len(concepts), 8)).astype(np.float32)
    config = project_config.replace(model=MODEL, train={**TRAIN, "devices": devices,
                                                        "epochs": epochs or TRAIN["epochs"]})
    seen = []
    fit = fit_head("labelspace", config.model, config.loss, config.train, manifest, concepts, vectors, images,
                   dataset_version="test", checkpoint_dir=checkpoint_dir,
                   on_epoch=lambda epoch, record: seen.append((epoch, record)))
    return fit, seen


def _curve(history, key):
    return [record[key] for record in history]


@pytest.fixture(scope="module")
def one_and_two(tiny_dataset, project_config, tmp_path_factory):
    torch.set_num_threads(1)  # the same thread count as each of the 2 workers
    try:
        one = _fit(tiny_dataset, project_config, tmp_path_factory.mktemp("one"), devices=1)
    finally:
        torch.set_num_threads(2)
    two_dir = tmp_path_factory.mktemp("two")
    two = _fit(tiny_dataset, project_config, two_dir, devices=2)
    return one, two, two_dir


def test_two_processes_train_the_curve_of_one(one_and_two):
    (one, _), (two, seen), _ = one_and_two
    assert two.processes == 2 and one.processes == 1
    assert [epoch for epoch, _ in seen] == [1, 2, 3]  # on_epoch ran here, once per epoch, from rank 0's records
    assert [record for _, record in seen] == two.model.history
    for key in ("loss", "val_mAP", "lr"):
        assert _curve(two.model.history, key) == pytest.approx(_curve(one.model.history, key), rel=TOLERANCE), key
    assert two.model.history[0]["loss"] > two.model.history[-1]["loss"]
    for name, value in one.model.state_dict.items():
        torch.testing.assert_close(two.model.state_dict[name], value, rtol=1e-3, atol=1e-5, msg=name)
    assert two.model.calibration["fitted_on"] == "validation"
    worst = max(abs(a - b) / abs(b) for a, b in zip(_curve(two.model.history, "loss"),
                                                    _curve(one.model.history, "loss"), strict=True))
    print(f"largest relative loss difference, 1 vs 2 processes: {worst:.2e}")


@pytest.mark.slow  # two more runs of 2 processes: about 60 s on 2 busy cores
def test_a_killed_worker_fails_the_run_clearly_and_a_rerun_resumes(one_and_two, tiny_dataset, project_config,
                                                                   tmp_path, monkeypatch):
    (_, _), (two, _), _ = one_and_two
    monkeypatch.setenv(KILL_HOOK_ENV, "1:1")  # rank 1 SIGKILLs itself once epoch 1 is checkpointed
    with pytest.raises(DistributedTrainingError) as failed:
        _fit(tiny_dataset, project_config, tmp_path, devices=2)
    message = str(failed.value)
    assert "rank 1 (local rank 1" in message and "killed by SIGKILL (exit code -9)" in message, message
    assert "A rerun resumes from the last checkpoint, epoch 1 of 3" in message, message
    assert not list((tmp_path / ".distributed").iterdir())  # the job folder is cleaned up

    monkeypatch.delenv(KILL_HOOK_ENV)
    resumed, seen = _fit(tiny_dataset, project_config, tmp_path, devices=2)
    assert resumed.resumed_from_epoch == 1 and [epoch for epoch, _ in seen] == [2, 3]
    assert [r["epoch"] for r in resumed.model.history] == [1, 2, 3]
    assert _curve(resumed.model.history, "loss") == pytest.approx(_curve(two.model.history, "loss"), rel=TOLERANCE)


def test_a_finished_checkpoint_is_returned_without_starting_processes(one_and_two, tiny_dataset, project_config):
    (_, _), (two, _), two_dir = one_and_two
    again, seen = _fit(tiny_dataset, project_config, two_dir, devices=2)
    assert seen == [] and again.resumed_from_epoch == 3 and again.seconds.get("processes") is None
    # The checkpoint does not depend on the number of processes: one process picks it up as well.
    alone, seen = _fit(tiny_dataset, project_config, two_dir, devices=1)
    assert seen == [] and alone.resumed_from_epoch == 3
    for name, value in two.model.state_dict.items():
        assert torch.equal(alone.model.state_dict[name], value), name


def test_devices_and_nodes_are_checked(project_config, recipe, tiny_dataset):
    with pytest.raises(ConfigError, match=r"train\.devices = 0 must be at least 1"):
        project_config.replace(train={"devices": 0})
    with pytest.raises(ConfigError, match=r"train\.batch_size = 2 must be at least train\.devices x train\.nodes \(4\)"):
        project_config.replace(train={"devices": 2, "nodes": 2, "batch_size": 2})
    with pytest.raises(ConfigError, match=r"train\.devices = 2 must be 1 on mps"):
        project_config.replace(train={"devices": 2, "device": "mps"})
    # A closure cannot reach rank 0's process: said before any process starts.
    from labelspace.training.loop import train_model

    _, manifest, concepts, images = tiny_dataset
    parts = recipe(n_labels=len(concepts), model=MODEL, train={**TRAIN, "devices": 2})
    with pytest.raises(TypeError, match="`validate` must pickle"):
        train_model(*parts, images, np.zeros((len(manifest), len(concepts)), np.float32), np.arange(8),
                    np.zeros((len(concepts), 8), np.float32), validate=lambda model, epoch: {})


def test_the_job_holds_images_by_reference(tiny_dataset, tmp_path, monkeypatch):
    """Memory-mapped arrays and shards travel to the ranks as paths; large in-memory arrays as .npy files."""
    import io

    from labelspace.data.shards import ShardedImages, write_shards
    from labelspace.training import distributed

    root, manifest, _, images = tiny_dataset
    write_shards([root / p for p in manifest["path"][:10]], 16, tmp_path / "shards", shard_size=4, source_hash="x",
                 progress=False)
    shards = ShardedImages(tmp_path / "shards")
    monkeypatch.setattr(distributed, "INLINE_ARRAY_BYTES", 1000)
    big = np.arange(5000, dtype=np.float32)
    job = {"images": images, "shards": shards, "big": big, "small": np.ones(3), "again": big}
    buffer = io.BytesIO()
    distributed.JobPickler(buffer, tmp_path).dump(job)
    assert len(buffer.getvalue()) < 2000  # no pixels and no big array inside
    assert [p.name for p in tmp_path.glob("array-*.npy")] == ["array-0.npy"]  # saved once
    buffer.seek(0)
    back = distributed.JobUnpickler(buffer).load()
    assert isinstance(back["images"], np.memmap) and np.array_equal(back["images"], images)
    assert isinstance(back["shards"], ShardedImages) and np.array_equal(back["shards"][[1, 9]], shards[[1, 9]])
    assert isinstance(back["big"], np.memmap) and np.array_equal(back["big"], big)
    assert back["small"].tolist() == [1.0, 1.0, 1.0]
    # A view of part of a mapped file is no whole file: its rows are pickled, not the path.
    assert not distributed._whole_npy(images[:5])
