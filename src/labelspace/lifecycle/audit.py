"""What produced a model version, how two versions differ, and which versions one dataset made.

Everything is read from the registry and the tracking backend (so it works the same on sqlite and a
team's server), plus the project's git history for the commit whose dvc.lock pins the data:

* `audit(model, "3" | "@champion")`: the candidate version (a number of the candidates' model; @champion
  and @previous-champion are production's aliases, followed to the candidate version they copy; a
  production model's own number works too), its production copies and their aliases, its lineage tags (data and vectors DVC hashes, code
  commit and dirty flag, source hash, params hash and path, ZenML run and model version, the backbone's
  pretrained file and the trained weights' hashes, the seed), the environment it trained in (`env.*`:
  packages, lock file, threads, device), its last reproduction (`reproduced.*`), the
  dvc.lock/git commit that pins its data, params.yaml itself (the run's `params/params.yaml`), its
  test metrics, every gate decision about it and every champion move that involved it;
* `diff(model, a, b)`: params, lineage and metrics side by side, only what differs;
* `by_dataset(model, hash)`: every version trained on that data version (a prefix is enough).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from labelspace.lifecycle import history
from labelspace.lifecycle.registry import (
    CANDIDATE_VERSION_TAG,
    _quoted,
    candidate_model,
    production_model,
    resolve_candidate,
)
from labelspace.lifecycle.retry import client as mlflow_client

LINEAGE_PREFIXES = ("data.", "code.", "params.", "project.", "zenml.", "model.", "backbone.", "seed.")
PARAMS_ARTIFACT = "params/params.yaml"


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else ""


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def data_pins(root: Path | None, version: str, training_commit: str | None) -> dict[str, Any]:
    """Where `version` (a DVC hash) is pinned: outputs of the project's dvc.lock now, the first git commit
    whose dvc.lock held it, and whether the dvc.lock of the commit the model was trained from holds it."""
    if version.startswith("untracked-"):
        return {"note": "not tracked by DVC: a fingerprint of the files (labelspace run --dataset DIR)"}
    if root is None or not (root / "dvc.lock").exists():
        return {"note": "no project with a dvc.lock here to look the hash up in"}
    from labelspace.data.dvc_versions import tracked_outputs

    pins: dict[str, Any] = {"dvc_lock_now": sorted(p for p, md5 in tracked_outputs(root).items() if md5 == version)}
    log = _git(root, "log", "--reverse", "--format=%H %cI %s", "-S", version, "--", "dvc.lock")
    if log:
        commit, date, *subject = log.splitlines()[0].split(" ", 2)
        pins["first_pinned_by"] = {"commit": commit, "date": date, "subject": " ".join(subject)}
    if training_commit and training_commit != "unknown":
        lock = _git(root, "show", f"{training_commit}:dvc.lock")
        pins["pinned_at_training_commit"] = None if lock is None else version in lock
    return pins


def run_params(client, run_id: str | None) -> dict[str, Any] | None:
    """params.yaml as logged with the version's run, or None when that run has none."""
    if not run_id:
        return None
    if not any(a.path == PARAMS_ARTIFACT for a in client.list_artifacts(run_id, "params")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, PARAMS_ARTIFACT, tmp)
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def version_metrics(client, run_id: str | None) -> dict[str, float]:
    """The test-split metrics of the version's run (labelspace_*, bce_*, zero_shot_*; no training curves)."""
    if not run_id:
        return {}
    metrics = client.get_run(run_id).data.metrics
    return {k: v for k, v in sorted(metrics.items()) if "/" not in k and k.startswith(("labelspace_", "bce_", "zero_shot_"))}


def production_copies(client, model_name: str, number: str) -> list[dict[str, Any]]:
    """The production versions copying candidate `number`, with their aliases."""
    production = production_model(model_name)
    found = client.search_model_versions(f"name = '{_quoted(production)}' and "
                                         f"tags.`{CANDIDATE_VERSION_TAG}` = '{_quoted(number)}'")
    if not found:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, held in (client.get_registered_model(production).aliases or {}).items():
        aliases.setdefault(str(held), []).append(alias)
    return [{"model": production, "version": str(v.version), "aliases": sorted(aliases.get(str(v.version), []))}
            for v in sorted(found, key=lambda v: int(v.version))]


def gate_runs(client, model_name: str, number: str, run_id: str | None) -> list:
    """Every gate run about candidate `number`: with the promotion records, in the layout before production,
    and in its training run's experiment (a gate whose login could not write production records)."""
    query = f"tags.`gate.challenger` = '{number}'"
    runs = history.search(client, production_model(model_name), history.GATE, query)
    runs += history.search(client, candidate_model(model_name), history.GATE, query)
    if run_id:
        experiment = client.get_run(run_id).info.experiment_id
        runs += [r for r in history.search_experiment(client, experiment, history.GATE, query)
                 if r.data.tags.get("gate.model") == candidate_model(model_name)]
    unique = {r.info.run_id: r for r in runs}
    return sorted(unique.values(), key=lambda r: r.info.start_time)


