"""People and roles on a real team stack, proved with the servers' own REST APIs (not labelspace):
a trainer registers candidates but gets 403 on production and on the promotion records, a reader
cannot register, an approver and the `retrain` service account can move production, anonymous
gets 401; ZenML logins follow add, disable and reset-password; no password in a log or in `ps`.
Then through labelspace: a trainer's promote is refused in one line that says who may, a trainer's
passing gate leaves the promotion to an approver, the service account's gate promotes, an approver
promotes, every move in the history names its login and `audit --verify` finds the chain whole.
`team up` alone (no personal user added yet) already protects production: it creates every resource
of the role table as admin, the shared `team` login is a trainer, `retrain` is `team env --ci`'s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from team_support import ANY_FREE_PORT, QUIET, VENV_BIN, missing, stack_folder

from labelspace.app import TELEMETRY_OFF
from labelspace.deploy import team
from labelspace.deploy.processes import http_status
from labelspace.deploy.users import (
    CANDIDATE_MODEL,
    LIFECYCLE_EXPERIMENT,
    PRODUCTION_MODEL,
    SERVICE_ACCOUNT,
    TRAINING_EXPERIMENT,
    Accounts,
)

pytestmark = [pytest.mark.team, pytest.mark.skipif(missing() is not None, reason=str(missing()))]


@pytest.fixture(scope="module")
def stack():
    folder = stack_folder("labelspace-roles-")
    try:
        info = team.team_up(folder, **ANY_FREE_PORT, workers=1, out=QUIET)
        st = team.read_stack(folder)
        accounts = Accounts(st.layout, st.config, st.sec)
        shared = {"team": (info["env"]["MLFLOW_TRACKING_USERNAME"], info["env"]["MLFLOW_TRACKING_PASSWORD"]),
                  SERVICE_ACCOUNT: (info["ci_env"]["MLFLOW_TRACKING_USERNAME"],
                                    info["ci_env"]["MLFLOW_TRACKING_PASSWORD"])}
        status, text = http_status(f"{info['mlflow_uri']}/api/2.0/mlflow/registered-models/create", auth=shared["team"],
                                   method="POST", body={"name": PRODUCTION_MODEL}, timeout=30)
        assert status == 400 and "RESOURCE_ALREADY_EXISTS" in text, text  # team up made it: the shared login owns nothing
        for name, role in (("tess", "trainer"), ("abe", "approver"), ("rita", "reader")):
            accounts.add(name, role)
        logins = {name: (name, accounts.password_file(name).read_text().strip()) for name in accounts.users()}
        yield info, accounts, {**logins, **shared}
    finally:
        team.team_down(folder, out=QUIET)
        shutil.rmtree(folder, ignore_errors=True)


def api(info, path: str, login=None, body=None, method="POST"):
    status, text = http_status(f"{info['mlflow_uri']}{path}", auth=login, method=method, body=body, timeout=30)
    return status, text


def experiment_id(info, name: str, login) -> str:
    import json

    status, text = api(info, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}", login, method="GET")
    assert status == 200, text
    return json.loads(text)["experiment"]["experiment_id"]


def new_version(info, model: str, login) -> tuple[int, str]:
    """A run in the training experiment and a version of `model` from it, as `login`."""
    import json

    status, text = api(info, "/api/2.0/mlflow/runs/create", login,
                       {"experiment_id": experiment_id(info, TRAINING_EXPERIMENT, login)})
    if status != 200:
        return status, text
    run = json.loads(text)["run"]["info"]
    status, text = api(info, "/api/2.0/mlflow/model-versions/create", login,
                       {"name": model, "source": f"{run['artifact_uri']}/model", "run_id": run["run_id"]})
    return status, (json.loads(text)["model_version"]["version"] if status == 200 else text)


def test_roles_are_enforced_by_mlflow_itself(stack):
    info, _, logins = stack
    tess, abe, rita, gate = logins["tess"], logins["abe"], logins["rita"], logins[SERVICE_ACCOUNT]
    shared = logins["team"]
    assert shared[0] == "team" and gate[0] == SERVICE_ACCOUNT
    assert api(info, "/api/2.0/mlflow/registered-models/search", None, method="GET")[0] == 401
    assert new_version(info, CANDIDATE_MODEL, rita)[0] == 403  # a reader cannot register
    status, candidate = new_version(info, CANDIDATE_MODEL, tess)  # a trainer can
    assert status == 200, candidate
    source = f"models:/{CANDIDATE_MODEL}/{candidate}"
    # production: a trainer cannot add a version, move its alias, delete a version or write a record
    assert api(info, "/api/2.0/mlflow/model-versions/create", tess, {"name": PRODUCTION_MODEL, "source": source})[0] == 403
    status, text = api(info, "/api/2.0/mlflow/model-versions/create", abe, {"name": PRODUCTION_MODEL, "source": source})
    assert status == 200, text  # an approver copies the candidate into production
    alias = {"name": PRODUCTION_MODEL, "alias": "champion", "version": "1"}
    assert api(info, "/api/2.0/mlflow/registered-models/alias", tess, alias)[0] == 403
    assert api(info, "/api/2.0/mlflow/registered-models/alias", rita, alias)[0] == 403
    assert api(info, "/api/2.0/mlflow/registered-models/alias", shared, alias)[0] == 403  # the shared login: a trainer
    assert api(info, "/api/2.0/mlflow/registered-models/alias", abe, alias)[0] == 200
    assert api(info, "/api/2.0/mlflow/registered-models/alias", gate, alias)[0] == 200  # the gate's account
    assert api(info, "/api/2.0/mlflow/model-versions/delete", tess, {"name": PRODUCTION_MODEL, "version": "1"},
               method="DELETE")[0] == 403
    import json

    lifecycle = experiment_id(info, LIFECYCLE_EXPERIMENT, abe)
    status, text = api(info, "/api/2.0/mlflow/runs/create", abe, {"experiment_id": lifecycle})
    assert status == 200, text
    record = json.loads(text)["run"]["info"]["run_id"]
    assert api(info, "/api/2.0/mlflow/runs/set-tag", tess, {"run_id": record, "key": "event.reason", "value": "x"})[0] == 403
    assert api(info, "/api/2.0/mlflow/runs/delete", tess, {"run_id": record})[0] == 403
    assert api(info, "/api/2.0/mlflow/runs/create", tess, {"experiment_id": lifecycle})[0] == 403
    assert api(info, "/api/2.0/mlflow/runs/set-tag", shared, {"run_id": record, "key": "event.reason", "value": "x"})[0] == 403


GATE = textwrap.dedent("""
    import sys
    from labelspace.config import PromoteConfig
    from labelspace.lifecycle.promotion_gate import run_gate
    from labelspace.lifecycle.scoring import Scored
    rules = PromoteConfig(auto=True, metrics=["labelspace.mAP"], minimum={"labelspace.mAP": 0.1},
                          max_regression={"labelspace.mAP": 0.5})
    result = run_gate("labelspace", sys.argv[1], {"labelspace": {"mAP": 0.9}}, rules,
                      lambda champion: Scored({"labelspace": {"mAP": 0.8}}, None))
    print(result.line())
    print("GATE", result.decision, result.gate_run_id)
