"""`labelspace team`: the team's servers as local unprivileged processes whose data all lives under
one folder (default `.team/` in the project), each on 127.0.0.1, each in its own module:

- `postgres`: PostgreSQL, databases `mlflow` (tracking, registry) and `mlflow_auth` (MLflow's users);
- `s3server`: SeaweedFS, objects on disk, versioned buckets for MLflow, DVC and ZenML artifacts;
- `mlflow_server`: `mlflow server --app-name basic-auth --serve-artifacts`, users `admin`, `team`
  (the shared login: a trainer) and `retrain` (the gate's service account), and, created as admin so
  that no login owns them, the experiments and registered models of `labelspace.deploy.users`;
- `mariadb`: MariaDB, the database `zenml` of the ZenML server (ZenML refuses PostgreSQL);
- `zenml_server`: the ZenML server (uvicorn), its team stack `labelspace-team`, users and the `ci`
  service account. Generated passwords and keys are kept in FOLDER/secrets.json (mode 600).

The stack is the list `STACK`, in start order: each `Service` says how to start it, check it, make
it ready for use, and (where it holds data) back it up and restore it. Adding a service is one
module and one entry there; `labelspace.deploy.backup` and `team up/down/status` go through the list.

Every service gets a PID file (FOLDER/run/NAME.json: PID, kernel start time, command marker);
`team down` signals only processes that still match their file. Before MLflow starts on an existing
database, the schema's alembic revision is compared with the installed MLflow's; an older schema is
upgraded only with `--upgrade-db`, after a pg_dump into FOLDER/backups/.

The module runs past 400 lines on purpose: the stack's files (team.json, secrets.json), its list of
services and `team up/down/status/env` read as one piece; each service's own code is in its module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelspace.deploy.mariadb import (
    backup_zenml_database,
    mariadb_healthy,
    restore_zenml_database,
    start_mariadb,
)
from labelspace.deploy.mlflow_server import ADMIN_USER, TEAM_USER, ensure_users, mlflow_url, start_mlflow
from labelspace.deploy.postgres import (
    backup_databases,
    db_uri,
    ensure_databases,
    ensure_schemas,
    pg_healthy,
    restore_databases,
    start_postgres,
)
from labelspace.deploy.processes import (
    HOST,
    LABELS,
    Layout,
    TeamError,
    alive,
    check_port_free,
    contains_secret,
    free_port,
    http_status,
    read_json,
    running,
    stop_process,
    verified,
    without_secrets,
    write_private,
)
from labelspace.deploy.s3server import (
    backup_buckets,
    internal_ports,
    restore_buckets,
    s3_healthy,
    s3_url,
    start_s3,
)
from labelspace.deploy.users import SERVICE_ACCOUNT, Accounts
from labelspace.deploy.zenml_server import (
    add_zenml_bucket,
    ci_env,
    ensure_team_stack,
    member_env,
    start_zenml,
    zenml_healthy,
    zenml_url,
)

DEFAULT_DIR = ".team"
ARTIFACT_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-remote"
DVC_PREFIX = "labelspace"
DVC_REMOTE = "team"


# ------------------------------------------------------------------------------------ the services


@dataclass
class Stack:
    """What a service's hooks get: the folder, team.json, secrets.json and the options of `team up`."""
    layout: Layout
    config: dict[str, Any]
    sec: dict[str, str]
    upgrade_db: bool = False
    workers: int = 2
    out: Callable[[str], None] = print

    def port(self, name: str) -> int:
        return self.config["ports"][name]


@dataclass(frozen=True)
class Service:
    """One process of the stack. `start` returns its PID record once it is healthy; `ready` runs
    after a start and when `team up` finds it running (users, databases: idempotent); `backup`
    writes its data into a folder of a backup and returns a summary; `restore` fills the freshly
    started service of an empty stack from such a folder; `configure` adds what it needs to
    team.json before the first start."""
    name: str
    default_port: int
    start: Callable[[Stack], dict[str, Any]]
    healthy: Callable[[Stack], bool]
    ready: Callable[[Stack], None] | None = None
    backup: Callable[[Stack, Path], dict[str, Any]] | None = None
    restore: Callable[[Stack, Path], Any] | None = None
    configure: Callable[[dict[str, Any]], None] | None = None
    env: Callable[[Stack], dict[str, str]] = field(default=lambda stack: {})


def _start_mlflow(stack: Stack) -> dict[str, Any]:
    ensure_schemas(stack.layout, stack.port("postgres"), stack.sec, stack.upgrade_db, out=stack.out)
    return start_mlflow(stack.layout, stack.config, stack.sec, stack.workers)


