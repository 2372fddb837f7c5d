"""Word vectors: word2vec round trips, the label policy, the missing-label error, the GloVe export."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support import project_config

from labelspace.data.word_vectors import (
    MissingWordVectorsError,
    export_glove,
    glove_package_files,
    is_word2vec_binary,
    load_word_vectors,
    resolve_label,
    resolve_label_vectors,
    save_word_vectors,
)

WORDS = ["t", "shirt", "ankle", "boot", "coat", "handbag", "Apple", "apple", "café", "t-shirt-dress"]


@pytest.fixture
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((len(WORDS), 6)).astype(np.float32)


@pytest.fixture
def kv(tmp_path, vectors):
    path = tmp_path / "tiny.bin"
    save_word_vectors(WORDS, vectors, path, binary=True)
    return load_word_vectors(path)


def vec(vectors: np.ndarray, word: str) -> np.ndarray:
    return vectors[WORDS.index(word)]


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_through_word2vec_with_the_format_sniffed(tmp_path, vectors, binary):
    path = tmp_path / ("v.bin" if binary else "v.txt")
    save_word_vectors(WORDS, vectors, path, binary=binary)
    assert is_word2vec_binary(path) is binary
    loaded = load_word_vectors(path)  # binary=None: sniffed
    assert loaded.index_to_key == WORDS
    np.testing.assert_array_equal(loaded.vectors, vectors)
    assert len(load_word_vectors(path, limit=3)) == 3


def test_a_text_file_with_lines_longer_than_the_sniffed_chunk_is_text(tmp_path):
    # The sniffer reads 4096 bytes after the header. "abcd " then "-1.5 " x 1000 puts the chunk's
    # last byte on a "-" (4 + 1 + 5 * 818 = 4095), a number cut in two that must not mean binary.
    path = tmp_path / "wide.txt"
    row = " ".join(["-1.5"] * 1000)
    path.write_text(f"2 1000\nabcd {row}\nefgh {row}\n", encoding="utf-8")
    assert is_word2vec_binary(path) is False
    np.testing.assert_array_equal(load_word_vectors(path).vectors, np.full((2, 1000), -1.5, np.float32))


def test_a_file_that_is_not_word2vec_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\nnothing else\n")
    with pytest.raises(ValueError, match="not in word2vec format"):
        load_word_vectors(path)


def test_a_missing_file_says_how_to_make_it(tmp_path):
    path = tmp_path / "glove.bin"
    with pytest.raises(FileNotFoundError) as raised:
        load_word_vectors(path)
    assert f"labelspace export-vectors --out {path}" in str(raised.value)


def test_save_rejects_words_and_vectors_of_different_lengths(tmp_path):
    with pytest.raises(ValueError, match="3 words but 2 vectors"):
        save_word_vectors(["a", "b", "c"], np.zeros((2, 4)), tmp_path / "x.bin")


def test_policy_exact_lowercase_mean_of_words_and_aliases(kv, vectors):
    labels = ["coat", "Coat", "t-shirt", "ankle boot", "Ankle_Boot", "bag", "Apple", "APPLE", "café"]
    resolved = resolve_label_vectors(kv, labels, aliases={"bag": "handbag"})
    assert resolved.labels == labels
    assert resolved.matrix.shape == (len(labels), 6) and resolved.matrix.dtype == np.float32
    row = dict(zip(labels, resolved.matrix, strict=True))
    np.testing.assert_array_equal(row["coat"], vec(vectors, "coat"))
    np.testing.assert_array_equal(row["Coat"], vec(vectors, "coat"))
    np.testing.assert_allclose(row["t-shirt"], (vec(vectors, "t") + vec(vectors, "shirt")) / 2, rtol=1e-6)
    np.testing.assert_allclose(row["ankle boot"], (vec(vectors, "ankle") + vec(vectors, "boot")) / 2, rtol=1e-6)
    np.testing.assert_allclose(row["Ankle_Boot"], row["ankle boot"], rtol=1e-6)
    np.testing.assert_array_equal(row["bag"], vec(vectors, "handbag"))
    np.testing.assert_array_equal(row["Apple"], vec(vectors, "Apple"))  # exact wins over lower case
    np.testing.assert_array_equal(row["APPLE"], vec(vectors, "apple"))
    np.testing.assert_array_equal(row["café"], vec(vectors, "café"))
    assert resolved.how == {
        "coat": "exact",
        "Coat": "lowercase",
        "t-shirt": "mean-of-words",
        "ankle boot": "mean-of-words",
        "Ankle_Boot": "mean-of-words",
        "bag": "alias:exact",
        "Apple": "exact",
        "APPLE": "lowercase",
        "café": "exact",
    }


def test_a_word_with_its_own_vector_is_not_split(kv, vectors):
    vector, rule = resolve_label(kv, "t-shirt-dress")
    np.testing.assert_array_equal(vector, vec(vectors, "t-shirt-dress"))
    assert rule == "exact"


def test_an_alias_may_name_several_words(kv, vectors):
    vector, rule = resolve_label(kv, "sneaker", aliases={"sneaker": "ankle boot"})
    np.testing.assert_allclose(vector, (vec(vectors, "ankle") + vec(vectors, "boot")) / 2, rtol=1e-6)
    assert rule == "alias:mean-of-words"


def test_every_missing_label_is_listed_with_the_fix(kv):
    labels = ["coat", "rainbow", "ankle unicorn", "t-rex", "bag"]
    with pytest.raises(MissingWordVectorsError) as raised:
        resolve_label_vectors(kv, labels, aliases=None, vectors_name="tiny.bin")
    error = raised.value
    assert error.missing == ["rainbow", "ankle unicorn", "t-rex", "bag"]
    message = str(error)
    for label in error.missing:
        assert repr(label) in message
    assert "4 label(s) in tiny.bin" in message
    assert "embedding.aliases" in message and "params.yaml" in message
    assert isinstance(error, KeyError)  # callers catching KeyError still see it


def test_a_label_whose_alias_has_no_vector_says_so(kv):
    with pytest.raises(MissingWordVectorsError) as raised:
        resolve_label_vectors(kv, ["coat", "bag"], aliases={"bag": "purse"})
    assert raised.value.missing == ["bag"]
    assert "'bag' (alias 'purse' has no vector either)" in str(raised.value)


def test_export_glove_writes_the_packaged_vectors(tmp_path):
    out = tmp_path / "glove-1000.bin"
    assert export_glove(out, limit=1000) == 1000
    emb_path, index_path = glove_package_files()
    package_vectors = np.load(emb_path, mmap_mode="r")
    package_words = pd.read_parquet(index_path).iloc[:1000, 0].tolist()
    kv = load_word_vectors(out)
    assert kv.index_to_key == package_words
    assert package_words[0] == "the"
    np.testing.assert_array_equal(kv["the"], package_vectors[0])
    np.testing.assert_array_equal(kv.vectors, package_vectors[:1000])


def test_export_vectors_command(tmp_path):
    labelspace = Path(sys.executable).with_name("labelspace")
    assert labelspace.is_file(), f"console script missing next to {sys.executable}: pip install -e ."
    out = tmp_path / "vectors" / "glove.txt"
    done = subprocess.run(
        [str(labelspace), "export-vectors", "--out", str(out), "--limit", "1000", "--text"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,  # no params.yaml needed with both flags
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 1000 GloVe 6B 50-d vectors" in done.stdout
    assert is_word2vec_binary(out) is False
    kv = load_word_vectors(out)
    assert len(kv) == 1000 and kv.vector_size == 50
    np.testing.assert_allclose(kv["the"], np.load(glove_package_files()[0], mmap_mode="r")[0], rtol=1e-6)


def test_export_vectors_reads_its_defaults_from_params_yaml(tmp_path, monkeypatch):
    from labelspace.cli.vectors import run_cli

    out = tmp_path / "from-params.bin"
    params = tmp_path / "params.yaml"
    raw = project_config().params
    params.write_text(yaml.safe_dump({**raw, "vectors": {"path": str(out), "limit": 20}}), encoding="utf-8")
    monkeypatch.setenv("LABELSPACE_PARAMS", str(params))
    assert run_cli(argparse.Namespace(out=None, limit=None, text=False)) == 0
    assert is_word2vec_binary(out) is True
    assert len(load_word_vectors(out)) == 20
