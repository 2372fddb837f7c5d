"""The served model: an MLflow pyfunc that takes images and returns ranked labels with distances.

It is rebuilt at load time from plain files, never from pickled modules: a JSON config, a state_dict
of tensors (loaded with weights_only=True), the training label vocabulary with its word vectors and,
optionally, an open vocabulary (more words with vectors) so any of those words can be ranked too.
The model is logged "from code" (a three-line script, no cloudpickle) and the labelspace package
travels inside it (`code_paths`), so a process with only the pip requirements installed can load
it, and the code that serves is the code that trained. Images go through the training path:
`preprocess.decode_resized` (whole image, bilinear, S x S) then `training.to_input`.

Request: a DataFrame with a string column `image` (base64 JPEG/PNG bytes; a path only where the
server allows it, serving.limits); params `top_k` (an integer of at least 1, default 5, clipped to the
vocabulary) and `labels` (rank these words instead of the training labels, resolved with the training
policy: exact, lower case, mean of the words of "ankle boot" or "t-shirt"; repeated labels count
once, the first occurrence keeps its place). Response: one row per image, `labels` best first and
`distances` ||A w||^2 ascending (top_k of them); the thresholded decision `decided`, every calibrated
label whose probability passes the threshold chosen on validation, with its `probabilities`; and
`uncalibrated`, the requested labels the decision does not cover.

Every bundled word is prepared for the network once, at load (model.networks.Vocabulary: centred,
unit length, and for standardized open words its reference statistics), and the last
VOCABULARIES_KEPT distinct requested vocabularies are remembered by their words, so a request costs
the network, the distances (k d multiply-adds per image and word) and the top-k.

The decision is made only where the validation calibration holds: for the training labels (a
requested word counts as one when its vector is a training label's, e.g. "Dress" for "dress").
Open-vocabulary words are ranked, never decided: Platt scaling was fitted on the training labels'
distances and says nothing about a word the model never trained on. A model without a calibration
decides nothing, and every requested label is `uncalibrated`.

Limits (params.yaml `serving`, written into the model at log time, overridable per variable at serve
time; serving.limits): bytes and pixels per image, pixels, images and labels per request. Every
request error is a ServingError (serving.errors): 400, or 413 for a limit, with a message that names
the row or param at fault and holds no traceback, server path or echo of the input.

About 410 lines: loading, request checks, vocabulary resolution with its memory, ranking and the
calibrated decision are one served model, checked together by tests/test_serving*.py.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

import labelspace
from labelspace.config import ServingConfig
from labelspace.data.word_vectors import resolve_label
from labelspace.evaluation.calibration import calibrated_probabilities, label_offsets
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import to_input
from labelspace.model.networks import Vocabulary
from labelspace.serving.errors import ServingError, guard_scoring_server, in_scoring_server, too_large
from labelspace.serving.images import IMAGE_COLUMN, decode, image_to_base64, read_image
from labelspace.serving.limits import READ_FILES_ENV, file_root, serving_limits
from labelspace.serving.request import DEFAULT_TOP_K, OUTPUT_COLUMNS, empty_result, image_values, parse_params

__all__ = ["IMAGE_COLUMN", "OUTPUT_COLUMNS", "READ_FILES_ENV", "LabelSpacePyfunc", "image_to_base64",
           "log_labelspace_model", "model_signature", "parse_params", "write_model_artifacts"]

BATCH_SIZE = 32  # images decoded and run through the network at once
VOCABULARIES_KEPT = 8  # distinct requested vocabularies remembered, resolved and prepared (at most 20,000 words each)

# Distributions the served model imports, by backbone family; versions are pinned at log time.
_BASE_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "tqdm", "pyyaml")
_BACKBONE_REQUIREMENTS = {"efficientnet_lite0": ("efficientnet-lite-pytorch",)}
_TORCHVISION = ("torchvision",)


# ---------------------------------------------------------------- the pyfunc


class LabelSpacePyfunc(mlflow.pyfunc.PythonModel):
    """Ranks a vocabulary of words for each image by ||A(image) w||^2, smallest first."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        bundle = TrainedModel.load(artifacts["bundle"])
        if bundle.head != "labelspace":
            raise MlflowException(f"the bundle holds a {bundle.head} head; only the label space is served")
        self.limits = serving_limits(getattr(context, "model_config", None))
        self.file_root = file_root()
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
        # A requested word whose vector is a training label's gets that label's calibrated decision.
        self.training_vectors = {row.tobytes(): i for i, row in enumerate(self.vectors[: len(self.labels)].cpu().numpy())}
        self.row_label = np.array([self.training_vectors.get(row.tobytes(), -1) for row in self.vectors.cpu().numpy()],
                                  dtype=np.int64)  # (V,) the training label each bundled row is, -1: none
        # Every bundled word prepared once (for standardized open words, its statistics over the
        # reference images): a request for bundled words gathers rows (model.networks.Vocabulary).
        with torch.no_grad():
            self.bundled = self.model.vocabulary(self.vectors)
        self._requested: OrderedDict[tuple[str, ...], _Requested] = OrderedDict()  # LRU, by the requested words
        self._requested_lock = threading.Lock()
        if in_scoring_server():
            guard_scoring_server(self.check_request)

    # --- the request -----------------------------------------------------------------------------

    def check_request(self, model_input: Any, params: Any) -> pd.DataFrame | None:
        """The REST door's check, before MLflow's (serving.errors): raises ServingError for a bad
        request; the (empty) response for a request with no images; None to go on and predict."""
        parse_params(params, self.limits, strict=True)
        return None if image_values(model_input, self.limits) else empty_result()

    def vocabulary(self, requested: list[str]) -> _Requested:
        """The requested words (deduplicated; [] = the training labels) resolved and prepared for
        ranking: remembered for the last VOCABULARIES_KEPT distinct requests, by the words in their
        order (a vocabulary with an unknown word raises and is not remembered)."""
        key = tuple(requested)
        with self._requested_lock:
            found = self._requested.get(key)
            if found is not None:
                self._requested.move_to_end(key)
                return found
        found = self._resolved(requested)
        with self._requested_lock:
            self._requested[key] = found
            while len(self._requested) > VOCABULARIES_KEPT:
                self._requested.popitem(last=False)
        return found

    def _resolved(self, requested: list[str]) -> _Requested:
        n = len(self.labels)
        if not requested:
            return _Requested.of(list(self.labels), self.bundled.rows(torch.arange(n)), np.arange(n))
        # A bundled word (exact, or its lower case) is a row of the bundled table; any other goes
        # through the training policy (the mean of the words of "ankle boot") and is prepared here.
        rows = [self.row_of.get(word) for word in requested]
        extra, extra_vectors, unknown = [], [], []
        for i, row in enumerate(rows):
            if row is not None:
                continue
            word = requested[i]
            rows[i] = self.row_of.get(word.lower())
            if rows[i] is not None:
                continue
            vector, _ = resolve_label(_BundledVocabulary(self.row_of, self.vectors), word)
            if vector is None:
                unknown.append(word)
            else:
                extra.append(i)
                extra_vectors.append(np.asarray(vector, dtype=np.float32))
        if unknown:
            shown = ", ".join(repr(w if len(w) <= 40 else w[:37] + "...") for w in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise ServingError(
                f"no word vector bundled for {len(unknown)} requested label(s): {shown}{more}. This model can rank its "
                f"{n} training labels and {self.n_open} open-vocabulary words; drop these labels or log the model "
                "with an open vocabulary that covers them."
            )
        bundled = [i for i, row in enumerate(rows) if row is not None]
        index = np.array([rows[i] for i in bundled], dtype=np.int64)
        words = self.bundled.rows(torch.from_numpy(index))
        calibrated = np.empty(len(requested), dtype=np.int64)
        calibrated[bundled] = self.row_label[index]
        if extra:
            matrix = np.stack(extra_vectors)
            calibrated[extra] = [self.training_vectors.get(row.tobytes(), -1) for row in matrix]
            with torch.no_grad():
                words = Vocabulary.cat([words, self.model.vocabulary(torch.from_numpy(matrix).to(self.device))])
            # back in the request's order: the bundled words, then the others, were concatenated
            order = np.empty(len(requested), dtype=np.int64)
            order[bundled + extra] = np.arange(len(requested))
            words = words.rows(torch.from_numpy(order))
        return _Requested.of(list(requested), words, calibrated)

    # --- predict ---------------------------------------------------------------------------------

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        top_k, requested = parse_params(params, self.limits)
        values = image_values(model_input, self.limits)
        vocabulary = self.vocabulary(requested)
        names = vocabulary.names
        if not values:
            return empty_result()
        top_k = min(top_k, len(names))
        # Every header before any pixel: a request over its pixel budget costs no decoding.
        images = [read_image(v, row, self.limits, self.file_root) for row, v in enumerate(values)]
        total = sum(image.pixels for image in images)
        if total > self.limits.max_request_pixels:
            raise too_large(f"the request's {len(images)} images hold {total} pixels, over the limit of "
                            f"{self.limits.max_request_pixels} per request; send fewer or smaller images")

        # The decision covers the calibrated labels only (none without a calibration).
        decide = self._decision(vocabulary)
        uncalibrated = vocabulary.uncalibrated if self.calibration else names
        out: dict[str, list] = {column: [] for column in OUTPUT_COLUMNS}
        for start in range(0, len(images), BATCH_SIZE):
            arrays = np.stack([decode(image, self.spec.image_size) for image in images[start : start + BATCH_SIZE]])
            x = to_input(arrays, self.model, self.device)  # (B, 3, S, S), normalised as in training
            with torch.inference_mode():
                D = self.model.distances(x, vocabulary.words).float()  # (B, L)
                best = torch.topk(D, top_k, dim=1, largest=False, sorted=True)
                covered = None if decide is None else D[:, decide[0]].cpu().numpy()
            for idx, dist in zip(best.indices.cpu().tolist(), best.values.cpu().tolist(), strict=True):
                out["labels"].append([names[i] for i in idx])
                out["distances"].append(dist)
            for labels, probabilities in self._decide(covered, decide, len(arrays), names):
                out["decided"].append(labels)
                out["probabilities"].append(probabilities)
                out["uncalibrated"].append(list(uncalibrated))
        return pd.DataFrame(out)

    def _decision(self, vocabulary: _Requested) -> tuple[torch.Tensor, np.ndarray, np.ndarray] | None:
        """(the calibrated columns, as a tensor and an array, their offsets); None when nothing is decided."""
        columns = vocabulary.calibrated_columns
        if not self.calibration or columns.size == 0:
            return None
        offsets = label_offsets(self.calibration, vocabulary.calibrated[columns].tolist())
        return torch.from_numpy(columns).to(self.device), columns, offsets

    def _decide(self, covered: np.ndarray | None, decide, n_images: int,
                names: list[str]) -> list[tuple[list[str], list[float]]]:
        """The thresholded decision over the calibrated labels (`covered`: their D, (B, C)): every one
        whose probability passes the threshold chosen on validation, most probable first; nothing
        without a calibration."""
        if decide is None:
            return [([], []) for _ in range(n_images)]
        _, columns, offsets = decide
        p = calibrated_probabilities(-covered, self.calibration, offsets)  # score = -D
        out = []
        for row in p:
            keep = np.flatnonzero(row >= self.calibration["probability_threshold"])
            keep = keep[np.argsort(-row[keep], kind="stable")]
            out.append(([names[columns[i]] for i in keep], row[keep].tolist()))
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class _Requested:
    """A request's vocabulary, resolved and prepared once (LabelSpacePyfunc.vocabulary)."""

    names: list[str]  # (L,) as requested
    words: Vocabulary  # their vectors as the model measures them
    calibrated: np.ndarray  # (L,) the training label each is; -1: none, the calibration does not cover it
    calibrated_columns: np.ndarray  # the positions of those that are one
    uncalibrated: list[str]  # the names of the others

    @classmethod
    def of(cls, names: list[str], words: Vocabulary, calibrated: np.ndarray) -> _Requested:
        columns = np.flatnonzero(calibrated >= 0)
        return cls(names, words, calibrated, columns, [names[i] for i in np.flatnonzero(calibrated < 0)])


class _BundledVocabulary:
    """The bundled words seen through the two members of gensim's KeyedVectors the policy reads."""

    def __init__(self, row_of: dict[str, int], vectors: torch.Tensor) -> None:
        self.key_to_index, self._vectors = row_of, vectors

    def __getitem__(self, word: str) -> np.ndarray:
        return self._vectors[self.key_to_index[word]].cpu().numpy()


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
                        ColSpec(Array(DataType.string), "decided"), ColSpec(Array(DataType.double), "probabilities"),
                        ColSpec(Array(DataType.string), "uncalibrated")]),
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


