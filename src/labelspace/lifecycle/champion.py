"""Moving `champion`: promote (by a person or the gate) and rollback, each atomic and recorded.

Every move holds the registry's champion lock (labelspace.lifecycle.lock) while it reads the current
holder, moves the aliases and writes the history (labelspace.lifecycle.history), so two promotes,
rollbacks or gates at once run one after the other: exactly one champion, every move in the history
in the order it happened, and each one reports the holder it really replaced.

Aliases: `champion` names the version in production; `previous-champion` the one it replaced, which
`rollback` returns to. A rollback is itself a move, so `previous-champion` then names the version
rolled back from, and a second rollback undoes the first (as `kubectl rollout undo` does); the
history keeps every step. The version that becomes champion is tagged `champion.promoted_at`,
`champion.promoted_by`, `champion.source`, `champion.reason`, `champion.event_seq`; the one replaced,
`champion.replaced_at` and `champion.replaced_by_event`.

`stage_hook(promoted, replaced)` mirrors the move elsewhere (the ZenML model version stages, from
labelspace.steps.model_stages) and returns a note recorded with the event; it cannot fail the move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labelspace.lifecycle import history
from labelspace.lifecycle.lock import RegistryLock
from labelspace.lifecycle.registry import alias_holder, resolve_version
from labelspace.lifecycle.retry import client as mlflow_client

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous-champion"
LOCK = "champion"
WAIT_S = 300.0  # a gate holds the lock while it scores the champion: well under a minute on the default data

StageHook = Callable[[Any, Any], str]


class NothingToRollBack(ValueError):
    """There is no previous champion to return to."""


@dataclass(frozen=True)
class Move:
    model: str
    alias: str
    version: str
    previous: str | None
    moved: bool  # False: the alias already named `version`
    seq: int | None = None
    time: str | None = None
    source: str | None = None
    note: str = ""

    def line(self) -> str:
        if not self.moved:
            return f"{self.model}@{self.alias} already names version {self.version}; nothing moved"
        before = f"version {self.previous}" if self.previous else "no version"
        return f"{self.model}@{self.alias}: {before} -> version {self.version} ({self.source}, history #{self.seq})"


def champion_lock(model_name: str, wait_s: float | None = WAIT_S) -> RegistryLock:
    return RegistryLock(model_name, LOCK, wait_s=wait_s, what=f"the champion lock of {model_name}")


def move_locked(client, model_name: str, version: str, *, alias: str = CHAMPION, source: str, reason: str,
                gate_run_id: str | None = None, stage_hook: StageHook | None = None) -> Move:
    """Point `alias` at `version` and record it; the caller holds the champion lock."""
    target = resolve_version(model_name, version, client=client)
    previous = alias_holder(model_name, alias)
    history.reconcile(client, model_name, alias, previous)
    number = str(target.version)
    if previous == number:
        return Move(model_name, alias, number, previous, moved=False)
    run_id, seq, when = history.start_move(client, model_name, alias=alias, version=number, previous=previous,
                                           source=source, reason=reason, gate_run_id=gate_run_id)
    try:
        client.set_registered_model_alias(model_name, alias, number)
        if alias == CHAMPION and previous is not None:
            client.set_registered_model_alias(model_name, PREVIOUS, previous)
        if alias == CHAMPION:
            for key, value in {"champion.promoted_at": when, "champion.promoted_by": history.actor(),
                               "champion.source": source, "champion.reason": history.clip(reason),
                               "champion.event_seq": str(seq)}.items():
                client.set_model_version_tag(model_name, number, key, value)
            if previous is not None:
                client.set_model_version_tag(model_name, previous, "champion.replaced_at", when)
                client.set_model_version_tag(model_name, previous, "champion.replaced_by_event", str(seq))
    except BaseException as e:
        # Aliases may have moved before the failure: reconcile() settles the record on the next move.
        log.error("moving %s@%s to %s failed: %s", model_name, alias, number, e)
        raise
    note = ""
    if stage_hook is not None and alias == CHAMPION:
        replaced = client.get_model_version(model_name, previous) if previous is not None else None
        try:
            note = stage_hook(client.get_model_version(model_name, number), replaced)
        except Exception as e:  # noqa: BLE001 - the registry is the source of truth; the mirror only notes
            note = f"ZenML stages not updated: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    history.finish_move(client, run_id, note=note)
    return Move(model_name, alias, number, previous, moved=True, seq=seq, time=when, source=source, note=note)


def promote_version(model_name: str, version: str | int, *, reason: str, alias: str = CHAMPION,
                    source: str = "manual", stage_hook: StageHook | None = None,
                    wait_s: float | None = WAIT_S) -> Move:
    """A person's promotion: `alias` (champion) -> `version`, under the lock, recorded with `reason`."""
    if not reason or not reason.strip():
        raise ValueError("a promotion needs a reason (--reason '...'): it is what the history tells an auditor")
    client = mlflow_client()
    number = str(resolve_version(model_name, version, client=client).version)  # a clear error before waiting
    with champion_lock(model_name, wait_s):
        return move_locked(client, model_name, number, alias=alias, source=source, reason=reason.strip(),
                           stage_hook=stage_hook)


def rollback(model_name: str, *, reason: str | None = None, stage_hook: StageHook | None = None,
             wait_s: float | None = WAIT_S) -> Move:
    """`champion` back to `previous-champion`, recorded; NothingToRollBack when there is none."""
    client = mlflow_client()
    with champion_lock(model_name, wait_s):
        current = alias_holder(model_name, CHAMPION)
        if current is None:
            raise NothingToRollBack(f"{model_name} has no champion: nothing to roll back")
        target = alias_holder(model_name, PREVIOUS)
        if target is None:
            gone = _replaced_but_deleted(client, model_name, current)
            raise NothingToRollBack(
                f"nothing to roll back to: {model_name}@{CHAMPION} is version {current} and "
                + (f"the version it replaced, {gone}, was deleted" if gone else "no earlier champion is recorded")
                + "; promote a version by hand with `labelspace promote --version N --reason ...`")
        if target == current:
            raise NothingToRollBack(f"{model_name}@{PREVIOUS} names the champion itself (version {current})")
        try:
            resolve_version(model_name, target, client=client)
        except ValueError as e:
            raise NothingToRollBack(f"cannot roll back to the previous champion: {e}") from None
        why = reason.strip() if reason and reason.strip() else f"rollback from version {current}"
        return move_locked(client, model_name, target, source="rollback", reason=why, stage_hook=stage_hook)


def _replaced_but_deleted(client, model_name: str, current: str) -> str | None:
    """'version N' when the history says `current` replaced N and N no longer exists."""
    moves = [e for e in history.events(client, model_name, CHAMPION) if e.version == current and e.status == "moved"]
    if not moves or not moves[-1].previous:
        return None
    try:
        resolve_version(model_name, moves[-1].previous, ready=False, client=client)
    except ValueError:
        return f"version {moves[-1].previous}"
    return None
