"""Moving `champion`: promote (by a person or the gate) and rollback, each atomic and recorded.

Candidates are versions of `labelspace`; production is `labelspace-production` (labelspace.lifecycle.registry):
promoting candidate version N copies it into production (once: a second promotion of N reuses the copy)
and points production's `champion` at the copy. Numbers in moves, lines and the history are candidate
numbers, the ones people train, audit and promote by; each move records the production version too.

Every move holds production's champion lock (labelspace.lifecycle.lock, `labelspace-production--champion-lock`)
while it reads the current holder, moves the aliases and writes the history (labelspace.lifecycle.history),
so two promotes, rollbacks or gates at once run one after the other: exactly one champion, every move in
the history in the order it happened, and each one reports the holder it really replaced. On a team's
server the lock, the copy, the aliases and the records all need EDIT on production: a login without it
gets ProductionRefused, one line that says who may promote.

Aliases (on production): `champion` names the version in production; `previous-champion` the one it
replaced, which `rollback` returns to. A rollback is itself a move, so `previous-champion` then names the
version rolled back from, and a second rollback undoes the first (as `kubectl rollout undo` does); the
history keeps every step. The production version that becomes champion is tagged `champion.promoted_at`,
`champion.promoted_by`, `champion.source`, `champion.reason`, `champion.event_seq`; the one replaced,
`champion.replaced_at` and `champion.replaced_by_event`.

A store from before production existed has `champion` on the candidates' model itself. The first move
under the lock (a promote, a rollback, a passing gate) carries it over: the old champion is copied into
production and recorded as a move (source `migration`), the candidates' `champion` and `previous-champion`
aliases are removed (two champions would serve two models), and the requested move follows.
`labelspace promote --version N` with N the old champion does only that.

`stage_hook(promoted, replaced)` mirrors the move elsewhere (the ZenML model version stages, from
labelspace.steps.model_stages) and returns a note recorded with the event; it cannot fail the move.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from labelspace.lifecycle import history
from labelspace.lifecycle.lock import RegistryLock
from labelspace.lifecycle.registry import (
    CANDIDATE_VERSION_TAG,
    alias_holder,
    candidate_model,
    candidate_of,
    production_copy,
    production_model,
    resolve_candidate,
    resolve_version,
)
from labelspace.lifecycle.retry import client as mlflow_client

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"
LOCK = "champion"
WAIT_S = 300.0  # a gate holds the lock while it scores the champion: well under a minute on the default data

StageHook = Callable[[Any, Any], str]


class NothingToRollBack(ValueError):
    """There is no previous champion to return to."""


class ProductionRefused(RuntimeError):
    """The tracking server refused a write to production (403): this login may not change it."""


def is_refusal(error: BaseException) -> bool:
    return getattr(error, "error_code", None) == "PERMISSION_DENIED"


def refusal(production: str, what: str) -> ProductionRefused:
    login = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this login"
    return ProductionRefused(
        f"{login} may not {what}: the MLflow server refused it (403: it needs EDIT on the registered model "
        f"{production}); approvers, the retrain service account (the scheduled gate) and admins change "
        "production: ask an approver (docs/team-server.md, People and roles)")


@dataclass(frozen=True)
class Move:
    model: str  # the production model whose alias moved
    alias: str
    version: str  # candidate version numbers, of `candidate`
    previous: str | None
    moved: bool  # False: the alias already named `version`
    seq: int | None = None
    time: str | None = None
    source: str | None = None
    note: str = ""
    candidate: str = ""
    production_version: str | None = None

    def line(self) -> str:
        if not self.moved:
            return f"{self.model}@{self.alias} already names {self.candidate} version {self.version}; nothing moved"
        before = f"{self.candidate} version {self.previous}" if self.previous else "no version"
        return (f"{self.model}@{self.alias}: {before} -> version {self.version} ({self.source}, history #{self.seq}), "
                f"served as {self.model} version {self.production_version}")


def champion_lock(model_name: str, wait_s: float | None = WAIT_S) -> RegistryLock:
    """The lock every move of production's aliases holds (`model_name`: candidates' or production's)."""
    production = production_model(model_name)
    return RegistryLock(production, LOCK, wait_s=wait_s, what=f"the champion lock of {production}")


