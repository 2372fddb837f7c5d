"""Batch inference (`labelspace predict`, labelspace.serving.batch) with a registered model in a real
sqlite registry: chunks, skipped images listed, model and data versions beside the predictions, a run
killed with SIGKILL that resumes, and an alias moved between runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
from support import labelspace_bundle, sample_config
from test_serving import LABELS, PASS_ALL, png_header

from labelspace.data.sample import build_sample
from labelspace.data.word_vectors import export_glove, load_word_vectors, resolve_label_vectors
from labelspace.lifecycle.tracking import ensure_experiment
from labelspace.serving.batch import META_KEY, parts_dir, predict_to_parquet, report_path
from labelspace.serving.batch_inputs import images_in, images_of_manifest
from labelspace.serving.pyfunc import image_to_base64, log_labelspace_model

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A registered model `labelspace` (version 1 = champion) and a folder of real canvases, plus a
    corrupt file, a header-only 13000x13000 PNG (over the pixel limit) and a text file."""
    tmp = tmp_path_factory.mktemp("batch")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    data = tmp / "canvas"
    build_sample(data, sample_config(n_train=8, n_test=24, seed=2))
    images = data / "Flickr"
    (images / "broken.jpg").write_bytes(b"not a picture at all")
    (images / "huge.png").write_bytes(png_header(13000, 13000))
    (images / "notes.txt").write_text("not an image suffix\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        export_glove(tmp / "glove.bin", limit=10_000)  # holds the labels and "shoe"
        kv = load_word_vectors(tmp / "glove.bin")
        vectors = resolve_label_vectors(kv, LABELS)
        bundle, _ = labelspace_bundle(vectors.labels, vectors.matrix, calibration=PASS_ALL)
        with mlflow.start_run(experiment_id=ensure_experiment("batch")):
            info = log_labelspace_model(bundle, open_vocabulary=(list(kv.index_to_key), kv.vectors))
        version = mlflow.register_model(info.model_uri, "labelspace")
        mlflow.MlflowClient().set_registered_model_alias("labelspace", "champion", version.version)
        yield SimpleNamespace(tmp=tmp, uri=uri, data=data, images=images, info=info, mp=mp)


def cli(registry, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri, "LABELSPACE_PROGRESS": "log",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.Popen([str(VENV_BIN / "labelspace"), "predict", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_predict_a_folder_lists_every_skipped_image_and_records_both_versions(registry, tmp_path):
    out = tmp_path / "folder.parquet"
    run = cli(registry, "--model", "models:/labelspace@champion", "--images", str(registry.images), "--out", str(out),
              "--batch-size", "8", "--top-k", "3", cwd=tmp_path)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    n_canvases = 8 + 24
    assert f"{n_canvases} of {n_canvases + 2} listed images scored by labelspace version 1" in output
    assert "predict folder.parquet: started" in output and "predict folder.parquet: done" in output  # progress

    report = json.loads(report_path(out).read_text())
    assert report["model"] == {"uri": "models:/labelspace@champion", "load_uri": "models:/labelspace/1",
                               "name": "labelspace", "version": "1", "alias": "champion",
                               "run_id": registry.info.run_id}
    assert report["data"]["data_version"].startswith("untracked-") and report["data"]["inputs_fingerprint"]
    assert (report["listed"], report["predicted"], report["skipped"], report["ignored_files"]) == (
        n_canvases + 2, n_canvases, 2, 1)
    assert report["skipped_by_reason"] == {"invalid_image": 1, "over_limit": 1}
    skipped = {item["image"]: item for item in report["skipped_images"]}
    assert skipped["broken.jpg"]["message"] == "the 20 bytes are not a JPEG, PNG, WebP, GIF or BMP image"
    assert skipped["huge.png"]["message"] == ("the image is 13000x13000 = 169000000 pixels, over the limit of "
                                              "40000000 pixels per image")
    assert report["chunks"] == 5 and report["chunks_resumed"] == 0 and not parts_dir(out).exists()

    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[META_KEY])
    assert meta["model"]["version"] == "1" and meta["data"] == report["data"]  # both versions in the file too
    frame = table.to_pandas()
    assert list(frame.columns) == ["image", "labels", "distances", "decided", "probabilities", "uncalibrated"]
    assert len(frame) == n_canvases and frame["image"].is_unique and "broken.jpg" not in set(frame["image"])
    # The rows are the model's own predictions for those files.
    first = frame.iloc[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", registry.uri)
        model = mlflow.pyfunc.load_model("models:/labelspace/1")
    expected = model.predict(pd.DataFrame({"image": [image_to_base64(registry.images / first["image"])]}),
                             params={"top_k": 3})
    assert list(first["labels"]) == list(expected["labels"][0])
    assert list(first["decided"]) == list(expected["decided"][0])


def test_a_killed_run_resumes_from_its_parts(registry, tmp_path):
    out = tmp_path / "killed.parquet"
    args = ("--model", "models:/labelspace@champion", "--images", str(registry.images), "--out", str(out),
            "--batch-size", "2")
    run = cli(registry, *args, cwd=tmp_path)
    parts = parts_dir(out)
    deadline = time.monotonic() + 240
    while len(list(parts.glob("part-*.parquet"))) < 2:
        assert run.poll() is None, f"the run ended before it could be killed:\n{run.communicate()[0]}"
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    done_before = len(list(parts.glob("part-*.parquet")))
    assert not out.exists() and 2 <= done_before < 17  # killed mid-way: whole parts, no output

    again = cli(registry, *args, cwd=tmp_path)
    output, _ = again.communicate(timeout=300)
    assert again.returncode == 0, output
    assert f"resuming {out}: {done_before} of 17 chunks already scored" in output
    report = json.loads(report_path(out).read_text())
    assert report["chunks"] == 17 and report["chunks_resumed"] == done_before
    assert report["predicted"] == 32 and report["skipped_by_reason"] == {"invalid_image": 1, "over_limit": 1}
    frame = pd.read_parquet(out)
    assert sorted(frame["image"]) == sorted(frame["image"].unique()) and len(frame) == 32  # each image once


def test_a_list_reruns_as_up_to_date_and_follows_the_alias(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    image_list = registry.data / "ImageList" / "TestImagelist.txt"
    listing = image_list.read_text().splitlines()
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(["# NUS-WIDE style: folder\\file, relative to Flickr/", *listing, listing[0],
                                   "nowhere\\missing.jpg", ""]) + "\n")
    inputs = images_of_manifest(manifest, root=registry.images)
    assert inputs.listed == len(listing) + 2 and len(inputs.ids) == len(listing)
    assert [s["reason"] for s in inputs.skipped] == ["duplicate", "missing_file"]

    out = tmp_path / "list.parquet"
    first = predict_to_parquet("models:/labelspace@champion", inputs, out, labels=["shoe", "dress"], batch_size=10)
    assert first["model"]["version"] == "1" and first["predicted"] == len(listing)
    assert first["skipped_by_reason"] == {"duplicate": 1, "missing_file": 1}
    frame = pd.read_parquet(out)
    assert all(list(d) == ["dress"] for d in frame["decided"]) and all(list(u) == ["shoe"] for u in frame["uncalibrated"])

    again = predict_to_parquet("models:/labelspace@champion", inputs, out, labels=["shoe", "dress"], batch_size=10)
    assert again.get("up_to_date") is True and again["key"] == first["key"]  # nothing changed: nothing done

    client = mlflow.MlflowClient()
    second = mlflow.register_model(registry.info.model_uri, "labelspace")
    client.set_registered_model_alias("labelspace", "champion", second.version)  # a promotion between runs
    moved = predict_to_parquet("models:/labelspace@champion", inputs, out, labels=["shoe", "dress"], batch_size=10)
    assert "up_to_date" not in moved and moved["model"]["version"] == str(second.version)
    assert json.loads(pq.read_schema(out).metadata[META_KEY])["model"]["version"] == str(second.version)
    client.set_registered_model_alias("labelspace", "champion", "1")

    with pytest.raises(ValueError, match="no version with alias 'nobody'.*labelspace promote"):
        predict_to_parquet("models:/labelspace@nobody", inputs, out)
    assert images_in(registry.images).ignored_files == 1


def test_the_data_version_is_dvcs_hash_of_the_tracked_dataset_holding_the_images(registry, tmp_path, monkeypatch):
    import shutil

    from labelspace.data.dvc_versions import data_version
    from labelspace.serving.batch_inputs import input_data_version

    repo = tmp_path / "project"
    shutil.copytree(registry.data, repo / "data" / "canvas")
    (repo / "params.yaml").write_text("{}\n")  # marks the project folder
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data/canvas"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("LABELSPACE_PARAMS", str(repo / "params.yaml"))
    version = input_data_version(repo / "data" / "canvas" / "Flickr")  # images inside the tracked folder
    assert version == {"data_version": data_version("data/canvas", repo_root=repo), "dvc_output": "data/canvas"}
    assert version["data_version"].endswith(".dir")
    (repo / "data" / "canvas" / "Flickr" / "added.jpg").write_bytes(b"changed since dvc add")
    changed = input_data_version(repo / "data" / "canvas" / "Flickr")  # the workspace no longer matches
    assert changed["data_version"].startswith("untracked-") and "modified" in changed["note"]
