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
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SERVICES = ("postgres", "s3", "mlflow")  # start order; stopped in reverse
LABELS = {"postgres": "PostgreSQL", "s3": "S3 (moto)", "mlflow": "MLflow"}
DEFAULT_DIR = ".team"
DEFAULT_PORTS = {"postgres": 15432, "s3": 19000, "mlflow": 15000}
START_TIMEOUT_S = {"postgres": 60, "s3": 60, "mlflow": 240}
STOP_TIMEOUT_S = 30
ARTIFACT_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-remote"
DVC_PREFIX = "labelspace"
DVC_REMOTE = "team"
DB_ROLE = "mlflow"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"
ADMIN_USER = "admin"
TEAM_USER = "team"
REGION = "us-east-1"

# Processes started by this Python process, so that they can be reaped after being stopped.
_CHILDREN: dict[int, subprocess.Popen] = {}


class TeamError(RuntimeError):
    """A failure `team` explains to its user (port taken, a service died, an old schema, ...)."""


# --------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "team.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def pg_dir(self) -> Path:
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def auth_ini(self) -> Path:
        return self.root / "mlflow" / "basic_auth.ini"

    def log(self, name: str) -> Path:
        return self.pg_dir / "postgres.log" if name == "postgres" else self.root / name / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.json"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (mode 600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _token(n: int = 24) -> str:
    return secrets.token_urlsafe(n)


def _load_secrets(layout: Layout) -> dict[str, str]:
    """The stack's generated secrets, created on first use and kept in secrets.json (mode 600)."""
    data = _read_json(layout.secrets) or {}
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
        _write_private(layout.secrets, json.dumps(data, indent=2) + "\n")
    return data


def _load_config(layout: Layout, ports: dict[str, int | None]) -> dict[str, Any]:
    """team.json: the ports (the ones asked for, else the saved ones, else the defaults)."""
    config = _read_json(layout.config) or {}
    saved = config.get("ports", {})
    config["ports"] = {
        name: int(ports[name]) if ports.get(name) is not None else int(saved.get(name, DEFAULT_PORTS[name]))
        for name in SERVICES
    }
    for name, port in config["ports"].items():
        if port == 0:
            config["ports"][name] = _free_port()
    config.setdefault("buckets", {"artifacts": ARTIFACT_BUCKET, "dvc": DVC_BUCKET})
    return config


