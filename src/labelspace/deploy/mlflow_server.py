"""The team stack's MLflow: `mlflow server --app-name basic-auth --serve-artifacts` on the stack's
PostgreSQL (tracking and registry) and S3 bucket (artifacts), and its two users.

MLflow ships no default admin password, so `basic_auth.ini` (mode 600) carries a generated one,
used once to create `admin` in an empty user store. The non-admin `team` user, whose password team
members export, is created (or its password reset to the one in secrets.json) through the auth API.
"""

from __future__ import annotations

import sys
from typing import Any

from labelspace.deploy.postgres import AUTH_DB, db_uri
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
from labelspace.deploy.s3server import REGION

ADMIN_USER = "admin"
TEAM_USER = "team"
AUTH_CACHE_TTL_S = 60


def write_auth_ini(layout: Layout, port: int, sec: dict[str, str]) -> None:
    write_private(layout.auth_ini, "\n".join([
        "# Written by `labelspace team up`; see docs/team-server.md.",
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {db_uri(port, AUTH_DB)}",
        f"admin_username = {ADMIN_USER}",
        "# Used only to create the admin user on an empty user store (MLflow has no default password).",
        f"admin_password = {sec['admin_password']}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "# A login checked once a minute per worker, not on every request: each check is a scrypt hash",
        "# (~0.2 s of CPU), and a pipeline run makes hundreds of requests. A password changed through the",
        "# API holds at once on the worker that changed it, on the others within the minute.",
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
        "",
    ]))


def mlflow_url(config: dict[str, Any]) -> str:
    return f"http://{HOST}:{config['ports']['mlflow']}"


def start_mlflow(layout: Layout, config: dict[str, Any], sec: dict[str, str], workers: int) -> dict[str, Any]:
    """Start `mlflow server` (PostgreSQL and S3 already up); its PID record once /health answers."""
    ports = config["ports"]
    write_auth_ini(layout, ports["postgres"], sec)
    marker = f"mlflow server --backend-store-uri {db_uri(ports['postgres'])}"
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri(ports["postgres"]),
            "--serve-artifacts", "--artifacts-destination", f"s3://{config['buckets']['artifacts']}/artifacts",
            "--host", HOST, "--port", str(ports["mlflow"]), "--workers", str(workers), "--app-name", "basic-auth"]
    env = {
        **service_env(),
        "PGPASSWORD": sec["db_password"],  # libpq reads it; the URIs carry no password
        "AWS_ACCESS_KEY_ID": sec["s3_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": sec["s3_secret_access_key"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_RETRY_MODE": "standard",  # 3 attempts: an unreachable store fails in seconds, not ~15 s (legacy mode)
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
        "MLFLOW_AUTH_CONFIG_PATH": str(layout.auth_ini),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": sec["flask_secret_key"],
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI job runner processes
    }
    proc = spawn(layout, "mlflow", argv, env)
    url = mlflow_url(config)
    try:
        wait_healthy("mlflow", lambda: http_status(f"{url}/health", timeout=2)[0] == 200, lambda: proc.poll() is None,
                     layout.log("mlflow"), START_TIMEOUT_S["mlflow"])
    except TeamError:
        if proc.poll() is None:
            stop_process("mlflow", {"pid": proc.pid})
        raise
    return write_record(layout, "mlflow", proc.pid, marker, ports["mlflow"])


def ensure_users(config: dict[str, Any], sec: dict[str, str]) -> None:
    """Check that anonymous requests are refused and the admin can log in; create the `team` user
    (or reset its password to the one in secrets.json) through the auth API."""
    url = mlflow_url(config)
    probe = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    status, _ = http_status(probe)
    if status != 401:
        raise TeamError(f"MLflow at {url} answered an anonymous request with {status}, not 401: authentication is off")
    admin = (ADMIN_USER, sec["admin_password"])
    status, body = http_status(probe, auth=admin)
    if status != 200:
        raise TeamError(f"the admin login was refused ({status}): the user store ({AUTH_DB}) was created with "
                        "another admin password than the one in secrets.json. Restore that secrets.json, or reset "
                        f"the password in the {AUTH_DB} database")
    status, _ = http_status(f"{url}/api/2.0/mlflow/users/get?username={TEAM_USER}", auth=admin)
    if status != 200:
        status, body = http_status(f"{url}/api/2.0/mlflow/users/create", auth=admin, method="POST",
                                   body={"username": TEAM_USER, "password": sec["team_password"]})
        if status != 200:
            raise TeamError(f"creating the MLflow user {TEAM_USER!r} failed ({status}): {body[:300]}")
    elif http_status(probe, auth=(TEAM_USER, sec["team_password"]))[0] != 200:
        status, body = http_status(f"{url}/api/2.0/mlflow/users/update-password", auth=admin, method="PATCH",
                                   body={"username": TEAM_USER, "password": sec["team_password"]})
        if status != 200:
            raise TeamError(f"resetting the password of {TEAM_USER!r} failed ({status}): {body[:300]}")