def _mlflow_ready(stack: Stack) -> None:
    ensure_users(stack.config, stack.sec)
    Accounts(stack.layout, stack.config, stack.sec).ensure_stack_logins()


def _zenml_ready(stack: Stack) -> None:
    accounts = Accounts(stack.layout, stack.config, stack.sec)
    accounts.ensure_admin_pipeline_login()
    ensure_team_stack(stack.layout, stack.config, stack.sec)
    accounts.ensure_pipeline_logins()


def _configure_s3(config: dict[str, Any]) -> None:
    if not config.get("s3_ports"):
        config["s3_ports"] = internal_ports(config["ports"]["s3"], avoid=set(config["ports"].values()))


STACK: tuple[Service, ...] = (  # start order; stopped in reverse
    Service("postgres", 15432,
            start=lambda st: start_postgres(st.layout, st.port("postgres"), st.sec),
            healthy=lambda st: pg_healthy(st.port("postgres"), st.sec["postgres_password"]),
            ready=lambda st: ensure_databases(st.port("postgres"), st.sec),
            backup=lambda st, target: backup_databases(st.port("postgres"), st.sec, target),
            restore=lambda st, source: restore_databases(st.port("postgres"), st.sec, source)),
    Service("s3", 19000,
            start=lambda st: start_s3(st.layout, st.config, st.sec),
            healthy=lambda st: s3_healthy(st.layout, st.config),
            backup=lambda st, target: backup_buckets(st.config, st.sec, target),
            restore=lambda st, source: restore_buckets(st.config, st.sec, source),
            configure=_configure_s3),
    Service("mlflow", 15000,
            start=_start_mlflow,
            healthy=lambda st: http_status(f"{mlflow_url(st.config)}/health", timeout=3)[0] == 200,
            ready=_mlflow_ready,
            env=lambda st: {"MLFLOW_TRACKING_URI": mlflow_url(st.config), "MLFLOW_TRACKING_USERNAME": TEAM_USER,
                            "MLFLOW_TRACKING_PASSWORD": st.sec["team_password"]}),
    Service("mariadb", 13306,
            start=lambda st: start_mariadb(st.layout, st.port("mariadb"), st.sec),
            healthy=lambda st: mariadb_healthy(st.port("mariadb"), st.sec),
            backup=lambda st, target: backup_zenml_database(st.port("mariadb"), st.sec, target),
            restore=lambda st, source: restore_zenml_database(st.port("mariadb"), st.sec, source)),
    Service("zenml", 18237,
            start=lambda st: start_zenml(st.layout, st.config, st.sec),
            healthy=lambda st: zenml_healthy(st.config),
            ready=_zenml_ready,
            configure=add_zenml_bucket,
            env=lambda st: member_env(st.config, st.sec)),
)
SERVICES = tuple(service.name for service in STACK)
DEFAULT_PORTS = {service.name: service.default_port for service in STACK}


# ---------------------------------------------------------------------------- team.json, secrets.json


def _token(n: int = 24) -> str:
    """A URL-safe secret that never starts with '-' (a command line would read it as an option)."""
    while True:
        token = secrets.token_urlsafe(n)
        if not token.startswith("-"):
            return token


def load_secrets(layout: Layout) -> dict[str, str]:
    """The stack's generated secrets, created on first use and kept in secrets.json (mode 600)."""
    data = read_json(layout.secrets) or {}
    wanted = {
        "postgres_password": lambda: _token(),
        "db_password": lambda: _token(),
        "admin_password": lambda: _token(),
        "team_password": lambda: _token(),
        "retrain_password": lambda: _token(),  # the gate's service account: `team env --ci` exports it
        "flask_secret_key": lambda: secrets.token_hex(32),
        "s3_access_key_id": lambda: "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        "s3_secret_access_key": lambda: _token(30)[:40],
        "s3_cluster_key": lambda: secrets.token_hex(32),  # SeaweedFS's internal JWT keys are derived from it
        "mariadb_password": lambda: _token(),
        "zenml_admin_password": lambda: _token(),
        "zenml_team_password": lambda: _token(),
        "zenml_jwt_secret": lambda: secrets.token_hex(32),  # one for good: tokens outlive a server restart
        "zenml_encryption_key": lambda: secrets.token_hex(32),  # ZenML's secrets are stored encrypted with it
    }
    changed = False
    for key, make in wanted.items():
        if not data.get(key):
            data[key], changed = make(), True
    if changed or (layout.secrets.stat().st_mode & 0o077):
        write_private(layout.secrets, json.dumps(data, indent=2) + "\n")
    return data