""")


def as_login(accounts, name: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`labelspace ARGV` (or python -c, for argv[0] == '-c') as `name`, with only the MLflow variables of
    `team user env NAME` (`team env` for the shared `team`, `team env --ci` for retrain)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ZENML_", "LABELSPACE_", "AWS_"))}
    env.update(TELEMETRY_OFF)
    if name in ("team", SERVICE_ACCOUNT):
        info = team.team_info(accounts.layout.root)
        given = info["env"] if name == "team" else info["ci_env"]
    else:
        given = accounts.env(name)
    env.update({k: v for k, v in given.items() if k.startswith("MLFLOW_")})
    command = [sys.executable, *argv] if argv[0] == "-c" else [str(VENV_BIN / "labelspace"), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_promotion_through_labelspace_follows_the_roles(stack, tmp_path):
    info, accounts, logins = stack
    tess = logins["tess"]
    first, second = (new_version(info, CANDIDATE_MODEL, tess)[1] for _ in range(2))  # a trainer's candidates

    refused = as_login(accounts, "tess", "promote", "--version", first, "--reason", "mine is better", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "labelspace promote: error: tess may not promote: the MLflow server refused it (403: it needs EDIT on the "
        f"registered model {PRODUCTION_MODEL}); approvers, the retrain service account (the scheduled gate) and "
        "admins change production: ask an approver (docs/team-server.md, People and roles)"]
    shared = as_login(accounts, "team", "promote", "--version", first, "--reason", "shared", cwd=tmp_path)
    assert shared.returncode == 2 and shared.stderr.strip().splitlines() == [
        refused.stderr.strip().replace("tess may not", "team may not")], shared.stderr  # the shared login too

    judged = as_login(accounts, "tess", "-c", GATE, first, cwd=tmp_path)  # a trainer's gate that passes
    assert judged.returncode == 0, judged.stderr[-3000:]
    line, verdict = judged.stdout.strip().splitlines()[-2:]
    assert line == (f"gate: the challenger, version {first}, passed the gate; an approver must promote it to "
                    f"{PRODUCTION_MODEL}: labelspace promote --version {first} --reason ...")
    decision_run = verdict.split()[2]
    status, text = api(info, f"/api/2.0/mlflow/runs/get?run_id={decision_run}", tess, method="GET")
    assert status == 200 and json.loads(text)["run"]["info"]["experiment_id"] == experiment_id(
        info, TRAINING_EXPERIMENT, tess)  # recorded where a trainer may write

    gated = as_login(accounts, SERVICE_ACCOUNT, "-c", GATE, second, cwd=tmp_path)  # the scheduler's gate
    assert gated.returncode == 0, gated.stderr[-3000:]
    assert gated.stdout.strip().splitlines()[-1].startswith("GATE promoted"), gated.stdout
    approved = as_login(accounts, "abe", "promote", "--version", first, "--reason", "approved", cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr[-3000:]
    assert f"-> version {first} (manual, " in approved.stdout

    listed = as_login(accounts, "tess", "history", "--json", cwd=tmp_path)  # anyone may read the history
    assert listed.returncode == 0, listed.stderr[-3000:]
    history = json.loads(listed.stdout)
    moves = [(e["version"], e["source"], e["actor"].split(" ")[0]) for e in history["events"]]
    assert moves[-2:] == [(second, "gate", SERVICE_ACCOUNT), (first, "manual", "abe")]
    assert all(actor in ("abe", SERVICE_ACCOUNT) for _, _, actor in moves)  # every move names its login
    assert history["holder"] == first
    verified = as_login(accounts, "tess", "audit", "--verify", cwd=tmp_path)
    assert verified.returncode == 0 and "is whole" in verified.stdout, verified.stdout + verified.stderr


def zenml_login(info, login) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    body = urllib.parse.urlencode({"username": login[0], "password": login[1]}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{info['zenml_uri']}/api/v1/login", data=body,
                                                           method="POST"), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_zenml_logins_follow_disable_and_reset_and_no_password_leaks(stack):
    info, accounts, logins = stack
    assert zenml_login(info, logins["rita"]) == 200
    accounts.disable("rita")
    assert zenml_login(info, logins["rita"]) in (401, 403)
    assert not accounts.password_file("rita").exists() and accounts.users()["rita"]["state"] == "disabled"
    new = accounts.reset_password("rita").read_text().strip()
    assert new != logins["rita"][1] and zenml_login(info, ("rita", new)) == 200
    assert accounts.password_file("rita").stat().st_mode & 0o077 == 0
    assert (accounts.folder.stat().st_mode & 0o077) == 0 and accounts.registry_file.stat().st_mode & 0o077 == 0
    deadline = time.monotonic() + 90  # MLflow's auth cache: a worker may accept the old password for a minute
    while api(info, "/api/2.0/mlflow/registered-models/search", logins["rita"], method="GET")[0] != 401:
        assert time.monotonic() < deadline, "the disabled password still works on MLflow after 90 s"
        time.sleep(5)
    assert api(info, "/api/2.0/mlflow/registered-models/search", ("rita", new), method="GET")[0] == 200

    passwords = [p for _, p in logins.values()] + [new]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    logs = "".join(p.read_text(errors="replace") for p in accounts.layout.root.rglob("*.log") if p.is_file())
    for password in passwords:
        assert password not in ps and password not in logs
