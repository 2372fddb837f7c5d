"""The history's hash chain: what makes an altered or deleted move record visible (`labelspace audit --verify`).

Each move record (a run of `<model>-lifecycle`, labelspace.lifecycle.history) carries

    event.hash         sha256 of its own canonical content: its seq, model, alias, version, previous,
                       source, reason, actor, time, gate run, the three fields below, and the
                       candidate model and production version where the record has them
    event.prev_seq     the seq of the record before it in the chain ('' for the first)
    event.prev_hash    that record's event.hash
    event.prev_status  that record's run status when this one was written (FINISHED, FAILED, RUNNING)

and the registered model carries the chain's anchor, `lifecycle.<alias>.head` = `SEQ:STATUS:HASH` of
the last record that ended, written when a move finishes or fails. So editing any field of a record
breaks its own hash; recomputing that hash breaks the next record's link (or the anchor); deleting a
record leaves a link or the anchor pointing at a seq that is gone; ending a finished move as FAILED
(or the reverse) contradicts the status its successor saw. A number skipped by a process killed
between choosing a seq and writing its record is not a gap: no link points at it.

A hash chain shows tampering, it does not prevent it; on a team's server the records are writable
only by approvers, the gate's service account and admins (docs/team-server.md), and whoever rewrites
every hash consistently needs EDIT on both the lifecycle experiment and the production model.
Records written before the chain existed carry no hash: they are reported as unchained, not as altered.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

CONTENT_TAGS = ("event.seq", "event.model", "event.alias", "event.version", "event.previous", "event.source",
                "event.reason", "event.actor", "event.time", "event.gate_run_id", "event.prev_seq",
                "event.prev_hash", "event.prev_status")
LINK_TAGS = ("event.candidate", "event.production_version")  # hashed when present: records before production lack them
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def head_tag(alias: str) -> str:
    return f"lifecycle.{alias}.head"


def content_hash(tags: dict[str, str]) -> str:
    """sha256 of a record's canonical content (sorted JSON of CONTENT_TAGS, absent ones as '', and of the
    LINK_TAGS it has: removing one changes the content as surely as editing it)."""
    content = {key: tags.get(key, "") for key in CONTENT_TAGS}
    content.update({key: tags[key] for key in LINK_TAGS if key in tags})
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Link:
    """Where a new record hooks into the chain."""

    seq: str
    hash: str
    status: str

    def tags(self) -> dict[str, str]:
        return {"event.prev_seq": self.seq, "event.prev_hash": self.hash, "event.prev_status": self.status}


@dataclass(frozen=True)
class Head:
    seq: int
    status: str
    hash: str

    @classmethod
    def parse(cls, text: str | None) -> Head | None:
        parts = (text or "").split(":")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        return cls(int(parts[0]), parts[1], parts[2])

    def text(self) -> str:
        return f"{self.seq}:{self.status}:{self.hash}"


def link_after(head: Head | None, runs: list) -> Link:
    """The link of the next record: the newest chained record, or the anchor when that record is gone
    (so a deleted last record stays visible: the new record points at its seq)."""
    chained = [r for r in runs if r.data.tags.get("event.hash")]
    newest = max(chained, key=_seq, default=None)
    if newest is not None and (head is None or _seq(newest) > head.seq):
        return Link(str(_seq(newest)), newest.data.tags["event.hash"], newest.info.status)
    if head is not None:
        return Link(str(head.seq), head.hash, head.status)
    return Link("", "", "")


def _seq(run) -> int:
    text = run.data.tags.get("event.seq", "0")
    return int(text) if text.isdigit() else 0


def verify(runs: list, head: Head | None, alias: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of the chain over `runs` (every move record of `alias`, deleted ones included)."""
    problems, notes = [], []
    present = {_seq(r): r for r in runs if r.info.lifecycle_stage != "deleted"}
    deleted = {_seq(r): r for r in runs if r.info.lifecycle_stage == "deleted"}
    chained = sorted((r for r in present.values() if r.data.tags.get("event.hash")), key=_seq)
    legacy = sorted(s for s, r in present.items() if not r.data.tags.get("event.hash"))
    if legacy:
        notes.append(f"records #{legacy[0]}..#{legacy[-1]} of @{alias} predate the hash chain: not verifiable")

    def missing(seq: str, why: str) -> str:
        gone = deleted.get(int(seq))
        where = (f" (run {gone.info.run_id} was deleted; `mlflow runs restore --run-id {gone.info.run_id}` "
                 "brings it back)") if gone else ""
        return f"record #{seq} of @{alias} is missing: {why}{where}"

    for run in chained:
        tags, seq = run.data.tags, _seq(run)
        if content_hash(tags) != tags["event.hash"]:
            problems.append(f"record #{seq} of @{alias} (run {run.info.run_id}) was altered: its content no "
                            "longer matches its hash")
        prev = tags.get("event.prev_seq", "")
        if not prev:
            continue
        before = present.get(int(prev))
        if before is None:
            problems.append(missing(prev, f"record #{seq} follows it"))
            continue
        if before.data.tags.get("event.hash") != tags.get("event.prev_hash"):
            problems.append(f"record #{prev} of @{alias} (run {before.info.run_id}) was altered: record #{seq} "
                            "holds another hash of it")
        problems += _status_problems(before, tags.get("event.prev_status", ""), f"record #{seq}", alias)
    if head is None:
        if chained:
            problems.append(f"the chain's anchor (registered model tag {head_tag(alias)}) is missing")
        return problems, notes
    anchored = present.get(head.seq)
    if anchored is None:
        problems.append(missing(str(head.seq), f"the anchor {head_tag(alias)} names it"))
    elif anchored.data.tags.get("event.hash") != head.hash:
        problems.append(f"record #{head.seq} of @{alias} (run {anchored.info.run_id}) was altered: the anchor "
                        "holds another hash of it")
    else:
        problems += _status_problems(anchored, head.status, f"the anchor {head_tag(alias)}", alias)
    return problems, notes


def _status_problems(run, seen: str, by: str, alias: str) -> list[str]:
    """A status `seen` as terminal must not have changed since; RUNNING may since have been reconciled."""
    now = run.info.status
    if seen in TERMINAL and now != seen:
        return [f"record #{_seq(run)} of @{alias} (run {run.info.run_id}) was altered: it ended {seen} when "
                f"{by} was written and says {now} now"]
    return []
