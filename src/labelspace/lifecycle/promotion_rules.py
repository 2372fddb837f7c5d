"""The promotion gate's decision, as a pure function: metrics of the challenger and of the champion
(scored on the same test split) and `PromoteConfig` in, a `Decision` with every check and reason out.

No MLflow, no ZenML, no I/O: labelspace.lifecycle.promotion_gate scores the champion, calls `decide` and
records the result. Rules, per metric named in `promote.metrics` (higher is better):

* `minimum[m]`: the challenger needs at least this value (always, champion or not);
* `max_regression[m]`: with a champion, the challenger may fall at most this far below it;
* a metric the challenger lacks fails every rule it has (the gate cannot vouch for it); a metric the
  champion lacks (it was trained on a held-out label, say) is judged by its minimum alone, noted;
* no champion, or one that cannot be scored on this data: the minimums alone decide, noted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

TOLERANCE = 1e-9  # metrics are fractions of counts: equal values must not fail by rounding
_RATES = r"(C-P|C-R|C-F1|O-P|O-R|O-F1)"
_METRIC = re.compile(rf"^(labelspace\.(top\d+\.{_RATES}|mAP|threshold\.{_RATES})|zero_shot\.(top\d+\.{_RATES}|mAP))$")


def metric_name_problem(name: str | None) -> str:
    """'' when `name` is a metric the gate can read, else what is wrong with it."""
    if isinstance(name, str) and _METRIC.match(name):
        return ""
    return (f"{name!r} is not a metric of reports/metrics.json; use labelspace.topK.<C-P|C-R|C-F1|O-P|O-R|O-F1>, "
            "labelspace.mAP, labelspace.threshold.<...>, zero_shot.topK.<...> or zero_shot.mAP")


def metric_values(report: dict[str, Any]) -> dict[str, float]:
    """{'labelspace.top3.O-F1': 0.77, 'labelspace.mAP': ..., 'zero_shot.top1.O-F1': ...} of a metrics report
    (the shape of reports/metrics.json); only numbers, only the label space and its zero-shot figures."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key != "chance":
                    walk(f"{prefix}.{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    for head in ("labelspace", "zero_shot"):
        if isinstance(report.get(head), dict):
            walk(head, report[head])
    return flat


@dataclass(frozen=True)
class Check:
    metric: str
    challenger: float | None
    champion: float | None
    minimum: float | None
    max_regression: float | None
    passed: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    compared_with: str | None  # the champion version the challenger was compared with, None when not
    checks: tuple[Check, ...]
    reasons: tuple[str, ...]  # the failures when rejected, else what passed; notes in both cases
    notes: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> str:
        return "passed" if self.passed else "rejected"

    def summary(self) -> str:
        return "; ".join(self.reasons + self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.verdict, "compared_with": self.compared_with,
                "checks": [asdict(c) for c in self.checks], "reasons": list(self.reasons), "notes": list(self.notes)}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _check(metric: str, ours: float | None, theirs: float | None, minimum: float | None,
           max_regression: float | None, champion: str | None) -> Check:
    failures, passes = [], []
    if ours is None:
        if minimum is not None or (max_regression is not None and theirs is not None):
            failures.append(f"{metric} was not measured for the challenger")
        return Check(metric, None, theirs, minimum, max_regression, not failures,
                     "; ".join(failures) or f"{metric}: not measured, no rule applies")
    if minimum is not None:
        if ours + TOLERANCE < minimum:
            failures.append(f"{metric} {_fmt(ours)} is below the minimum {_fmt(minimum)}")
        else:
            passes.append(f"{metric} {_fmt(ours)} >= minimum {_fmt(minimum)}")
    if max_regression is not None and champion is not None:
        if theirs is None:
            passes.append(f"{metric}: champion v{champion} has no value, minimum only")
        elif ours + max_regression + TOLERANCE < theirs:
            failures.append(f"{metric} {_fmt(ours)} is {theirs - ours:.4f} below champion v{champion}'s "
                            f"{_fmt(theirs)} (at most {max_regression:.4f} allowed)")
        else:
            passes.append(f"{metric} {_fmt(ours)} vs champion v{champion}'s {_fmt(theirs)} "
                          f"(regression allowed {max_regression:.4f})")
    reason = "; ".join(failures or passes) or f"{metric} {_fmt(ours)}: reported, no rule"
    return Check(metric, ours, theirs, minimum, max_regression, not failures, reason)


def decide(challenger: dict[str, float], champion: dict[str, float] | None, config,
           *, champion_version: str | None = None, champion_note: str | None = None) -> Decision:
    """Judge `challenger` (metric_values of its report) against `champion` (the same for the champion on
    the same test split; None when there is none or it could not be scored, `champion_note` saying why).

    `config` is a labelspace.config.PromoteConfig (auto plays no part here: deciding is not moving)."""
    compared = champion_version if champion is not None else None
    notes = []
    if champion is None:
        notes.append(champion_note or "no champion yet: judged by the absolute minimums alone")
    checks = tuple(
        _check(m, challenger.get(m), (champion or {}).get(m), config.minimum.get(m), config.max_regression.get(m),
               compared)
        for m in config.metrics
    )
    passed = all(c.passed for c in checks)
    reasons = tuple(c.reason for c in checks if not c.passed) if not passed else tuple(c.reason for c in checks)
    return Decision(passed=passed, compared_with=compared, checks=checks, reasons=reasons, notes=tuple(notes))


def comparison_table(decision: Decision, challenger_version: str) -> str:
    """Markdown: one row per metric, challenger beside champion, the rules and the outcome."""
    champion = f"champion v{decision.compared_with}" if decision.compared_with else "champion"
    lines = [f"| metric | challenger v{challenger_version} | {champion} | minimum | max regression | result |",
             "|---|---|---|---|---|---|"]
    for c in decision.checks:
        lines.append(f"| {c.metric} | {_fmt(c.challenger)} | {_fmt(c.champion)} | {_fmt(c.minimum)} | "
                     f"{_fmt(c.max_regression)} | {'pass' if c.passed else 'FAIL'} |")
    lines.append("")
    lines.append(f"**{decision.verdict}**: {decision.summary()}")
    return "\n".join(lines) + "\n"