@contextmanager
def production_held(model_name: str, wait_s: float | None, what: str) -> Iterator[Any]:
    """Hold production's champion lock; a refusal of the server (403), taking the lock or later, becomes
    ProductionRefused naming `what` (e.g. 'promote'). Yields a retrying client."""
    from mlflow.exceptions import MlflowException

    production = production_model(model_name)
    try:
        with champion_lock(model_name, wait_s):
            yield mlflow_client()
    except MlflowException as e:
        if is_refusal(e):
            raise refusal(production, what) from None
        raise


def current_champion(client, model_name: str) -> str | None:
    """The candidate version production's champion copies; before production existed, the candidates' own
    `champion` (a store not yet carried over)."""
    production = production_model(model_name)
    holder = alias_holder(production, CHAMPION)
    if holder is not None:
        return candidate_of(client, production, holder)
    return alias_holder(candidate_model(model_name), CHAMPION)


def carry_over_legacy_champion(client, model_name: str, *, stage_hook: StageHook | None = None) -> Move | None:
    """The candidates' own `champion` (the layout before production) copied into production and recorded
    (source migration), the candidates' champion aliases removed; None when there is nothing to carry
    over. Call with the champion lock held."""
    candidate, production = candidate_model(model_name), production_model(model_name)
    legacy = alias_holder(candidate, CHAMPION)
    if legacy is None or alias_holder(production, CHAMPION) is not None:
        return None
    earlier = alias_holder(candidate, PREVIOUS)
    move = move_locked(client, candidate, legacy, source="migration", stage_hook=stage_hook,
                       reason=f"carried over from {candidate}@{CHAMPION}, set before production moved to {production} "
                              f"(its earlier moves: experiment {history.experiment_name(candidate)})")
    if earlier is not None and earlier != legacy:
        client.set_registered_model_alias(production, PREVIOUS, production_copy(client, candidate, earlier).version)
    for alias in (CHAMPION, PREVIOUS):
        if alias_holder(candidate, alias) is not None:
            client.delete_registered_model_alias(candidate, alias)
    return move


def move_locked(client, model_name: str, version: str, *, alias: str = CHAMPION, source: str, reason: str,
                gate_run_id: str | None = None, stage_hook: StageHook | None = None) -> Move:
    """Point production's `alias` at (the copy of) candidate `version` of `model_name` and record it; the
    caller holds the champion lock."""
    candidate, production = candidate_model(model_name), production_model(model_name)
    target = resolve_version(candidate, version, client=client)
    holder = alias_holder(production, alias)
    previous = candidate_of(client, production, holder)
    history.reconcile(client, production, alias, previous)
    number = str(target.version)
    if previous == number:
        return Move(production, alias, number, previous, moved=False, candidate=candidate, production_version=holder)
    copy = str(production_copy(client, candidate, number).version)
    run_id, seq, when = history.start_move(client, production, alias=alias, version=number, previous=previous,
                                           source=source, reason=reason, gate_run_id=gate_run_id,
                                           candidate=candidate, production_version=copy)
    try:
        client.set_registered_model_alias(production, alias, copy)
        if alias == CHAMPION and holder is not None:
            client.set_registered_model_alias(production, PREVIOUS, holder)
        if alias == CHAMPION:
            for key, value in {"champion.promoted_at": when, "champion.promoted_by": history.actor(),
                               "champion.source": source, "champion.reason": history.clip(reason),
                               "champion.event_seq": str(seq)}.items():
                client.set_model_version_tag(production, copy, key, value)
            if holder is not None:
                client.set_model_version_tag(production, holder, "champion.replaced_at", when)
                client.set_model_version_tag(production, holder, "champion.replaced_by_event", str(seq))
    except BaseException as e:
        # Aliases may have moved before the failure: reconcile() settles the record on the next move.
        log.error("moving %s@%s to %s (%s version %s) failed: %s", production, alias, copy, candidate, number, e)
        raise
    note = ""
    if stage_hook is not None and alias == CHAMPION:
        replaced = client.get_model_version(production, holder) if holder is not None else None
        try:
            note = stage_hook(client.get_model_version(production, copy), replaced)
        except Exception as e:  # noqa: BLE001 - the registry is the source of truth; the mirror only notes
            note = f"ZenML stages not updated: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    history.finish_move(client, run_id, note=note)
    return Move(production, alias, number, previous, moved=True, seq=seq, time=when, source=source, note=note,
                candidate=candidate, production_version=copy)


