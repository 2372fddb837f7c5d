"""The gate, run: score the champion, decide (labelspace.lifecycle.promotion_rules), record, and move champion.

`run_gate` holds production's champion lock from reading the champion to moving it, so the champion it
compares with is the one it replaces, and a manual promote or a second gate waits its turn.

Who runs it matters on a team's server. A login that may change production (the `retrain` service
account, an approver, an admin; anyone on sqlite) takes the lock, records its decision with the
promotion records and, with `promote.auto` and a pass, promotes. A login that may not (a trainer: the
server refuses it the lock, 403) judges all the same against the champion it reads, records the
decision where it may write (the challenger's tags and its training run's experiment) and, on a pass,
says in one line that an approver must promote: decision `passed`, `approver_needed`.

Recorded where an auditor finds it:
* tags on the challenger's (candidate) model version: `gate.decision` (promoted | passed | rejected),
  `gate.compared_with`, `gate.reason`, `gate.run_id`, `gate.time`, and per metric
  `gate.challenger.<m>`, `gate.champion.<m>`, `gate.minimum.<m>`, `gate.max_regression.<m>`;
* an MLflow run (tag `lifecycle.kind = gate`) in `labelspace-production-lifecycle`, or in the training
  experiment when the gate may not write there: the rules as params, both models' metrics,
  `gate/comparison.md` (the table), `gate/decision.json` and `gate/side_by_side.png` (the metrics as
  bars, challenger beside champion, minimums marked);
* with `promote.auto` and a pass, the move in the history (source gate, pointing at that run).

Decisions: promoted (passed and moved), passed (auto is false, or this login may not promote: a person
promotes), rejected, and unchanged (the challenger already is the champion, or was judged with the same
champion and rules: nothing is recorded twice). Version numbers are the candidates'.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from labelspace.lifecycle import history
from labelspace.lifecycle.champion import (
    StageHook,
    carry_over_legacy_champion,
    champion_lock,
    current_champion,
    is_refusal,
    move_locked,
)
from labelspace.lifecycle.promotion_rules import Decision, comparison_table, decide, metric_values
from labelspace.lifecycle.registry import candidate_model, production_model, resolve_version
from labelspace.lifecycle.retry import client as mlflow_client
from labelspace.lifecycle.scoring import Scored


@dataclass
class GateResult:
    decision: str  # promoted | passed | rejected | unchanged
    version: str
    champion: str | None  # who is champion after the gate
    previous: str | None  # who was champion before it
    compared_with: str | None
    reasons: list[str]
    gate_run_id: str | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    approver_needed: bool = False  # passed with promote.auto, but this login may not change production
    production: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.decision == "promoted":
            return f"gate: version {self.version} promoted to champion (replacing {_v(self.previous)})"
        if self.decision == "passed" and self.approver_needed:
            return (f"gate: the challenger, version {self.version}, passed the gate; an approver must promote it to "
                    f"{self.production}: labelspace promote --version {self.version} --reason ...")
        if self.decision == "passed":
            return (f"gate: version {self.version} passed; promote.auto is false, champion stays {_v(self.champion)} "
                    f"(labelspace promote --version {self.version} --reason ...)")
        if self.decision == "rejected":
            return f"gate: version {self.version} rejected; champion stays {_v(self.champion)}: {'; '.join(self.reasons)}"
        return f"gate: version {self.version}: {'; '.join(self.reasons)}"


def _v(version: str | None) -> str:
    return f"version {version}" if version else "none"


def gate_key(version: str, champion: str | None, config) -> str:
    blob = json.dumps({"version": version, "champion": champion, "rules": asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_gate(model_name: str, version: str, report: dict[str, Any], config,
             score_champion: Callable[[str], Scored], *, stage_hook: StageHook | None = None,
             wait_s: float | None = None) -> GateResult:
    """Judge candidate `version` of `model_name` (its test report `report`, reports/metrics.json's shape)
    against the champion, scored by `score_champion(champion_version)`; `config` is
    labelspace.config.PromoteConfig."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    lock = champion_lock(model_name, wait_s)
    try:
        lock.acquire()
    except MlflowException as e:
        if not is_refusal(e):
            raise
        lock = None  # this login may not change production: judge and record, an approver promotes
    try:
        if lock is not None:
            carry_over_legacy_champion(client, model_name, stage_hook=stage_hook)
        return _judge(client, candidate_model(model_name), version, report, config, score_champion,
                      may_promote=lock is not None, stage_hook=stage_hook)
    finally:
        if lock is not None:
            lock.release()


def _judge(client, model_name: str, version: str, report: dict[str, Any], config,
           score_champion: Callable[[str], Scored], *, may_promote: bool,
           stage_hook: StageHook | None) -> GateResult:
    production = production_model(model_name)
    challenger = resolve_version(model_name, version, client=client)
    version = str(challenger.version)
    champion = current_champion(client, model_name)
    if champion == version:
        return GateResult("unchanged", version, champion, champion, None,
                          [f"version {version} already is the champion: nothing to decide"], production=production)
    key = gate_key(version, champion, config)
    if challenger.tags.get("gate.key") == key:  # a rerun: the same champion, the same rules
        earlier = challenger.tags.get("gate.decision", "?")
        why = (f"already judged against {_v(champion)} with these rules: {earlier} "
               f"(gate run {challenger.tags.get('gate.run_id', '?')})")
        if earlier == "promoted":  # and rolled back since: a rerun does not undo a rollback
            why += "; rolled back since, not promoted again"
        return GateResult(earlier if earlier in ("rejected", "passed") else "unchanged", version, champion,
                          champion, challenger.tags.get("gate.compared_with"), [why], production=production)
    scored, note = None, None
    if champion is not None:
        try:
            scored = score_champion(champion)
        except Exception as e:  # noqa: BLE001 - any failure to load or score: absolute minimums decide
            scored = Scored(None, f"it could not be loaded or scored ({type(e).__name__}: {str(e)[:300]})")
        if scored.report is None:
            note = f"champion v{champion} is not comparable: {scored.note}; judged by the absolute minimums alone"
    decision = decide(metric_values(report), metric_values(scored.report) if scored and scored.report else None,
                      config, champion_version=champion, champion_note=note)
    if scored is not None and scored.report is not None and scored.note:
        decision = Decision(decision.passed, decision.compared_with, decision.checks, decision.reasons,
                            decision.notes + (f"champion v{champion}: {scored.note}",))
    outcome = "rejected" if not decision.passed else ("promoted" if config.auto and may_promote else "passed")
    experiment = (history.lifecycle_experiment(client, production) if may_promote
                  else _training_experiment(client, challenger))
    run_id = (_record_gate_run(client, experiment, model_name, version, champion, decision, outcome, config)
              if experiment is not None else "")
    _tag_version(client, model_name, version, decision, outcome, run_id, key, champion, note)
    now = champion
    if outcome == "promoted":
        move = move_locked(client, model_name, version, source="gate", reason=decision.summary(),
                           gate_run_id=run_id, stage_hook=stage_hook)
        now = move.version
    return GateResult(outcome, version, now, champion, decision.compared_with,
                      list(decision.reasons + decision.notes), run_id or None, [asdict(c) for c in decision.checks],
                      approver_needed=outcome == "passed" and config.auto and not may_promote, production=production)


def _training_experiment(client, challenger) -> str | None:
    """The experiment of the run that trained `challenger` (where its trainer may write), or None."""
    if not challenger.run_id:
        return None
    return client.get_run(challenger.run_id).info.experiment_id


def _tag_version(client, model_name: str, version: str, decision: Decision, outcome: str, run_id: str, key: str,
                 champion: str | None, note: str | None) -> None:
    compared = decision.compared_with or (f"none: {note}" if note else "none: no champion yet")
    tags = {"gate.decision": outcome, "gate.compared_with": compared, "gate.reason": decision.summary(),
            "gate.run_id": run_id, "gate.time": history.now_iso(), "gate.key": key,
            "gate.champion_at_decision": champion or ""}
    for c in decision.checks:
        for what in ("challenger", "champion", "minimum", "max_regression"):
            value = getattr(c, what)
            if value is not None:
                tags[f"gate.{what}.{c.metric}"] = f"{value:.4f}"
    for k, v in tags.items():
        client.set_model_version_tag(model_name, version, k, history.clip(v, 20000))


def _record_gate_run(client, experiment: str, model_name: str, version: str, champion: str | None,
                     decision: Decision, outcome: str, config) -> str:
    tags = {"lifecycle.kind": history.GATE, "gate.model": model_name, "gate.challenger": version,
            "gate.compared_with": decision.compared_with or "", "gate.champion": champion or "",
            "gate.decision": outcome, "gate.reason": history.clip(decision.summary()), "gate.actor": history.actor()}
    run = client.create_run(experiment, tags=tags, run_name=f"gate v{version} vs {_v(champion)}: {outcome}")
    run_id = run.info.run_id
    try:
        params = {"auto": str(config.auto), "metrics": ",".join(config.metrics)}
        params.update({f"minimum.{m}": f"{v:g}" for m, v in config.minimum.items()})
        params.update({f"max_regression.{m}": f"{v:g}" for m, v in config.max_regression.items()})
        from mlflow.entities import Metric, Param

        stamp = int(time.time() * 1000)
        metrics = [Metric(f"{who}.{c.metric}", value, stamp, 0) for c in decision.checks
                   for who, value in (("challenger", c.challenger), ("champion", c.champion)) if value is not None]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.log_text(run_id, comparison_table(decision, version), "gate/comparison.md")
        client.log_dict(run_id, {"model": model_name, "challenger": version, "champion": champion,
                                 "decision": outcome, **decision.to_dict()}, "gate/decision.json")
        figure = side_by_side(decision, version)
        client.log_figure(run_id, figure, "gate/side_by_side.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def side_by_side(decision: Decision, version: str):
    """Bars per metric, challenger beside champion, a tick at each minimum; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    checks = decision.checks
    x = np.arange(len(checks))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(checks) + 2), 4))
    challenger = [100 * (c.challenger or 0) for c in checks]
    ax.bar(x - 0.2, challenger, 0.4, label=f"challenger v{version}",
           color=["tab:green" if c.passed else "tab:red" for c in checks])
    if decision.compared_with:
        ax.bar(x + 0.2, [100 * (c.champion or 0) for c in checks], 0.4, label=f"champion v{decision.compared_with}",
               color="tab:blue")
    for i, c in enumerate(checks):
        if c.minimum is not None:
            ax.hlines(100 * c.minimum, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                      label="minimum" if i == 0 else None)
    ax.set_xticks(x, [c.metric for c in checks], rotation=20, ha="right")
    ax.set_ylabel("test split (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"gate: {decision.verdict}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def record_params(client, model_name: str, version: str, params: dict[str, Any], active_run_id: str | None) -> None:
    """params.yaml itself (not only its hash) as `params/params.yaml` of the active run and of the
    version's own run when that one has none yet and its params.hash matches."""
    from labelspace.app import params_hash

    if active_run_id:
        client.log_dict(active_run_id, params, "params/params.yaml")
    target = resolve_version(model_name, version, ready=False, client=client)
    run_id = target.run_id
    if not run_id or run_id == active_run_id or target.tags.get("params.hash") != params_hash(params):
        return
    if not any(a.path == "params/params.yaml" for a in client.list_artifacts(run_id, "params")):
        client.log_dict(run_id, params, "params/params.yaml")