def _save_config(layout: Layout, config: dict[str, Any]) -> None:
    layout.config.write_text(json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: start time in clock ticks after boot


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _related(pid: int) -> list[int]:
    """Live processes in `pid`'s process group or whose parent is `pid`, other than `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and (int(fields[1]) == pid or int(fields[2]) == pid):
            out.append(int(entry.name))
    return out


def _record(layout: Layout, name: str, pid: int, marker: str, port: int) -> dict[str, Any]:
    record = {"pid": pid, "start_time": _start_time(pid), "marker": marker, "port": port,
              "cmdline": _cmdline(pid)[:300], "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    layout.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    layout.pid_file(name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _verified(record: dict[str, Any] | None) -> bool:
    """Whether the process of a PID file is still the one that was started (same PID, same kernel
    start time, the command line still carries the marker)."""
    if not record:
        return False
    pid = int(record["pid"])
    return _alive(pid) and _start_time(pid) == record.get("start_time") and record["marker"] in _cmdline(pid)


def _running(layout: Layout, name: str) -> dict[str, Any] | None:
    record = _read_json(layout.pid_file(name))
    return record if _verified(record) else None


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except (FileNotFoundError, PermissionError):
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in text) or f"    ({path} is empty)"


def _spawn(layout: Layout, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = layout.log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} labelspace team: starting {name}\n".encode())
        f.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=layout.root, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc


def _wait_healthy(name: str, healthy: Callable[[], bool], alive: Callable[[], bool], log: Path,
                  timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy():
            return
        if not alive():
            raise TeamError(f"{LABELS.get(name, name)} exited during start-up; the last lines of {log}:\n{_log_tail(log)}")
        time.sleep(0.25)
    raise TeamError(f"{LABELS.get(name, name)} did not answer its health check within {timeout:.0f} s; "
                    f"the last lines of {log}:\n{_log_tail(log)}")


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _stop_process(name: str, record: dict[str, Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a verified process and what it started; SIGKILL after `timeout`."""
    pid = int(record["pid"])
    group = name != "postgres"  # the postmaster shuts down its own children
    first = signal.SIGINT if name == "postgres" else signal.SIGTERM  # SIGINT: PostgreSQL's fast shutdown
    for sig, wait in ((first, timeout), (signal.SIGKILL, 10.0)):
        related = _related(pid)
        _signal(pid, sig, group)
        if sig == signal.SIGKILL:
            for other in related:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(other, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid) and not any(_alive(p) for p in related):
                child = _CHILDREN.pop(pid, None)
                if child is not None:
                    child.wait(timeout=5)
                return
            time.sleep(0.1)
    raise TeamError(f"{LABELS[name]} (PID {pid}) did not stop")


# ---------------------------------------------------------------------------------------- ports


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_owner(port: int) -> str:
    """' (PID n: command)' for the process listening on `port`, where /proc tells; '' otherwise."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    if not inodes:
        return ""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return f" (PID {proc.name}: {' '.join(_cmdline(int(proc.name)).split())[:120]})"
    return ""


def _check_port_free(name: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise TeamError(
                f"port {port} on {HOST}, wanted for {LABELS[name]}, is taken{_port_owner(port)}: {e.strerror}. "
                f"Stop what listens there or choose another port with --{name}-port"
            ) from None


def _http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0, method: str = "GET",
                 body: dict | None = None) -> tuple[int, str]:
    """(status, body) of an HTTP request; (0, reason) when nothing answers."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(getattr(e, "reason", e))


# ------------------------------------------------------------------------------------ PostgreSQL


def pg_bin() -> Path:
    """The PostgreSQL server binaries: $LABELSPACE_PG_BIN, else the newest /usr/lib/postgresql/*/bin
    (Debian's layout), else the folder of pg_ctl on PATH."""
    if os.environ.get("LABELSPACE_PG_BIN"):
        return Path(os.environ["LABELSPACE_PG_BIN"])
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise TeamError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): "
                    "run scripts/install_system_packages.sh (apt-get install postgresql)")


def _as_pg_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", os.environ.get("LABELSPACE_PG_USER", "postgres"), "--", *argv]


def _pg_owner_setup(layout: Layout) -> None:
    layout.pg_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.pg_dir, 0o700)
    if os.geteuid() == 0:
        user = os.environ.get("LABELSPACE_PG_USER", "postgres")
        try:
            shutil.chown(layout.pg_dir, user, user)
        except LookupError:
            raise TeamError(f"no user {user!r} to run PostgreSQL as (apt-get install postgresql creates it)") from None
        probe = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(layout.pg_dir)], capture_output=True)
        if probe.returncode != 0:
            raise TeamError(f"PostgreSQL runs as user {user!r}, who cannot reach {layout.pg_dir}: make the folders "
                            f"above it searchable (chmod o+x) or use --dir somewhere else")


def _pg_connect(port: int, password: str, dbname: str = "postgres", user: str = "postgres", timeout: int = 3):
    try:
        import psycopg2
    except ImportError:
        raise TeamError("psycopg2 is missing: pip install -e '.[team]'") from None
    return psycopg2.connect(host=HOST, port=port, user=user, password=password, dbname=dbname, connect_timeout=timeout)