def audit(model_name: str, ref: str, *, project_root: Path | None = None) -> dict[str, Any]:
    client = mlflow_client()
    v = resolve_candidate(model_name, ref, ready=False, client=client)
    model_name = candidate_model(model_name)
    number = str(v.version)
    tags = dict(v.tags)
    gates = [{"time": _time(r.info.start_time), "decision": r.data.tags.get("gate.decision"),
              "compared_with": r.data.tags.get("gate.compared_with") or None, "reason": r.data.tags.get("gate.reason"),
              "run_id": r.info.run_id} for r in gate_runs(client, model_name, number, v.run_id)]
    copies = production_copies(client, model_name, number)
    served = {c["version"] for c in copies}
    moves = [e.to_dict() for e in history.events(client, model_name) if number in (e.version, e.previous)]
    moves += [e.to_dict() for e in history.events(client, production_model(model_name))
              if number in (e.version, e.previous)]
    champion_tags = {}
    for copy in copies:  # a production copy holds its champion.* tags; the newest copy's win
        copy_tags = client.get_model_version(copy["model"], copy["version"]).tags
        champion_tags.update({k: copy_tags[k] for k in sorted(copy_tags) if k.startswith("champion.")})
    commit = tags.get("project.git_commit") or tags.get("code.git_commit")
    return {
        "model": model_name, "version": number, "status": v.status, "created": _time(v.creation_timestamp),
        "aliases": sorted(v.aliases or []), "description": v.description, "run_id": v.run_id, "source": v.source,
        "production": copies, "served": sorted(served, key=int),
        "lineage": {k: tags[k] for k in sorted(tags) if k.startswith(LINEAGE_PREFIXES)},
        "environment": {k: tags[k] for k in sorted(tags) if k.startswith("env.")},
        "reproduced": {k: tags[k] for k in sorted(tags) if k.startswith("reproduced.")},
        "data_pins": {key: data_pins(project_root, tags[key], commit)
                      for key in ("data.dataset_version", "data.vectors_version") if key in tags},
        "params": run_params(client, v.run_id),
        "metrics": version_metrics(client, v.run_id),
        "gate": {"latest": {k: tags[k] for k in sorted(tags) if k.startswith("gate.") and k.count(".") == 1},
                 "decisions": gates},
        "champion": {"moves": moves, **{k: tags[k] for k in sorted(tags) if k.startswith("champion.")},
                     **champion_tags},
    }


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, inner in value.items():
            out.update(_flat(inner, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff(model_name: str, a: str, b: str, *, project_root: Path | None = None) -> dict[str, Any]:
    left, right = audit(model_name, a, project_root=project_root), audit(model_name, b, project_root=project_root)
    out: dict[str, Any] = {"model": model_name, "a": left["version"], "b": right["version"], "notes": []}
    if left["params"] is None or right["params"] is None:
        missing = [x["version"] for x in (left, right) if x["params"] is None]
        out["notes"].append(f"no params.yaml logged with version(s) {', '.join(missing)}: params compared by hash only")
        out["params"] = []
    else:
        pa, pb = _flat(left["params"]), _flat(right["params"])
        out["params"] = [{"key": k, "a": pa.get(k), "b": pb.get(k)} for k in sorted(set(pa) | set(pb))
                         if pa.get(k) != pb.get(k)]
    la, lb = {**left["lineage"], **left["environment"]}, {**right["lineage"], **right["environment"]}
    out["lineage"] = [{"key": k, "a": la.get(k), "b": lb.get(k)} for k in sorted(set(la) | set(lb))
                      if la.get(k) != lb.get(k) and not k.startswith("zenml.")]
    ma, mb = left["metrics"], right["metrics"]
    out["metrics"] = [{"key": k, "a": ma[k], "b": mb[k], "delta": mb[k] - ma[k]} for k in sorted(set(ma) & set(mb))
                      if ma[k] != mb[k]]
    return out


def by_dataset(model_name: str, dataset_version: str) -> list[dict[str, Any]]:
    """Versions whose data.dataset_version starts with `dataset_version` (DVC's md5, as dvc.lock writes
    it; a leading 'md5:' is dropped when nothing matches with it)."""
    client = mlflow_client()
    model_name = candidate_model(model_name)

    def search(prefix: str) -> list:
        query = f"name = '{_quoted(model_name)}' and tags.`data.dataset_version` LIKE '{_quoted(prefix)}%'"
        return sorted(client.search_model_versions(query), key=lambda v: int(v.version))

    found = search(dataset_version)
    if not found and dataset_version.startswith("md5:"):
        found = search(dataset_version.removeprefix("md5:"))
    aliases: dict[str, list[str]] = {}
    if found:  # a search does not fill in aliases on every backend: the registered model has them all
        for alias, number in (client.get_registered_model(model_name).aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        for v in found:  # production's aliases, on the candidate each copy comes from
            for copy in production_copies(client, model_name, str(v.version)):
                aliases.setdefault(str(v.version), []).extend(copy["aliases"])
    return [{"version": str(v.version), "created": _time(v.creation_timestamp),
             "aliases": sorted(aliases.get(str(v.version), [])),
             "dataset_version": v.tags.get("data.dataset_version"), "params_hash": v.tags.get("params.hash"),
             "code_commit": v.tags.get("code.git_commit"), "gate_decision": v.tags.get("gate.decision"),
             "top3_O-F1": v.tags.get("metrics.top3.O-F1")} for v in found]


# ---------------------------------------------------------------- text


def _section(title: str, rows: dict[str, Any] | list[str]) -> list[str]:
    lines = [f"\n{title}"]
    if isinstance(rows, dict):
        width = max((len(k) for k in rows), default=0)
        lines += [f"  {k:<{width}}  {v}" for k, v in rows.items()] or ["  (none)"]
    else:
        lines += [f"  {r}" for r in rows] or ["  (none)"]
    return lines


def format_audit(a: dict[str, Any]) -> str:
    aliases = ", ".join(f"@{x}" for x in a["aliases"]) or "none"
    lines = [f"{a['model']} version {a['version']}: {a['status']}, registered {a['created']}, aliases {aliases}",
             f"  run {a['run_id']}  ({a['description'] or 'no description'})"]
    for copy in a.get("production", []):
        held = ", ".join(f"@{x}" for x in copy["aliases"]) or "no alias"
        lines.append(f"  in production as {copy['model']} version {copy['version']} ({held})")
    lines += _section("lineage (model.content_hash: the trained weights; backbone.pretrained_hash: the file "
                      "training started from)", a["lineage"])
    lines += _section("environment it trained in", a.get("environment") or
                      ["not recorded (registered before env.* tags)"])
    lines += _section("last reproduction (labelspace reproduce)", a.get("reproduced") or
                      [f"never reproduced: labelspace reproduce {a['version']}"])
    for key, pins in a["data_pins"].items():
        rows = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in pins.items()}
        lines += _section(f"{key} pinned by", rows)
    params = a["params"]
    lines += _section("params (params/params.yaml of the run)",
                      [f"{k} = {json.dumps(v)}" for k, v in _flat(params).items()] if params is not None
                      else ["not logged with this version's run (registered before params were logged)"])
    lines += _section("test metrics", {k: f"{v:.4f}" for k, v in a["metrics"].items()})
    gate_rows = [f"{g['time']}  {g['decision']:<9} vs {g['compared_with'] or 'no champion'}: {g['reason']}  "
                 f"(run {g['run_id']})" for g in a["gate"]["decisions"]]
    lines += _section("gate decisions", gate_rows)
    move_rows = [f"#{m['seq']} {m['time']}  {'became champion' if m['version'] == a['version'] else 'replaced'} "
                 f"({m['source']} by {m['actor']}, {m['status']}): {m['reason']}" for m in a["champion"]["moves"]]
    lines += _section("champion history of this version", move_rows)
    return "\n".join(lines)


def format_diff(d: dict[str, Any]) -> str:
    lines = [f"{d['model']}: version {d['a']} -> version {d['b']}"] + [f"  note: {n}" for n in d["notes"]]
    for title, rows in (("params", d["params"]), ("data, code and environment", d["lineage"])):
        lines += _section(title, [f"{r['key']}: {json.dumps(r['a'])} -> {json.dumps(r['b'])}" for r in rows])
    lines += _section("metrics", [f"{r['key']}: {r['a']:.4f} -> {r['b']:.4f} ({r['delta']:+.4f})" for r in d["metrics"]])
    return "\n".join(lines)


def format_by_dataset(model_name: str, dataset_version: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"no version of {model_name} was trained on data version {dataset_version}"
    lines = [f"versions of {model_name} trained on data version {dataset_version}:",
             f"  {'version':<8} {'registered':<26} {'aliases':<32} {'gate':<10} {'top3 O-F1':<10} code commit"]
    for r in rows:
        lines.append(f"  {r['version']:<8} {r['created']:<26} {','.join(r['aliases']) or '-':<32} "
                     f"{r['gate_decision'] or '-':<10} {r['top3_O-F1'] or '-':<10} {(r['code_commit'] or '-')[:12]}")
    return "\n".join(lines)
