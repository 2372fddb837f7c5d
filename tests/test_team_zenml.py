"""The team's shared ZenML server, end to end: member A runs the real pipeline (tiny project) with
only `labelspace team env`'s variables; member B, in another folder with another ZENML_CONFIG_PATH
and the same variables, lists A's run, loads one of its step artifacts from the S3 store and sees
the same ZenML model version; CI's API key logs in too. Then the ZenML server is SIGKILLed during a
run, `team up` brings it back and the rerun of the command completes with nothing lost. No key file
of the stack or of a member is readable by others, and no command line carries a secret. The stack
runs in a temporary folder on free ports and is stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from team_support import run_until_step

from labelspace.app import TELEMETRY_OFF
from labelspace.deploy import mariadb, postgres, processes, s3server, team, zenml_server

pytestmark = [pytest.mark.slow, pytest.mark.team]

VENV_BIN = Path(sys.executable).parent
QUIET = lambda *_: None  # noqa: E731
PIPELINE = "labelspace_training"


def _missing() -> str | None:
    try:
        postgres.pg_bin()
        s3server.weed_binary()
        mariadb._binary("mariadbd")
    except team.TeamError as e:
        return str(e)
    import importlib.util

    for module in ("psycopg2", "boto3", "s3fs", "pymysql", "uvicorn", "fastapi"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[team]')"
    return None


if (_reason := _missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


def _member_env(stack: dict, config_path: Path, *, ci: bool = False, **extra: str) -> dict[str, str]:
    """A member's environment: the caller's minus every MLflow, ZenML, AWS, PostgreSQL, DVC and
    labelspace setting, plus what `team env` (or `team env --ci`) prints, its own ZenML config folder."""
    dropped = ("MLFLOW_", "ZENML_", "AWS_", "PG", "DVC_", "LABELSPACE_", "MYSQL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(TELEMETRY_OFF)
    env.update(stack["ci_env"] if ci else stack["env"])
    env.update(ZENML_CONFIG_PATH=str(config_path), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    env.update(extra)
    assert not any(stack["folder"] in value for value in env.values())  # nothing points at the server's files
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"\n[{time.monotonic() - t0:6.1f} s] {' '.join(argv)[:100]}: exit {result.returncode}")
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def _python(code: str, cwd: Path, env: dict[str, str]) -> dict:
    result = _run([sys.executable, "-c", textwrap.dedent(code)], cwd, env, timeout=300)
    return json.loads(result.stdout.strip().splitlines()[-1])


# What a member's ZenML client sees of the pipeline's runs (printed as JSON on the last line).
RUNS = f"""
    import json
    from zenml.client import Client
    client = Client()
    runs = client.list_pipeline_runs(pipeline_name={PIPELINE!r}, sort_by="asc:created", size=50).items
    mvs = client.list_model_versions("labelspace", size=50).items
    print(json.dumps({{
        "user": client.active_user.name,
        "runs": [{{"id": str(r.id), "status": str(r.status.value), "user": r.user.name if r.user else None,
                  "model_version": str(r.model_version.id) if r.model_version else None,
                  "stack": r.stack.name if r.stack else None}} for r in runs],
        "model_versions": {{str(v.id): v.name for v in mvs}},
    }}))
"""


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack():
    # Not under pytest's tmp_path: as root, PostgreSQL and MariaDB run as their own users, which
    # cannot enter /tmp/pytest-of-root (mode 700).
    folder = Path(tempfile.mkdtemp(prefix="labelspace-zenml-"))
    folder.chmod(0o711)
    ports = {f"{name}_port": 0 for name in team.SERVICES}
    try:
        t0 = time.monotonic()
        info = team.team_up(folder, workers=1, out=QUIET, **ports)
        print(f"\n[{time.monotonic() - t0:6.1f} s] team up (fresh stack)")
        yield info
    finally:
        team.team_down(folder, out=QUIET)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def member_a(stack, tiny_dataset, small_vectors, repo_root, tmp_path_factory):
    """Member A's project (params.yaml shrunk to run in about a minute) and its first `labelspace run`."""
    root = tmp_path_factory.mktemp("member-a")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset="data/fashion-canvas", image_size=32)
    params["vectors"]["path"] = str(small_vectors)
    params["train"].update(epochs=1, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_dataset[0], root / "data" / "fashion-canvas")
    env = _member_env(stack, root / "zenml-config")
    setup = _run([str(VENV_BIN / "labelspace"), "setup-stack"], root, env)
    assert f"'{zenml_server.TEAM_STACK}' is active" in setup.stdout, setup.stdout
    run = _run([str(VENV_BIN / "labelspace"), "run"], root, env)
    return {"root": root, "env": env, "output": run.stdout + run.stderr, "view": _python(RUNS, root, env)}