def _pg_healthy(port: int, password: str) -> bool:
    try:
        with contextlib.closing(_pg_connect(port, password, timeout=2)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return True
    except Exception:  # not up yet
        return False


def _start_postgres(layout: Layout, port: int, sec: dict[str, str]) -> dict[str, Any]:
    bindir = pg_bin()
    _pg_owner_setup(layout)
    if not (layout.pg_data / "PG_VERSION").exists():
        pwfile = layout.pg_dir / ".pwfile"
        _write_private(pwfile, sec["postgres_password"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, os.environ.get("LABELSPACE_PG_USER", "postgres"))
        try:
            result = subprocess.run(
                _as_pg_user([str(bindir / "initdb"), "-D", str(layout.pg_data), "-U", "postgres", "-E", "UTF8",
                             "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]),
                capture_output=True, text=True, cwd="/")
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise TeamError(f"initdb failed:\n{result.stdout}{result.stderr}")
    options = f"-p {port} -k {shlex.quote(str(layout.pg_data))} -c listen_addresses={HOST}"
    result = subprocess.run(
        _as_pg_user([str(bindir / "pg_ctl"), "-D", str(layout.pg_data), "-l", str(layout.log("postgres")),
                     "-w", "-t", str(START_TIMEOUT_S["postgres"]), "-o", options, "start"]),
        capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise TeamError(f"PostgreSQL did not start (pg_ctl: {result.stdout.strip()} {result.stderr.strip()}); "
                        f"the last lines of {layout.log('postgres')}:\n{_log_tail(layout.log('postgres'))}")
    pid = int((layout.pg_data / "postmaster.pid").read_text().split()[0])
    _wait_healthy("postgres", lambda: _pg_healthy(port, sec["postgres_password"]), lambda: _alive(pid),
                  layout.log("postgres"), START_TIMEOUT_S["postgres"])
    return _record(layout, "postgres", pid, str(layout.pg_data), port)


def _ensure_databases(port: int, sec: dict[str, str]) -> None:
    with contextlib.closing(_pg_connect(port, sec["postgres_password"])) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(f"{verb} ROLE {DB_ROLE} LOGIN PASSWORD %s", (sec["db_password"],))
            for db in (TRACKING_DB, AUTH_DB):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                if not cur.fetchone():
                    cur.execute(f"CREATE DATABASE {db} OWNER {DB_ROLE}")


def db_uri(port: int, db: str = TRACKING_DB) -> str:
    """SQLAlchemy URI of a stack database, without the password (the processes get PGPASSWORD)."""
    return f"postgresql://{DB_ROLE}@{HOST}:{port}/{db}"


# --------------------------------------------------------------------------------- migrations


@dataclass
class SchemaState:
    database: str
    state: str  # "empty" | "current" | "older" | "newer"
    current: str | None
    head: str
    pending: int = 0

    def describe(self) -> str:
        if self.state == "older":
            return (f"database {self.database!r} has schema revision {self.current or '(none)'}, older than the "
                    f"installed MLflow's {self.head} ({self.pending} migration(s) to apply)")
        if self.state == "newer":
            return (f"database {self.database!r} has schema revision {self.current}, which the installed MLflow "
                    f"(head {self.head}) does not know: it was written by a newer MLflow")
        return f"database {self.database!r}: schema {self.state} ({self.current or 'no tables'})"


# (database, alembic version table, migrations folder inside the mlflow package, a table that
# marks a database created before it had a version table)
_SCHEMAS = {
    TRACKING_DB: ("alembic_version", ("store", "db_migrations"), "experiments"),
    AUTH_DB: ("alembic_version_auth", ("server", "auth", "db", "migrations"), "users"),
}


def _migrations_dir(parts: tuple[str, ...]) -> Path:
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise TeamError("mlflow is not installed")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def schema_state(port: int, password: str, database: str, kind: str | None = None) -> SchemaState:
    """Compare the alembic revision of `database` with the head of the installed MLflow's migrations
    (`kind`: TRACKING_DB or AUTH_DB, default from the name). Connects as the PostgreSQL superuser."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    version_table, parts, marker_table = _SCHEMAS[kind or database]
    script = ScriptDirectory(str(_migrations_dir(parts)))
    heads = script.get_heads()
    if len(heads) != 1:
        raise TeamError(f"the installed MLflow has {len(heads)} migration heads for {database}: {heads}")
    head = heads[0]
    with contextlib.closing(_pg_connect(port, password, dbname=database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s), to_regclass(%s)", (f"public.{version_table}", f"public.{marker_table}"))
        has_version, has_marker = (v is not None for v in cur.fetchone())
        current = None
        if has_version:
            cur.execute(f"SELECT version_num FROM {version_table}")
            row = cur.fetchone()
            current = row[0] if row else None
    if current is None:
        return SchemaState(database, "older" if has_marker else "empty", None, head, 1 if has_marker else 0)
    if current == head:
        return SchemaState(database, "current", current, head)
    try:
        pending = len(list(script.iterate_revisions(head, current)))
    except CommandError:
        return SchemaState(database, "newer", current, head)
    return SchemaState(database, "older", current, head, pending)


def backup_database(layout: Layout, port: int, password: str, database: str) -> Path:
    """pg_dump (custom format, restore with pg_restore) into FOLDER/backups/DB-TIMESTAMP.dump."""
    layout.backups.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.backups, 0o700)
    target = layout.backups / f"{database}-{time.strftime('%Y%m%d-%H%M%S')}.dump"
    result = subprocess.run(
        [str(pg_bin() / "pg_dump"), "-h", HOST, "-p", str(port), "-U", "postgres", "-Fc", "-f", str(target), database],
        env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists() or target.stat().st_size == 0:
        raise TeamError(f"pg_dump of {database} failed, nothing was upgraded: {result.stderr.strip()}")
    os.chmod(target, 0o600)
    return target


def upgrade_database(port: int, sec: dict[str, str], database: str, kind: str | None = None) -> None:
    """Run MLflow's migrations: `mlflow db upgrade` for the tracking database, the auth store's
    alembic migrations for the users database."""
    env = {**os.environ, "PGPASSWORD": sec["db_password"], **_TELEMETRY_OFF}
    uri = db_uri(port, database)
    if (kind or database) == TRACKING_DB:
        argv = [sys.executable, "-m", "mlflow", "db", "upgrade", uri]
    else:
        argv = [sys.executable, "-c", "import sys, sqlalchemy; from mlflow.server.auth.db.utils import migrate_if_needed; "
                "migrate_if_needed(sqlalchemy.create_engine(sys.argv[1]), 'head')", uri]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise TeamError(f"upgrading the schema of {database} failed (the backup in the backups folder is intact):\n"
                        f"{(result.stdout + result.stderr)[-3000:]}")


def ensure_schemas(layout: Layout, port: int, sec: dict[str, str], upgrade: bool,
                   databases: dict[str, str] | None = None, out: Callable[[str], None] = print) -> list[Path]:
    """Refuse to go on with a schema older than the installed MLflow's unless `upgrade`, in which
    case back each such database up and migrate it. `databases`: name -> kind (default the stack's
    two). Returns the backups written."""
    databases = databases or {TRACKING_DB: TRACKING_DB, AUTH_DB: AUTH_DB}
    states = [schema_state(port, sec["postgres_password"], db, kind) for db, kind in databases.items()]
    newer = [s for s in states if s.state == "newer"]
    if newer:
        raise TeamError("; ".join(s.describe() for s in newer)
                        + ". Install that MLflow version (or newer) or restore a backup from " + str(layout.backups))
    older = [s for s in states if s.state == "older"]
    if not older:
        return []
    if not upgrade:
        raise TeamError("; ".join(s.describe() for s in older)
                        + ". MLflow will not start on it. Run `labelspace team up --upgrade-db` to back it up with "
                        f"pg_dump into {layout.backups} and migrate it (`mlflow db upgrade`), "
                        "or install the MLflow version that wrote it")
    written = []
    for s in older:
        path = backup_database(layout, port, sec["postgres_password"], s.database)
        out(f"  backed up {s.database} to {path}")
        written.append(path)
        out(f"  upgrading {s.database}: {s.current or '(unversioned)'} -> {s.head}")
        upgrade_database(port, sec, s.database, databases[s.database])
    return written


# ------------------------------------------------------------------------------------- S3, MLflow

_TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "ZENML_ANALYTICS_OPT_IN": "false",
                  "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def _service_env() -> dict[str, str]:
    """The caller's environment without what would point a service elsewhere (a member's MLflow
    client settings, AWS keys, another backend or auth configuration)."""
    dropped = ("MLFLOW_TRACKING_", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_AUTH_",
               "MLFLOW_S3_", "MLFLOW_ARTIFACT", "AWS_", "PGPASS", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(_TELEMETRY_OFF)
    return env


def _s3_healthy(port: int) -> bool:
    return _http_status(f"http://{HOST}:{port}/moto-api/", timeout=2)[0] == 200


def s3_client(port: int, sec: dict[str, str], **kwargs):
    import boto3

    return boto3.client("s3", endpoint_url=f"http://{HOST}:{port}", region_name=REGION,
                        aws_access_key_id=sec["s3_access_key_id"], aws_secret_access_key=sec["s3_secret_access_key"], **kwargs)


def _start_s3(layout: Layout, port: int, sec: dict[str, str], buckets: dict[str, str]) -> dict[str, Any]:
    marker = "labelspace.deploy.s3server"
    argv = [sys.executable, "-m", marker, "--host", HOST, "--port", str(port)]
    for bucket in buckets.values():
        argv += ["--bucket", bucket]
    env = {**_service_env(), "LABELSPACE_S3_ACCESS_KEY_ID": sec["s3_access_key_id"],
           "LABELSPACE_S3_SECRET_ACCESS_KEY": sec["s3_secret_access_key"]}
    proc = _spawn(layout, "s3", argv, env)
    _wait_healthy("s3", lambda: _s3_healthy(port), lambda: proc.poll() is None, layout.log("s3"), START_TIMEOUT_S["s3"])
    client = s3_client(port, sec)
    for bucket in buckets.values():  # a signed request: the key works and the buckets are there
        client.head_bucket(Bucket=bucket)
    return _record(layout, "s3", proc.pid, marker, port)


def _write_auth_ini(layout: Layout, port: int, sec: dict[str, str]) -> None:
    _write_private(layout.auth_ini, "\n".join([
        "# Written by `labelspace team up`; see docs/team-server.md.",
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {db_uri(port, AUTH_DB)}",
        f"admin_username = {ADMIN_USER}",
        "# Used only to create the admin user on an empty user store (MLflow has no default password).",
        f"admin_password = {sec['admin_password']}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "",
    ]))


def _mlflow_url(config: dict[str, Any]) -> str:
    return f"http://{HOST}:{config['ports']['mlflow']}"


def _start_mlflow(layout: Layout, config: dict[str, Any], sec: dict[str, str], workers: int) -> dict[str, Any]:
    ports = config["ports"]
    _write_auth_ini(layout, ports["postgres"], sec)
    marker = f"mlflow server --backend-store-uri {db_uri(ports['postgres'])}"
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri(ports["postgres"]),
            "--serve-artifacts", "--artifacts-destination", f"s3://{config['buckets']['artifacts']}/artifacts",
            "--host", HOST, "--port", str(ports["mlflow"]), "--workers", str(workers), "--app-name", "basic-auth"]
    env = {
        **_service_env(),
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
    proc = _spawn(layout, "mlflow", argv, env)
    url = _mlflow_url(config)
    try:
        _wait_healthy("mlflow", lambda: _http_status(f"{url}/health", timeout=2)[0] == 200, lambda: proc.poll() is None,
                      layout.log("mlflow"), START_TIMEOUT_S["mlflow"])
    except TeamError:
        if proc.poll() is None:
            _stop_process("mlflow", {"pid": proc.pid})
        raise
    return _record(layout, "mlflow", proc.pid, marker, ports["mlflow"])


def _ensure_users(config: dict[str, Any], sec: dict[str, str]) -> None:
    """Check that anonymous requests are refused and the admin can log in; create the `team` user
    (or reset its password to the one in secrets.json) through the auth API."""
    url = _mlflow_url(config)
    probe = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    status, _ = _http_status(probe)
    if status != 401:
        raise TeamError(f"MLflow at {url} answered an anonymous request with {status}, not 401: authentication is off")
    admin = (ADMIN_USER, sec["admin_password"])
    status, body = _http_status(probe, auth=admin)
    if status != 200:
        raise TeamError(f"the admin login was refused ({status}): the user store ({AUTH_DB}) was created with "
                        "another admin password than the one in secrets.json. Restore that secrets.json, or reset "
                        f"the password in the {AUTH_DB} database")
    status, _ = _http_status(f"{url}/api/2.0/mlflow/users/get?username={TEAM_USER}", auth=admin)
    if status != 200:
        status, body = _http_status(f"{url}/api/2.0/mlflow/users/create", auth=admin, method="POST",
                                    body={"username": TEAM_USER, "password": sec["team_password"]})
        if status != 200:
            raise TeamError(f"creating the MLflow user {TEAM_USER!r} failed ({status}): {body[:300]}")
    elif _http_status(probe, auth=(TEAM_USER, sec["team_password"]))[0] != 200:
        status, body = _http_status(f"{url}/api/2.0/mlflow/users/update-password", auth=admin, method="PATCH",
                                    body={"username": TEAM_USER, "password": sec["team_password"]})
        if status != 200:
            raise TeamError(f"resetting the password of {TEAM_USER!r} failed ({status}): {body[:300]}")


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
    config = _read_json(layout.config)
    sec = _read_json(layout.secrets)
    if not config or not sec:
        raise TeamError(f"no team stack in {layout.root}: run `labelspace team up` first")
    ports = config["ports"]
    s3_url = f"http://{HOST}:{ports['s3']}"
    env = {"MLFLOW_TRACKING_URI": _mlflow_url(config), "MLFLOW_TRACKING_USERNAME": TEAM_USER,
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
        "mlflow_uri": _mlflow_url(config),
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
    running = {name: _running(layout, name) for name in SERVICES}
    for name, record in running.items():
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
            record = running[name]
            if record and _healthy(name, ports[name], sec):
                out(f"  {LABELS[name]} already running (PID {record['pid']}, port {ports[name]})")
                if name == "postgres":
                    _ensure_databases(ports[name], sec)
                continue
            if record:  # alive but not answering: restart it
                out(f"  {LABELS[name]} (PID {record['pid']}) does not answer; restarting it")
                _stop_process(name, record)
            layout.pid_file(name).unlink(missing_ok=True)
            _check_port_free(name, ports[name])
            out(f"  starting {LABELS[name]} on {HOST}:{ports[name]}")
            if name == "postgres":
                record = _start_postgres(layout, ports[name], sec)
                started.append((name, record))
                _ensure_databases(ports[name], sec)
            elif name == "s3":
                record = _start_s3(layout, ports[name], sec, config["buckets"])
                started.append((name, record))
            else:
                ensure_schemas(layout, ports["postgres"], sec, upgrade_db, out=out)
                record = _start_mlflow(layout, config, sec, workers)
                started.append((name, record))
            running[name] = record
        _ensure_users(config, sec)
        _save_config(layout, config)  # only ports that worked are remembered
    except BaseException as e:
        for name, record in reversed(started):
            with contextlib.suppress(Exception):
                _stop_process(name, record)
                layout.pid_file(name).unlink(missing_ok=True)
        if started and isinstance(e, TeamError):
            raise TeamError(f"{e}\n(stopped again what this command had started: "
                            f"{', '.join(LABELS[n] for n, _ in started)})") from None
        raise
    info = team_info(layout.root)
    info["pids"] = {name: running[name]["pid"] for name in SERVICES}
    info["started"] = [name for name, _ in started]
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info


def _healthy(name: str, port: int, sec: dict[str, str]) -> bool:
    if name == "postgres":
        return _pg_healthy(port, sec["postgres_password"])
    if name == "s3":
        return _s3_healthy(port)
    return _http_status(f"http://{HOST}:{port}/health", timeout=3)[0] == 200


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
        record = _read_json(path)
        if record is None:
            continue
        if _verified(record):
            out(f"  stopping {LABELS[name]} (PID {record['pid']})")
            _stop_process(name, record)
            stopped.append(name)
        elif _alive(int(record["pid"])):
            out(f"  {LABELS[name]}: PID {record['pid']} is now another process; not touching it")
        else:
            out(f"  {LABELS[name]} was not running")
        path.unlink(missing_ok=True)
    return stopped


def team_status(folder: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """For each service: running (its PID file's process is alive and the one started), healthy
    (answers its health check), pid, port."""
    layout = _layout(folder)
    config = _read_json(layout.config) or {"ports": dict(DEFAULT_PORTS)}
    sec = _read_json(layout.secrets) or {}
    status = {}
    for name in SERVICES:
        record = _running(layout, name)
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