def _encoded(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    serving: ServingConfig | None = None,
):
    """Log the pyfunc into the active MLflow run; returns mlflow's ModelInfo (its `model_uri` registers).

    `serving` (config.ServingConfig; default: params.yaml's `serving` section, found as load_config
    finds the file) is written into the model as its `model_config`: the limits it serves under.
    MLflow runs the input example through the logged model once, so a model that cannot serve is
    reported at logging time, not at the first request.
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_labelspace_model needs an active MLflow run: call it inside mlflow.start_run()")
    if model.head != "labelspace":
        raise ValueError(f"only the label space is served, not the {model.head} head")
    if serving is None:
        from labelspace.config import load_config

        try:
            serving = load_config().serving
        except FileNotFoundError as e:
            raise FileNotFoundError(f"log_labelspace_model needs the serving limits: pass serving=ServingConfig(...) "
                                    f"or run inside a project ({e})") from None
    problems = serving.check()
    if problems:
        raise ValueError(f"serving limits: {next(iter(problems))} must be {next(iter(problems.values()))}")
    if input_example_image is None:
        size = model.spec.image_size
        input_example_image = _encoded(Image.new("RGB", (size, size), (128, 128, 128)))
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
            model_config=dataclasses.asdict(serving),
            code_paths=[str(Path(labelspace.__file__).resolve().parent)],
            pip_requirements=serving_requirements(model.spec.backbone),
        )
