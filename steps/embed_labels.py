"""Step: the word vector of every concept, under the policy of labelspace.word_vectors."""

from typing import Annotated, Tuple

import numpy as np
from zenml import log_metadata, step


@step
def embed_labels(
    concepts: list[str], vectors_path: str, vectors_version: str, aliases: dict, limit: int | None = None
) -> Tuple[Annotated[list[str], "labels"], Annotated[np.ndarray, "label_vectors"], Annotated[dict, "label_resolution"]]:
    """`vectors_version` keys the cache on the vectors file's content; `limit` reads only the most
    frequent words (3M GoogleNews vectors take 3.6 GB)."""
    from labelspace.word_vectors import load_word_vectors, resolve_label_vectors

    kv = load_word_vectors(vectors_path, limit=limit)
    resolved = resolve_label_vectors(kv, concepts, aliases, vectors_name=vectors_path)
    log_metadata(metadata={"vectors_version": vectors_version, "n_labels": len(concepts),
                           "dimension": int(resolved.matrix.shape[1])})
    return resolved.labels, resolved.matrix, resolved.how
