"""End to end: the real ZenML pipeline on a tiny real dataset, in isolated ZenML and MLflow folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

LINEAGE_TAGS = ("data.dataset_version", "data.vectors_version", "code.git_commit", "code.git_dirty", "params.hash",
                "zenml.run_id", "model.backbone", "backbone.pretrained_hash", "model.content_hash")


@pytest.fixture(scope="module")
def project(tiny_dataset, small_vectors, tmp_path_factory, repo_root):
    """A project folder with the repository's params.yaml, shrunk to run in about a minute."""
    root = tmp_path_factory.mktemp("project")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset=str(tiny_dataset[0]), image_size=32)
    params["vectors"]["path"] = str(small_vectors)
    params["train"].update(epochs=2, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_"))}
    env.update(LABELSPACE_PARAMS=str(root / "params.yaml"), ZENML_CONFIG_PATH=str(root / "zenml"),
               ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    return root, env


def _labelspace(env, *args, cwd):
    return subprocess.run([str(Path(sys.executable).parent / "labelspace"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def _mlflow(env, code: str, cwd) -> dict:
    script = textwrap.dedent(f"""
        import json, mlflow
        from labelspace.lifecycle.tracking import configure_mlflow
        configure_mlflow({str(cwd)!r})
        client = mlflow.MlflowClient()
    """) + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first_run(project):
    root, env = project
    result = _labelspace(env, "run", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_run_writes_metrics_of_both_models(project, first_run):
    root, _ = project
    report = json.loads((root / "reports" / "metrics.json").read_text())
    for model in ("labelspace", "bce"):
        for k in ("top3", "top5"):
            assert {"C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "n_images_without_labels"} <= set(report[model][k])
            assert all(0 <= report[model][k][m] <= 1 for m in ("C-F1", "O-F1"))
        assert 0 < report[model]["mAP"] <= 1
    assert {"per_class_f1.png", "training_curves.png", "label_vectors.png"} <= {p.name for p in (root / "reports" / "plots").iterdir()}
    assert "labelspace" in first_run.stdout and "mAP" in first_run.stdout  # the table


def test_run_is_tracked_and_registered_with_lineage(project, first_run):
    root, env = project
    info = _mlflow(env, """
        versions = client.search_model_versions("name='labelspace'")
        v = client.get_model_version_by_alias("labelspace", "challenger")
        run = client.get_run(v.run_id)
        history = client.get_metric_history(v.run_id, "labelspace/loss")
        artifacts = [a.path for a in client.list_artifacts(v.run_id, "plots")]
        artifacts += [a.path for a in client.list_artifacts(v.run_id, "data")]
        print(json.dumps({"n_versions": len(versions), "version": v.version, "tags": v.tags,
                          "metrics": run.data.metrics, "loss_steps": [m.step for m in history],
                          "artifacts": artifacts}))
    """, root)
    assert info["n_versions"] == 1 and str(info["version"]) == "1"
    for tag in LINEAGE_TAGS:
        assert info["tags"].get(tag), f"lineage tag {tag} missing: {info['tags']}"
    assert info["tags"]["model.backbone"] == "efficientnet_lite0"
    assert len(info["tags"]["code.git_commit"]) == 40  # trained from this checkout
    assert info["loss_steps"] == [1, 2]
    assert any(k.startswith("labelspace_top3") for k in info["metrics"])
    assert any(k.startswith("bce_top3") for k in info["metrics"])
    assert "plots/per_class_f1.png" in info["artifacts"]
    assert "data/ingest_report.json" in info["artifacts"]  # every skipped image, beside the metrics


def test_registered_model_ranks_labels_of_a_real_image_in_a_fresh_process(project, first_run, tiny_dataset):
    root, env = project
    image = next((tiny_dataset[0] / "Flickr").rglob("*.jpg"))
    ranked = _mlflow(env, f"""
        import base64, pandas as pd
        model = mlflow.pyfunc.load_model("models:/labelspace@challenger")
        frame = pd.DataFrame({{"image": [base64.b64encode(open({str(image)!r}, "rb").read()).decode()]}})
        out = model.predict(frame, params={{"top_k": 3}})
        print(json.dumps({{"labels": list(out["labels"][0]), "distances": [float(x) for x in out["distances"][0]]}}))
    """, root)
    concepts = tiny_dataset[2]
    assert len(ranked["labels"]) == 3 and set(ranked["labels"]) <= set(concepts)
    assert ranked["distances"] == sorted(ranked["distances"])


def _step_statuses(env, cwd) -> dict:
    script = textwrap.dedent("""
        import json
        from zenml.client import Client
        run = Client().get_pipeline("labelspace_training").last_run
        print(json.dumps({name: str(step.status.value) for name, step in run.steps.items()}))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_rerun_with_nothing_changed_is_cached_and_registers_nothing(project, first_run):
    """ZenML's cache owns step skipping: the two heads come from it, no new version is registered."""
    root, env = project
    cached = _labelspace(env, "run", cwd=root)
    assert cached.returncode == 0, cached.stderr[-3000:]
    statuses = _step_statuses(env, root)
    assert statuses["train"] == statuses["train_baseline"] == "cached"
    assert statuses["evaluate"] == "completed"  # writes reports/ for DVC on every run
    info = _mlflow(env, """
        print(json.dumps({"n": len(client.search_model_versions("name='labelspace'"))}))
    """, root)
    assert info["n"] == 1


def test_no_cache_retrains_from_scratch(project, first_run):
    """--no-cache reruns every step and ignores checkpoints."""
    root, env = project
    forced = _labelspace(env, "run", "--no-cache", cwd=root)
    assert forced.returncode == 0, forced.stderr[-3000:]
    statuses = _step_statuses(env, root)
    assert set(statuses.values()) == {"completed"}, statuses
    assert "resuming" not in forced.stdout + forced.stderr  # no checkpoint was resumed
    assert "labelspace epoch 1/2" in forced.stdout + forced.stderr  # it trained, one log line per epoch
    assert "\r" not in forced.stdout + forced.stderr  # no progress-bar carriage returns in a log
