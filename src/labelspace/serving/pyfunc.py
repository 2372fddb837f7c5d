"""The served model: an MLflow pyfunc that takes images and returns ranked labels with distances.

It is rebuilt at load time from plain files, never from pickled modules: a JSON config, a state_dict
of tensors (loaded with weights_only=True), the training label vocabulary with its word vectors and,
optionally, an open vocabulary (more words with vectors) so any of those words can be ranked too.
The model is logged "from code" (a three-line script, no cloudpickle) and the labelspace package
travels inside it (`code_paths`), so a process with only the pip requirements installed can load
it, and the code that serves is the code that trained. Images go through the training path:
`preprocess.decode_resized` (whole image, bilinear, S x S) then `training.to_input`.

Request: a DataFrame with a string column `image` (base64 JPEG/PNG bytes; a path on the server's
disk only where the server sets LABELSPACE_SERVING_READ_FILES=1, since a path lets a caller read any
file the server can); params `top_k` (default 5) and `labels` (rank these words instead of the
training vocabulary, resolved with the training policy: exact, lower case, mean of the words of
"ankle boot" or "t-shirt"). Response: one row per image, `labels` best first and `distances` ||A w||^2
ascending (top_k of them), and the thresholded decision: `decided`, every label whose calibrated
probability passes the threshold chosen on validation, with its `probabilities`.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from PIL import Image, UnidentifiedImageError

import labelspace
from labelspace.data.preprocess import decode_resized
from labelspace.data.word_vectors import resolve_label
from labelspace.evaluation.calibration import calibrated_probabilities
from labelspace.model.bundle import TrainedModel
from labelspace.training.loop import to_input

DEFAULT_TOP_K = 5
BATCH_SIZE = 32
IMAGE_COLUMN = "image"
READ_FILES_ENV = "LABELSPACE_SERVING_READ_FILES"  # "1": an `image` cell may be a path on the server

# Distributions the served model imports, by backbone family; versions are pinned at log time.
_BASE_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "tqdm")
_BACKBONE_REQUIREMENTS = {"efficientnet_lite0": ("efficientnet-lite-pytorch",)}
_TORCHVISION = ("torchvision",)


# ---------------------------------------------------------------- images in, tensors out


def image_to_base64(image: bytes | str | os.PathLike | Image.Image, fmt: str = "PNG") -> str:
    """The `image` column value for a request: base64 of encoded bytes, a file, or a PIL image."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        image = buffer.getvalue()
    elif isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    return base64.b64encode(image).decode("ascii")


