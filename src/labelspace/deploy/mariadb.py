"""The team stack's MariaDB: the database of the ZenML server (ZenML refuses PostgreSQL), a private
instance of Debian's `mariadb-server` in FOLDER/mariadb/data on 127.0.0.1, with one database `zenml`
owned by the user `zenml`; and its backup (mariadb-dump) and restore.

The data folder is made in FOLDER/mariadb/data.new by `mariadb-install-db`, then the database and its
user are created by `mariadbd --bootstrap` reading SQL from stdin (the password never reaches a
command line or a file), and only then renamed to data/: a folder named data/ is always complete.
MariaDB's root account is reachable only through the unix socket, inside FOLDER/mariadb (mode 700).
mariadbd refuses to run as root: as root it runs as the `mysql` user ($LABELSPACE_MARIADB_USER).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from labelspace.deploy.processes import (
    HOST,
    START_TIMEOUT_S,
    Layout,
    TeamError,
    answers_sql,
    service_env,
    spawn,
    stop_process,
    wait_healthy,
    write_record,
)

DATABASE = "zenml"
DB_USER = "zenml"
DUMP_FILE = "zenml.sql"
# The ZenML database is small: a 64 MB buffer pool and a 16 MB redo log instead of 128 MB and 96 MB.
SERVER_OPTIONS = ["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M", "--skip-name-resolve",
                  "--character-set-server=utf8mb4"]


def mariadb_dir(layout: Layout) -> Path:
    return layout.root / "mariadb"


def _data(layout: Layout) -> Path:
    return mariadb_dir(layout) / "data"


def _binary(name: str) -> str:
    """A MariaDB program: in $LABELSPACE_MARIADB_BIN, else on PATH, else in /usr/sbin (mariadbd)."""
    folder = os.environ.get("LABELSPACE_MARIADB_BIN")
    found = str(Path(folder) / name) if folder else shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found or not Path(found).exists():
        raise TeamError(f"MariaDB's {name} is not installed: run scripts/install_system_packages.sh "
                        "(apt-get install mariadb-server)")
    return found


def _run_as() -> list[str]:
    """mariadbd's --user when running as root (it refuses root), nothing otherwise."""
    return [f"--user={os.environ.get('LABELSPACE_MARIADB_USER', 'mysql')}"] if os.geteuid() == 0 else []


def _tmpdir(layout: Layout) -> list[str]:
    """MariaDB's temporary folder, inside the stack's: the default (/tmp) is shared with every other
    MariaDB on the host, and a starting server deletes the #sql temporary files it finds there, those
    of another one's `mariadb-install-db` included (two stacks initialised at once: "Error on delete
    of '/tmp/#sql-temptable-...'")."""
    return [f"--tmpdir={mariadb_dir(layout) / 'tmp'}"]


