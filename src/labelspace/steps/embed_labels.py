"""Step: the word vector of every concept, under the policy of labelspace.data.word_vectors."""

from typing import Annotated

import numpy as np
from zenml import log_metadata, step

from labelspace.config import EmbeddingConfig, VectorsConfig


@step
def embed_labels(
    concepts: list[str], vectors: VectorsConfig, vectors_version: str, embedding: EmbeddingConfig
) -> tuple[Annotated[list[str], "labels"], Annotated[np.ndarray, "label_vectors"], Annotated[dict, "label_resolution"]]:
    """`vectors_version` keys the cache on the content of the file `vectors.path` (absolute);
    `vectors.limit` reads only the most frequent words (3M GoogleNews vectors take 3.6 GB)."""
    from labelspace.data.word_vectors import load_word_vectors, resolve_label_vectors

    kv = load_word_vectors(vectors.path, limit=vectors.limit)
    resolved = resolve_label_vectors(kv, concepts, embedding.aliases, vectors_name=vectors.path)
    log_metadata(metadata={"vectors_version": vectors_version, "n_labels": len(concepts),
                           "dimension": int(resolved.matrix.shape[1])})
    return resolved.labels, resolved.matrix, resolved.how