def image_bytes(value: Any, row: int = 0) -> bytes:
    """The encoded image in one `image` cell: base64 (optionally a data: URL), raw bytes, or a path."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise MlflowException.invalid_parameter_value(
            f"row {row}: column '{IMAGE_COLUMN}' must hold strings (base64 image bytes or a path), "
            f"got {type(value).__name__}"
        )
    text = value.strip()
    if os.environ.get(READ_FILES_ENV) == "1" and len(text) < 4096 and os.path.isfile(text):
        return Path(text).read_bytes()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MlflowException.invalid_parameter_value(
            f"row {row}: column '{IMAGE_COLUMN}' must hold base64-encoded JPEG/PNG bytes or the path "
            f"of an existing image file; got {text[:40]!r}{'...' if len(text) > 40 else ''}"
        ) from None


def image_array(value: Any, image_size: int, row: int = 0) -> np.ndarray:
    """(S, S, 3) uint8 RGB of one `image` cell, resized exactly as the training arrays were."""
    raw = image_bytes(value, row)
    try:
        return decode_resized(io.BytesIO(raw), image_size)
    except (UnidentifiedImageError, OSError) as e:
        raise MlflowException.invalid_parameter_value(
            f"row {row}: the {len(raw)} bytes are not an image PIL can read ({e}); send JPEG or PNG"
        ) from None


# ---------------------------------------------------------------- the pyfunc


class LabelSpacePyfunc(mlflow.pyfunc.PythonModel):
    """Ranks a vocabulary of words for each image by ||A(image) w||^2, smallest first."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        bundle = TrainedModel.load(artifacts["bundle"])
        if bundle.head != "labelspace":
            raise MlflowException(f"the bundle holds a {bundle.head} head; only the label space is served")
        self.spec = bundle.spec
        self.calibration = bundle.calibration or {}
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = bundle.build().to(self.device)
        self.labels = list(bundle.labels)
        vectors = [np.asarray(bundle.label_vectors, dtype=np.float32)]
        words = list(self.labels)
        self.n_open = 0
        if "open_words" in artifacts:
            open_words = Path(artifacts["open_words"]).read_text(encoding="utf-8").split("\n")
            open_words = [w for w in open_words if w]
            vectors.append(np.load(artifacts["open_vectors"]))
            words += open_words
            self.n_open = len(open_words)
        self.vectors = torch.from_numpy(np.concatenate(vectors).astype(np.float32)).to(self.device)  # (V, d)
        self.row_of: dict[str, int] = {}
        for row, word in enumerate(words):
            self.row_of.setdefault(word, row)  # a training label wins over the same open word

    def _vocabulary(self, requested: list[str] | None) -> tuple[list[str], torch.Tensor]:
        if not requested:
            return list(self.labels), self.vectors[: len(self.labels)]
        vectors, unknown = [], []
        for word in requested:
            vector = self._resolve(str(word))
            if vector is None:
                unknown.append(word)
            else:
                vectors.append(vector)
        if unknown:
            raise MlflowException.invalid_parameter_value(
                f"no word vector bundled for {len(unknown)} requested label(s): "
                f"{', '.join(repr(w) for w in unknown)}. This model can rank its {len(self.labels)} training "
                f"labels and {self.n_open} open-vocabulary words; drop these labels or log the model with an "
                "open vocabulary that covers them."
            )
        return [str(w) for w in requested], torch.stack(vectors)

    def _resolve(self, word: str) -> torch.Tensor | None:
        """A requested label's vector under the training policy (labelspace.data.word_vectors)."""
        row = self.row_of.get(word)
        if row is not None:
            return self.vectors[row]
        vector, _ = resolve_label(_BundledVocabulary(self.row_of, self.vectors), word)
        return None if vector is None else torch.as_tensor(vector, dtype=torch.float32, device=self.device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = params or {}
        top_k = int(params.get("top_k", DEFAULT_TOP_K))
        if top_k < 1:
            raise MlflowException.invalid_parameter_value(f"top_k must be at least 1, got {top_k}")
        names, W = self._vocabulary(list(params.get("labels") or []))  # W (L, d)
        values = _image_column(model_input)
        top_k = min(top_k, len(names))

        ranked_labels, ranked_distances, decided, decided_probabilities = [], [], [], []
        for start in range(0, len(values), BATCH_SIZE):
            chunk = values[start : start + BATCH_SIZE]
            arrays = np.stack([image_array(v, self.spec.image_size, start + i) for i, v in enumerate(chunk)])
            x = to_input(arrays, self.model, self.device)  # (B, 3, S, S), normalised as in training
            with torch.inference_mode():
                D = self.model.distances(x, W).float()  # (B, L)
            best = torch.topk(D, top_k, dim=1, largest=False, sorted=True)
            for idx, dist in zip(best.indices.cpu().tolist(), best.values.cpu().tolist(), strict=True):
                ranked_labels.append([names[i] for i in idx])
                ranked_distances.append([float(v) for v in dist])
            for labels, probabilities in self._decide(D.cpu().numpy(), names):
                decided.append(labels)
                decided_probabilities.append(probabilities)
        return pd.DataFrame({"labels": ranked_labels, "distances": ranked_distances,
                             "decided": decided, "probabilities": decided_probabilities})

    def _decide(self, D: np.ndarray, names: list[str]) -> list[tuple[list[str], list[float]]]:
        """The thresholded decision: every label whose calibrated probability passes the threshold
        chosen on validation, most probable first; nothing when the model carries no calibration."""
        if not self.calibration:
            return [([], []) for _ in range(len(D))]
        p = calibrated_probabilities(-D, self.calibration)  # score = -D
        out = []
        for row in p:
            keep = np.flatnonzero(row >= self.calibration["probability_threshold"])
            keep = keep[np.argsort(-row[keep], kind="stable")]
            out.append(([names[i] for i in keep], [float(row[i]) for i in keep]))
        return out


class _BundledVocabulary:
    """The bundled words seen through the two members of gensim's KeyedVectors the policy reads."""

    def __init__(self, row_of: dict[str, int], vectors: torch.Tensor) -> None:
        self.key_to_index, self._vectors = row_of, vectors

    def __getitem__(self, word: str) -> np.ndarray:
        return self._vectors[self.key_to_index[word]].cpu().numpy()


def _image_column(model_input: Any) -> list[Any]:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise MlflowException.invalid_parameter_value(
                f"the input needs a string column '{IMAGE_COLUMN}' (base64 JPEG/PNG bytes or a path); "
                f"got columns {list(model_input.columns)}"
            )
        return model_input[IMAGE_COLUMN].tolist()
    if isinstance(model_input, (list, tuple, pd.Series)):
        return list(model_input)
    raise MlflowException.invalid_parameter_value(
        f"the input must be a DataFrame with a column '{IMAGE_COLUMN}', got {type(model_input).__name__}"
    )


# ---------------------------------------------------------------- logging the model

# MLflow "models from code": the model is this script, not a cloudpickle of a Python object, so the
# bundle holds no pickle at all and loading it runs only the labelspace code that travels with it.
_MODEL_CODE = """\
# The labelspace pyfunc, rebuilt at load time from the bundled config, state_dict and vectors.
import mlflow

from labelspace.serving.pyfunc import LabelSpacePyfunc

mlflow.models.set_model(LabelSpacePyfunc())
"""


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, IMAGE_COLUMN)]),
        outputs=Schema([ColSpec(Array(DataType.string), "labels"), ColSpec(Array(DataType.double), "distances"),
                        ColSpec(Array(DataType.string), "decided"), ColSpec(Array(DataType.double), "probabilities")]),
        params=ParamSchema([
            ParamSpec("top_k", DataType.long, DEFAULT_TOP_K),
            ParamSpec("labels", DataType.string, [], shape=(-1,)),  # empty = the training vocabulary
        ]),
    )


