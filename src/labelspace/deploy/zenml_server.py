"""The team stack's ZenML server, which members share (their pipeline runs, step artifacts and ZenML
model versions), and the one ZenML stack registered on it, `labelspace-team`.

- The server: ZenML's FastAPI app under uvicorn on 127.0.0.1 (one worker), its database the stack's
  MariaDB (`labelspace.deploy.mariadb`), a fixed JWT secret (tokens survive a restart), its secrets
  encrypted with a key of the stack, analytics off, activated on first start with the `admin` user.
  Every credential reaches it through its environment, never its command line.
- `ensure_team_stack` (after every `team up`): the S3 bucket `zenml-artifacts`, then
  labelspace.pipelines.team_stack registers the rest as the admin, in a child process whose ZenML
  client config is FOLDER/zenml/admin (mode 700), so that the caller's own ZenML client is never
  touched: the non-admin user `team` (what members log in as), the service account `ci` with an API
  key (what CI exports, kept in secrets.json), the ZenML secret of the S3 key and the stack (each
  login's MLflow login is its own private secret, labelspace.deploy.users): the local orchestrator, an S3 artifact store on the bucket (endpoint through
  client_kwargs, keys from the secret), the team MLflow server as experiment tracker and registry.
- `member_env` / `ci_env`: what `labelspace team env` prints. A member's `labelspace setup-stack` or
  `labelspace run` with ZENML_STORE_URL pointing at a ZenML server activates `labelspace-team`
  (labelspace.pipelines.team_stack.use_team_stack) instead of registering a local stack.

A ZenML user's password can be changed only by that user: the `team` password is the one in
secrets.json when the user was created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from labelspace.deploy.mariadb import DB_USER, store_url
from labelspace.deploy.mlflow_server import mlflow_url
from labelspace.deploy.processes import (
    HOST,
    START_TIMEOUT_S,
    Layout,
    TeamError,
    http_status,
    service_env,
    spawn,
    stop_process,
    wait_healthy,
    write_private,
    write_record,
)
from labelspace.deploy.s3server import REGION, ensure_buckets, s3_url

ADMIN_USER = "admin"
TEAM_USER = "team"
CI_ACCOUNT = "ci"
TEAM_STACK = "labelspace-team"
ARTIFACT_STORE = "team_s3"
TRACKER = "team_mlflow_tracker"
REGISTRY = "team_mlflow_registry"
S3_SECRET = "team_s3_keys"
MLFLOW_SECRET = "team_mlflow_login"
BUCKET = "zenml-artifacts"
APP = "zenml.zen_server.zen_server_api:app"
SETUP_TIMEOUT_S = 300


def zenml_url(config: dict[str, Any]) -> str:
    return f"http://{HOST}:{config['ports']['zenml']}"


def add_zenml_bucket(config: dict[str, Any]) -> None:
    """team.json: the bucket of ZenML's artifact store, beside MLflow's and DVC's."""
    config["buckets"].setdefault("zenml", BUCKET)


# ------------------------------------------------------------------------------------ the server


def _server_env(layout: Layout, config: dict[str, Any], sec: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in service_env().items() if not k.startswith("ZENML_")}  # a member's store settings
    config_dir = layout.root / "zenml" / "server"
    config_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config_dir.parent, 0o700)
    env.update({
        "ZENML_CONFIG_PATH": str(config_dir),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_LOGGING_COLORS_DISABLED": "true",
        "ZENML_STORE_URL": store_url(config["ports"]["mariadb"]),
        "ZENML_STORE_USERNAME": DB_USER,
        "ZENML_STORE_PASSWORD": sec["mariadb_password"],
        # Before a schema migration ZenML dumps the database here (instead of keeping it in memory).
        "ZENML_STORE_BACKUP_STRATEGY": "dump-file",
        "ZENML_STORE_BACKUP_DIRECTORY": str(layout.backups / "zenml"),
        "ZENML_SECRETS_STORE_TYPE": "sql",
        "ZENML_SECRETS_STORE_ENCRYPTION_KEY": sec["zenml_encryption_key"],
        "ZENML_SERVER_JWT_SECRET_KEY": sec["zenml_jwt_secret"],
        "ZENML_SERVER_AUTO_ACTIVATE": "true",
        "ZENML_DEFAULT_USER_NAME": ADMIN_USER,
        "ZENML_DEFAULT_USER_PASSWORD": sec["zenml_admin_password"],
        "ZENML_SERVER_SERVER_URL": zenml_url(config),
        "ZENML_SERVER_DISPLAY_ANNOUNCEMENTS": "false",
        "ZENML_SERVER_DISPLAY_UPDATES": "false",
    })
    return env


def zenml_healthy(config: dict[str, Any]) -> bool:
    return http_status(f"{zenml_url(config)}/health", timeout=3)[0] == 200


def start_zenml(layout: Layout, config: dict[str, Any], sec: dict[str, str]) -> dict[str, Any]:
    """Start the ZenML server (MariaDB already up); its PID record once /health answers. The first
    start creates the schema, the `admin` user and the server's `default` stack."""
    port = config["ports"]["zenml"]
    marker = f"{APP} --host {HOST} --port {port}"
    argv = [sys.executable, "-m", "uvicorn", *marker.split(), "--workers", "1", "--no-access-log"]
    proc = spawn(layout, "zenml", argv, _server_env(layout, config, sec))
    try:
        wait_healthy("zenml", lambda: zenml_healthy(config), lambda: proc.poll() is None, layout.log("zenml"),
                     START_TIMEOUT_S["zenml"])
    except BaseException:
        if proc.poll() is None:
            stop_process("zenml", {"pid": proc.pid})
        raise
    return write_record(layout, "zenml", proc.pid, marker, port)


