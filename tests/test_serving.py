"""The served pyfunc, logged to a real sqlite MLflow backend and loaded back in this process."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image
from support import labelspace_bundle

from labelspace.data.preprocess import decode_resized
from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.lifecycle.tracking import ensure_experiment
from labelspace.model.bundle import TrainedModel
from labelspace.serving.pyfunc import image_to_base64, log_labelspace_model, write_model_artifacts
from labelspace.training.loop import to_input

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LABELS = ["dress", "shirt", "bag", "coat"]
OPEN_VOCABULARY_SIZE = 10_000  # GloVe's 10k most frequent words include 'jacket' and 'shoe'


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
        bundle, model = labelspace_bundle(vectors.labels, vectors.matrix)
        with mlflow.start_run(experiment_id=ensure_experiment("serving-test")):
            info = log_labelspace_model(
                bundle,
                open_vocabulary=(list(kv.index_to_key), kv.vectors),
                input_example_image=fashion_jpeg(1),
            )
        pyfunc = mlflow.pyfunc.load_model(info.model_uri)
        jpeg = fashion_jpeg(0)
        yield SimpleNamespace(model=model, bundle=bundle, kv=kv, vectors=vectors, info=info, pyfunc=pyfunc, jpeg=jpeg,
                              request=pd.DataFrame({"image": [image_to_base64(jpeg)] * 3}), tmp=tmp)


def test_predict_ranks_the_training_labels_by_ascending_distance(served):
    out = served.pyfunc.predict(served.request)
    assert list(out.columns) == ["labels", "distances", "decided", "probabilities"]
    assert all(len(d) == 0 for d in out["decided"])  # no calibration logged: no thresholded decision
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


def test_a_file_path_only_where_the_server_allows_it_and_a_data_url(served, tmp_path, monkeypatch):
    path = tmp_path / "garment.jpg"
    path.write_bytes(served.jpeg)
    request = pd.DataFrame({"image": [str(path), "data:image/jpeg;base64," + image_to_base64(served.jpeg)]})
    monkeypatch.delenv("LABELSPACE_SERVING_READ_FILES", raising=False)
    with pytest.raises(MlflowException, match="row 0: column 'image' must hold base64"):
        served.pyfunc.predict(request)  # a caller cannot make the server read its files by default
    monkeypatch.setenv("LABELSPACE_SERVING_READ_FILES", "1")
    out = served.pyfunc.predict(request)
    assert out["labels"][0] == out["labels"][1]
    np.testing.assert_allclose(out["distances"][0], out["distances"][1], rtol=1e-6)


def test_requested_labels_follow_the_training_policy(served):
    """'Dress' (case) and 'bag dress' (mean of words) resolve as at training time."""
    out = served.pyfunc.predict(served.request, params={"labels": ["Dress", "bag dress", "dress"], "top_k": 3})
    distances = dict(zip(out["labels"][0], out["distances"][0], strict=True))
    assert distances["Dress"] == pytest.approx(distances["dress"], rel=1e-6)
    assert set(distances) == {"Dress", "bag dress", "dress"}


def test_bad_images_name_the_row(served):
    garbage = pd.DataFrame({"image": [image_to_base64(served.jpeg), "not base64 !!"]})
    with pytest.raises(MlflowException, match="row 1: column 'image' must hold base64"):
        served.pyfunc.predict(garbage)
    not_an_image = pd.DataFrame({"image": [image_to_base64(b"plain text, not a picture")]})
    with pytest.raises(MlflowException, match="row 0: .* not an image"):
        served.pyfunc.predict(not_an_image)


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


def test_logging_checks_its_inputs(served, tmp_path):
    import dataclasses

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
    assert list(out["decided"][0]) == passing and len(passing) == 3
    np.testing.assert_allclose(out["probabilities"][0], np.sort(p)[::-1][:3], rtol=1e-5)