def _load_config(layout: Layout, ports: dict[str, int | None]) -> dict[str, Any]:
    """team.json: the ports (the ones asked for, else the saved ones, else the defaults)."""
    config = read_json(layout.config) or {}
    saved = config.get("ports", {})
    config["ports"] = {
        name: int(ports[name]) if ports.get(name) is not None else int(saved.get(name, DEFAULT_PORTS[name]))
        for name in SERVICES
    }
    for name, port in config["ports"].items():
        if port == 0:  # a free port none of the other services is to get
            config["ports"][name] = free_port(avoid=set(config["ports"].values()))
    config.setdefault("buckets", {"artifacts": ARTIFACT_BUCKET, "dvc": DVC_BUCKET})
    for service in STACK:
        if service.configure is not None:
            service.configure(config)
    return config


def _save_config(layout: Layout, config: dict[str, Any]) -> None:
    layout.config.write_text(json.dumps(config, indent=2) + "\n")


# ------------------------------------------------------------------------------------ public API


def stack_layout(folder: str | os.PathLike | None) -> Layout:
    return Layout(Path(folder or DEFAULT_DIR).expanduser().resolve())


@contextlib.contextmanager
def locked(layout: Layout):
    """One `team` command that changes the stack (up, down, backup, restore) at a time per folder."""
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TeamError(f"another `labelspace team` command is working on {layout.root}") from None
        yield


def read_stack(folder: str | os.PathLike | None) -> Stack:
    """The stack of a folder from its files, without starting or changing anything."""
    layout = stack_layout(folder)
    config, sec = read_json(layout.config), read_json(layout.secrets)
    if not config or not sec:
        raise TeamError(f"no team stack in {layout.root}: run `labelspace team up` first")
    return Stack(layout, config, sec)