@pytest.fixture(scope="module")
def member_b(stack, tmp_path_factory):
    """Member B: an empty folder, its own ZenML config, only `team env`'s variables. B uses ZenML's
    client directly, which writes its login token with the umask's mode: as docs/team-server.md says,
    B keeps the config folder private (labelspace's own commands make it so themselves)."""
    root = tmp_path_factory.mktemp("member-b")
    (root / "zenml-config").mkdir(mode=0o700)
    return {"root": root, "env": _member_env(stack, root / "zenml-config")}


# ------------------------------------------------------------------------------------------ tests


def test_member_a_runs_on_the_team_stack(stack, member_a):
    (run,) = member_a["view"]["runs"]
    assert run["status"] == "completed" and run["user"] == zenml_server.TEAM_USER
    assert run["stack"] == zenml_server.TEAM_STACK
    assert not (member_a["root"] / "mlruns").exists()  # tracked on the team's MLflow, not locally


def _mlflow(stack: dict, monkeypatch):
    from mlflow import MlflowClient

    for key, value in stack["env"].items():
        if key.startswith("MLFLOW_"):
            monkeypatch.setenv(key, value)
    return MlflowClient(tracking_uri=stack["mlflow_uri"], registry_uri=stack["mlflow_uri"])


def test_member_b_lists_the_run_loads_an_artifact_from_s3_and_sees_the_model_version(stack, member_a, member_b,
                                                                                     monkeypatch):
    seen = _python(RUNS, member_b["root"], member_b["env"])
    assert seen["user"] == zenml_server.TEAM_USER
    assert seen["runs"] == member_a["view"]["runs"]
    assert seen["model_versions"] == member_a["view"]["model_versions"]
    run = seen["runs"][0]
    assert run["model_version"] in seen["model_versions"]
    loaded = _python(f"""
        import json
        from labelspace.steps import use_package_as_source_root
        from zenml.client import Client
        use_package_as_source_root()  # where ZenML finds the materializers of labelspace's artifacts
        run = Client().get_pipeline_run({run['id']!r})
        labels = run.steps["embed_labels"].outputs["labels"][0]
        metrics = run.steps["evaluate"].outputs["metrics"][0]
        print(json.dumps({{"uri": labels.uri, "labels": labels.load(), "metrics_uri": metrics.uri,
                          "metrics_keys": sorted(metrics.load())}}))
    """, member_b["root"], member_b["env"])
    bucket = stack["buckets"]["zenml"]
    assert loaded["uri"].startswith(f"s3://{bucket}/") and loaded["metrics_uri"].startswith(f"s3://{bucket}/")
    assert loaded["labels"] and all(isinstance(label, str) for label in loaded["labels"])
    assert loaded["metrics_keys"]
    s3 = s3server.s3_client(stack["ports"]["s3"], json.loads(Path(stack["folder"], "secrets.json").read_text()))
    prefix = loaded["uri"].removeprefix(f"s3://{bucket}/")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) > 0
    # The MLflow version the run registered names the same ZenML model version.
    version = _mlflow(stack, monkeypatch).get_model_version_by_alias("labelspace", "challenger")
    assert version.tags["zenml.run_id"] == run["id"]
    assert version.tags.get("zenml.model_version") in seen["model_versions"].values()


def test_ci_logs_in_with_the_api_key(stack, member_a, tmp_path):
    assert "ZENML_STORE_PASSWORD" not in stack["ci_env"] and stack["ci_env"]["ZENML_STORE_API_KEY"]
    seen = _python(RUNS, tmp_path, _member_env(stack, tmp_path / "zenml-config", ci=True))
    assert seen["user"] == zenml_server.CI_ACCOUNT and seen["runs"] == member_a["view"]["runs"]


