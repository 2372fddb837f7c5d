"""The restore drill: real state on a team stack (a run whose gate promotes version 1, a second
version, a manual promotion, a rollback, a `dvc push`), `labelspace team backup` while it runs, the
stack stopped and its folder deleted, `labelspace team restore` into another folder on other ports;
then the registry's history and audit, the champion's predictions and the DVC remote are the same."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from team_support import (
    ANY_FREE_PORT,
    MODEL,
    QUIET,
    approver,
    assert_shared_login_may_not_promote,
    configure_dvc,
    member_env,
    missing,
    python_json,
    run,
    stack_folder,
    tiny_project,
)

from labelspace.deploy import backup, team

pytestmark = [pytest.mark.slow, pytest.mark.team]

if (_reason := missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

PREDICT = """
    import base64, json, pathlib, mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/labelspace-production@champion")
    images = sorted(pathlib.Path("data/fashion-canvas/Flickr").rglob("*.jpg"))[:4]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in images]})
    out = model.predict(frame, params={"top_k": 5})
    print(json.dumps({"labels": [list(x) for x in out["labels"]],
                      "distances": [[float(d) for d in x] for x in out["distances"]]}))
"""
SECOND_VERSION = f"""
    import json
    from mlflow import MlflowClient
    client = MlflowClient()
    first = client.get_model_version("{MODEL}", "1")
    lineage = {{k: v for k, v in first.tags.items() if not k.startswith("zenml.")}}
    second = client.create_model_version("{MODEL}", first.source, run_id=first.run_id, tags=lineage,
                                         model_id=first.source.removeprefix("models:/"),
                                         description="version 1's model, registered again")
    print(json.dumps([second.version, second.status]))
"""

ZENML_RUNS = """
    import json
    from zenml.client import Client
    runs = Client().list_pipeline_runs(size=100, sort_by="asc:created")
    print(json.dumps([[str(r.id), r.name, str(r.status)] for r in runs.items]))
"""


def _state(stack: dict, project: Path) -> dict:
    """What a team member reads from the registry: the champion's history, the audit of every
    version, the champion's predictions on the same images."""
    env = member_env(stack)
    state = {"history": json.loads(run(["labelspace", "history", "--json"], project, env).stdout), "audit": {}}
    for version in ("1", "2"):
        state["audit"][version] = json.loads(run(["labelspace", "audit", version, "--json"], project, env).stdout)
    state["predictions"] = python_json(PREDICT, project, env)
    zenml_config = project.parent / f"zenml-client-{stack['ports']['zenml']}"  # a login per server
    zenml_config.mkdir(mode=0o700, exist_ok=True)
    state["zenml_runs"] = python_json(ZENML_RUNS, project, {**env, "ZENML_CONFIG_PATH": str(zenml_config)})
    return state


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def drill(tiny_dataset, small_vectors, repo_root, tmp_path_factory):
    old, new = stack_folder("labelspace-drill-"), stack_folder("labelspace-restored-")
    new.rmdir()  # restore creates it
    backup_dir = tmp_path_factory.mktemp("backups") / "nightly"
    try:
        before = team.team_up(old, **ANY_FREE_PORT, workers=1, out=QUIET)
        project = tiny_project(tmp_path_factory.mktemp("drill-project"), before, tiny_dataset, small_vectors,
                               repo_root)
        env = member_env(before)
        ran = run(["labelspace", "run"], project, member_env(before, ci=True))  # the scheduler's run: its gate promotes
        assert "registered labelspace version 1" in ran.stdout + ran.stderr, ran.stdout[-3000:]
        assert python_json(SECOND_VERSION, project, env) == ["2", "READY"]
        shared = run(["labelspace", "promote", "--version", "2", "--reason", "the shared login's"], project, env,
                     check=False)
        assert_shared_login_may_not_promote(shared)
        person = member_env(before, **approver(before))
        run(["labelspace", "promote", "--version", "2", "--reason", "a person's promotion"], project, person)
        run(["labelspace", "rollback", "--reason", "back to the gate's choice"], project, person)
        run(["dvc", "push", "-q", "-r", team.DVC_REMOTE], project, env)
        state_before = _state(before, project)

        t0 = time.monotonic()
        manifest = backup.team_backup(old, backup_dir, out=QUIET)
        backup_s = time.monotonic() - t0
        team.team_down(old, out=QUIET)
        shutil.rmtree(old)
        t0 = time.monotonic()
        after = backup.team_restore(backup_dir, new, **ANY_FREE_PORT, workers=1, out=QUIET)
        restore_s = time.monotonic() - t0
        print(f"\nbackup {backup_s:.1f} s, restore (stack start included) {restore_s:.1f} s; "
              f"manifest seconds {manifest['seconds']}; buckets {manifest['services']['s3']}")
        yield SimpleNamespace(before=before, after=after, project=project, manifest=manifest, backup_dir=backup_dir,
                              state_before=state_before, state_after=_state(after, project))
    finally:
        team.team_down(old, out=QUIET)
        team.team_down(new, out=QUIET)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