def _owner_setup(layout: Layout) -> None:
    folder = mariadb_dir(layout)
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    os.chmod(folder / "tmp", 0o700)
    if os.geteuid() != 0:
        return
    user = os.environ.get("LABELSPACE_MARIADB_USER", "mysql")
    try:
        shutil.chown(folder, user, user)
        shutil.chown(folder / "tmp", user, user)
    except LookupError:
        raise TeamError(f"no user {user!r} to run MariaDB as (apt-get install mariadb-server creates it)") from None
    if subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(folder)], capture_output=True).returncode:
        raise TeamError(f"MariaDB runs as user {user!r}, who cannot reach {folder}: make the folders above it "
                        "searchable (chmod o+x) or use --dir somewhere else")


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _initialize(layout: Layout, sec: dict[str, str]) -> None:
    """Create data/ with the system tables, the database and its user, unless it exists."""
    if (_data(layout) / "mysql").is_dir():
        return
    new = mariadb_dir(layout) / "data.new"
    shutil.rmtree(new, ignore_errors=True)
    result = subprocess.run([_binary("mariadb-install-db"), "--no-defaults", f"--datadir={new}", *_run_as(),
                             "--skip-test-db", "--auth-root-authentication-method=socket", *_tmpdir(layout),
                             *SERVER_OPTIONS],
                            capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise TeamError(f"mariadb-install-db failed:\n{(result.stdout + result.stderr)[-3000:]}")
    sql = "\n".join([
        "FLUSH PRIVILEGES;",
        f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4;",
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{HOST}' IDENTIFIED BY {_sql_string(sec['mariadb_password'])};",
        f"GRANT ALL PRIVILEGES ON {DATABASE}.* TO '{DB_USER}'@'{HOST}';",
        "",
    ])
    result = subprocess.run([_binary("mariadbd"), "--no-defaults", "--bootstrap", f"--datadir={new}", *_run_as(),
                             *_tmpdir(layout), *SERVER_OPTIONS], input=sql, capture_output=True, text=True, cwd="/")
    if result.returncode != 0:
        raise TeamError(f"creating the {DATABASE} database in MariaDB failed:\n{(result.stdout + result.stderr)[-3000:]}")
    os.replace(new, _data(layout))


def mariadb_connect(port: int, sec: dict[str, str], timeout: int = 3):
    import pymysql

    return pymysql.connect(host=HOST, port=port, user=DB_USER, password=sec["mariadb_password"], database=DATABASE,
                           connect_timeout=timeout)


def mariadb_healthy(port: int, sec: dict[str, str]) -> bool:
    return answers_sql(lambda: mariadb_connect(port, sec, timeout=2))


def _login_refused(port: int, sec: dict[str, str]) -> bool:
    import pymysql

    try:
        mariadb_connect(port, sec, timeout=2).close()
    except pymysql.err.OperationalError as e:
        return e.args[0] == 1045  # ER_ACCESS_DENIED_ERROR
    except Exception:
        return False
    return False


def start_mariadb(layout: Layout, port: int, sec: dict[str, str]) -> dict[str, Any]:
    """Initialise (first start) and start mariadbd; its PID record once the `zenml` user can query."""
    _owner_setup(layout)
    _initialize(layout, sec)
    folder = mariadb_dir(layout)
    marker = f"--datadir={_data(layout)}"
    argv = [_binary("mariadbd"), "--no-defaults", marker, *_run_as(), f"--port={port}", f"--bind-address={HOST}",
            f"--socket={folder / 'mariadb.sock'}", f"--pid-file={folder / 'mariadb.pid'}", *_tmpdir(layout),
            *SERVER_OPTIONS]
    proc = spawn(layout, "mariadb", argv, service_env())
    try:
        wait_healthy("mariadb", lambda: mariadb_healthy(port, sec) or _login_refused(port, sec),
                     lambda: proc.poll() is None, layout.log("mariadb"), START_TIMEOUT_S["mariadb"])
        if _login_refused(port, sec):
            raise TeamError(f"MariaDB refused the {DB_USER!r} login: {_data(layout)} was created with another "
                            "mariadb_password than the one in secrets.json. Restore that secrets.json")
    except BaseException:
        if proc.poll() is None:
            stop_process("mariadb", {"pid": proc.pid})
        raise
    return write_record(layout, "mariadb", proc.pid, marker, port)


def store_url(port: int) -> str:
    """The ZenML server's store URL, without credentials (the server gets them in its environment)."""
    return f"mysql://{HOST}:{port}/{DATABASE}"


# ------------------------------------------------------------------------------ backup, restore


def _client_env(sec: dict[str, str]) -> dict[str, str]:
    return {**service_env(), "MYSQL_PWD": sec["mariadb_password"]}  # MariaDB's clients read it; argv stays clean


def backup_zenml_database(port: int, sec: dict[str, str], target: Path) -> dict[str, Any]:
    """mariadb-dump of the ZenML database into target/zenml.sql (mode 600), one consistent snapshot
    (--single-transaction) taken while the server runs."""
    target.mkdir(parents=True, exist_ok=True)
    path = target / DUMP_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        result = subprocess.run([_binary("mariadb-dump"), f"--host={HOST}", f"--port={port}", f"--user={DB_USER}",
                                 "--single-transaction", "--skip-lock-tables", "--no-tablespaces", DATABASE],
                                stdout=f, stderr=subprocess.PIPE, text=True, env=_client_env(sec))
    if result.returncode != 0 or path.stat().st_size == 0:
        raise TeamError(f"mariadb-dump of {DATABASE} failed: {result.stderr.strip()[-2000:]}")
    with contextlib.closing(mariadb_connect(port, sec)) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s", (DATABASE,))
        (tables,) = cur.fetchone()
    return {DATABASE: {"file": DUMP_FILE, "bytes": path.stat().st_size, "tables": tables}}


def restore_zenml_database(port: int, sec: dict[str, str], source: Path) -> dict[str, Any]:
    """Load a `backup_zenml_database` dump into the running, freshly initialised instance (before the ZenML
    server first starts on it)."""
    path = source / DUMP_FILE
    if not path.is_file():
        raise TeamError(f"no {DUMP_FILE} in {source}: not a backup of the ZenML database")
    with open(path) as f:
        result = subprocess.run([_binary("mariadb"), f"--host={HOST}", f"--port={port}", f"--user={DB_USER}", DATABASE],
                                stdin=f, capture_output=True, text=True, env=_client_env(sec))
    if result.returncode != 0:
        raise TeamError(f"loading {path} into MariaDB failed: {result.stderr.strip()[-2000:]}")
    return {DATABASE: {"file": DUMP_FILE, "bytes": path.stat().st_size}}
