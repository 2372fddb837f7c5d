"""`labelspace retrain`, the command a scheduler calls: train only when something changed, never two at
once, then the gate; an exit code the scheduler can act on.

1. The versions a run would record are computed without training (labelspace.lifecycle.training_inputs):
   data and vectors (DVC hashes), code (hash of the package source), params (hash of params.yaml).
2. The retrain lock is taken (labelspace.lifecycle.lock: a ticket in the MLflow registry, so two
   machines sharing a tracking server exclude each other too). Held elsewhere: exit LOCKED at once,
   or after `--wait SECONDS`. A killed retrain's ticket goes stale (dead PID here, or no renewal for
   a lease of 60 s), so it never blocks the next one for longer than that.
3. Under the lock, the newest registered version's lineage tags are compared with step 1: all the
   same, "nothing changed since version N", exit OK without training.
4. Otherwise the pipeline runs (ZenML's cache reuses what did not change; a code change reruns every
   step, since ZenML's cache keys do not see the library's code), its last step the gate.

Exit codes (EXIT_CODES; docs/lifecycle.md): 0 promoted, passed, or nothing to do; 3 trained but the
gate rejected it; 75 another retrain holds the lock (EX_TEMPFAIL: try again later); 2 any error. A
pass is 0 whether the gate promoted (the `retrain` service account) or left it to an approver (a
trainer's login may not change the production model): the message says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, ERROR, REJECTED, LOCKED = 0, 2, 3, 75
EXIT_CODES = {
    OK: "promoted, passed the gate (promote.auto false, or an approver must promote), or nothing changed since "
        "the newest version",
    ERROR: "error (bad params.yaml, missing data, a failed step, an unreachable or busy backend)",
    REJECTED: "trained and registered, but the gate rejected it: champion unchanged",
    LOCKED: "another retrain holds the lock (EX_TEMPFAIL): nothing done, try again later",
}


@dataclass
class RetrainResult:
    code: int
    message: str
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)


def newest_version(model_name: str):
    from labelspace.lifecycle.registry import versions

    found = versions(model_name)
    return found[-1] if found else None


def retrain(config, *, dataset: str | None = None, vectors: str | None = None, wait_s: float | None = 0,
            force: bool = False, say=print) -> RetrainResult:
    """Steps 1-4 above for `config` (labelspace.config.Config); `force` trains even when nothing changed."""
    from labelspace.lifecycle.lock import LockBusy, RegistryLock
    from labelspace.lifecycle.training_inputs import current_versions, lineage_differences

    model_name = config.register.model_name
    now = current_versions(config, dataset=dataset, vectors=vectors)
    say(f"data {now['dataset_version']}, vectors {now['vectors_version']}, code {now['source_hash']} "
        f"(commit {now['git_commit'][:12]}, dirty {now['git_dirty']}), params {now['params_hash']}")
    try:
        lock = RegistryLock(model_name, "retrain", wait_s=wait_s, what=f"the retrain lock of {model_name}")
        lock.acquire()
    except LockBusy as e:
        return RetrainResult(LOCKED, f"another retrain is running: {e}; exiting with {LOCKED} (try again later, "
                                     "or pass --wait SECONDS)")
    try:
        newest = newest_version(model_name)
        differences = lineage_differences(newest.tags, now) if newest is not None else ["no version registered yet"]
        if not differences and not force:
            decision = newest.tags.get("gate.decision")
            return RetrainResult(OK, f"nothing changed since version {newest.version}"
                                     + (f" (gate: {decision})" if decision else "") + ": not training",
                                 str(newest.version))
        if newest is None:
            say("no version registered yet: training the first")
        else:
            say(f"changed since version {newest.version}: " + "; ".join(differences or ["nothing (--force)"]))
        code_changed = newest is not None and any(d.startswith("code") for d in differences)
        if code_changed:
            say("the code changed: every step reruns (ZenML's cache cannot see the library's code)")
        from labelspace.pipelines.run import run_pipeline

        _, gate = run_pipeline(config, dataset=dataset, vectors=vectors, no_cache=code_changed)
    finally:
        lock.release()
    decision = gate.get("decision", "unknown")
    version = gate.get("version")
    reasons = "; ".join(gate.get("reasons", []))
    if decision == "promoted":
        return RetrainResult(OK, f"version {version} promoted to champion (replacing "
                                 f"{_v(gate.get('previous'))})", version, gate)
    if decision == "passed" and gate.get("approver_needed"):
        return RetrainResult(OK, f"version {version} passed the gate; this login may not change "
                                 f"{gate.get('production') or 'production'}: an approver must promote it "
                                 f"(labelspace promote --version {version} --reason ...)", version, gate)
    if decision == "passed":
        return RetrainResult(OK, f"version {version} passed the gate; promote.auto is false, champion stays "
                                 f"{_v(gate.get('champion'))}", version, gate)
    if decision == "rejected":
        return RetrainResult(REJECTED, f"version {version} rejected by the gate, champion stays "
                                       f"{_v(gate.get('champion'))}: {reasons}", version, gate)
    if decision == "unchanged":
        return RetrainResult(OK, f"version {version}: {reasons}", version, gate)
    return RetrainResult(ERROR, f"the pipeline ran but its gate reported {decision!r}", version, gate)


def _v(version: str | None) -> str:
    return f"version {version}" if version else "none"