def team_info(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """URIs, the environment a member exports (`secret_env`: the names of its variables that hold a
    secret), the DVC remote's settings, from the folder's files."""
    stack = read_stack(folder)
    config, sec = stack.config, stack.sec
    env: dict[str, str] = {}
    for service in STACK:
        env.update(service.env(stack))
    dvc_url = f"s3://{config['buckets']['dvc']}/{DVC_PREFIX}"
    return {
        "folder": str(stack.layout.root),
        "ports": config["ports"],
        "mlflow_uri": mlflow_url(config),
        "zenml_uri": zenml_url(config),
        "s3_endpoint": s3_url(config),
        "postgres_uri": db_uri(config["ports"]["postgres"]),
        "buckets": config["buckets"],
        "artifact_destination": f"s3://{config['buckets']['artifacts']}/artifacts",
        "dvc_remote_url": dvc_url,
        "env": env,
        "secret_env": [key for key, value in env.items() if contains_secret(value, sec)],  # never to print
        # CI (the scheduled gate) logs in to MLflow as `retrain`, to ZenML with the `ci` API key
        "ci_env": {**{k: v for k, v in env.items() if not k.startswith("ZENML_STORE_")},
                   "MLFLOW_TRACKING_USERNAME": SERVICE_ACCOUNT, "MLFLOW_TRACKING_PASSWORD": sec["retrain_password"],
                   **ci_env(config, sec)}
        if sec.get("zenml_ci_api_key") and sec.get("retrain_password") else None,
        # the remote without its key (`.dvc/config`, may be committed); the key: deploy.dvc_remote
        "dvc_commands": [["dvc", "remote", "add", "-f", DVC_REMOTE, dvc_url],
                         ["dvc", "remote", "modify", DVC_REMOTE, "endpointurl", s3_url(config)]],
        "admin": {"username": ADMIN_USER, "password": sec["admin_password"]},
        "s3_credentials": {"access_key_id": sec["s3_access_key_id"], "secret_access_key": sec["s3_secret_access_key"]},
    }


def team_up(folder: str | os.PathLike | None = None, *, upgrade_db: bool = False, workers: int = 2,
            out: Callable[[str], None] = print, **ports: int | None) -> dict[str, Any]:
    """Start whatever of the stack is not running (a running, healthy service is left alone) and
    return `team_info`. Ports, as NAME_port=N (postgres_port, s3_port, mlflow_port): None keeps the
    saved one (else the default), 0 picks a free one. On failure, the services this call started are
    stopped again and TeamError says why."""
    layout = stack_layout(folder)
    with locked(layout):
        return start_stack(layout, requested_ports(ports), upgrade_db=upgrade_db, workers=workers, out=out)


def requested_ports(ports: dict[str, int | None]) -> dict[str, int | None]:
    unknown = set(ports) - {f"{name}_port" for name in SERVICES}
    if unknown:
        raise TypeError(f"unknown port argument(s) {sorted(unknown)}; the services are {', '.join(SERVICES)}")
    return {name: ports.get(f"{name}_port") for name in SERVICES}


def start_stack(layout: Layout, requested: dict[str, int | None], *, upgrade_db: bool = False, workers: int = 2,
                out: Callable[[str], None] = print, restore_from: Path | None = None) -> dict[str, Any]:
    """`team up` in a locked folder. `restore_from`: a backup whose folder NAME/ each service with
    a `restore` fills right after it starts (the folder's stack must be new)."""
    t0 = time.monotonic()
    (layout.root / ".gitignore").write_text("*\n")
    config = _load_config(layout, requested)
    records = {name: running(layout, name) for name in SERVICES}
    for name, record in records.items():
        if record and record["port"] != config["ports"][name]:
            if requested[name] is not None:
                raise TeamError(f"{LABELS[name]} is already running on port {record['port']} (PID {record['pid']}); "
                                f"run `labelspace team down` first to move it to port {config['ports'][name]}")
            config["ports"][name] = record["port"]
    stack = Stack(layout, config, load_secrets(layout), upgrade_db, workers, out)
    started: list[tuple[str, dict[str, Any]]] = []
    try:
        for service in STACK:
            name, record = service.name, records[service.name]
            if record and service.healthy(stack):
                out(f"  {LABELS[name]} already running (PID {record['pid']}, port {stack.port(name)})")
            else:
                if record:  # alive but not answering: restart it
                    out(f"  {LABELS[name]} (PID {record['pid']}) does not answer; restarting it")
                    stop_process(name, record)
                layout.pid_file(name).unlink(missing_ok=True)
                check_port_free(name, stack.port(name))
                out(f"  starting {LABELS[name]} on {HOST}:{stack.port(name)}")
                records[name] = service.start(stack)
                started.append((name, records[name]))
            if service.ready is not None:
                service.ready(stack)
            if restore_from is not None and service.restore is not None:
                if (restore_from / name).is_dir():
                    out(f"  restoring {LABELS[name]} from {restore_from / name}")
                    service.restore(stack, restore_from / name)
                else:
                    out(f"  {LABELS[name]}: nothing in the backup to restore; it starts empty")
        _save_config(layout, config)  # only ports that worked are remembered
    except BaseException as e:
        for name, record in reversed(started):
            with contextlib.suppress(Exception):
                stop_process(name, record)
                layout.pid_file(name).unlink(missing_ok=True)
        if isinstance(e, TeamError):  # a child's output or a log's tail may quote a secret
            stopped = (f"\n(stopped again what this command had started: {', '.join(LABELS[n] for n, _ in started)})"
                       if started else "")
            raise TeamError(without_secrets(str(e), stack.sec) + stopped) from None
        raise
    info = team_info(layout.root)
    info["pids"] = {name: records[name]["pid"] for name in SERVICES}
    info["started"] = [name for name, _ in started]
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info


def team_down(folder: str | os.PathLike | None = None, out: Callable[[str], None] = print,
              only: tuple[str, ...] | None = None) -> list[str]:
    """Stop the processes this folder's PID files name, in reverse start order (`only`: just these
    services); a PID file whose process is gone, or is no longer the process that was started, is
    removed without signalling anything. Idempotent. Returns the services it stopped."""
    layout = stack_layout(folder)
    if not layout.root.is_dir():
        return []
    with locked(layout):
        return _team_down(layout, out, only)


def _team_down(layout: Layout, out: Callable[[str], None], only: tuple[str, ...] | None) -> list[str]:
    stopped = []
    for name in reversed(SERVICES):
        if only is not None and name not in only:
            continue
        path = layout.pid_file(name)
        record = read_json(path)
        if record is None:
            continue
        if verified(record):
            out(f"  stopping {LABELS[name]} (PID {record['pid']})")
            stop_process(name, record)
            stopped.append(name)
        elif alive(int(record["pid"])):
            out(f"  {LABELS[name]}: PID {record['pid']} is now another process; not touching it")
        else:
            out(f"  {LABELS[name]} was not running")
        path.unlink(missing_ok=True)
    return stopped


def team_status(folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """For each service: running (its PID file's process is alive and the one started), healthy
    (answers its health check), pid, port."""
    layout = stack_layout(folder)
    config = read_json(layout.config) or {"ports": dict(DEFAULT_PORTS)}
    stack = Stack(layout, config, read_json(layout.secrets) or {})
    status = {}
    for service in STACK:
        name = service.name
        record = running(layout, name)
        port = record["port"] if record else config["ports"].get(name, DEFAULT_PORTS[name])
        healthy = bool(record) and bool(stack.sec) and service.healthy(stack)
        status[name] = {"running": bool(record), "healthy": healthy, "pid": record["pid"] if record else None,
                        "port": port, "log": str(layout.log(name))}
    return status
