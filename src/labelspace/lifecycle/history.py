"""The history of an alias (champion): one MLflow run per move, in the experiment `<model>-lifecycle` of
the production model (`labelspace-production-lifecycle`, writable on a team's server only by those who
may change production, docs/team-server.md).

Representation, chosen to behave the same on sqlite and on an HTTP `mlflow server`: runs, their
tags and their status are the most basic objects of every tracking backend, and creating a run is
an append that two writers can never overwrite (a list kept in one registered-model tag would lose an
entry to a concurrent read-modify-write). Each move is a run tagged

    lifecycle.kind = alias-move        event.model, event.alias, event.seq (1, 2, ...)
    event.version, event.previous      candidate version numbers ('' when the alias named nothing before)
    event.candidate                    the candidates' registered model those numbers are of
    event.production_version           the production version (the copy) the alias names after the move
    event.source = gate | manual | rollback | migration,  event.reason,  event.time
    event.actor                        the MLflow login on a team's server (with user@host), else user@host
    event.gate_run_id                  the gate's run holding the comparison, for gate moves

and ordered by `event.seq`: one more than the highest number used so far (records, deleted ones
included, and the chain's anchor). Each record is a link of a hash chain (labelspace.lifecycle.history_chain:
`event.hash`, `event.prev_seq`, `event.prev_hash`, `event.prev_status`, and the registered model's tag
`lifecycle.<alias>.head`), which `labelspace audit --verify` checks. Moves happen only under the
registry's champion lock (labelspace.lifecycle.lock), so the number, the link, the alias and the run
are written by one process at a time and the order is the order of the moves.

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

from labelspace.lifecycle import history_chain
from labelspace.lifecycle.retry import RetryingClient

MOVE = "alias-move"
GATE = "gate"
SOURCES = ("gate", "manual", "rollback", "migration")  # migration: champion carried over from the layout before production
TAG_LIMIT = 5000


def experiment_name(model_name: str) -> str:
    return f"{model_name}-lifecycle"


def actor() -> str:
    """Who moves: the MLflow login on a team's server (the server checked its password), else user@host."""
    import os

    local = f"{getpass.getuser()}@{socket.gethostname()}"
    login = os.environ.get("MLFLOW_TRACKING_USERNAME")
    return f"{login} ({local})" if login else local


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
    candidate: str = ""  # the model event.version and event.previous number ('' for records before production)
    production_version: str | None = None

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
                 run_id=run.info.run_id, gate_run_id=t.get("event.gate_run_id") or None,
                 candidate=t.get("event.candidate", ""), production_version=t.get("event.production_version") or None)


def search(client: RetryingClient, model_name: str, kind: str, extra: str = "", *, deleted: bool = False) -> list:
    """Every run of `kind` in the model's lifecycle experiment (all pages; deleted ones too if asked)."""
    experiment = client.get_experiment_by_name(experiment_name(model_name))
    if experiment is None:
        return []
    return search_experiment(client, experiment.experiment_id, kind, extra, deleted=deleted)


def search_experiment(client: RetryingClient, experiment_id: str, kind: str, extra: str = "", *,
                      deleted: bool = False) -> list:
    """Every run of `kind` in experiment `experiment_id` (a gate that could not write production records there)."""
    from mlflow.entities import ViewType

    query = f"tags.`lifecycle.kind` = '{kind}'" + (f" and {extra}" if extra else "")
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token,
                                  run_view_type=ViewType.ALL if deleted else ViewType.ACTIVE_ONLY)
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


def chain_state(client: RetryingClient, model_name: str, alias: str) -> tuple[list, history_chain.Head | None]:
    """Every move record of `alias`, deleted ones included, and the chain's anchor."""
    runs = search(client, model_name, MOVE, f"tags.`event.alias` = '{alias}'", deleted=True)
    tags = client.get_registered_model(model_name).tags
    return runs, history_chain.Head.parse(tags.get(history_chain.head_tag(alias)))


def verify(client: RetryingClient, model_name: str, alias: str = "champion") -> tuple[list[str], list[str]]:
    """(problems, notes) of `alias`'s history: altered or missing records named (labelspace.lifecycle.history_chain)."""
    runs, head = chain_state(client, model_name, alias)
    return history_chain.verify(runs, head, alias)


def _next(client: RetryingClient, model_name: str, alias: str) -> tuple[int, history_chain.Link]:
    """The next event number of `alias` and its link into the chain (call under the lock)."""
    runs, head = chain_state(client, model_name, alias)
    legacy = client.get_registered_model(model_name).tags.get(f"lifecycle.{alias}.seq", "0")  # before the chain
    used = [int(r.data.tags.get("event.seq", "0") or 0) for r in runs] + [int(legacy or 0), head.seq if head else 0]
    live = [r for r in runs if r.info.lifecycle_stage != "deleted"]
    return max(used) + 1, history_chain.link_after(head, live)


def start_move(client: RetryingClient, model_name: str, *, alias: str, version: str, previous: str | None,
               source: str, reason: str, gate_run_id: str | None = None, candidate: str | None = None,
               production_version: str | None = None) -> tuple[str, int, str]:
    """Write the intent of a move (a RUNNING run) of `model_name`'s `alias` to candidate `version` of
    `candidate` (its copy `production_version`); returns (run id, seq, time)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    experiment = lifecycle_experiment(client, model_name)
    (seq, link), when = _next(client, model_name, alias), now_iso()
    arrow = f"v{previous} -> v{version}" if previous else f"none -> v{version}"
    tags = {"lifecycle.kind": MOVE, "event.model": model_name, "event.alias": alias, "event.seq": str(seq),
            "event.version": str(version), "event.previous": previous or "", "event.source": source,
            "event.reason": clip(reason), "event.actor": actor(), "event.time": when,
            "event.gate_run_id": gate_run_id or "", **link.tags()}
    if candidate:
        tags.update({"event.candidate": candidate, "event.production_version": str(production_version or "")})
    tags["event.hash"] = history_chain.content_hash(tags)
    run = client.create_run(experiment, tags=tags, run_name=f"#{seq} {alias} {arrow} ({source})")
    return run.info.run_id, seq, when


def finish_move(client: RetryingClient, run_id: str, *, note: str | None = None) -> None:
    if note:
        client.set_tag(run_id, "event.zenml", clip(note))
    _end(client, run_id, "FINISHED")


def fail_move(client: RetryingClient, run_id: str, error: str) -> None:
    client.set_tag(run_id, "event.error", clip(error))
    _end(client, run_id, "FAILED")


def _end(client: RetryingClient, run_id: str, status: str) -> None:
    """End the record, then anchor the chain at it (the registered model's `lifecycle.<alias>.head`)."""
    client.set_terminated(run_id, status)
    tags = client.get_run(run_id).data.tags
    head = history_chain.Head(int(tags["event.seq"]), status, tags["event.hash"])
    client.set_registered_model_tag(tags["event.model"], history_chain.head_tag(tags["event.alias"]), head.text())
