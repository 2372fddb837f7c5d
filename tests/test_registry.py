"""Tracking URIs, lineage tags and the model registry, against real MLflow backends.

The served model is registered in a sqlite backend and loaded in a fresh Python process by alias;
one slow test does the same through a real `mlflow server` over HTTP.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from PIL import Image
from support import labelspace_bundle, project_config

from labelspace.cli import main as cli_main
from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.lifecycle.lineage import LINEAGE_KEYS, code_version, lineage_tags
from labelspace.lifecycle.registry import alias_holder, find_version_by_tag, promote, register_model
from labelspace.lifecycle.tracking import artifact_root, ensure_experiment, tracking_uri
from labelspace.serving.pyfunc import log_labelspace_model

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LABELS = ["dress", "shirt", "bag", "coat"]
PYTHON = sys.executable  # the project's .venv python when run as `.venv/bin/python -m pytest`


def fashion_jpeg_file(path: Path, index: int = 0) -> Path:
    """A real Fashion-MNIST test image, upscaled to 64x64 RGB, written as JPEG."""
    if not FASHION_TEST_IMAGES.is_file():
        pytest.skip(f"{FASHION_TEST_IMAGES} missing: apt-get install dataset-fashion-mnist (make system-packages)")
    with gzip.open(FASHION_TEST_IMAGES, "rb") as f:
        f.read(16 + index * 28 * 28)
        pixels = np.frombuffer(f.read(28 * 28), dtype=np.uint8).reshape(28, 28)
    Image.fromarray(pixels).convert("RGB").resize((64, 64), Image.BILINEAR).save(path, format="JPEG")
    return path


def build_and_log(tmp: Path, experiment: str, zenml_run_id: str) -> SimpleNamespace:
    """Log a real (untrained-head) label-space model in a run; returns its ModelInfo and lineage tags."""
    export_glove(tmp / "glove.bin", limit=10_000)
    kv = load_word_vectors(tmp / "glove.bin")
    vectors = resolve_label_vectors(kv, LABELS)
    bundle, _ = labelspace_bundle(vectors.labels, vectors.matrix)
    with mlflow.start_run(experiment_id=ensure_experiment(experiment)):
        info = log_labelspace_model(
            bundle,
            open_vocabulary=(list(kv.index_to_key[:2000]), kv.vectors[:2000]),
            serving=project_config().serving,
        )
    tags = lineage_tags(
        dataset_version="md5:dataset-abc", vectors_version="md5:vectors-def", params_hash="0123456789abcdef",
        zenml_run_id=zenml_run_id, backbone="efficientnet_lite0", pretrained_hash="feedbeef",
        repo_root=Path(__file__).resolve().parents[1], zenml_model_version="3",
    )
    return SimpleNamespace(info=info, tags=tags)


FRESH_PROCESS_SCRIPT = r"""
import base64, json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
image = base64.b64encode(open(sys.argv[2], "rb").read()).decode()
request = pd.DataFrame({"image": [image, image]})
result = {}
for name, params in {"default": None, "top2": {"top_k": 2}, "restricted": {"labels": ["shirt", "coat", "black"]}}.items():
    out = model.predict(request, params=params)
    result[name] = {"columns": list(out.columns), "labels": [list(x) for x in out["labels"]],
                    "distances": [list(map(float, x)) for x in out["distances"]]}
try:
    model.predict(request, params={"labels": ["dress", "zzqxv"]})
    result["unknown"] = None
except Exception as e:
    result["unknown"] = str(e)
