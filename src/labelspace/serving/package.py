"""What travels with a served model besides its bundle: the open vocabulary and an input example."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def package_inputs(images: np.ndarray, vectors_path: str, open_vocabulary_size: int):
    """(open vocabulary (words, vectors) or None, one training image as JPEG bytes for the input example).

    The open vocabulary is the `open_vocabulary_size` most frequent words of the vectors file, so a
    caller can rank any of them; 0 bundles none.
    """
    from labelspace.data.word_vectors import load_open_vocabulary

    open_vocabulary = load_open_vocabulary(vectors_path, open_vocabulary_size)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(images[0])).save(buffer, format="JPEG", quality=95)
    return open_vocabulary, buffer.getvalue()
