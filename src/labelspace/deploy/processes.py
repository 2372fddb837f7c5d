"""The team stack's processes: its folder layout, PID records, start-up and shutdown, ports, and
HTTP health probes. Nothing here knows what a service does; `team`, `postgres`, `s3server`,
`mlflow_server` and `backup` build on it.

A PID record (FOLDER/run/NAME.json) holds the PID, the kernel's start time of that PID (from
/proc/PID/stat) and a marker the command line must carry. A process is signalled only while all
three still match, so a PID reused by another program is never touched.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelspace.app import TELEMETRY_OFF

HOST = "127.0.0.1"
LABELS = {"postgres": "PostgreSQL", "s3": "S3 (SeaweedFS)", "mlflow": "MLflow", "mariadb": "MariaDB",
          "zenml": "ZenML server"}
START_TIMEOUT_S = {"postgres": 60, "s3": 60, "mlflow": 240, "mariadb": 60, "zenml": 240}
STOP_TIMEOUT_S = 30

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
    def s3_dir(self) -> Path:
        return self.root / "s3"

    @property
    def s3_data(self) -> Path:
        return self.s3_dir / "data"

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


def answers_sql(connect: Callable[[], Any]) -> bool:
    """Whether a database a DB-API `connect()` reaches answers `SELECT 1` (a health check: any failure,
    not up yet, is False)."""
    try:
        with contextlib.closing(connect()) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return True
    except Exception:  # not up yet
        return False


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (mode 600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _secret_values(sec: dict[str, str]) -> list[str]:
    return sorted((v for v in sec.values() if isinstance(v, str) and len(v) >= 8), key=len, reverse=True)


def contains_secret(text: str, sec: dict[str, str]) -> bool:
    """Whether `text` holds any value of secrets.json (`sec`)."""
    return any(value in text for value in _secret_values(sec))


def without_secrets(text: str, sec: dict[str, str]) -> str:
    """`text` with every value of secrets.json (`sec`) replaced by '***', for an error message or a log
    line that quotes a child's output."""
    for value in _secret_values(sec):
        text = text.replace(value, "***")
    return text


def service_env() -> dict[str, str]:
    """The caller's environment without what would point a service elsewhere (a member's MLflow
    client settings, AWS keys, another backend or auth configuration), telemetry off."""
    dropped = ("MLFLOW_TRACKING_", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_AUTH_",
               "MLFLOW_S3_", "MLFLOW_ARTIFACT", "AWS_", "PGPASS", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(TELEMETRY_OFF)
    return env


# ----------------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: start time in clock ticks after boot


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def related(pid: int) -> list[int]:
    """Live processes in `pid`'s process group or whose parent is `pid`, other than `pid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and (int(fields[1]) == pid or int(fields[2]) == pid):
            out.append(int(entry.name))
    return out


def write_record(layout: Layout, name: str, pid: int, marker: str, port: int) -> dict[str, Any]:
    """Write FOLDER/run/NAME.json for a process that has just passed its health check."""
    record = {"pid": pid, "start_time": start_time(pid), "marker": marker, "port": port,
              "cmdline": cmdline(pid)[:300], "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    layout.pid_file(name).parent.mkdir(parents=True, exist_ok=True)
    layout.pid_file(name).write_text(json.dumps(record, indent=2) + "\n")
    return record


def verified(record: dict[str, Any] | None) -> bool:
    """Whether the process of a PID file is still the one that was started (same PID, same kernel
    start time, the command line still carries the marker)."""
    if not record:
        return False
    pid = int(record["pid"])
    return alive(pid) and start_time(pid) == record.get("start_time") and record["marker"] in cmdline(pid)


def running(layout: Layout, name: str) -> dict[str, Any] | None:
    """The PID record of service `name` if its process is still the one started, else None."""
    record = read_json(layout.pid_file(name))
    return record if verified(record) else None


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except (FileNotFoundError, PermissionError):
        return f"    (no log at {path})"
    return "\n".join("    " + line for line in text) or f"    ({path} is empty)"


def spawn(layout: Layout, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `argv` in its own session, cwd the stack's folder, output appended to its log."""
    log = layout.log(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} labelspace team: starting {name}\n".encode())
        f.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                                cwd=layout.root, start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc
    return proc


def wait_healthy(name: str, healthy: Callable[[], bool], is_alive: Callable[[], bool], log: Path,
                 timeout: float) -> None:
    """Poll `healthy` until it says yes; TeamError with the log's tail if the process dies or
    `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy():
            return
        if not is_alive():
            raise TeamError(f"{LABELS.get(name, name)} exited during start-up; the last lines of {log}:\n{log_tail(log)}")
        time.sleep(0.25)
    raise TeamError(f"{LABELS.get(name, name)} did not answer its health check within {timeout:.0f} s; "
                    f"the last lines of {log}:\n{log_tail(log)}")


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop_process(name: str, record: dict[str, Any], timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop a verified process and what it started; SIGKILL after `timeout`."""
    pid = int(record["pid"])
    group = name != "postgres"  # the postmaster shuts down its own children
    first = signal.SIGINT if name == "postgres" else signal.SIGTERM  # SIGINT: PostgreSQL's fast shutdown
    for sig, wait in ((first, timeout), (signal.SIGKILL, 10.0)):
        others = related(pid)
        _signal(pid, sig, group)
        if sig == signal.SIGKILL:
            for other in others:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(other, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid) and not any(alive(p) for p in others):
                child = _CHILDREN.pop(pid, None)
                if child is not None:
                    child.wait(timeout=5)
                return
            time.sleep(0.1)
    raise TeamError(f"{LABELS[name]} (PID {pid}) did not stop")


# ---------------------------------------------------------------------------------------- ports


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A port on HOST that nothing listens on now, other than those in `avoid`."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


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
                    return f" (PID {proc.name}: {' '.join(cmdline(int(proc.name)).split())[:120]})"
    return ""


def check_port_free(name: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise TeamError(
                f"port {port} on {HOST}, wanted for {LABELS[name]}, is taken{_port_owner(port)}: {e.strerror}. "
                f"Stop what listens there or choose another port with --{name}-port"
            ) from None


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3.0, method: str = "GET",
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