def _login_status(config: dict[str, Any], user: str, password: str) -> int:
    """HTTP status of a password login (200: accepted, 401: refused, 0: no answer)."""
    body = urllib.parse.urlencode({"username": user, "password": password}).encode()
    request = urllib.request.Request(f"{zenml_url(config)}/api/v1/login", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


# ------------------------------------------------------------------------ users, secrets, the stack


def ensure_team_stack(layout: Layout, config: dict[str, Any], sec: dict[str, str]) -> None:
    """Make the server ready for members (idempotent): the `team` user, the `ci` service account and
    its API key (kept in secrets.json), the secrets, the components and the `labelspace-team` stack."""
    if _login_status(config, ADMIN_USER, sec["zenml_admin_password"]) != 200:
        raise TeamError(f"the ZenML server at {zenml_url(config)} refused the {ADMIN_USER!r} login: its database was "
                        "created with another zenml_admin_password than the one in secrets.json. Restore that "
                        "secrets.json (or the ZenML database that goes with it)")
    ensure_buckets(config, sec)  # the ZenML bucket, on a stack whose S3 store was started before it existed
    spec = {
        "team_password": sec["zenml_team_password"], "new_ci_key": not sec.get("zenml_ci_api_key"),
        "s3_endpoint": s3_url(config), "bucket": config["buckets"]["zenml"], "region": REGION,
        "s3_access_key_id": sec["s3_access_key_id"], "s3_secret_access_key": sec["s3_secret_access_key"],
        "mlflow_uri": mlflow_url(config),
    }
    client_dir = layout.root / "zenml" / "admin"
    client_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(client_dir, 0o700)
    env = {k: v for k, v in service_env().items() if not k.startswith("ZENML_")}
    env.update({"ZENML_CONFIG_PATH": str(client_dir), "ZENML_ANALYTICS_OPT_IN": "false",
                "ZENML_LOGGING_VERBOSITY": "WARN", "ZENML_STORE_URL": zenml_url(config),
                "ZENML_STORE_USERNAME": ADMIN_USER, "ZENML_STORE_PASSWORD": sec["zenml_admin_password"]})
    result = subprocess.run([sys.executable, "-m", "labelspace.pipelines.team_stack"], input=json.dumps(spec),
                            capture_output=True, text=True, env=env, timeout=SETUP_TIMEOUT_S, cwd=client_dir)
    if result.returncode != 0:
        raise TeamError(f"registering the team's ZenML stack on {zenml_url(config)} failed:\n"
                        f"{(result.stdout + result.stderr)[-3000:]}")
    done = json.loads(result.stdout.strip().splitlines()[-1])
    if done.get("ci_api_key"):
        sec["zenml_ci_api_key"] = done["ci_api_key"]
        write_private(layout.secrets, json.dumps(sec, indent=2) + "\n")
    if _login_status(config, TEAM_USER, sec["zenml_team_password"]) != 200:
        raise TeamError(f"the ZenML user {TEAM_USER!r} has another password than zenml_team_password in secrets.json "
                        "(ZenML lets only a user change its own password): restore that secrets.json, or delete the "
                        f"user as {ADMIN_USER} (`zenml user delete {TEAM_USER}`) and run `labelspace team up` again")


def member_env(config: dict[str, Any], sec: dict[str, str]) -> dict[str, str]:
    """What a person exports to use the team's ZenML server (beside the MLflow variables)."""
    if not sec.get("zenml_team_password"):
        raise TeamError("no ZenML login in secrets.json yet: run `labelspace team up` (it adds the ZenML server)")
    return {"ZENML_STORE_URL": zenml_url(config), "ZENML_STORE_USERNAME": TEAM_USER,
            "ZENML_STORE_PASSWORD": sec["zenml_team_password"]}


def ci_env(config: dict[str, Any], sec: dict[str, str]) -> dict[str, str]:
    """What CI exports instead: the `ci` service account's API key."""
    if not sec.get("zenml_ci_api_key"):
        raise TeamError("no ZenML API key for CI in secrets.json yet: run `labelspace team up`")
    return {"ZENML_STORE_URL": zenml_url(config), "ZENML_STORE_API_KEY": sec["zenml_ci_api_key"]}


# ---------------------------------------------------------------------------------- a member's side


def on_zenml_server() -> bool:
    """Whether this process's ZenML client is pointed at a ZenML server by $ZENML_STORE_URL."""
    return os.environ.get("ZENML_STORE_URL", "").startswith(("http://", "https://"))


def keep_zenml_config_private() -> None:
    """The ZenML client keeps its server login (an API token) in $ZENML_CONFIG_PATH/credentials.yaml,
    written with the umask's mode (0644 here): the folder is made the owner's alone before it is."""
    folder = os.environ.get("ZENML_CONFIG_PATH")
    if not folder:
        return
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for name in ("credentials.yaml", "config.yaml"):
        if (path / name).exists():
            os.chmod(path / name, 0o600)
