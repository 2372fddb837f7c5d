"""The history of an alias (champion): one MLflow run per move, in the experiment `<model>-lifecycle`.

Representation, chosen to behave the same on sqlite and on an HTTP `mlflow server`: runs, their
tags and their status are the most basic objects of every tracking backend, and creating a run is
an append that two writers can never overwrite (a list kept in one registered-model tag would lose an
entry to a concurrent read-modify-write). Each move is a run tagged

    lifecycle.kind = alias-move        event.model, event.alias, event.seq (1, 2, ...)
    event.version, event.previous      ('' when the alias named nothing before)
    event.source = gate | manual | rollback,  event.reason,  event.actor (user@host),  event.time
    event.gate_run_id                  the gate's run holding the comparison, for gate moves

and ordered by `event.seq`, a counter kept in the registered model's tag `lifecycle.<alias>.seq`.
Moves happen only under the registry's champion lock (labelspace.lifecycle.lock), so the counter,
the alias and the run are written by one process at a time and the order is the order of the moves.

A move is written as intent first (the run starts RUNNING), then the aliases move, then the run ends
FINISHED. A process killed in between leaves a RUNNING run; the next move, under the same lock,
reconciles it against the alias: FINISHED when the alias did move, FAILED when it did not. The
history never claims a move that did not happen, nor misses one that did.

Gate decisions (promoted or not) are runs of the same experiment with `lifecycle.kind = gate`,
written by labelspace.lifecycle.promotion_gate.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from labelspace.lifecycle.retry import RetryingClient

MOVE = "alias-move"
GATE = "gate"
SOURCES = ("gate", "manual", "rollback")
TAG_LIMIT = 5000


def experiment_name(model_name: str) -> str:
    return f"{model_name}-lifecycle"


def actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def clip(text: str, limit: int = TAG_LIMIT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Event:
    seq: int
    time: str
    model: str
    alias: str
    version: str
    previous: str | None
    source: str
    reason: str
    actor: str
    status: str  # moved | not applied | in progress
    run_id: str
    gate_run_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lifecycle_experiment(client: RetryingClient, model_name: str) -> str:
    """Id of `<model>-lifecycle`, created (with artifacts beside a sqlite database) when missing."""
    from labelspace.lifecycle.retry import call
    from labelspace.lifecycle.tracking import ensure_experiment

    return call(ensure_experiment, experiment_name(model_name))


def _status(run) -> str:
    return {"FINISHED": "moved", "FAILED": "not applied", "KILLED": "not applied"}.get(run.info.status, "in progress")


def _event(run) -> Event:
    t = run.data.tags
    return Event(seq=int(t.get("event.seq", "0")), time=t.get("event.time", ""), model=t.get("event.model", ""),
                 alias=t.get("event.alias", ""), version=t.get("event.version", ""),
                 previous=t.get("event.previous") or None, source=t.get("event.source", ""),
                 reason=t.get("event.reason", ""), actor=t.get("event.actor", ""), status=_status(run),
                 run_id=run.info.run_id, gate_run_id=t.get("event.gate_run_id") or None)


def search(client: RetryingClient, model_name: str, kind: str, extra: str = "") -> list:
    """Every run of `kind` in the model's lifecycle experiment (all pages)."""
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return []
    query = f"tags.`lifecycle.kind` = '{kind}'" + (f" and {extra}" if extra else "")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def events(client: RetryingClient, model_name: str, alias: str = "champion") -> list[Event]:
    """The moves of `alias`, oldest first."""
    runs = search(client, model_name, MOVE, f"tags.`event.alias` = '{alias}'")
    return sorted((_event(r) for r in runs), key=lambda e: (e.seq, e.time))


def reconcile(client: RetryingClient, model_name: str, alias: str, holder: str | None) -> None:
    """End moves left RUNNING by a killed process: FINISHED if `alias` names their version, else FAILED.
    Call with the champion lock held (nothing else moves the alias meanwhile)."""
    for run in search(client, model_name, MOVE, f"tags.`event.alias` = '{alias}' and attributes.status = 'RUNNING'"):
        moved = run.data.tags.get("event.version") == holder
        client.set_tag(run.info.run_id, "event.reconciled", f"{now_iso()}: found {'moved' if moved else 'not moved'}")
        client.set_terminated(run.info.run_id, "FINISHED" if moved else "FAILED")


def next_seq(client: RetryingClient, model_name: str, alias: str) -> int:
    """The next event number of `alias` (the registered model's counter, advanced; call under the lock)."""
    key = f"lifecycle.{alias}.seq"
    current = int(client.get_registered_model(model_name).tags.get(key, "0") or 0)
    client.set_registered_model_tag(model_name, key, str(current + 1))
    return current + 1


def start_move(client: RetryingClient, model_name: str, *, alias: str, version: str, previous: str | None,
               source: str, reason: str, gate_run_id: str | None = None) -> tuple[str, int, str]:
    """Write the intent of a move (a RUNNING run); returns (run id, seq, time)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    experiment = lifecycle_experiment(client, model_name)
    seq, when = next_seq(client, model_name, alias), now_iso()
    arrow = f"v{previous} -> v{version}" if previous else f"none -> v{version}"
    tags = {"lifecycle.kind": MOVE, "event.model": model_name, "event.alias": alias, "event.seq": str(seq),
            "event.version": str(version), "event.previous": previous or "", "event.source": source,
            "event.reason": clip(reason), "event.actor": actor(), "event.time": when,
            "event.gate_run_id": gate_run_id or ""}
    run = client.create_run(experiment, tags=tags, run_name=f"#{seq} {alias} {arrow} ({source})")
    return run.info.run_id, seq, when


def finish_move(client: RetryingClient, run_id: str, *, note: str | None = None) -> None:
    if note:
        client.set_tag(run_id, "event.zenml", clip(note))
    client.set_terminated(run_id, "FINISHED")


def fail_move(client: RetryingClient, run_id: str, error: str) -> None:
    client.set_tag(run_id, "event.error", clip(error))
    client.set_terminated(run_id, "FAILED")
