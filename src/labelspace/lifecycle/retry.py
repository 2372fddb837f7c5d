"""MLflow calls that survive a busy backend: bounded retries with backoff, then one clear message.

SQLite lets one writer at a time hold the database. MLflow's own 20 s busy timeout does not help a
transaction that read first and then wants to write while another process writes (SQLite answers
"database is locked" at once, to avoid a deadlock), so a `labelspace promote` racing a training run
or another promote used to print a 78-line SQLAlchemy traceback and give up. Here every call of the
client is retried while the backend says it is temporarily unavailable: after 0.2 s, then doubling
up to 5 s between tries, for at most $LABELSPACE_REGISTRY_RETRY_S seconds (default 60); then
`RegistryBusy` says which backend stayed busy and what to do. A failed SQLite write is rolled back
and an HTTP server answers 503 before it commits, so retrying never applies a write twice.

MLflow logs the same failure with its traceback before raising it; that one log record is dropped
here (only for "database is locked"), since the retry or the clear message replaces it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

RETRY_ENV = "LABELSPACE_REGISTRY_RETRY_S"
DEFAULT_RETRY_S = 60.0
FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0
BUSY_CODES = ("TEMPORARILY_UNAVAILABLE", "WORKSPACE_TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
BUSY_TEXT = ("database is locked", "database table is locked", "could not obtain lock")

log = logging.getLogger(__name__)
T = TypeVar("T")


class RegistryBusy(RuntimeError):
    """The tracking/registry backend stayed busy (locked) through every retry."""


def retry_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_S)))
    except ValueError:
        return DEFAULT_RETRY_S


def is_busy(error: BaseException) -> bool:
    """True for MLflow's 'temporarily unavailable' and SQLite's 'database is locked' (raw or wrapped)."""
    text = str(error).lower()
    if any(t in text for t in BUSY_TEXT):
        return True
    return getattr(error, "error_code", None) in BUSY_CODES


def _backend() -> str:
    import mlflow

    try:
        return mlflow.get_tracking_uri()
    except Exception:  # noqa: BLE001 - only for the message
        return "the MLflow backend"


def call(fn: Callable[..., T], *args: Any, what: str | None = None, **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried while the backend is busy; RegistryBusy once the budget is spent."""
    budget = retry_budget_s()
    start = time.monotonic()
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MlflowException or SQLAlchemy's OperationalError
            if not is_busy(e):
                raise
            waited = time.monotonic() - start
            if waited + delay > budget:
                name = what or getattr(fn, "__name__", "the call")
                raise RegistryBusy(
                    f"the MLflow backend {_backend()} stayed busy for {waited:.0f} s ({name}, {attempt} "
                    f"attempt{'s' if attempt > 1 else ''}: another process holds its write lock); try again when "
                    f"it is done, or allow a longer wait "
                    f"with {RETRY_ENV}=SECONDS (now {budget:g})"
                ) from None
            log.debug("MLflow backend busy (%s); retry %d in %.1f s", e.__class__.__name__, attempt, delay)
            time.sleep(delay * (0.75 + random.random() / 2))  # jitter: racing processes do not retry in step
            delay = min(delay * 2, MAX_DELAY_S)


def retrying(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return call(fn, *args, **kwargs)

    return wrapper


class RetryingClient:
    """An MlflowClient whose every method retries on a busy backend (attributes pass through)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def raw(self) -> Any:
        return self._client

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        return retrying(value) if callable(value) else value


def client(tracking_uri: str | None = None) -> RetryingClient:
    """A retrying MlflowClient on the project's backend (labelspace.lifecycle.tracking)."""
    from mlflow import MlflowClient

    from labelspace.lifecycle.tracking import configure_mlflow

    uri = tracking_uri or configure_mlflow()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri

    def build() -> MlflowClient:  # opening a sqlite store reads its schema: busy too while another writes
        made = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
        made._tracking_client.store  # noqa: B018 - open both stores now, inside the retry
        made._get_registry_client().store  # noqa: B018
        return made

    return RetryingClient(call(build, what="opening the MLflow stores"))


class _DropLockedTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage().lower() for t in BUSY_TEXT)


logging.getLogger("mlflow.store.db.utils").addFilter(_DropLockedTraceback())
