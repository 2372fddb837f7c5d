"""Preprocessed image arrays: pixels of the decoded images, in manifest order, built once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import sample_config

from labelspace import cli
from labelspace.data.nuswide import ingest, read_manifest
from labelspace.data.preprocess import build_image_arrays, load_image_arrays
from labelspace.data.sample import build_sample

FASHION_MNIST = Path(sample_config().source)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny sample with one image swapped for a non-square colour photo, and its manifest."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make system-packages)")
    root = tmp_path_factory.mktemp("pre") / "ds"
    build_sample(root, sample_config(n_train=12, n_test=4, blank_fraction=0.2))
    odd = next((root / "Flickr" / "casual").glob("*.jpg"))
    colours = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    Image.fromarray(colours).save(odd, format="JPEG", quality=90)
    manifest_path = root.parent / "manifest.parquet"
    ingest(root, manifest_path)
    return root, manifest_path


def _expected(path, size: int) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image)


@pytest.mark.parametrize("size", [64, 32])
def test_arrays_hold_the_decoded_images_in_manifest_order(dataset, tmp_path, size):
    root, manifest_path = dataset
    out = build_image_arrays(manifest_path, root, size, tmp_path / "arrays")
    images = load_image_arrays(out)
    manifest, _ = read_manifest(manifest_path)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8
    assert images.shape == (len(manifest), size, size, 3) == (16, size, size, 3)
    for i, rel in enumerate(manifest["path"]):
        np.testing.assert_array_equal(images[i], _expected(root / rel, size))
    if size == 64:  # the sample's canvases are already 64 px: exactly the decoded pixels
        i = next(i for i, row in manifest.iterrows() if row["labels"] and row["folder"] != "casual")
        np.testing.assert_array_equal(images[i], np.asarray(Image.open(root / manifest["path"][i])))
        assert images[i].max() > 100
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["image_size"], meta["n"]) == (size, 16)


def test_a_second_call_with_the_same_inputs_does_nothing(dataset, tmp_path):
    root, manifest_path = dataset
    out = tmp_path / "arrays"
    build_image_arrays(manifest_path, root, 32, out)
    stamp = (out / "images.npy").stat().st_mtime_ns
    assert build_image_arrays(manifest_path, root, 32, out) == out
    assert (out / "images.npy").stat().st_mtime_ns == stamp
    build_image_arrays(manifest_path, root, 32, out, data_version="abc.dir")  # a new data version rebuilds
    assert (out / "images.npy").stat().st_mtime_ns != stamp
    build_image_arrays(manifest_path, root, 16, out, data_version="abc.dir")
    assert load_image_arrays(out).shape == (16, 16, 16, 3)


def test_loading_before_building_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="labelspace preprocess"):
        load_image_arrays(tmp_path)


def test_an_image_gone_since_ingest_is_a_clear_error(dataset, tmp_path):
    root, manifest_path = dataset
    copy = tmp_path / "ds"
    shutil.copytree(root, copy)
    manifest, _ = read_manifest(manifest_path)
    (copy / manifest["path"][3]).unlink()
    with pytest.raises(RuntimeError, match="run `labelspace ingest` again"):
        build_image_arrays(manifest_path, copy, 16, tmp_path / "arrays")
    with pytest.raises(FileNotFoundError):
        load_image_arrays(tmp_path / "arrays")  # no half-built array passes for a complete one


def test_cli_preprocess(dataset, tmp_path, capsys):
    root, manifest_path = dataset
    argv = ["preprocess", "--manifest", str(manifest_path), "--root", str(root), "--size", "24",
            "--out", str(tmp_path / "arrays")]
    assert cli.main(argv) == 0
    assert "16 images of 24x24 px" in capsys.readouterr().out
