"""The model lifecycle end to end: real `labelspace retrain` runs of the ZenML pipeline on a tiny real
dataset, its gate against the champion, audit, history, manual promote and rollback, overlapping
retrains, in isolated ZenML and MLflow folders. One project serves every test, in order."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from labelspace.cli import main as cli_main

pytestmark = pytest.mark.slow

LABELSPACE = str(Path(sys.executable).parent / "labelspace")
# Rules a 1-epoch model on 96 images can pass; regressions are not allowed at all.
RULES = {"auto": True, "metrics": ["labelspace.top3.O-F1", "labelspace.mAP"],
         "minimum": {"labelspace.top3.O-F1": 0.05, "labelspace.mAP": 0.05},
         "max_regression": {"labelspace.top3.O-F1": 0.0, "labelspace.mAP": 0.0}}


@pytest.fixture(scope="module")
def project(tiny_dataset, small_vectors, tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp("lifecycle")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset=str(tiny_dataset[0]), image_size=32)
    params["vectors"]["path"] = str(small_vectors)
    params["train"].update(epochs=1, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    params["promote"] = RULES
    write_params(root / "params.yaml", params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_", "LABELSPACE_"))}
    env.update(LABELSPACE_PARAMS=str(root / "params.yaml"), ZENML_CONFIG_PATH=str(root / "zenml"),
               ZENML_ANALYTICS_OPT_IN="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", LABELSPACE_PROGRESS="log")
    return root, env, params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def labelspace(env, *args, cwd, params: Path | None = None, timeout=900):
    if params is not None:
        env = {**env, "LABELSPACE_PARAMS": str(params)}
    done = subprocess.run([LABELSPACE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    done.output = done.stdout + done.stderr
    return done


def registry(root: Path):
    """The project's MLflow, read in this process (its sqlite file beside the params)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def zenml_stages(env, cwd, *versions) -> list[str]:
    """The ZenML model version stage of each MLflow version, read in a process on the project's ZenML store."""
    script = textwrap.dedent(f"""
        import json, mlflow
        from zenml.client import Client
        client = mlflow.MlflowClient(tracking_uri="sqlite:///{cwd}/mlflow/mlflow.db")
        stages = []
        for n in {list(map(str, versions))!r}:
            tags = client.get_model_version("labelspace", n).tags
            stages.append(str(Client().get_model_version(tags["zenml.model_name"], tags["zenml.model_version"]).stage))
        print(json.dumps(stages))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def first(project):
    root, env, _ = project
    result = labelspace(env, "retrain", cwd=root)
    assert result.returncode == 0, result.output[-5000:]
    return result


def test_first_retrain_trains_and_the_gate_promotes_by_the_minimums(project, first):
    root, env, _ = project
    assert "version 1 promoted to champion (replacing none)" in first.stdout
    client = registry(root)
    v = client.get_model_version("labelspace", "1")
    served = client.get_model_version("labelspace-production", "1")  # the copy of version 1 that serves
    assert served.tags["candidate.version"] == "1" and served.source == "models:/labelspace/1"
    gate_run = client.get_run(v.tags["gate.run_id"])
    info = {"aliases": sorted(v.aliases + served.aliases), "tags": {**v.tags, **served.tags},
            "gate_tags": gate_run.data.tags,
            "gate_metrics": gate_run.data.metrics,
            "artifacts": [a.path for a in client.list_artifacts(gate_run.info.run_id, "gate")],
            "params": [a.path for a in client.list_artifacts(v.run_id, "params")]}
    assert info["aliases"] == ["challenger", "champion"]
    tags = info["tags"]
    assert tags["gate.decision"] == "promoted"
    assert tags["gate.compared_with"] == "none: no champion yet"
    assert "no champion yet" in tags["gate.reason"] and float(tags["gate.challenger.labelspace.mAP"]) >= 0.05
    assert tags["champion.source"] == "gate" and tags["champion.event_seq"] == "1"
    assert len(tags["code.source_hash"]) == 16
    assert {"gate/comparison.md", "gate/decision.json", "gate/side_by_side.png"} <= set(info["artifacts"])
    assert info["params"] == ["params/params.yaml"]  # params.yaml itself, beside the hash
    assert info["gate_tags"]["lifecycle.kind"] == "gate" and "challenger.labelspace.mAP" in info["gate_metrics"]
    assert zenml_stages(env, root, 1) == ["production"]  # ZenML tells the same story as the registry


def test_a_retrain_with_nothing_changed_trains_nothing(project, first):
    root, env, _ = project
    result = labelspace(env, "retrain", cwd=root)
    assert result.returncode == 0, result.output[-3000:]
    assert "nothing changed since version 1 (gate: promoted): not training" in result.stdout
    assert "labelspace epoch" not in result.output
    assert len(registry(root).search_model_versions("name = 'labelspace'")) == 1


@pytest.fixture(scope="module")
def worse(project, first):
    """A challenger made worse on purpose (one epoch at a tiny learning rate) and a minimum no model meets."""
    root, env, params = project
    changed = json.loads(json.dumps(params))
    changed["train"].update(lr=1e-7)
    changed["promote"]["minimum"]["labelspace.mAP"] = 0.999
    path = write_params(root / "params-worse.yaml", changed)
    result = labelspace(env, "retrain", cwd=root, params=path)
    return path, result


def test_the_gate_rejects_a_worse_challenger_scored_beside_the_champion(project, worse):
    root, env, _ = project
    _, result = worse
    assert result.returncode == 3, result.output[-5000:]
    assert "version 2 rejected by the gate, champion stays version 1" in result.stderr
    assert "labelspace.mAP" in result.stderr and "below the minimum 0.9990" in result.stderr
    client = registry(root)
    v1, v2 = (client.get_model_version("labelspace", n) for n in ("1", "2"))
    info = {"v2": v2.tags, "v2_aliases": v2.aliases, "v1_metrics": client.get_run(v1.run_id).data.metrics,
            "champion": client.get_model_version_by_alias("labelspace-production", "champion").tags[
                "candidate.version"]}
    tags = info["v2"]
    assert str(info["champion"]) == "1" and info["v2_aliases"] == ["challenger"]
    assert tags["gate.decision"] == "rejected" and tags["gate.compared_with"] == "1"
    # The champion was scored again on the same test split in this run: its figures are its own.
    assert float(tags["gate.champion.labelspace.mAP"]) == pytest.approx(info["v1_metrics"]["labelspace_mAP"], abs=1e-4)
    assert float(tags["gate.champion.labelspace.top3.O-F1"]) == pytest.approx(
        info["v1_metrics"]["labelspace_top3_O_F1"], abs=1e-4)
    for metric in RULES["metrics"]:  # max_regression 0: a reason for every metric below the champion's
        ours, theirs = float(tags[f"gate.challenger.{metric}"]), float(tags[f"gate.champion.{metric}"])
        reported = re.search(rf"{re.escape(metric)} {ours:.4f} is [0-9.]+ below champion v1's", tags["gate.reason"])
        assert bool(reported) == (ours < theirs), (metric, ours, theirs, tags["gate.reason"])


def _lock_holder_pid(root) -> int | None:
    tickets = registry(root).search_model_versions("name = 'labelspace--retrain-lock'")
    return int(min(tickets, key=lambda v: int(v.version)).tags["lock.pid"]) if tickets else None


def test_overlapping_retrains_exclude_each_other_and_a_killed_one_blocks_nothing(project, worse):
    root, env, params = project
    changed = json.loads(json.dumps(params))
    changed["train"]["seed"] = 7  # something to train
    busy = subprocess.Popen([LABELSPACE, "retrain"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**env, "LABELSPACE_PARAMS": str(write_params(root / "params-seed.yaml", changed))},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while _lock_holder_pid(root) != busy.pid:
            assert busy.poll() is None, busy.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first retrain never took the lock"
            time.sleep(1)
        second = labelspace(env, "retrain", cwd=root)
        assert second.returncode == 75, second.output[-3000:]
        assert "another retrain is running" in second.stderr and f"PID {busy.pid}" in second.stderr
    finally:
        os.killpg(busy.pid, signal.SIGKILL)  # a retrain killed mid-way: its ticket stays behind
        busy.wait()
    assert _lock_holder_pid(root) == busy.pid
    third = labelspace(env, "retrain", cwd=root, params=worse[0])
    assert third.returncode == 0, third.output[-3000:]
    # A dead PID on this machine frees the lock at once: no "waiting for" the lease to run out.
    assert "removing the stale ticket" in third.stderr and "is gone" in third.stderr
    assert "waiting for" not in third.stderr
    assert "nothing changed since version 2 (gate: rejected)" in third.stdout


@pytest.fixture
def in_project(project, monkeypatch, capsys):
    """Run a command in this process against the project (no ZenML involved): returns (code, out, err)."""
    root, _, _ = project
    monkeypatch.setenv("LABELSPACE_PARAMS", str(root / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    monkeypatch.chdir(root)

    def command(*args):
        capsys.readouterr()
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return command


def test_audit_shows_what_made_a_version(in_project, worse):
    code, out, err = in_project("audit", "2", "--json")
    assert code == 0, err
    a = json.loads(out)
    assert a["version"] == "2" and a["params"]["train"]["lr"] == 1e-7 and a["params"]["train"]["epochs"] == 1
    assert {"data.dataset_version", "data.vectors_version", "code.git_commit", "code.git_dirty", "params.hash",
            "zenml.run_id", "code.source_hash"} <= set(a["lineage"])
    assert a["gate"]["decisions"][0]["decision"] == "rejected" and a["gate"]["decisions"][0]["compared_with"] == "1"
    assert "labelspace_mAP" in a["metrics"]
    assert a["data_pins"]["data.dataset_version"]["note"].startswith("not tracked by DVC")
    code, out, _ = in_project("audit", "@champion")
    assert code == 0 and "labelspace version 1: READY" in out
    assert "became champion (gate by" in out and "train.epochs = 1" in out

    code, out, err = in_project("audit", "--diff", "1", "2")
    assert code == 0, err
    assert "train.lr: 0.001 -> 1e-07" in out and "promote.minimum.labelspace.mAP: 0.05 -> 0.999" in out
    assert "params.hash:" in out and "labelspace_mAP:" in out

    dataset = a["lineage"]["data.dataset_version"]
    code, out, _ = in_project("audit", "--dataset-version", dataset[:20], "--json")
    assert [r["version"] for r in json.loads(out)] == ["1", "2"]


def test_manual_promote_and_rollback_are_recorded_and_zenml_follows(project, worse, in_project):
    root, env, _ = project
    promoted = labelspace(env, "promote", "--version", "2", "--reason", "customer asked for the v2 behaviour", cwd=root)
    assert promoted.returncode == 0, promoted.output[-3000:]
    assert "labelspace-production@champion: labelspace version 1 -> version 2 (manual, history #2)" in promoted.stdout
    zenml_versions = [registry(root).get_model_version("labelspace", n).tags["zenml.model_version"] for n in "12"]
    assert (f"ZenML model labelspace version {zenml_versions[1]}: production; "
            f"ZenML model labelspace version {zenml_versions[0]}: archived") in promoted.stdout

    back = labelspace(env, "rollback", "--reason", "v2 misses garments", cwd=root)
    assert back.returncode == 0, back.output[-3000:]
    assert "labelspace-production@champion: labelspace version 2 -> version 1 (rollback, history #3)" in back.stdout
    assert zenml_stages(env, root, 1, 2) == ["production", "archived"]

    code, out, _ = in_project("history", "--json")
    history = json.loads(out)
    assert history["holder"] == "1" and history["previous"] == "2"
    assert [(e["seq"], e["version"], e["previous"], e["source"], e["status"]) for e in history["events"]] == [
        (1, "1", None, "gate", "moved"), (2, "2", "1", "manual", "moved"), (3, "1", "2", "rollback", "moved")]
    assert history["events"][1]["reason"] == "customer asked for the v2 behaviour"
    code, out, _ = in_project("history")
    assert "labelspace-production@champion now names version 1; previous-champion: version 2" in out