def serving_requirements(backbone: str) -> list[str]:
    """Pinned pip requirements of the served model (labelspace itself travels as code)."""
    names = _BASE_REQUIREMENTS + _BACKBONE_REQUIREMENTS.get(backbone, _TORCHVISION)
    pinned = []
    for name in names:
        try:
            version = metadata.version(name).split("+")[0]  # torch 2.x+cpu is not on PyPI as such
        except metadata.PackageNotFoundError:
            pinned.append(name)
            continue
        pinned.append(f"{name}=={version}")
    return pinned


def write_model_artifacts(
    folder: str | os.PathLike,
    model: TrainedModel,
    open_vocabulary: tuple[list[str], np.ndarray] | None = None,
) -> dict[str, str]:
    """Write the files LabelSpacePyfunc loads (the model bundle, and the open vocabulary when given);
    returns the `artifacts` mapping for log_model."""
    folder = Path(folder)
    _checked_vectors("label_vectors", model.labels, model.label_vectors, model.spec.d)
    if len(set(model.labels)) != len(model.labels):
        raise ValueError("labels must be unique")
    files = {"bundle": model.save(folder / "bundle")}
    if open_vocabulary is not None:
        words, vectors = open_vocabulary
        vectors = _checked_vectors("open_vocabulary vectors", words, vectors, model.spec.d)
        if any(not w or any(c.isspace() for c in w) for w in words):
            raise ValueError("open_vocabulary words must be single non-empty tokens (one per line in the bundle)")
        files["open_words"] = folder / "open_words.txt"
        files["open_vectors"] = folder / "open_vectors.npy"
        files["open_words"].write_text("\n".join(words) + "\n", encoding="utf-8")
        np.save(files["open_vectors"], vectors)
    return {key: str(path) for key, path in files.items()}


def _checked_vectors(what: str, words: list[str], vectors: np.ndarray, d: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(words), d):
        raise ValueError(f"{what} must be ({len(words)}, {d}) to match {len(words)} words and the model's d={d}; "
                         f"got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return vectors


def log_labelspace_model(
    model: TrainedModel,
    *,
    name: str = "model",
    open_vocabulary: tuple[list[str], np.ndarray] | None = None,
    input_example_image: bytes | None = None,
):
    """Log the pyfunc into the active MLflow run; returns mlflow's ModelInfo (its `model_uri` registers).

    MLflow runs the input example through the logged model once, so a model that cannot serve is
    reported at logging time, not at the first request.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_labelspace_model needs an active MLflow run: call it inside mlflow.start_run()")
    if model.head != "labelspace":
        raise ValueError(f"only the label space is served, not the {model.head} head")
    if input_example_image is None:
        size = model.spec.image_size
        blank = Image.new("RGB", (size, size), (128, 128, 128))
        input_example_image = base64.b64decode(image_to_base64(blank))
    example = pd.DataFrame({IMAGE_COLUMN: [image_to_base64(input_example_image)]})
    with tempfile.TemporaryDirectory(prefix="labelspace-model-") as tmp:
        artifacts = write_model_artifacts(tmp, model, open_vocabulary)
        entry = Path(tmp) / "labelspace_model.py"
        entry.write_text(_MODEL_CODE, encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(entry),
            artifacts=artifacts,
            signature=model_signature(),
            input_example=example,
            code_paths=[str(Path(labelspace.__file__).resolve().parent)],
            pip_requirements=serving_requirements(model.spec.backbone),
        )
