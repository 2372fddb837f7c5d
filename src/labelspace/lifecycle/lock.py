"""A lock kept in the MLflow registry itself, so it works the same on sqlite and on a team's server.

Why in the registry and not a lock file: two machines sharing a tracking server share nothing else;
a file lock (flock) would only keep apart two retrains on one machine. MLflow offers no
compare-and-set, but it has one atomic, ordered primitive that behaves identically on every
backend: creating a model version gives the next number of that registered model (numbers are never
reused, deleted versions included). So the lock is a ticket lock (a bakery):

* the lock is a registered model `<model>--<purpose>-lock` (e.g. `labelspace--retrain-lock`), whose
  description says what it is; each version is a ticket;
* to take it, a process creates a ticket tagged with who it is (user, host, PID, command, lease)
  and waits until no live ticket has a lower number; to release it, it deletes its ticket;
* every holder or waiter renews its ticket (a description update) every lease/4 seconds, which
  stamps the ticket with the *server's* clock; a ticket whose stamp is older than its lease (60 s
  by default) against the freshest stamp seen, or whose owner is a dead PID on this same host, is
  stale and any waiter deletes it. A retrain killed with SIGKILL therefore blocks the next one for at
  most a lease (at once on the same machine), never forever; clocks of different machines never
  enter the rule.

Who holds a lock is visible in the MLflow UI (the lock model's versions and their tags) and in the
message a refused `labelspace retrain` prints. A holder that stalls longer than its lease (a frozen
VM) can lose the lock to a waiter; that is the price of any lease, and 60 s is far above a heartbeat.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from labelspace.lifecycle.retry import client as mlflow_client

log = logging.getLogger(__name__)

LEASE_S = 60.0
POLL_S = 1.0
SOURCE = "labelspace-lock:/ticket"  # a model version needs a source; this one names no artifacts (an MLflow server refuses a relative path: not "labelspace-lock:ticket")


class LockBusy(RuntimeError):
    """Another process holds the lock (and waiting for it was not asked for, or timed out)."""

    def __init__(self, message: str, holder: Ticket | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()[:8]
    except OSError:
        return "noboot"


HOST = f"{socket.gethostname()}/{_boot_id()}"  # a reboot reuses PIDs: the boot id tells them apart


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Ticket:
    number: int
    owner: str
    host: str
    pid: int
    command: str
    started: str
    lease_s: float
    stamp_ms: int  # the server's time of its last renewal

    @classmethod
    def of(cls, version) -> Ticket:
        tags = version.tags or {}
        return cls(number=int(version.version), owner=tags.get("lock.owner", "?"), host=tags.get("lock.host", "?"),
                   pid=int(tags.get("lock.pid", "0") or 0), command=tags.get("lock.command", ""),
                   started=tags.get("lock.started", "?"), lease_s=float(tags.get("lock.lease_s", LEASE_S)),
                   stamp_ms=int(version.last_updated_timestamp or version.creation_timestamp or 0))

    def describe(self, now_ms: int | None = None) -> str:
        seen = f", last renewed {(now_ms - self.stamp_ms) / 1000:.0f} s ago" if now_ms else ""
        return f"{self.owner} (PID {self.pid} on {self.host.split('/')[0]}) since {self.started}{seen}: {self.command}"

    def stale(self, now_ms: int) -> str | None:
        """Why this ticket no longer holds anything, or None while it is live."""
        if self.host == HOST and self.pid and self.pid != os.getpid() and not _pid_alive(self.pid):
            return f"its process {self.pid} on this machine is gone"
        if now_ms - self.stamp_ms > self.lease_s * 1000:
            return f"not renewed for {(now_ms - self.stamp_ms) / 1000:.0f} s (lease {self.lease_s:.0f} s)"
        return None


class RegistryLock:
    """`with RegistryLock("labelspace", "retrain", wait_s=0):` ... ; LockBusy when it is held elsewhere.

    wait_s: how long to wait for the holder to finish (0: not at all, None: as long as it takes).
    """

    def __init__(self, model_name: str, purpose: str, *, wait_s: float | None = 0, lease_s: float = LEASE_S,
                 what: str | None = None) -> None:
        self.name = f"{model_name}--{purpose}-lock"
        self.purpose, self.wait_s, self.lease_s = purpose, wait_s, lease_s
        self.what = what or f"the {purpose} lock of {model_name}"
        self.client = mlflow_client()
        self.ticket: int | None = None
        self._renewed = (0, 0.0)  # (server ms, local monotonic) of our last renewal
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ taking and giving back

    def __enter__(self) -> RegistryLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self._ensure_model()
        self._take_ticket()
        self._start_renewing()
        deadline = None if self.wait_s is None else time.monotonic() + self.wait_s
        announced = False
        try:
            while True:
                holder = self._blocking_ticket()
                if holder is None:
                    log.debug("%s: holding ticket %s", self.name, self.ticket)
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockBusy(f"{self.what} is held by {holder.describe(self._server_now())}", holder)
                if not announced:
                    print(f"waiting for {self.what}, held by {holder.describe(self._server_now())}", file=sys.stderr)
                    announced = True
                time.sleep(POLL_S)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self._delete(ticket)

    # ------------------------------------------------------------ the tickets

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name, tags={"labelspace.kind": "lock"},
                description=f"Not a model: {self.what} (labelspace.lifecycle.lock). Each version is a ticket; the "
                            "lowest live one holds the lock. Deleting a version breaks that ticket.")
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _take_ticket(self) -> None:
        tags = {"lock.owner": f"{getpass.getuser()}@{socket.gethostname()}", "lock.host": HOST,
                "lock.pid": str(os.getpid()), "lock.purpose": self.purpose,
                "lock.command": " ".join(["labelspace", *sys.argv[1:]])[:500],
                "lock.started": datetime.now(UTC).isoformat(timespec="seconds"),
                "lock.lease_s": f"{self.lease_s:g}"}
        version = self.client.create_model_version(self.name, SOURCE, tags=tags, description="renewal 0")
        self.ticket = int(version.version)
        self._renewed = (int(version.last_updated_timestamp or version.creation_timestamp), time.monotonic())

    def _server_now(self) -> int:
        stamp, at = self._renewed
        return int(stamp + (time.monotonic() - at) * 1000)

    def _renew(self, n: int) -> None:
        version = self.client.update_model_version(self.name, str(self.ticket), description=f"renewal {n}")
        self._renewed = (int(version.last_updated_timestamp), time.monotonic())

    def _start_renewing(self) -> None:
        self._stop.clear()

        def loop() -> None:
            n = 0
            while not self._stop.wait(self.lease_s / 4):
                n += 1
                try:
                    self._renew(n)
                except Exception as e:  # noqa: BLE001 - a missed renewal is retried next period
                    log.warning("%s: could not renew ticket %s: %s", self.name, self.ticket, str(e).splitlines()[0])

        self._thread = threading.Thread(target=loop, name=f"renew {self.name}", daemon=True)
        self._thread.start()

    def tickets(self) -> list[Ticket]:
        return _tickets(self.client, self.name)

    def _blocking_ticket(self) -> Ticket | None:
        """The live ticket ahead of ours, after deleting stale ones; None when ours is first."""
        tickets = self.tickets()
        if self.ticket not in {t.number for t in tickets}:  # broken by a waiter while we stalled: queue again
            log.warning("%s: our ticket %s was removed as stale; taking a new one", self.name, self.ticket)
            self._take_ticket()
            tickets = self.tickets()
        now = max([self._server_now(), *(t.stamp_ms for t in tickets)])
        for t in tickets:
            if t.number >= self.ticket:
                return None
            why = t.stale(now)
            if why is None:
                return t
            print(f"{self.what}: removing the stale ticket of {t.describe(now)}: {why}", file=sys.stderr)
            self._delete(t.number)
        return None

    def _delete(self, number: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version(self.name, str(number))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise


def _tickets(client, name: str) -> list[Ticket]:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((Ticket.of(v) for v in found), key=lambda t: t.number)


def holders(model_name: str, purpose: str) -> list[Ticket]:
    """The tickets of a lock now, first the holder (for status displays and tests); [] when never taken."""
    return _tickets(mlflow_client(), f"{model_name}--{purpose}-lock")
