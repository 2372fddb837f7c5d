"""The served pyfunc, logged to a real sqlite MLflow backend and loaded back in this process: ranking,
decisions only where the calibration holds, params and limits checked, files only under the root."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image
from support import labelspace_bundle, project_config

from labelspace.data.preprocess import decode_resized
from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.lifecycle.tracking import ensure_experiment
from labelspace.model.bundle import TrainedModel
from labelspace.model.inference import to_input
from labelspace.serving.errors import ServingError
from labelspace.serving.pyfunc import image_to_base64, log_labelspace_model, write_model_artifacts

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LABELS = ["dress", "shirt", "bag", "coat"]
OPEN_VOCABULARY_SIZE = 10_000  # GloVe's 10k most frequent words include 'jacket' and 'shoe'
# Threshold 0: every label the calibration covers passes, so what is decided shows what is covered.
PASS_ALL = {"method": "platt", "slope": 3.0, "intercept": 0.5, "probability_threshold": 0.0}
COLUMNS = ["labels", "distances", "decided", "probabilities", "uncalibrated"]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but whose pixel data is a few bytes: only a reader that
    checks the header before decoding answers it with the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def fashion_jpeg(index: int = 0) -> bytes:
    """A real Fashion-MNIST test image, upscaled to 64x64 RGB and encoded as JPEG."""
    if not FASHION_TEST_IMAGES.is_file():
        pytest.skip(f"{FASHION_TEST_IMAGES} missing: apt-get install dataset-fashion-mnist (make system-packages)")
    with gzip.open(FASHION_TEST_IMAGES, "rb") as f:
        f.read(16 + index * 28 * 28)  # idx3 header, then earlier images
        pixels = np.frombuffer(f.read(28 * 28), dtype=np.uint8).reshape(28, 28)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").resize((64, 64), Image.BILINEAR).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        export_glove(tmp / "glove.bin", limit=OPEN_VOCABULARY_SIZE)
        kv = load_word_vectors(tmp / "glove.bin")
        vectors = resolve_label_vectors(kv, LABELS)
        bundle, model = labelspace_bundle(vectors.labels, vectors.matrix, calibration=PASS_ALL)
        with mlflow.start_run(experiment_id=ensure_experiment("serving-test")):
            info = log_labelspace_model(
                bundle,
                open_vocabulary=(list(kv.index_to_key), kv.vectors),
                input_example_image=fashion_jpeg(1),
            )
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp / "local"))
        jpeg = fashion_jpeg(0)
        yield SimpleNamespace(model=model, bundle=bundle, kv=kv, vectors=vectors, info=info, pyfunc=pyfunc, jpeg=jpeg,
                              request=pd.DataFrame({"image": [image_to_base64(jpeg)] * 3}), tmp=tmp, local=local)


def reloaded(served, monkeypatch, **env):
    """The served model loaded again in a process whose environment has `env` (what a server sets)."""
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return mlflow.pyfunc.load_model(served.local)


def raised(pyfunc, frame, params=None) -> ServingError:
    with pytest.raises(ServingError) as error:
        pyfunc.predict(frame, params=params)
    return error.value


def test_predict_ranks_the_training_labels_by_ascending_distance(served):
    out = served.pyfunc.predict(served.request)
    assert list(out.columns) == COLUMNS
    assert len(out) == 3
    for labels, distances in zip(out["labels"], out["distances"], strict=True):
        assert sorted(labels) == sorted(LABELS)  # default top_k 5 clipped to the 4 labels there are
        assert list(distances) == sorted(distances) and all(d >= 0 for d in distances)


def model_input(served) -> torch.Tensor:
    """The served JPEG as the training code feeds the model: preprocess's resize, training's to_input."""
    array = np.stack([decode_resized(io.BytesIO(served.jpeg), 64)])  # (1, 64, 64, 3) uint8
    return to_input(array, served.model, torch.device("cpu"))


def test_distances_are_the_models_own(served):
    """The rebuilt model (state_dict + bundled vectors) reproduces ||A w||^2 of the trained one."""
    out = served.pyfunc.predict(served.request.iloc[:1])
    x = model_input(served)
    with torch.no_grad():
        expected = served.model.distances(x, torch.from_numpy(served.vectors.matrix))[0]
    by_label = dict(zip(out["labels"][0], out["distances"][0], strict=True))
    got = torch.tensor([by_label[label] for label in LABELS])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_top_k_and_open_vocabulary_labels(served):
    out = served.pyfunc.predict(served.request, params={"top_k": 2, "labels": ["jacket", "Shirt", "shoe", "dress"]})
    for labels, distances in zip(out["labels"], out["distances"], strict=True):
        assert len(labels) == 2 and len(distances) == 2
        assert set(labels) <= {"jacket", "Shirt", "shoe", "dress"}
        assert distances[0] <= distances[1]
    # 'jacket' was never a training label: its distance comes from the bundled open vocabulary.
    everything = served.pyfunc.predict(served.request.iloc[:1], params={"top_k": 10, "labels": ["jacket"]})
    W = torch.from_numpy(served.kv["jacket"][None, :].copy())
    x = model_input(served)
    with torch.no_grad():
        expected = float(served.model.distances(x, W)[0, 0])
    assert everything["labels"][0] == ["jacket"]
    assert everything["distances"][0][0] == pytest.approx(expected, rel=1e-4)


def test_unknown_labels_are_a_clear_error(served):
    with pytest.raises(MlflowException) as raised:
        served.pyfunc.predict(served.request, params={"labels": ["dress", "zzqxv", "qqqyy"]})
    message = str(raised.value)
    assert "'zzqxv'" in message and "'qqqyy'" in message and "'dress'" not in message
    assert f"{OPEN_VOCABULARY_SIZE} open-vocabulary words" in message


def test_a_file_path_only_under_the_servers_image_folder_and_a_data_url(served, tmp_path, monkeypatch):
    root, elsewhere = tmp_path / "images", tmp_path / "private"
    root.mkdir()
    elsewhere.mkdir()
    (root / "garment.jpg").write_bytes(served.jpeg)
    (elsewhere / "secret.jpg").write_bytes(served.jpeg)
    (root / "link.jpg").symlink_to(elsewhere / "secret.jpg")
    (root / "huge.jpg").write_bytes(served.jpeg + b"\0" * 5000)
    data_url = "data:image/jpeg;base64," + image_to_base64(served.jpeg)
    request = pd.DataFrame({"image": ["garment.jpg", str(root / "garment.jpg"), data_url]})

    monkeypatch.delenv("LABELSPACE_SERVING_READ_FILES", raising=False)
    error = raised(served.pyfunc, request)  # a caller cannot make the server read its files by default
    assert error.message == "row 0: column 'image' must hold base64-encoded JPEG/PNG bytes" and error.status == 400

    with pytest.raises(ValueError, match="LABELSPACE_SERVING_READ_FILES=1 needs LABELSPACE_SERVING_ROOT"):
        reloaded(served, monkeypatch, LABELSPACE_SERVING_READ_FILES=1)
    pyfunc = reloaded(served, monkeypatch, LABELSPACE_SERVING_READ_FILES=1, LABELSPACE_SERVING_ROOT=root,
                      LABELSPACE_SERVING_MAX_IMAGE_BYTES=len(served.jpeg) + 100)
    out = pyfunc.predict(request)
    assert out["labels"][0] == out["labels"][1] == out["labels"][2]  # relative, absolute under the root, base64
    np.testing.assert_allclose(out["distances"][0], out["distances"][2], rtol=1e-6)

    # Outside the root, through a link, missing, a folder: one answer, saying nothing of what is there.
    same = "row 0: column 'image' must hold base64-encoded JPEG/PNG bytes or the path of an image file under " \
           "the server's image folder"
    for path in (elsewhere / "secret.jpg", "../private/secret.jpg", "link.jpg", elsewhere / "none.jpg", "none.jpg",
                 root, "/etc/passwd"):
        error = raised(pyfunc, pd.DataFrame({"image": [str(path)]}))
        assert (error.message, error.status) == (same, 400), path
    error = raised(pyfunc, pd.DataFrame({"image": ["huge.jpg"]}))  # under the root, over the size cap
    assert error.status == 413 and "over the limit of" in error.message and "bytes per image" in error.message


def test_decisions_only_for_the_labels_the_calibration_was_fitted_on(served):
    """Threshold 0: every covered label passes, so `decided` shows what the calibration covers."""
    default = served.pyfunc.predict(served.request.iloc[:1])
    assert sorted(default["decided"][0]) == sorted(LABELS) and list(default["uncalibrated"][0]) == []
    mixed = served.pyfunc.predict(served.request.iloc[:1], params={"labels": ["jacket", "Shirt", "shoe", "dress"]})
    assert sorted(mixed["decided"][0]) == ["Shirt", "dress"]  # 'Shirt' has the vector of the training label 'shirt'
    assert list(mixed["uncalibrated"][0]) == ["jacket", "shoe"]  # ranked, never decided
    assert set(mixed["labels"][0]) == {"jacket", "Shirt", "shoe", "dress"}
    open_only = served.pyfunc.predict(served.request.iloc[:1], params={"labels": ["hat", "jacket"]})
    assert list(open_only["decided"][0]) == [] and list(open_only["probabilities"][0]) == []
    # Without a calibration nothing is decided, and every requested label says so.
    bare = mlflow.pyfunc.load_model(served.local)
    bare.unwrap_python_model().calibration = {}
    out = bare.predict(served.request.iloc[:1])
    assert list(out["decided"][0]) == [] and sorted(out["uncalibrated"][0]) == sorted(LABELS)


def test_repeated_labels_count_once_in_their_first_place(served):
    out = served.pyfunc.predict(served.request.iloc[:1], params={"labels": ["shoe", "dress", "shoe", "dress", "bag"],
                                                                 "top_k": 10})
    assert sorted(out["labels"][0]) == ["bag", "dress", "shoe"] and len(out["distances"][0]) == 3
    assert sorted(out["decided"][0]) == ["bag", "dress"] and list(out["uncalibrated"][0]) == ["shoe"]


def test_params_are_checked_with_messages_that_name_them(served):
    cases = {
        "params.top_k must be an integer of at least 1 (default 5), got null": {"top_k": None},
        "params.top_k must be an integer of at least 1 (default 5), got 0": {"top_k": 0},
        "params.labels[1] must be a string, got 5": {"labels": ["dress", 5]},
    }
    for message, params in cases.items():
        try:
            served.pyfunc.predict(served.request.iloc[:1], params=params)
        except MlflowException as e:  # MLflow's own check may answer first in process; ours in REST (test_serving_rest)
            assert e.message == message or "Invalid parameters" in e.message, (params, e.message)
        else:
            raise AssertionError(f"{params} was accepted")
    from labelspace.serving.request import parse_params

    limits = served.pyfunc.unwrap_python_model().limits
    for params, message in (({"top_k": "abc"}, "got 'abc'"), ({"labels": 5}, "got 5"), ({"labels": None}, "got null"),
                            ({"top_k": True}, "got true"), (["x"], "params must be a JSON object")):
        with pytest.raises(ServingError, match=message):
            parse_params(params, limits, strict=True)
    with pytest.raises(ServingError, match="unknown param\\(s\\) 'topk'"):
        parse_params({"topk": 3}, limits, strict=True)
    assert parse_params({"top_k": 2, "labels": ["a", "b", "a"]}, limits) == (2, ["a", "b"])


def test_an_empty_request_is_an_empty_answer(served):
    for frame in (pd.DataFrame({"image": []}), pd.DataFrame()):
        out = served.pyfunc.unwrap_python_model().predict(None, frame)
        assert list(out.columns) == COLUMNS and len(out) == 0


def test_limits_are_read_from_the_header_before_decoding(served, monkeypatch):
    """Headers saying 13000x13000 (the issue's 169 MP) and 30000x30000 (over PIL's bomb limit) over a few
    bytes of pixels: the answer is the size (413), which only a check before decoding can give."""
    error = raised(served.pyfunc, pd.DataFrame({"image": [image_to_base64(served.jpeg),
                                                          image_to_base64(png_header(13000, 13000))]}))
    assert error.status == error.get_http_status_code() == 413 and error.row == 1
    assert error.message == "row 1: the image is 13000x13000 = 169000000 pixels, over the limit of 40000000 pixels " \
                            "per image"
    error = raised(served.pyfunc, pd.DataFrame({"image": [image_to_base64(png_header(30000, 30000))]}))
    assert error.status == 413 and "decompression bomb" in error.message
    error = raised(served.pyfunc, pd.DataFrame({"image": [image_to_base64(png_header(4000, 4000))]}))
    assert error.status == 400 and error.message == "row 0: the 4000x4000 image cannot be decoded (truncated or " \
                                                    "corrupt data)"  # within the limit: decoded, and it is broken

    # An operator's overrides, at load time: pixels per request, images per request, labels per request.
    pyfunc = reloaded(served, monkeypatch, LABELSPACE_SERVING_MAX_REQUEST_PIXELS=2 * 64 * 64,
                      LABELSPACE_SERVING_MAX_IMAGE_PIXELS=64 * 64, LABELSPACE_SERVING_MAX_IMAGES=5,
                      LABELSPACE_SERVING_MAX_LABELS=3)
    assert len(pyfunc.predict(served.request.iloc[:2])) == 2
    error = raised(pyfunc, served.request)  # three 64x64 images
    assert error.status == 413 and error.row is None
    assert error.message == "the request's 3 images hold 12288 pixels, over the limit of 8192 per request; send " \
                            "fewer or smaller images"
    error = raised(pyfunc, pd.DataFrame({"image": [image_to_base64(served.jpeg)] * 6}))
    assert error.status == 413 and "holds 6 images, over the limit of 5 per request" in error.message
    error = raised(pyfunc, served.request.iloc[:1], {"labels": ["a", "b", "c", "d"]})
    assert error.status == 413 and "4 labels, over the limit of 3" in error.message
    with pytest.raises(ValueError, match="LABELSPACE_SERVING_MAX_IMAGES = 0 must be at least 1"):
        reloaded(served, monkeypatch, LABELSPACE_SERVING_MAX_IMAGES=0)
    with pytest.raises(ValueError, match="LABELSPACE_SERVING_MAX_IMAGES='many' is not an integer"):
        reloaded(served, monkeypatch, LABELSPACE_SERVING_MAX_IMAGES="many")


def test_requested_labels_follow_the_training_policy(served):
    """'Dress' (case) and 'bag dress' (mean of words) resolve as at training time."""
    out = served.pyfunc.predict(served.request, params={"labels": ["Dress", "bag dress", "dress"], "top_k": 3})
    distances = dict(zip(out["labels"][0], out["distances"][0], strict=True))
    assert distances["Dress"] == pytest.approx(distances["dress"], rel=1e-6)
    assert set(distances) == {"Dress", "bag dress", "dress"}


def test_bad_images_name_the_row_and_echo_nothing(served):
    garbage = pd.DataFrame({"image": [image_to_base64(served.jpeg), "not base64 !!"]})
    error = raised(served.pyfunc, garbage)
    assert (error.message, error.row, error.status) == ("row 1: column 'image' must hold base64-encoded JPEG/PNG bytes",
                                                        1, 400)
    error = raised(served.pyfunc, pd.DataFrame({"image": [image_to_base64(b"plain text, not a picture")]}))
    assert error.message == "row 0: the 25 bytes are not a JPEG, PNG, WebP, GIF or BMP image"
    error.message = "Failed to predict data '<the frame>'. \nError: " + error.message  # what MLflow's server does
    assert error.message == "row 0: the 25 bytes are not a JPEG, PNG, WebP, GIF or BMP image"


def test_bundle_holds_tensors_and_vectors_not_pickles(served):
    local = Path(mlflow.artifacts.download_artifacts(served.info.model_uri, dst_path=str(served.tmp / "dl")))
    assert not list(local.rglob("*.pkl"))
    state = torch.load(local / "artifacts" / "bundle" / "weights.pt", map_location="cpu", weights_only=True)
    assert state["head.weight"].shape == (4 * 50, 1280)
    assert TrainedModel.load(local / "artifacts" / "bundle").spec == served.bundle.spec  # the one bundle format
    assert (local / "code" / "labelspace" / "serving" / "pyfunc.py").is_file()  # the code travels with the model
    words = (local / "artifacts" / "open_words.txt").read_text().split()
    assert len(words) == OPEN_VOCABULARY_SIZE and np.load(local / "artifacts" / "open_vectors.npy").shape == (
        OPEN_VOCABULARY_SIZE, 50)
    signature = served.pyfunc.metadata.get_params_schema()
    assert {p.name: p.default for p in signature.params} == {"top_k": 5, "labels": []}
    # params.yaml's serving limits are written into the model, and are what it serves under.
    limits = dataclasses.asdict(project_config().serving)
    assert served.pyfunc.metadata.flavors["python_function"]["config"] == limits  # MLmodel
    assert dataclasses.asdict(served.pyfunc.unwrap_python_model().limits) == limits


def test_logging_checks_its_inputs(served, tmp_path):
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_labelspace_model(served.bundle)
    short = dataclasses.replace(served.bundle, label_vectors=served.vectors.matrix[:, :10])
    with pytest.raises(ValueError, match=r"must be \(4, 50\)"):
        write_model_artifacts(tmp_path, short)
    with pytest.raises(ValueError, match=r"must be \(2, 50\)"):
        write_model_artifacts(tmp_path, served.bundle, (["a", "b"], served.vectors.matrix[:3]))


def test_model_options_and_the_calibrated_decision_travel_with_the_model(served, tmp_path):
    """A model with non-default options and a validation calibration is served exactly: same distances,
    and `decided` holds every label whose calibrated probability passes the threshold."""
    from labelspace.evaluation.calibration import calibrated_probabilities

    bundle, model = labelspace_bundle(LABELS, served.vectors.matrix, seed=1, normalize=True, learn_scale=True)
    with torch.no_grad():
        model.log_scale.fill_(0.7)
        expected = model.distances(model_input(served), torch.from_numpy(served.vectors.matrix))[0].numpy()
    p = calibrated_probabilities(-expected, {"slope": 3.0, "intercept": 0.5})
    threshold = float(np.sort(p)[1])  # between the 2nd and 3rd least probable: three labels pass
    calibration = {"method": "platt", "slope": 3.0, "intercept": 0.5, "probability_threshold": threshold}
    with mlflow.start_run(experiment_id=ensure_experiment("serving-test")):
        bundle.state_dict = model.state_dict()
        bundle.calibration = calibration
        info = log_labelspace_model(bundle, input_example_image=served.jpeg)
    out = mlflow.pyfunc.load_model(info.model_uri).predict(served.request.iloc[:1], params={"top_k": 4})
    by_label = dict(zip(out["labels"][0], out["distances"][0], strict=True))
    np.testing.assert_allclose([by_label[label] for label in LABELS], expected, rtol=1e-4, atol=1e-6)
    passing = [LABELS[i] for i in np.argsort(-p) if p[i] >= threshold]
    assert list(out["decided"][0]) == passing and len(passing) == 3 and list(out["uncalibrated"][0]) == []
    np.testing.assert_allclose(out["probabilities"][0], np.sort(p)[::-1][:3], rtol=1e-5)


def test_the_rest_guard_answers_without_echo_or_traceback(served, caplog):
    """What serving.errors does for `mlflow models serve` (test_serving_rest.py runs the real server)."""
    from labelspace.serving.errors import _CheckedModel, without_echo

    frame = "                                               image\n0  iVBORw0KGgoAAAANSUhEUgAAAEAAAABACAIAAAAlC+aJAA..."
    mlflow_message = f"Failed to predict data '{frame}'. \nError: Invalid parameters found: {{('top_k', 'bad')}}"
    assert without_echo(mlflow_message) == "Invalid parameters found: {('top_k', 'bad')}"
    body = "Invalid input. Ensure that input is a valid JSON formatted string. Error: 'JSONDecodeError()'\nInput: \nb'{'"
    assert without_echo(body) == "Invalid input. Ensure that input is a valid JSON formatted string. Error: " \
                                 "'JSONDecodeError()'"
    schema = (f"Failed to enforce schema of data '{frame}' with schema '['image': string (required)]'. "
              "Error: Model is missing inputs ['image'].")
    assert without_echo(schema) == "the input does not match the model's input schema '['image': string (required)]'. " \
                                   "Error: Model is missing inputs ['image']."

    broken = mlflow.pyfunc.load_model(served.local)
    broken.unwrap_python_model().model = None  # any unexpected exception inside predict
    with pytest.raises(ServingError) as error:
        _CheckedModel(broken, lambda data, params: None).predict(served.request.iloc[:1])
    assert error.value.status == 500 and error.value.message == ("internal error while scoring the request; the "
                                                                 "server's log has the details")
    assert "Traceback" in caplog.text and "unexpected error while scoring" in caplog.text  # in the log, not the answer
    assert "Traceback" not in error.value.serialize_as_json()


# ---------------------------------------------------------------- remembered vocabularies


@pytest.fixture(scope="module", params=[0.0, 1.0], ids=["alone", "shared-prior"])
def standardized(served, request):
    """A served model with standardized open words (the default mode) and a calibration: every word
    that is no training label is measured against its statistics over the bundled reference outputs,
    and with the shared prior (`share` 1) also against how many such words the request holds."""
    matrix = torch.from_numpy(served.vectors.matrix)
    bundle, model = labelspace_bundle(LABELS, served.vectors.matrix, seed=2, calibration=PASS_ALL, normalize=True,
                                      center_words=True, open_words="standardized")
    model.set_word_center(matrix)
    with torch.no_grad():
        features = torch.rand(48, model.backbone.num_features, generator=torch.Generator().manual_seed(3))
        model.fit_open_words(matrix, reference_outputs=model.from_features(features), share=request.param)
    bundle.state_dict = model.state_dict()
    with mlflow.start_run(experiment_id=ensure_experiment("serving-test")):
        info = log_labelspace_model(bundle, open_vocabulary=(list(served.kv.index_to_key), served.kv.vectors),
                                    input_example_image=served.jpeg)
    local = mlflow.artifacts.download_artifacts(info.model_uri,
                                                dst_path=str(served.tmp / f"standardized-{request.param:g}"))
    return SimpleNamespace(model=model, local=local, share=request.param)


def expected_ranking(served, model, words: list[str]) -> dict[str, float]:
    """Each word's D on the served image, from the trained network and the words' vectors under the
    training policy, nothing remembered between calls."""
    from labelspace.data.word_vectors import resolve_label

    W = torch.from_numpy(np.stack([resolve_label(served.kv, w)[0] for w in words]).astype(np.float32))
    with torch.no_grad():
        D = model.distances_from_output(model(model_input(served)), model.vocabulary(W))[0]
    return dict(zip(words, D.tolist(), strict=True))


def ranked(pyfunc, served, words: list[str]) -> tuple[dict[str, float], pd.Series]:
    out = pyfunc.predict(served.request.iloc[:1], params={"top_k": 100, **({"labels": words} if words else {})})
    assert len(out["labels"][0]) == len(words or LABELS)
    return dict(zip(out["labels"][0], out["distances"][0], strict=True)), out.iloc[0]


def test_each_vocabulary_is_ranked_as_requested_whatever_came_before(served, standardized):
    """Vocabularies are resolved and prepared once and remembered by their words: another vocabulary,
    the same words in another order, one with an unknown word in between, words resolved by the policy
    and a calibration removed afterwards each get the distances and decisions of a fresh computation."""
    pyfunc = mlflow.pyfunc.load_model(standardized.local)
    first = ["jacket", "dress", "shoe", "hat", "coat"]
    second = ["car", "Shirt", "bag", "house"]
    mixed = ["bag dress", "Shirt", "jacket"]  # a mean of words, a training label by case, an open word
    seen: dict[str, float] = {}
    asked: dict[tuple[str, ...], dict[str, float]] = {}
    for words in (first, second, first, first[::-1], ["dress", "zzqxv"], first[1:3], [], mixed, mixed[::-1], second):
        if "zzqxv" in words:
            for _ in range(2):  # an unknown word is an error every time, never a remembered vocabulary
                assert "'zzqxv'" in raised(pyfunc, served.request.iloc[:1], {"labels": words}).message
            continue
        distances, row = ranked(pyfunc, served, words)
        want = expected_ranking(served, standardized.model, words or LABELS)
        assert sorted(distances) == sorted(want), words
        np.testing.assert_allclose([distances[w] for w in want], list(want.values()), rtol=1e-5, atol=1e-6)
        asked[tuple(words)] = distances
        for word, value in distances.items():  # one word, one distance, whatever else was requested ...
            if word.lower() in LABELS or not standardized.share:  # ... but the shared prior's open words
                assert seen.setdefault(word, value) == pytest.approx(value, rel=1e-6, abs=1e-7), word
        calibrated = [w for w in (words or LABELS) if w.lower() in LABELS]
        assert sorted(row["decided"]) == sorted(calibrated), words  # threshold 0: every covered label passes
        assert list(row["uncalibrated"]) == [w for w in words if w.lower() not in LABELS], words
    assert len(pyfunc.unwrap_python_model()._requested) == 7  # first, second, first reversed, a slice, [], mixed x2
    # `jacket` beside two other open words (first) and beside one (mixed): the shared prior moves it by
    # s log 3 and s log 2, so further back in the larger request; without it, the same distance.
    gap = asked[tuple(first)]["jacket"] - asked[tuple(mixed)]["jacket"]
    s = float(standardized.model.seen_scale[1])
    assert gap == pytest.approx(standardized.share * s * (np.log(3) - np.log(2)), rel=1e-4, abs=1e-6)
    pyfunc.unwrap_python_model().calibration = {}  # after `first` was remembered: nothing is decided any more
    _, row = ranked(pyfunc, served, first)
    assert list(row["decided"]) == [] and list(row["uncalibrated"]) == first


def test_remembered_vocabularies_are_bounded_and_follow_the_model(served, standardized):
    from labelspace.serving.pyfunc import VOCABULARIES_KEPT

    pyfunc = mlflow.pyfunc.load_model(standardized.local)
    served_model = pyfunc.unwrap_python_model()
    words = served.kv.index_to_key[100 : 100 + VOCABULARIES_KEPT + 3]
    for i in range(VOCABULARIES_KEPT + 3):
        ranked(pyfunc, served, [words[i], "dress"])
    assert len(served_model._requested) == VOCABULARIES_KEPT
    distances, _ = ranked(pyfunc, served, [words[0], "dress"])  # forgotten, and resolved again
    want = expected_ranking(served, standardized.model, [words[0], "dress"])
    np.testing.assert_allclose([distances[w] for w in want], list(want.values()), rtol=1e-5, atol=1e-6)
    # The network's weights changed after loading (here its reference outputs): the remembered
    # vocabulary is measured as the network is now, not as it was.
    import copy

    changed = copy.deepcopy(standardized.model)
    with torch.no_grad():
        for network in (changed, served_model.model):
            network.reference_A[: len(network.reference_A) // 2] = network.reference_A[:1]
    distances, _ = ranked(pyfunc, served, [words[0], "dress"])
    want = expected_ranking(served, changed, [words[0], "dress"])
    np.testing.assert_allclose([distances[w] for w in want], list(want.values()), rtol=1e-5, atol=1e-6)
    assert distances[words[0]] != pytest.approx(expected_ranking(served, standardized.model, [words[0]])[words[0]])
