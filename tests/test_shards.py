"""Decoded images in fixed-size shards: the same pixels as one array, any rows gathered across
shards, a rerun after a kill rebuilds only what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from labelspace.data.prepared import PreparedData
from labelspace.data.shards import ShardedImages, write_shards


@pytest.fixture(scope="module")
def both(tiny_dataset, tmp_path_factory):
    root = tiny_dataset[0]
    tmp = tmp_path_factory.mktemp("shards")
    one = PreparedData(dataset=str(root), version="v1", image_size=24, cache_dir=str(tmp / "one"))
    sharded = PreparedData(dataset=str(root), version="v1", image_size=24, cache_dir=str(tmp / "sharded"),
                           shard_size=10)
    return np.asarray(one.images()), sharded


def test_shards_hold_exactly_the_pixels_of_the_single_array(both):
    array, sharded = both
    images = sharded.images()
    assert isinstance(images, ShardedImages) and images.shape == array.shape and len(images) == len(array)
    assert len(images.index["shards"]) == -(-len(array) // 10)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(array))[:37]  # a batch spanning many shards, out of order
    np.testing.assert_array_equal(images[rows], array[rows])
    np.testing.assert_array_equal(images[5], array[5])
    np.testing.assert_array_equal(images[-1], array[-1])
    np.testing.assert_array_equal(images[8:23], array[8:23])
    np.testing.assert_array_equal(np.asarray(images), array)
    with pytest.raises(IndexError):
        images[len(array)]
    with pytest.raises(IndexError):
        images[np.array([0, len(array)])]


def test_a_rerun_rebuilds_only_the_missing_shard_and_a_new_source_rebuilds_all(both, tmp_path):
    array, sharded = both
    from labelspace.data.nuswide import read_manifest

    manifest, _ = read_manifest(sharded.manifest_path)
    paths = [f"{sharded.dataset}/{rel}" for rel in manifest["path"]]
    first = write_shards(paths, 24, tmp_path, shard_size=25, source_hash="a", progress=False)
    assert (first["built"], first["reused"]) == (len(first["shards"]), 0)
    (tmp_path / "shard-00001.npy").unlink()  # as a kill between the rename and the record would leave
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (tmp_path / f".shard-00002.{dead}.partial.npy").write_bytes(b"half")  # a killed writer's temporary file
    again = write_shards(paths, 24, tmp_path, shard_size=25, source_hash="a", progress=False)
    assert (again["built"], again["reused"]) == (1, len(first["shards"]) - 1)
    assert not list(tmp_path.glob(".shard-*"))
    np.testing.assert_array_equal(np.asarray(ShardedImages(tmp_path)), array)
    other = write_shards(paths[:30], 24, tmp_path, shard_size=25, source_hash="b", progress=False)
    assert other["built"] == 2 and sorted(p.name for p in tmp_path.glob("shard-*.npy")) == [
        "shard-00000.npy", "shard-00001.npy"]
    with pytest.raises(ValueError, match="shard_size"):
        write_shards(paths, 24, tmp_path, shard_size=0, source_hash="b")


def test_incomplete_shards_are_never_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete shards"):
        ShardedImages(tmp_path)


def test_a_pickled_reader_opens_its_own_files_and_a_truncated_shard_is_named(both, tmp_path):
    import pickle

    array, sharded = both
    images = sharded.images()
    rows = np.array([3, 4, 5, 27, 28, 2, 9, 10])  # runs of consecutive rows, one across a shard boundary
    np.testing.assert_array_equal(images[rows], array[rows])
    copy = pickle.loads(pickle.dumps(images))  # what a DataLoader worker or a rank gets
    assert copy._open == {} and copy.folder == images.folder
    np.testing.assert_array_equal(copy[rows], array[rows])
    few = ShardedImages(images.folder, max_open=2)  # descriptors are bounded, reads stay right
    np.testing.assert_array_equal(few[np.arange(len(array))[::-1]], array[::-1])
    assert len(few._open) == 2
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(images.folder, broken)
    last = broken / images.index["shards"][-1]["file"]
    last.write_bytes(last.read_bytes()[:-100])
    with pytest.raises(OSError, match="truncated"):
        ShardedImages(broken)[len(array) - 1]