def test_the_backup_holds_every_database_bucket_version_and_the_secrets_privately(drill):
    folder = drill.backup_dir
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (folder / "postgres").iterdir()) == ["mlflow.dump", "mlflow_auth.dump"]
    buckets = drill.manifest["services"]["s3"]
    assert set(buckets) >= set(drill.before["buckets"].values())  # every bucket of the stack
    assert buckets["dvc-remote"]["versions"] > 100 and buckets["mlflow-artifacts"]["versions"] > 10
    assert not folder.with_name(folder.name + ".partial").exists()


def test_the_restored_stack_runs_on_other_ports_in_another_folder(drill):
    assert drill.after["folder"] != drill.before["folder"] and not Path(drill.before["folder"]).exists()
    assert set(drill.after["ports"].values()).isdisjoint(drill.before["ports"].values())
    assert drill.after["started"] == list(team.SERVICES)


def test_history_and_audit_of_every_version_are_identical(drill):
    before, after = drill.state_before, drill.state_after
    assert [e["source"] for e in before["history"]["events"]] == ["gate", "manual", "rollback"], before["history"]
    assert [e["actor"].split(" ")[0] for e in before["history"]["events"]] == ["retrain", "abe", "abe"]
    assert before["history"]["holder"] == "1"
    assert after["history"] == before["history"]
    assert after["audit"] == before["audit"]


def test_the_zenml_runs_are_listed_on_the_restored_server(drill):
    before, after = drill.state_before["zenml_runs"], drill.state_after["zenml_runs"]
    assert before and all(status == "completed" for _, _, status in before), before
    assert after == before


def test_a_person_added_before_the_backup_logs_in_to_the_restored_stack(drill):
    folder = Path(drill.after["folder"])
    assert json.loads((folder / "users.json").read_text())["abe"]["state"] == "active"
    assert (folder / "users" / "abe.password").stat().st_mode & 0o777 == 0o600  # came with the backup
    person = member_env(drill.after, **approver(drill.after))  # reads that file: no new account
    history = json.loads(run(["labelspace", "history", "--json"], drill.project, person).stdout)
    assert history == drill.state_after["history"]


def test_the_restored_stack_still_refuses_the_shared_login_a_promotion(drill):
    refused = run(["labelspace", "promote", "--version", "2", "--reason", "after the restore"], drill.project,
                  member_env(drill.after), check=False)
    assert_shared_login_may_not_promote(refused)


def test_the_champion_gives_byte_identical_predictions(drill):
    assert json.dumps(drill.state_after["predictions"]) == json.dumps(drill.state_before["predictions"])


def test_dvc_pull_in_a_fresh_clone_gets_every_file(drill, tmp_path):
    env = member_env(drill.after)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(drill.project), str(clone)], tmp_path, env)
    configure_dvc(clone, drill.after, env)  # the restored stack's endpoint and the same key
    run(["dvc", "pull", "-q", "-r", team.DVC_REMOTE], clone, env)
    assert _tree(clone / "data" / "fashion-canvas") == _tree(drill.project / "data" / "fashion-canvas")
    assert "in sync" in run(["dvc", "status", "-c", "-r", team.DVC_REMOTE], clone, env).stdout
