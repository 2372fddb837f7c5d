"""`labelspace team up|down|status|env`: the team's MLflow server, its PostgreSQL database and an
S3-compatible store for MLflow artifacts and a DVC remote, as local unprivileged processes whose data
all lives under one folder (default `.team/` in the project).

- PostgreSQL (Debian's `postgresql`): a cluster in FOLDER/postgres/data on 127.0.0.1, databases
  `mlflow` (tracking and registry) and `mlflow_auth` (MLflow's users), owned by the role `mlflow`.
  As root, initdb and pg_ctl run as the `postgres` user.
- S3: moto's server (`labelspace.deploy.s3server`) with buckets `mlflow-artifacts` and
  `dvc-remote`, requests checked against a generated key. moto keeps objects in memory only.
- MLflow: `mlflow server --app-name basic-auth --serve-artifacts` on PostgreSQL and the S3 bucket;
  anonymous requests get 401. An `admin` user (user management) and a `team` user (what members
  export) get generated passwords, kept in FOLDER/secrets.json (mode 600).

Every service gets a PID file (FOLDER/run/NAME.json: PID, kernel start time, command marker);
`team down` signals only processes that still match their file. Before MLflow starts on an existing
database, the schema's alembic revision is compared with the installed MLflow's; an older schema is
upgraded only with `--upgrade-db`, after a pg_dump into FOLDER/backups/.

The modules: `processes` (folder layout, PID records, start/stop, ports, health probes), `postgres`
(the cluster, its databases, schema check, backup, upgrade), `s3server` (the S3 store),
`mlflow_server` (the tracking server and its users) and this one (the stack as a whole and the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labelspace.deploy.mlflow_server import ADMIN_USER, TEAM_USER, ensure_users, mlflow_url, start_mlflow
from labelspace.deploy.postgres import (
    AUTH_DB,
    DB_ROLE,
    TRACKING_DB,
    db_uri,
    ensure_databases,
    ensure_schemas,
    pg_healthy,
    start_postgres,
)
from labelspace.deploy.processes import (
    HOST,
    LABELS,
    Layout,
    TeamError,
    alive,
    check_port_free,
    free_port,
    http_status,
    read_json,
    running,
    stop_process,
    verified,
    write_private,
)
from labelspace.deploy.s3server import s3_healthy, start_s3

SERVICES = ("postgres", "s3", "mlflow")  # start order; stopped in reverse
DEFAULT_DIR = ".team"
DEFAULT_PORTS = {"postgres": 15432, "s3": 19000, "mlflow": 15000}
ARTIFACT_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-remote"
DVC_PREFIX = "labelspace"
DVC_REMOTE = "team"


# ---------------------------------------------------------------------------- team.json, secrets.json


def _token(n: int = 24) -> str:
    """A URL-safe secret that never starts with '-': command lines (`dvc remote modify ... VALUE`,
    the lines `team up` prints) would read it as an option."""
    while True:
        token = secrets.token_urlsafe(n)
        if not token.startswith("-"):
            return token


def _load_secrets(layout: Layout) -> dict[str, str]:
    """The stack's generated secrets, created on first use and kept in secrets.json (mode 600)."""
    data = read_json(layout.secrets) or {}
    wanted = {
        "postgres_password": lambda: _token(),
        "db_password": lambda: _token(),
        "admin_password": lambda: _token(),
        "team_password": lambda: _token(),
        "flask_secret_key": lambda: secrets.token_hex(32),
        "s3_access_key_id": lambda: "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        "s3_secret_access_key": lambda: _token(30)[:40],
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
    return config


def _save_config(layout: Layout, config: dict[str, Any]) -> None:
    layout.config.write_text(json.dumps(config, indent=2) + "\n")


# ------------------------------------------------------------------------------------ public API


def _layout(folder: str | os.PathLike | None) -> Layout:
    return Layout(Path(folder or DEFAULT_DIR).expanduser().resolve())


@contextlib.contextmanager
def _locked(layout: Layout):
    """One `team up`/`team down` at a time per folder."""
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.root / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TeamError(f"another `labelspace team` command is working on {layout.root}") from None
        yield


def team_info(folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """URIs, the environment a member exports, and the DVC remote commands, from the folder's files."""
    layout = _layout(folder)
    config = read_json(layout.config)
    sec = read_json(layout.secrets)
    if not config or not sec:
        raise TeamError(f"no team stack in {layout.root}: run `labelspace team up` first")
    ports = config["ports"]
    s3_url = f"http://{HOST}:{ports['s3']}"
    env = {"MLFLOW_TRACKING_URI": mlflow_url(config), "MLFLOW_TRACKING_USERNAME": TEAM_USER,
           "MLFLOW_TRACKING_PASSWORD": sec["team_password"]}
    dvc = [
        ["dvc", "remote", "add", "-f", DVC_REMOTE, f"s3://{config['buckets']['dvc']}/{DVC_PREFIX}"],
        ["dvc", "remote", "modify", DVC_REMOTE, "endpointurl", s3_url],
        ["dvc", "remote", "modify", "--local", DVC_REMOTE, "access_key_id", sec["s3_access_key_id"]],
        ["dvc", "remote", "modify", "--local", DVC_REMOTE, "secret_access_key", sec["s3_secret_access_key"]],
    ]
    return {
        "folder": str(layout.root),
        "ports": ports,
        "mlflow_uri": mlflow_url(config),
        "s3_endpoint": s3_url,
        "postgres_uri": db_uri(ports["postgres"]),
        "buckets": config["buckets"],
        "artifact_destination": f"s3://{config['buckets']['artifacts']}/artifacts",
        "dvc_remote_url": f"s3://{config['buckets']['dvc']}/{DVC_PREFIX}",
        "env": env,
        "dvc_commands": dvc,
        "admin": {"username": ADMIN_USER, "password": sec["admin_password"]},
        "s3_credentials": {"access_key_id": sec["s3_access_key_id"], "secret_access_key": sec["s3_secret_access_key"]},
    }


def team_up(folder: str | os.PathLike | None = None, *, postgres_port: int | None = None,
            s3_port: int | None = None, mlflow_port: int | None = None, upgrade_db: bool = False,
            workers: int = 2, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Start whatever of the stack is not running (a running, healthy service is left alone) and
    return `team_info`. Ports: None keeps the saved one (else the default), 0 picks a free one. On
    failure, the services this call started are stopped again and TeamError says why."""
    layout = _layout(folder)
    with _locked(layout):
        return _team_up(layout, {"postgres": postgres_port, "s3": s3_port, "mlflow": mlflow_port}, upgrade_db,
                        workers, out)


def _team_up(layout: Layout, requested: dict[str, int | None], upgrade_db: bool, workers: int,
             out: Callable[[str], None]) -> dict[str, Any]:
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
    sec = _load_secrets(layout)
    ports = config["ports"]
    started: list[tuple[str, dict[str, Any]]] = []
    try:
        for name in SERVICES:
            record = records[name]
            if record and _healthy(name, ports[name], sec):
                out(f"  {LABELS[name]} already running (PID {record['pid']}, port {ports[name]})")
                if name == "postgres":
                    ensure_databases(ports[name], sec)
                continue
            if record:  # alive but not answering: restart it
                out(f"  {LABELS[name]} (PID {record['pid']}) does not answer; restarting it")
                stop_process(name, record)
            layout.pid_file(name).unlink(missing_ok=True)
            check_port_free(name, ports[name])
            out(f"  starting {LABELS[name]} on {HOST}:{ports[name]}")
            if name == "postgres":
                record = start_postgres(layout, ports[name], sec)
                started.append((name, record))
                ensure_databases(ports[name], sec)
            elif name == "s3":
                record = start_s3(layout, ports[name], sec, config["buckets"])
                started.append((name, record))
            else:
                ensure_schemas(layout, ports["postgres"], sec, upgrade_db, out=out)
                record = start_mlflow(layout, config, sec, workers)
                started.append((name, record))
            records[name] = record
        ensure_users(config, sec)
        _save_config(layout, config)  # only ports that worked are remembered
    except BaseException as e:
        for name, record in reversed(started):
            with contextlib.suppress(Exception):
                stop_process(name, record)
                layout.pid_file(name).unlink(missing_ok=True)
        if started and isinstance(e, TeamError):
            raise TeamError(f"{e}\n(stopped again what this command had started: "
                            f"{', '.join(LABELS[n] for n, _ in started)})") from None
        raise
    info = team_info(layout.root)
    info["pids"] = {name: records[name]["pid"] for name in SERVICES}
    info["started"] = [name for name, _ in started]
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info


def _healthy(name: str, port: int, sec: dict[str, str]) -> bool:
    if name == "postgres":
        return pg_healthy(port, sec["postgres_password"])
    if name == "s3":
        return s3_healthy(port)
    return http_status(f"http://{HOST}:{port}/health", timeout=3)[0] == 200


def team_down(folder: str | os.PathLike | None = None, out: Callable[[str], None] = print,
              only: tuple[str, ...] | None = None) -> list[str]:
    """Stop the processes this folder's PID files name, MLflow first (`only`: just these services);
    a PID file whose process is gone, or is no longer the process that was started, is removed
    without signalling anything. Idempotent. Returns the services it stopped."""
    layout = _layout(folder)
    if not layout.root.is_dir():
        return []
    with _locked(layout):
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
    layout = _layout(folder)
    config = read_json(layout.config) or {"ports": dict(DEFAULT_PORTS)}
    sec = read_json(layout.secrets) or {}
    status = {}
    for name in SERVICES:
        record = running(layout, name)
        port = record["port"] if record else config["ports"][name]
        healthy = bool(record) and bool(sec) and _healthy(name, port, sec)
        status[name] = {"running": bool(record), "healthy": healthy, "pid": record["pid"] if record else None,
                        "port": port, "log": str(layout.log(name))}
    return status


# ----------------------------------------------------------------------------------------- CLI


def _print_info(info: dict[str, Any], out: Callable[[str], None] = print) -> None:
    p = info["ports"]
    out(f"\nTeam stack in {info['folder']}:")
    out(f"  PostgreSQL  {HOST}:{p['postgres']}  databases {TRACKING_DB}, {AUTH_DB} (owner {DB_ROLE})")
    out(f"  S3 (moto)   {info['s3_endpoint']}  buckets {', '.join(info['buckets'].values())}"
        "  (in memory: contents are lost when it stops)")
    out(f"  MLflow      {info['mlflow_uri']}  basic auth; artifacts in {info['artifact_destination']}")
    out("\nA team member exports (or: eval \"$(labelspace team env)\"):")
    for key, value in info["env"].items():
        out(f"  export {key}={shlex.quote(value)}")
    out("then `labelspace setup-stack` points ZenML's MLflow tracker at it.")
    out(f"\nDVC remote, in each clone (--local keeps the key out of git), then `dvc push -r {DVC_REMOTE}`:")
    for argv in info["dvc_commands"]:
        out("  " + shlex.join(argv))
    out(f"\nAdmin (user management): {info['admin']['username']}, password in {info['folder']}/secrets.json")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status", "env"], help="what to do")
    p.add_argument("--dir", default=None, help=f"the stack's folder (default: {DEFAULT_DIR}/ in the current folder)")
    for name in SERVICES:
        p.add_argument(f"--{name}-port", type=int, default=None,
                       help=f"{LABELS[name]} port on {HOST} (up; default: the saved one, else {DEFAULT_PORTS[name]}; 0: any free)")
    p.add_argument("--upgrade-db", action="store_true",
                   help="up: back up (pg_dump) and migrate a database whose schema is older than the installed MLflow")
    p.add_argument("--workers", type=int, default=2, help="up: MLflow server worker processes (default 2)")


def run_cli(args: argparse.Namespace) -> int:
    if args.action == "up":
        info = team_up(args.dir, postgres_port=args.postgres_port, s3_port=args.s3_port, mlflow_port=args.mlflow_port,
                       upgrade_db=args.upgrade_db, workers=args.workers)
        print(f"team stack up in {info['seconds']} s" + (f" (started: {', '.join(info['started'])})" if info["started"] else ""))
        _print_info(info)
        return 0
    if args.action == "down":
        stopped = team_down(args.dir)
        print("team stack stopped" if stopped else "team stack was not running")
        return 0
    if args.action == "status":
        status = team_status(args.dir)
        for name, s in status.items():
            state = "up" if s["healthy"] else ("running, not answering" if s["running"] else "stopped")
            pid = f"PID {s['pid']}" if s["pid"] else "no PID"
            print(f"  {LABELS[name]:<11} {state:<23} port {s['port']:<6} {pid:<10} log {s['log']}")
        return 0 if all(s["healthy"] for s in status.values()) else 1
    info = team_info(args.dir)
    print(f"# labelspace team stack in {info['folder']}")
    for key, value in info["env"].items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labelspace team", description=__doc__.split("\n")[0])
    configure_parser(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except TeamError as e:
        print(f"labelspace team {args.action}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