import labelspace
result["labelspace_from"] = labelspace.__file__
print("RESULT " + json.dumps(result))
"""


def rank_in_fresh_process(model_uri: str, image: Path, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [PYTHON, "-c", FRESH_PROCESS_SCRIPT, model_uri, str(image)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300, cwd=image.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def check_ranking(result: dict) -> None:
    default, top2, restricted = result["default"], result["top2"], result["restricted"]
    assert default["columns"] == ["labels", "distances", "decided", "probabilities", "uncalibrated"]
    assert [sorted(x) for x in default["labels"]] == [sorted(LABELS)] * 2
    for block in (default, top2, restricted):
        for distances in block["distances"]:
            assert distances == sorted(distances)
    assert all(len(x) == 2 for x in top2["labels"]) and top2["labels"][0] == default["labels"][0][:2]
    assert all(set(x) == {"shirt", "coat", "black"} for x in restricted["labels"])  # "black": open vocabulary
    assert "'zzqxv'" in result["unknown"] and "'dress'" not in result["unknown"]
    assert "/code/labelspace/" in result["labelspace_from"]  # served by the code bundled with the model


# ---------------------------------------------------------------- tracking


def test_tracking_uri_defaults_to_the_project_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LABELSPACE_PARAMS", raising=False)
    (tmp_path / "params.yaml").write_text("register: {model_name: labelspace}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert (tmp_path / "mlflow").is_dir()
    assert artifact_root() == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_ensure_experiment_keeps_artifacts_beside_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    first = ensure_experiment("labelspace-test")
    assert ensure_experiment("labelspace-test") == first
    client = MlflowClient()
    assert client.get_experiment(first).artifact_location == (tmp_path / "db" / "artifacts").as_uri()
    client.delete_experiment(first)
    assert ensure_experiment("labelspace-test") == first
    assert client.get_experiment(first).lifecycle_stage == "active"
    assert not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------- lineage


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_code_version_reads_commit_and_dirty_flag(tmp_path):
    assert code_version(tmp_path) == {"git_commit": "unknown", "git_dirty": "unknown"}
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert code_version(tmp_path) == {"git_commit": head, "git_dirty": "false"}
    (tmp_path / "notes.txt").write_text("untracked files do not make the code dirty\n")
    assert code_version(tmp_path)["git_dirty"] == "false"
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_version(tmp_path) == {"git_commit": head, "git_dirty": "true"}


def test_lineage_tags_are_complete_strings(tmp_path):
    tags = lineage_tags(dataset_version="d1", vectors_version=None, params_hash="p", zenml_run_id="r",
                        backbone="alexnet", pretrained_hash="w", repo_root=tmp_path, extra={"train.epochs": 3})
    assert set(LINEAGE_KEYS) <= set(tags)
    assert all(isinstance(v, str) and v for v in tags.values())
    assert tags["data.vectors_version"] == "unknown" and tags["train.epochs"] == "3"


# ---------------------------------------------------------------- registry on sqlite


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        logged = build_and_log(tmp, "registry-test", zenml_run_id="zenml-run-1")
        version = register_model(logged.info.model_uri, tags=logged.tags, description="first")
        yield SimpleNamespace(tmp=tmp, uri=uri, logged=logged, version=version,
                              image=fashion_jpeg_file(tmp / "garment.jpg"))


def test_version_1_has_alias_challenger_and_every_lineage_tag(registered):
    version = MlflowClient(tracking_uri=registered.uri).get_model_version("labelspace", "1")
    assert str(registered.version.version) == str(version.version) == "1"
    assert version.aliases == ["challenger"]
    assert version.description == "first"
    assert version.run_id == registered.logged.info.run_id
    for key in LINEAGE_KEYS:
        assert version.tags[key] == registered.logged.tags[key], key
    assert version.tags["zenml.model_version"] == "3"
    assert len(version.tags["code.git_commit"]) in (40, len("unknown"))


def test_challenger_loads_in_a_fresh_process_and_ranks_a_real_image(registered):
    result = rank_in_fresh_process("models:/labelspace@challenger", registered.image,
                                   {"MLFLOW_TRACKING_URI": registered.uri})
    check_ranking(result)


def test_find_version_by_tag(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    found = find_version_by_tag("labelspace", "zenml.run_id", "zenml-run-1")
    assert found is not None and str(found.version) == "1"
    assert find_version_by_tag("labelspace", "zenml.run_id", "never-ran") is None
    assert find_version_by_tag("no-such-model", "params.hash", "0123456789abcdef") is None


def test_promote_moves_champion(registered, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    second = register_model(registered.logged.info.model_uri, tags={**registered.logged.tags,
                                                                    "zenml.run_id": "zenml-run-2"})
    assert str(second.version) == "2" and alias_holder("labelspace", "challenger") == "2"
    assert alias_holder("labelspace", "champion") is None

    promote("labelspace", 1)  # a copy of candidate 1 in production, named champion
    assert alias_holder("labelspace-production", "champion") == "1"
    assert cli_main(["promote", "--model", "labelspace", "--version", "2", "--reason", "second is better"]) == 0
    printed = capsys.readouterr().out
    assert "labelspace-production@champion: labelspace version 1 -> version 2 (manual, history #1)" in printed
    assert "data.dataset_version = md5:dataset-abc" in printed
    client = MlflowClient(tracking_uri=registered.uri)
    # rollback returns to it
    assert client.get_model_version("labelspace-production", "1").aliases == ["previous-champion"]
    assert sorted(client.get_model_version("labelspace", "2").aliases) == ["challenger"]  # candidates keep theirs
    served = client.get_model_version("labelspace-production", "2")
    assert served.aliases == ["champion"] and served.tags["champion.reason"] == "second is better"
    assert served.source == "models:/labelspace/2" and served.tags["candidate.version"] == "2"
    assert all(served.tags[key] == second.tags[key] for key in LINEAGE_KEYS if key != "zenml.run_id")
    # what serves loads from production, the candidate's files behind it
    check_ranking(rank_in_fresh_process("models:/labelspace-production@champion", registered.image,
                                        {"MLFLOW_TRACKING_URI": registered.uri}))


def test_promoting_a_missing_version_says_which_exist(registered, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    with pytest.raises(ValueError, match=r"has no version 99 \(deleted, or never registered\); its versions are 1"):
        promote("labelspace", 99)
    assert cli_main(["promote", "--version", "99", "--reason", "typo"]) == 2
    assert "has no version 99" in capsys.readouterr().err


# ---------------------------------------------------------------- registry over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so teardown ends the server's workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after 120 s: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, artifacts=tmp_path / "server-artifacts")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_register_and_load_through_a_tracking_server(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.chdir(tmp_path)
    logged = build_and_log(tmp_path, "server-test", zenml_run_id="zenml-run-http")
    version = register_model(logged.info.model_uri, tags=logged.tags)
    assert str(version.version) == "1" and version.aliases == ["challenger"]
    assert str(find_version_by_tag("labelspace", "params.hash", "0123456789abcdef").version) == "1"
    assert list(mlflow_server.artifacts.rglob("weights.pt"))  # stored by the server, not locally
    assert not (tmp_path / "mlruns").exists()

    image = fashion_jpeg_file(tmp_path / "garment.jpg")
    check_ranking(rank_in_fresh_process("models:/labelspace@challenger", image,
                                        {"MLFLOW_TRACKING_URI": mlflow_server.url}))
