"""The team stack's PostgreSQL: a cluster of Debian's `postgresql` initialised in FOLDER/postgres/data,
listening on 127.0.0.1, with the databases `mlflow` (tracking and registry) and `mlflow_auth`
(MLflow's users) owned by the role `mlflow`; and MLflow's schema in them: the alembic revision
checked against the installed MLflow's, a pg_dump backup, then `mlflow db upgrade`.

PostgreSQL refuses to run as root: as root, initdb and pg_ctl run as the `postgres` user
($LABELSPACE_PG_USER). The server binaries are found by `pg_bin()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelspace.deploy.processes import (
    HOST,
    START_TIMEOUT_S,
    TELEMETRY_OFF,
    Layout,
    TeamError,
    alive,
    answers_sql,
    log_tail,
    wait_healthy,
    write_private,
    write_record,
)

DB_ROLE = "mlflow"
TRACKING_DB = "mlflow"
AUTH_DB = "mlflow_auth"


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


def pg_connect(port: int, password: str, dbname: str = "postgres", user: str = "postgres", timeout: int = 3):
    try:
        import psycopg2
    except ImportError:
        raise TeamError("psycopg2 is missing: pip install -e '.[team]'") from None
    return psycopg2.connect(host=HOST, port=port, user=user, password=password, dbname=dbname, connect_timeout=timeout)


def pg_healthy(port: int, password: str) -> bool:
    return answers_sql(lambda: pg_connect(port, password, timeout=2))


def start_postgres(layout: Layout, port: int, sec: dict[str, str]) -> dict[str, Any]:
    bindir = pg_bin()
    _pg_owner_setup(layout)
    if not (layout.pg_data / "PG_VERSION").exists():
        pwfile = layout.pg_dir / ".pwfile"
        write_private(pwfile, sec["postgres_password"] + "\n")
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
    _wait_until_reaped(layout.pg_data / "postmaster.pid")
    options = f"-p {port} -k {shlex.quote(str(layout.pg_data))} -c listen_addresses={HOST}"
    result = subprocess.run(
        _as_pg_user([str(bindir / "pg_ctl"), "-D", str(layout.pg_data), "-l", str(layout.log("postgres")),
                     "-w", "-t", str(START_TIMEOUT_S["postgres"]), "-o", options, "start"]),
        capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise TeamError(f"PostgreSQL did not start (pg_ctl: {result.stdout.strip()} {result.stderr.strip()}); "
                        f"the last lines of {layout.log('postgres')}:\n{log_tail(layout.log('postgres'))}")
    pid = int((layout.pg_data / "postmaster.pid").read_text().split()[0])
    wait_healthy("postgres", lambda: pg_healthy(port, sec["postgres_password"]), lambda: alive(pid),
                  layout.log("postgres"), START_TIMEOUT_S["postgres"])
    return write_record(layout, "postgres", pid, str(layout.pg_data), port)


def _wait_until_reaped(pid_file: Path, timeout: float = 30) -> None:
    """After a crash, a killed postmaster can stay a zombie until its parent reaps it; PostgreSQL
    would take it for a running server ("lock file postmaster.pid already exists"). Wait for it."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout
    while not alive(pid) and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def ensure_databases(port: int, sec: dict[str, str]) -> None:
    with contextlib.closing(pg_connect(port, sec["postgres_password"])) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute("SET log_min_error_statement = panic")  # a failing statement below would log its password
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


def migrations_dir(parts: tuple[str, ...]) -> Path:
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
    script = ScriptDirectory(str(migrations_dir(parts)))
    heads = script.get_heads()
    if len(heads) != 1:
        raise TeamError(f"the installed MLflow has {len(heads)} migration heads for {database}: {heads}")
    head = heads[0]
    with contextlib.closing(pg_connect(port, password, dbname=database)) as conn, conn.cursor() as cur:
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


def dump_database(port: int, password: str, database: str, target: Path) -> Path:
    """pg_dump of `database` (custom format, read back by pg_restore) into `target`, mode 600. The
    dump is one consistent snapshot while the stack keeps running."""
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(pg_bin() / "pg_dump"), "-h", HOST, "-p", str(port), "-U", "postgres", "-Fc", "-f", str(target), database],
        env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists() or target.stat().st_size == 0:
        raise TeamError(f"pg_dump of {database} failed: {result.stderr.strip()}")
    os.chmod(target, 0o600)
    return target


def backup_database(layout: Layout, port: int, password: str, database: str) -> Path:
    """pg_dump into FOLDER/backups/DB-TIMESTAMP.dump (before a schema upgrade)."""
    layout.backups.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.backups, 0o700)
    try:
        return dump_database(port, password, database,
                             layout.backups / f"{database}-{time.strftime('%Y%m%d-%H%M%S')}.dump")
    except TeamError as e:
        raise TeamError(f"{e}; nothing was upgraded") from None


def backup_databases(port: int, sec: dict[str, str], target: Path) -> dict[str, Any]:
    """The stack's databases, one dump each, into `target` (a backup's postgres/ folder)."""
    return {db: {"file": dump_database(port, sec["postgres_password"], db, target / f"{db}.dump").name,
                 "bytes": (target / f"{db}.dump").stat().st_size} for db in (TRACKING_DB, AUTH_DB)}


def restore_databases(port: int, sec: dict[str, str], source: Path) -> None:
    """pg_restore each dump of a backup's postgres/ folder into the new cluster's empty database of
    the same name (created by `ensure_databases`), in one transaction each."""
    for dump in sorted(source.glob("*.dump")):
        database = dump.stem
        result = subprocess.run(
            [str(pg_bin() / "pg_restore"), "-h", HOST, "-p", str(port), "-U", "postgres", "-d", database,
             "--single-transaction", "--exit-on-error", str(dump)],
            env={**os.environ, "PGPASSWORD": sec["postgres_password"]}, capture_output=True, text=True)
        if result.returncode != 0:
            raise TeamError(f"pg_restore of {dump} into {database} failed: {result.stderr.strip()[-2000:]}")


def upgrade_database(port: int, sec: dict[str, str], database: str, kind: str | None = None) -> None:
    """Run MLflow's migrations: `mlflow db upgrade` for the tracking database, the auth store's
    alembic migrations for the users database."""
    env = {**os.environ, "PGPASSWORD": sec["db_password"], **TELEMETRY_OFF}
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