def promote_version(model_name: str, version: str | int, *, reason: str, alias: str = CHAMPION,
                    source: str = "manual", stage_hook: StageHook | None = None,
                    wait_s: float | None = WAIT_S) -> Move:
    """A person's promotion: production's `alias` (champion) -> candidate `version`, under the lock,
    recorded with `reason` (a store with the old layout is carried over first)."""
    if not reason or not reason.strip():
        raise ValueError("a promotion needs a reason (--reason '...'): it is what the history tells an auditor")
    candidate = candidate_model(model_name)
    number = str(resolve_candidate(candidate, version, client=mlflow_client()).version)  # a clear error before waiting
    with production_held(candidate, wait_s, "promote") as client:
        carried = carry_over_legacy_champion(client, candidate, stage_hook=stage_hook)
        move = move_locked(client, candidate, number, alias=alias, source=source, reason=reason.strip(),
                           stage_hook=stage_hook)
        if carried is not None and not move.moved and alias == CHAMPION:
            return carried
        return move


def rollback(model_name: str, *, reason: str | None = None, stage_hook: StageHook | None = None,
             wait_s: float | None = WAIT_S) -> Move:
    """Production's `champion` back to `previous-champion`, recorded; NothingToRollBack when there is none."""
    candidate, production = candidate_model(model_name), production_model(model_name)
    with production_held(candidate, wait_s, "roll back") as client:
        carry_over_legacy_champion(client, candidate, stage_hook=stage_hook)
        current = current_champion(client, candidate)
        if current is None:
            raise NothingToRollBack(f"{production} has no champion: nothing to roll back")
        held = alias_holder(production, PREVIOUS)
        target = candidate_of(client, production, held)
        if target is None:
            gone = _replaced_but_deleted(client, candidate, current)
            raise NothingToRollBack(
                f"nothing to roll back to: {production}@{CHAMPION} is {candidate} version {current} and "
                + (f"the version it replaced, {gone}, was deleted" if gone else "no earlier champion is recorded")
                + "; promote a version by hand with `labelspace promote --version N --reason ...`")
        if target == current:
            raise NothingToRollBack(f"{production}@{PREVIOUS} names the champion itself ({candidate} version {current})")
        try:
            resolve_version(production, held, client=client)
            resolve_version(candidate, target, client=client)
        except ValueError as e:
            raise NothingToRollBack(f"cannot roll back to the previous champion: {e}") from None
        why = reason.strip() if reason and reason.strip() else f"rollback from version {current}"
        return move_locked(client, candidate, target, source="rollback", reason=why, stage_hook=stage_hook)


def _replaced_but_deleted(client, candidate: str, current: str) -> str | None:
    """'version N' when the history says `current` replaced N and N (its production copy) no longer exists."""
    production = production_model(candidate)
    moves = [e for e in history.events(client, production, CHAMPION) if e.version == current and e.status == "moved"]
    if not moves or not moves[-1].previous:
        return None
    earlier = moves[-1].previous
    copies = [v for v in client.search_model_versions(f"name = '{production}'")
              if v.tags.get(CANDIDATE_VERSION_TAG) == earlier]
    return None if copies else f"version {earlier}"
