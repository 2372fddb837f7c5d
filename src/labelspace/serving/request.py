"""A request's params and input frame, checked before any image is read (the pyfunc's `predict`,
and the REST door in front of MLflow's own checks, serving.errors)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pandas as pd

from labelspace.config import ServingConfig
from labelspace.serving.errors import ServingError, too_large
from labelspace.serving.images import IMAGE_COLUMN

DEFAULT_TOP_K = 5
PARAMS = ("top_k", "labels")
OUTPUT_COLUMNS = ("labels", "distances", "decided", "probabilities", "uncalibrated")


def _shown(value: Any) -> str:
    """A param value as the caller wrote it (JSON spelling), short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_params(params: Any, limits: ServingConfig, strict: bool = False) -> tuple[int, list[str]]:
    """(top_k, requested labels without repeats; [] = the training labels) of a request's params.

    `strict` (the REST door, before MLflow's own checks) also refuses params the model does not
    take; in process, MLflow has already dropped those with a warning."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ServingError(f'params must be a JSON object such as {{"top_k": 3}}, got {_shown(params)}')
    unknown = sorted(str(key) for key in params if key not in PARAMS)
    if strict and unknown:
        raise ServingError(f"unknown param(s) {', '.join(map(repr, unknown))}: this model takes top_k (an integer "
                           f"of at least 1, default {DEFAULT_TOP_K}) and labels (a list of words; default: the "
                           "training labels)")
    top_k = params.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ServingError(f"params.top_k must be an integer of at least 1 (default {DEFAULT_TOP_K}), "
                           f"got {_shown(top_k)}")
    labels = params.get("labels", [])
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        raise ServingError(f'params.labels must be a list of words such as ["shoe", "bag"] (empty: the training '
                           f"labels), got {_shown(labels)}")
    bad = next((i for i, word in enumerate(labels) if not isinstance(word, str)), None)
    if bad is not None:
        raise ServingError(f"params.labels[{bad}] must be a string, got {_shown(labels[bad])}")
    if len(labels) > limits.max_labels:
        raise too_large(f"params.labels holds {len(labels)} labels, over the limit of {limits.max_labels} per request")
    return int(top_k), list(dict.fromkeys(labels))


def image_values(model_input: Any, limits: ServingConfig) -> list[Any]:
    """The `image` cells of a request, at most `max_images` of them; [] for a request with no rows."""
    if isinstance(model_input, pd.DataFrame):
        if len(model_input) == 0:
            return []  # `dataframe_records: []` has no columns at all: empty is empty, whatever the columns
        if IMAGE_COLUMN not in model_input.columns:
            columns = ", ".join(repr(str(c)) for c in list(model_input.columns)[:10])
            raise ServingError(f"the input needs a string column '{IMAGE_COLUMN}' (base64 JPEG/PNG bytes); "
                               f"got column(s) {columns}")
        values = model_input[IMAGE_COLUMN].tolist()
    elif isinstance(model_input, (list, tuple, pd.Series)):
        values = list(model_input)
    else:
        raise ServingError(f"the input must be a DataFrame with a column '{IMAGE_COLUMN}', "
                           f"got {type(model_input).__name__}")
    if len(values) > limits.max_images:
        raise too_large(f"the request holds {len(values)} images, over the limit of {limits.max_images} per request; "
                        "send them in several requests")
    bad = next((i for i, v in enumerate(values) if not isinstance(v, (str, bytes, bytearray))), None)
    if bad is not None:
        raise ServingError(f"row {bad}: column '{IMAGE_COLUMN}' must hold strings (base64 image bytes), "
                           f"got {type(values[bad]).__name__}", row=bad)
    return values


def empty_result() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series([], dtype=object) for column in OUTPUT_COLUMNS})
