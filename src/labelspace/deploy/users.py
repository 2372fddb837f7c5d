"""People and roles on the team stack: one personal login per person, on MLflow and on the ZenML server.

`labelspace team user add NAME --role reader|trainer|approver|admin` creates the MLflow user and
grants its role's permissions (the table ROLE_GRANTS, which docs/team-server.md reproduces), and the
ZenML user; `retrain` is the service account the scheduler and CI run as (the gate's login: it may
move production). MLflow enforces the grants itself, per experiment and per registered model; every
resource not in the table is READ for every login (`default_permission` of basic_auth.ini).

`team up` (`ensure_stack_logins`) creates every resource of the table as admin, so that no login
ever owns one (MLflow gives a resource's creator MANAGE on it), gives the shared `team` login the
trainer's grants and nothing more on them, and keeps `retrain` (its password: secrets.json's
retrain_password, exported by `labelspace team env --ci`). On the ZenML server each login keeps its
MLflow login in a private secret, MLFLOW_SECRET, which the team stack's experiment tracker reads:
a pipeline run acts on MLflow as whoever started it (`team`, a person, or `retrain` for the `ci`
API key), never as a login shared by all.

Passwords are generated here and written to FOLDER/users/NAME.password (mode 600, the folder 700),
never printed, put on a command line or logged; a person gets that file's content once, by hand.
`disable` changes the MLflow password to one nobody knows and deactivates the ZenML user (MLflow
has no disabled state; a worker that checked the old password keeps it for at most a minute, the
auth cache); `reset-password` writes a new file. FOLDER/users.json lists names, roles and states.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labelspace.deploy.mlflow_server import ADMIN_USER, TEAM_USER, mlflow_url
from labelspace.deploy.processes import (
    Layout,
    TeamError,
    http_status,
    read_json,
    without_secrets,
    write_private,
)
from labelspace.deploy.zenml_server import CI_ACCOUNT, MLFLOW_SECRET, zenml_url

ROLES = ("reader", "trainer", "approver", "admin")
SERVICE_ACCOUNT = "retrain"
CANDIDATE_MODEL = "labelspace"  # every trained version: trainers register here
PRODUCTION_MODEL = "labelspace-production"  # what serves: only approvers and the gate change it
TRAINING_EXPERIMENT = "labelspace"
LIFECYCLE_EXPERIMENT = f"{PRODUCTION_MODEL}-lifecycle"  # the promotion records (labelspace.lifecycle.history)

# (resource type, name) -> the permission each role gets there; absent: READ. `retrain` is the gate.
ROLE_GRANTS: dict[tuple[str, str], dict[str, str]] = {
    ("experiment", TRAINING_EXPERIMENT): {"trainer": "EDIT", "approver": "EDIT", SERVICE_ACCOUNT: "EDIT"},
    ("experiment", LIFECYCLE_EXPERIMENT): {"approver": "EDIT", SERVICE_ACCOUNT: "EDIT"},
    ("registered_model", CANDIDATE_MODEL): {"trainer": "EDIT", "approver": "EDIT", SERVICE_ACCOUNT: "EDIT"},
    # A lock's holder deletes its ticket (a model version) to release it: MANAGE, EDIT cannot delete.
    ("registered_model", f"{CANDIDATE_MODEL}--retrain-lock"): {"trainer": "MANAGE", "approver": "MANAGE",
                                                               SERVICE_ACCOUNT: "MANAGE"},
    ("registered_model", PRODUCTION_MODEL): {"approver": "EDIT", SERVICE_ACCOUNT: "EDIT"},
    ("registered_model", f"{PRODUCTION_MODEL}--champion-lock"): {"approver": "MANAGE", SERVICE_ACCOUNT: "MANAGE"},
}
SHARED_LOGIN_ROLE = "trainer"  # the stack's shared `team` login: it trains and registers, never promotes


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_name(name: str) -> None:
    own = (ADMIN_USER, TEAM_USER, CI_ACCOUNT, SERVICE_ACCOUNT)
    if not name or not all(c.isalnum() or c in "._-" for c in name) or name in own:
        raise TeamError(f"{name!r} is not a usable login: letters, digits, '.', '_' or '-', and not one of "
                        f"{', '.join(own)} (the stack's own: `labelspace team up` keeps them; "
                        f"`labelspace team env --ci` exports {SERVICE_ACCOUNT})")


class Accounts:
    """The stack's personal accounts; `config`/`sec` are team.json and secrets.json."""

    def __init__(self, layout: Layout, config: dict[str, Any], sec: dict[str, str]) -> None:
        self.layout, self.config, self.sec = layout, config, sec
        self.mlflow = mlflow_url(config)
        self.admin = (ADMIN_USER, sec["admin_password"])
        self.registry_file = layout.root / "users.json"
        self.folder = layout.root / "users"

    # ------------------------------------------------------------------------------------ files

    def users(self) -> dict[str, dict[str, Any]]:
        return read_json(self.registry_file) or {}

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        write_private(self.registry_file, json.dumps(users, indent=2) + "\n")

    def password_file(self, name: str) -> Path:
        return self.folder / f"{name}.password"

    def _new_password(self, name: str) -> str:
        password = secrets.token_urlsafe(24)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.folder.chmod(0o700)
        write_private(self.password_file(name), password + "\n")
        return password

    # ------------------------------------------------------------------------------------ MLflow

    def _mlflow(self, path: str, body: dict | None = None, method: str = "POST") -> tuple[int, dict]:
        status, text = http_status(f"{self.mlflow}{path}", auth=self.admin, method=method, body=body, timeout=30)
        try:
            return status, json.loads(text) if text else {}
        except json.JSONDecodeError:
            return status, {"message": text[:300]}

    def _must(self, what: str, status: int, answer: dict, ok: tuple[int, ...] = (200,)) -> dict:
        if status not in ok:
            raise TeamError(f"{what} failed on MLflow ({status}): {answer.get('message', answer)}")
        return answer

    def ensure_resources(self) -> dict[tuple[str, str], str]:
        """Create (as admin) every experiment and registered model of ROLE_GRANTS; (type, name) -> resource id."""
        ids = {}
        for kind, name in ROLE_GRANTS:
            if kind == "experiment":
                query = urllib.parse.urlencode({"experiment_name": name})
                status, answer = self._mlflow(f"/api/2.0/mlflow/experiments/get-by-name?{query}", method="GET")
                if status != 200:
                    status, answer = self._mlflow("/api/2.0/mlflow/experiments/create", {"name": name})
                    answer = {"experiment": {"experiment_id": self._must(f"creating experiment {name}", status,
                                                                         answer)["experiment_id"]}}
                ids[(kind, name)] = answer["experiment"]["experiment_id"]
            else:
                status, answer = self._mlflow("/api/2.0/mlflow/registered-models/create", {"name": name})
                self._must(f"creating registered model {name}", status, answer, ok=(200, 400))
                if status == 400 and answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                    self._must(f"creating registered model {name}", status, answer)
                ids[(kind, name)] = name
        return ids

    def _grant(self, name: str, role: str, ids: dict[tuple[str, str], str] | None = None, *,
               exact: bool = False) -> None:
        """Grant `role`'s permissions (ROLE_GRANTS) to `name`; `exact`: also take away any other permission
        it holds on those resources (MANAGE left to the creator of a resource on an older stack)."""
        for (kind, resource), rid in (ids or self.ensure_resources()).items():
            permission = ROLE_GRANTS[(kind, resource)].get(role)
            where = {"username": name, "resource_type": kind, "resource_id": rid}
            if exact:
                held = self._mlflow(f"/api/3.0/mlflow/users/permissions/get?{urllib.parse.urlencode(where)}",
                                    method="GET")[1].get("permission")
                if held == (permission or "READ"):
                    continue
                self._mlflow("/api/3.0/mlflow/users/permissions/revoke", where)  # absent: nothing to revoke
            if permission is None:
                continue
            status, answer = self._mlflow("/api/3.0/mlflow/users/permissions/grant", {**where, "permission": permission})
            if status != 200 and answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                self._must(f"granting {permission} on {kind} {resource} to {name}", status, answer)

    def ensure_stack_logins(self) -> None:
        """`team up`, idempotent: every resource of ROLE_GRANTS created as admin, `retrain` with its grants
        and secrets.json's password, the shared `team` login with the trainer's grants and no more."""
        ids = self.ensure_resources()
        self._mlflow_user(SERVICE_ACCOUNT, self.sec["retrain_password"])
        self._grant(SERVICE_ACCOUNT, SERVICE_ACCOUNT, ids, exact=True)
        self._grant(TEAM_USER, SHARED_LOGIN_ROLE, ids, exact=True)

    def _mlflow_user(self, name: str, password: str) -> None:
        """Create the MLflow user `name`, or set its password."""
        status, answer = self._mlflow("/api/2.0/mlflow/users/create", {"username": name, "password": password})
        if status != 200:
            if answer.get("error_code") != "RESOURCE_ALREADY_EXISTS":
                self._must(f"creating the MLflow user {name}", status, answer)
            self._mlflow_password(name, password)

    def _mlflow_password(self, name: str, password: str) -> None:
        status, answer = self._mlflow("/api/2.0/mlflow/users/update-password",
                                      {"username": name, "password": password}, method="PATCH")
        self._must(f"setting the password of {name}", status, answer)

    # ------------------------------------------------------------------------------------ ZenML

    def _zenml_token(self, login: dict[str, str] | None = None) -> str:
        """A ZenML API token for `login` (username and password, or an API key as password); default: the admin."""
        login = login or {"username": ADMIN_USER, "password": self.sec["zenml_admin_password"]}
        body = urllib.parse.urlencode(login)
        request = urllib.request.Request(f"{zenml_url(self.config)}/api/v1/login", data=body.encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())["access_token"]
        except OSError as e:
            who = login.get("username", CI_ACCOUNT)
            raise TeamError(f"the ZenML server at {zenml_url(self.config)} refused the {who} login "
                            f"({getattr(e, 'code', e)}): is the stack up (`labelspace team status`)?") from None

    def _zenml(self, path: str, body: dict | None = None, method: str = "POST",
               token: str | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{zenml_url(self.config)}/api/v1{path}", data=data, method=method,
                                         headers={"Authorization": f"Bearer {token or self._zenml_token()}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:  # a 422 quotes the request body: its password and token stay out
            sent = {k: v for k, v in (body or {}).items() if k in ("password", "activation_token")}
            sent.update((body or {}).get("values") or {})
            return e.code, {"message": without_secrets(e.read().decode(errors="replace"), sent)[:300]}

    def _zenml_mlflow_login(self, zenml_login: dict[str, str], mlflow_login: tuple[str, str]) -> None:
        """The private ZenML secret MLFLOW_SECRET of `zenml_login`: the MLflow login the team stack's tracker
        uses in that login's pipeline runs (a private secret is seen by its owner only)."""
        token = self._zenml_token(zenml_login)
        values = {"username": mlflow_login[0], "password": mlflow_login[1]}
        query = urllib.parse.urlencode({"name": f"equals:{MLFLOW_SECRET}", "private": "true"})
        status, answer = self._zenml(f"/secrets?{query}", method="GET", token=token)
        found = answer.get("items", []) if status == 200 else []
        if found:
            status, answer = self._zenml(f"/secrets/{found[0]['id']}", {"values": values}, method="PUT", token=token)
        else:
            status, answer = self._zenml("/secrets", {"name": MLFLOW_SECRET, "private": True, "values": values},
                                         token=token)
        if status != 200:
            raise TeamError(f"keeping the MLflow login of {zenml_login.get('username', CI_ACCOUNT)} in its ZenML "
                            f"secret {MLFLOW_SECRET} failed ({status}): {answer.get('message')}")

    def ensure_admin_pipeline_login(self) -> None:
        """`team up`, before the team's ZenML stack is registered (ZenML resolves the tracker's secret then,
        as the admin): the admin's pipeline runs act on MLflow as its admin."""
        self._zenml_mlflow_login({"username": ADMIN_USER, "password": self.sec["zenml_admin_password"]},
                                 (ADMIN_USER, self.sec["admin_password"]))

    def ensure_pipeline_logins(self) -> None:
        """`team up`, once the team's ZenML stack is registered: the pipeline runs of `team` act on MLflow
        as `team`, those of the `ci` service account (its API key) as `retrain`."""
        self._zenml_mlflow_login({"username": TEAM_USER, "password": self.sec["zenml_team_password"]},
                                 (TEAM_USER, self.sec["team_password"]))
        self._zenml_mlflow_login({"password": self.sec["zenml_ci_api_key"]},
                                 (SERVICE_ACCOUNT, self.sec["retrain_password"]))

    def _zenml_user(self, name: str, password: str, *, admin: bool) -> None:
        status, answer = self._zenml("/users", {"name": name, "password": password, "active": True,
                                                "is_admin": admin})
        if status == 409:  # exists: a new password by deactivating and activating again
            self._zenml_reactivate(name, password)
        elif status != 200:
            raise TeamError(f"creating the ZenML user {name} failed ({status}): {answer.get('message')}")

    def _zenml_deactivate(self, name: str) -> str:
        status, answer = self._zenml(f"/users/{name}/deactivate", method="PUT")
        if status != 200:
            raise TeamError(f"deactivating the ZenML user {name} failed ({status}): {answer.get('message')}")
        return answer.get("body", {}).get("activation_token") or answer.get("activation_token", "")

    def _zenml_reactivate(self, name: str, password: str) -> None:
        token = self._zenml_deactivate(name)
        status, answer = self._zenml(f"/users/{name}/activate", {"activation_token": token, "password": password},
                                     method="PUT")
        if status != 200:
            raise TeamError(f"activating the ZenML user {name} failed ({status}): {answer.get('message')}")

    # ------------------------------------------------------------------------------------ commands

    def add(self, name: str, role: str) -> Path:
        """Create `name` with `role` on both servers; the path of its password file."""
        _check_name(name)
        if role not in ROLES:
            raise TeamError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        users = self.users()
        if name in users and users[name]["state"] == "active":
            raise TeamError(f"{name} exists ({users[name]['role']}); `labelspace team user reset-password {name}` "
                            "gives a new password")
        password = self._new_password(name)
        self._mlflow_user(name, password)
        if role == "admin":
            self._must(f"making {name} an MLflow admin", *self._mlflow(
                "/api/2.0/mlflow/users/update-admin", {"username": name, "is_admin": True}, method="PATCH"))
        else:
            self._grant(name, role)
        self._zenml_user(name, password, admin=role == "admin")
        self._zenml_mlflow_login({"username": name, "password": password}, (name, password))
        users[name] = {"role": role, "state": "active", "created": users.get(name, {}).get("created", _now()),
                       "changed": _now()}
        self._save(users)
        return self.password_file(name)

    def _known(self, name: str) -> dict[str, Any]:
        users = self.users()
        if name not in users:
            raise TeamError(f"no user {name} in {self.registry_file}; `labelspace team user list` shows them")
        return users[name]

    def disable(self, name: str) -> None:
        entry = self._known(name)
        self._mlflow_password(name, secrets.token_urlsafe(32))  # known to nobody
        if self._zenml(f"/users/{name}", method="GET")[1].get("body", {}).get("active", True):
            self._zenml_deactivate(name)
        self.password_file(name).unlink(missing_ok=True)
        users = self.users()
        users[name] = {**entry, "state": "disabled", "changed": _now()}
        self._save(users)

    def reset_password(self, name: str) -> Path:
        entry = self._known(name)
        password = self._new_password(name)
        self._mlflow_password(name, password)
        self._zenml_reactivate(name, password)
        self._zenml_mlflow_login({"username": name, "password": password}, (name, password))
        users = self.users()
        users[name] = {**entry, "state": "active", "changed": _now()}
        self._save(users)
        return self.password_file(name)

    def env(self, name: str) -> dict[str, str]:
        """What `name` exports (its password read from its file)."""
        entry = self._known(name)
        if entry["state"] != "active":
            raise TeamError(f"{name} is disabled; `labelspace team user reset-password {name}` enables it again")
        password = self.password_file(name).read_text().strip()
        return {"MLFLOW_TRACKING_URI": self.mlflow, "MLFLOW_TRACKING_USERNAME": name,
                "MLFLOW_TRACKING_PASSWORD": password, "ZENML_STORE_URL": zenml_url(self.config),
                "ZENML_STORE_USERNAME": name, "ZENML_STORE_PASSWORD": password}
