"""The REST contract of the served model, against a real `mlflow models serve` of a registered version.

One server for the module (a logged and registered label-space model with a calibration and an open
vocabulary, served as models:/labelspace@champion, reading files under one folder): good requests
(ranking, open vocabulary, decisions, files, empty inputs) and every bad case of issue 16, each
answered with its status and message, no traceback, no server path, no echo of the input, and the
server alive after each.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from support import labelspace_bundle
from test_serving import LABELS, PASS_ALL, fashion_jpeg, png_header

from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.lifecycle.tracking import ensure_experiment
from labelspace.serving.pyfunc import image_to_base64, log_labelspace_model

VENV_BIN = Path(sys.executable).parent
OPEN_VOCABULARY_SIZE = 10_000
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not (VENV_BIN / "mlflow").exists():
        pytest.skip("mlflow must be installed in the test interpreter's environment")
    tmp = tmp_path_factory.mktemp("serving-rest")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    jpeg = fashion_jpeg(0)
    root = tmp / "images"
    root.mkdir()
    (root / "garment.jpg").write_bytes(jpeg)
    (tmp / "secret.jpg").write_bytes(jpeg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        export_glove(tmp / "glove.bin", limit=OPEN_VOCABULARY_SIZE)
        kv = load_word_vectors(tmp / "glove.bin")
        vectors = resolve_label_vectors(kv, LABELS)
        bundle, _ = labelspace_bundle(vectors.labels, vectors.matrix, calibration=PASS_ALL)
        with mlflow.start_run(experiment_id=ensure_experiment("serving-rest")):
            info = log_labelspace_model(bundle, open_vocabulary=(list(kv.index_to_key), kv.vectors),
                                        input_example_image=jpeg)
        version = mlflow.register_model(info.model_uri, "labelspace")
        mlflow.MlflowClient().set_registered_model_alias("labelspace", "champion", version.version)
        in_process = mlflow.pyfunc.load_model(info.model_uri)

    port = _free_port()
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # uvicorn, by name
           "MLFLOW_TRACKING_URI": uri, "LABELSPACE_SERVING_READ_FILES": "1", "LABELSPACE_SERVING_ROOT": str(root)}
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed below, after the server
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", "models:/labelspace@champion", "--env-manager", "local",
         "-p", str(port), "-h", "127.0.0.1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # its own group: uvicorn goes with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _alive(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield SimpleNamespace(url=url, tmp=tmp, root=root, jpeg=jpeg, image=image_to_base64(jpeg),
                              pyfunc=in_process, log=tmp / "server.log")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group `mlflow models serve` leads: it and its uvicorn
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def post(server, body, content_type: str = "application/json") -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}/invocations", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def records(*images, **params) -> dict:
    body = {"dataframe_records": [{"image": image} for image in images]}
    return {**body, "params": params} if params else body


def predictions(server, body) -> list[dict]:
    status, text = post(server, body)
    assert status == 200, text
    return json.loads(text)["predictions"]


# ---------------------------------------------------------------- good requests


def test_ranking_and_decisions_of_the_training_labels(server):
    (row,) = predictions(server, records(server.image, top_k=3))
    assert len(row["labels"]) == 3 and row["distances"] == sorted(row["distances"])
    assert sorted(row["decided"]) == sorted(LABELS) and row["uncalibrated"] == []  # threshold 0: all covered pass
    assert row["probabilities"] == sorted(row["probabilities"], reverse=True)
    expected = server.pyfunc.predict(pd.DataFrame({"image": [server.image]}), params={"top_k": 3})
    assert row["labels"] == list(expected["labels"][0])  # the server scores as the model does in process
    np.testing.assert_allclose(row["distances"], expected["distances"][0], rtol=1e-5)


def test_open_vocabulary_is_ranked_not_decided_and_repeats_count_once(server):
    (row,) = predictions(server, records(server.image, top_k=10, labels=["shoe", "jacket", "hat", "dress", "shoe"]))
    assert sorted(row["labels"]) == ["dress", "hat", "jacket", "shoe"]
    assert row["decided"] == ["dress"] and row["uncalibrated"] == ["shoe", "jacket", "hat"]


def test_vocabularies_in_a_row_are_each_ranked_as_requested(server):
    """The server remembers each vocabulary it resolved: another vocabulary, the same words in another
    order and one with an unknown word in between are each ranked as the model ranks them in process."""
    first, second = ["jacket", "dress", "shoe", "hat"], ["car", "Shirt", "bag", "house", "coat"]
    for words in (first, second, first[::-1], ["dress", "zzqxv"], first, second[1:]):
        status, text = post(server, records(server.image, top_k=len(words), labels=words))
        if "zzqxv" in words:
            assert status == 400 and "'zzqxv'" in json.loads(text)["message"]
            continue
        assert status == 200, text
        (row,) = json.loads(text)["predictions"]
        expected = server.pyfunc.predict(pd.DataFrame({"image": [server.image]}),
                                         params={"top_k": len(words), "labels": words}).iloc[0]
        assert row["labels"] == list(expected["labels"]) and sorted(row["labels"]) == sorted(words)
        np.testing.assert_allclose(row["distances"], expected["distances"], rtol=1e-5)
        assert row["uncalibrated"] == [w for w in words if w.lower() not in LABELS]


def test_files_under_the_image_folder_and_empty_inputs(server):
    by_file, by_bytes = predictions(server, records("garment.jpg", server.image))
    assert by_file["labels"] == by_bytes["labels"]
    for body in ({"dataframe_records": []}, {"dataframe_split": {"columns": ["image"], "data": []}}):
        assert predictions(server, body) == []  # one behaviour for both empty forms


# ---------------------------------------------------------------- bad requests

BASE64_IMAGE_START = 12  # characters of the sent image that must never come back


def bad_cases(server) -> list[tuple[str, object, int, str]]:
    """(case, body, status, message: the whole message, or `...`-ended for its start)."""
    image, b64 = server.image, lambda data: base64.b64encode(data).decode()
    top_k = "params.top_k must be an integer of at least 1 (default 5), got "
    labels = 'params.labels must be a list of words such as ["shoe", "bag"] (empty: the training labels), got '
    files = ("row 0: column 'image' must hold base64-encoded JPEG/PNG bytes or the path of an image file under the "
             "server's image folder")
    return [
        ("top_k null", records(image, top_k=None), 400, top_k + "null"),
        ("top_k abc", records(image, top_k="abc"), 400, top_k + "'abc'"),
        ("top_k 0", records(image, top_k=0), 400, top_k + "0"),
        ("top_k 2.5", records(image, top_k=2.5), 400, top_k + "2.5"),
        ("top_k true", records(image, top_k=True), 400, top_k + "true"),
        ("labels 5", records(image, labels=5), 400, labels + "5"),
        ("labels null", records(image, labels=None), 400, labels + "null"),
        ("labels a string", records(image, labels="dress"), 400, labels + "'dress'"),
        ("labels [dress, 5]", records(image, labels=["dress", 5]), 400, "params.labels[1] must be a string, got 5"),
        ("unknown label", records(image, labels=["dress", "zzqxv"]), 400,
         "no word vector bundled for 1 requested label(s): 'zzqxv'. This model can rank its 4 training labels and "
         f"{OPEN_VOCABULARY_SIZE} open-vocabulary words; ..."),
        ("unknown param", records(image, topk=3), 400, "unknown param(s) 'topk': this model takes top_k ..."),
        ("params not an object", {**records(image), "params": [3]}, 400,
         'params must be a JSON object such as {"top_k": 3}, got [3]'),
        ("no image column", {"dataframe_records": [{"picture": image}]}, 400,
         "the input needs a string column 'image' (base64 JPEG/PNG bytes); got column(s) 'picture'"),
        ("image not a string", records(5), 400, "row 0: column 'image' must hold strings (base64 image bytes), got int"),
        ("not base64", records(image, "!!!"), 400, files.replace("row 0", "row 1")),
        ("not an image", records(b64(b"plain text, not a picture")), 400,
         "row 0: the 25 bytes are not a JPEG, PNG, WebP, GIF or BMP image"),
        ("truncated jpeg", records(b64(server.jpeg[: len(server.jpeg) * 4 // 5])), 400,
         "row 0: the 64x64 image cannot be decoded (truncated or corrupt data)"),
        ("13000x13000 png", records(b64(png_header(13000, 13000))), 413,
         "row 0: the image is 13000x13000 = 169000000 pixels, over the limit of 40000000 pixels per image"),
        ("30000x30000 png (a decompression bomb)", records(b64(png_header(30000, 30000))), 413,
         "row 0: the image is over 178956970 pixels (a decompression bomb); the limit is 40000000 pixels per image"),
        ("four 6000x6000 images", records(*[b64(png_header(6000, 6000))] * 4), 413,
         "the request's 4 images hold 144000000 pixels, over the limit of 120000000 per request; ..."),
        ("too many images", records(*["x"] * 257), 413,
         "the request holds 257 images, over the limit of 256 per request; send them in several requests"),
        ("too many labels", records(image, labels=[f"w{i}" for i in range(20_001)]), 413,
         "params.labels holds 20001 labels, over the limit of 20000 per request"),
        ("file outside the folder", records(str(server.tmp / "secret.jpg")), 400, files),
        ("file escaping the folder", records("../secret.jpg"), 400, files),
        ("missing file", records("none.jpg"), 400, files),
        ("a server file", records("/etc/passwd"), 400, files),
        ("body not JSON", b'{"dataframe_records": [{"image": "' + image.encode(), 400,
         "Invalid input. Ensure that input is a valid JSON formatted string. ..."),
        ("no dataframe key", {"images": [image]}, 400, "The input must be a JSON dictionary with exactly one of ..."),
    ]


def test_every_bad_request_gets_a_clear_answer_without_internals(server):
    leaks = ("Traceback", "stack_trace", 'File "', "site-packages", str(server.tmp), sys.prefix,
             "Failed to predict data", server.image[:BASE64_IMAGE_START], "iVBORw0K")  # iVBORw0K: any base64 PNG
    failures = []
    for case, body, status, message in bad_cases(server):
        got_status, text = post(server, body)
        try:
            got = json.loads(text)
        except json.JSONDecodeError:
            got = {"message": text}
        if got_status != status:
            failures.append(f"{case}: status {got_status} (wanted {status}): {text[:300]}")
        elif not (got.get("message") == message
                  or message.endswith("...") and str(got.get("message", "")).startswith(message[:-3])):
            failures.append(f"{case}: message {got.get('message')!r}\n   wanted {message!r}")
        leaked = [leak for leak in leaks if leak in text]
        if leaked:
            failures.append(f"{case}: the body holds {leaked}: {text[:300]}")
        if not _alive(server.url):
            failures.append(f"{case}: the server is down after it")
            break
    assert failures == [], "\n".join(failures)
    assert predictions(server, records(server.image, top_k=1))  # and it still serves


def test_an_unsupported_content_type_is_refused_by_mlflow(server):
    status, text = post(server, b"image\n" + server.image.encode(), content_type="text/plain")
    assert status == 415 and "only supports the following content types" in text and server.image[:12] not in text
    status, text = post(server, b"image\n" + server.image.encode() + b"\n", content_type="text/csv")
    assert status == 200 and len(json.loads(text)["predictions"]) == 1  # CSV goes through the same checks
    assert _alive(server.url)