def _secret_values(stack: dict) -> set[str]:
    sec = json.loads(Path(stack["folder"], "secrets.json").read_text())
    return {v for v in sec.values() if isinstance(v, str) and len(v) >= 16}


def _private(path: Path, top: Path) -> bool:
    """Whether only the owner can read `path`: the file is not readable by group and others, or a
    folder between it and `top` (included) is the owner's alone."""
    if path.stat().st_mode & 0o044 == 0:
        return True
    for folder in path.parents:
        if folder.stat().st_mode & 0o077 == 0:
            return True
        if folder == top:
            return False
    return False


def test_no_key_file_is_readable_by_others_and_no_command_line_has_a_secret(stack, member_a, member_b):
    secrets_json = Path(stack["folder"], "secrets.json")
    assert secrets_json.stat().st_mode & 0o777 == 0o600
    values = _secret_values(stack)
    exposed = []
    roots = [Path(stack["folder"]), member_a["env"]["ZENML_CONFIG_PATH"], member_b["env"]["ZENML_CONFIG_PATH"]]
    for top in map(Path, roots):
        for path in top.rglob("*"):
            if not path.is_file() or path.stat().st_size > 5_000_000:
                continue
            text = path.read_bytes()
            holds_secret = any(v.encode() in text for v in values) or path.name == "credentials.yaml"
            if holds_secret and not _private(path, top):
                exposed.append(f"{path} ({oct(path.stat().st_mode & 0o777)})")
    assert exposed == []
    for name in team.SERVICES:
        record = processes.running(processes.Layout(Path(stack["folder"])), name)
        assert record, f"{name} is not running"
        for pid in (record["pid"], *processes.related(record["pid"])):
            line = processes.cmdline(pid)
            assert not any(v in line for v in values), f"{name}: a secret on the command line of PID {pid}"


def test_zenml_server_killed_during_a_run_then_team_up_and_the_rerun_loses_nothing(stack, member_a, monkeypatch):
    """A changed parameter, so that the heads train again; SIGKILL the ZenML server once the train
    step has started, `team up`, then the command again if the first one failed."""
    root, env = member_a["root"], {**member_a["env"], "ZENML_LOGGING_VERBOSITY": "INFO"}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["batch_size"] = 16
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    layout = processes.Layout(Path(stack["folder"]))
    record = processes.running(layout, "zenml")
    with run_until_step("train", root, env) as (proc, lines):
        os.kill(record["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        while processes.alive(record["pid"]):
            time.sleep(0.1)
        info = team.team_up(stack["folder"], workers=1, out=QUIET)
        print(f"\n[{time.monotonic() - t0:6.1f} s] ZenML server SIGKILLed during the train step; team up")
        assert info["started"] == ["zenml"]
        rc = proc.wait(timeout=900)
    print(f"the interrupted run: exit {rc}\n" + textwrap.indent("".join(lines[-15:]), "    | "))
    if rc != 0:
        _run([str(VENV_BIN / "labelspace"), "run"], root, member_a["env"])
    after = _python(RUNS, root, member_a["env"])
    first = member_a["view"]["runs"][0]
    assert after["runs"][0] == first  # the first run, its model version and stack: all still there
    assert after["runs"][-1]["status"] == "completed"
    assert set(member_a["view"]["model_versions"]) <= set(after["model_versions"])
    # The run of the rerun is whole: its artifacts load from S3.
    loaded = _python(f"""
        import json
        from labelspace.steps import use_package_as_source_root
        from zenml.client import Client
        use_package_as_source_root()  # where ZenML finds the materializers of labelspace's artifacts
        run = Client().get_pipeline_run({after['runs'][-1]['id']!r})
        print(json.dumps({{"steps": sorted(run.steps), "labels": run.steps["embed_labels"].outputs["labels"][0].load(),
                          "registered": run.steps["register"].outputs["registered_model_version"][0].load()}}))
    """, root, member_a["env"])
    assert {"ingest", "embed_labels", "train", "train_baseline", "evaluate", "register"} <= set(loaded["steps"])
    assert loaded["labels"] and loaded["registered"]
    versions = _mlflow(stack, monkeypatch).search_model_versions("name = 'labelspace'")
    assert versions and all(v.status == "READY" for v in versions)
    assert {v.tags.get("zenml.run_id") for v in versions} <= {r["id"] for r in after["runs"]}
