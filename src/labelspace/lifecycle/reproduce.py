"""`reproduce(model, "3" | "@champion")`: rebuild a registered version from its lineage and say whether
the rebuild matches (labelspace.lifecycle.reproduction_verdict decides).

1. The version's tags name its commit, data and vectors versions, params hash, seed, thread count and
   device. A version trained from a dirty tree (or outside git, or on data DVC does not track) is
   refused: what made it is in no commit, or cannot be restored by hash.
2. A git worktree of that commit in the work folder (never the user's checkout); its params.yaml is the
   version's (the run's `params/params.yaml` if the commit's file differs); the dataset and the vectors
   are restored at their recorded DVC versions from the DVC cache or remote (labelspace.data.restore).
3. That commit's own code (the worktree's `src/` first on the path) runs `labelspace run --no-cache` in a
   child process with a ZenML store and an MLflow store of its own under the work folder, at the
   recorded thread count, on the CPU when the version was trained on one: nothing new in the team's
   registry or ZenML.
4. The retrained version's weights hash, environment and test metrics against the recorded ones give the
   verdict, recorded on the version as `reproduced.*` tags (date, verdict, differences, ...). Tagging a
   version needs EDIT on its registered model (on the team server: a trainer, an approver, the shared
   `team` login, not a reader): whether this login may is asked before any work, by setting one of the
   version's tags to the value it has, and a login that may not is refused in one line (`--no-record`
   reproduces without recording).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labelspace.app import TELEMETRY_OFF, params_hash
from labelspace.config import load_params
from labelspace.data.restore import DataUnavailable, relative_to_tree, restore_output
from labelspace.lifecycle.audit import run_params, version_metrics
from labelspace.lifecycle.champion import is_refusal
from labelspace.lifecycle.lineage import PACKAGES_ARTIFACT, code_checkout, lock_hash
from labelspace.lifecycle.registry import resolve_candidate, versions
from labelspace.lifecycle.reproduction_verdict import Verdict, judge, lock_pins, package_differences
from labelspace.lifecycle.retry import client as mlflow_client
from labelspace.training.runtime import describe_runtime

WORKTREE = "tree"
CHILD_ENV_DROPPED = ("MLFLOW_", "ZENML_STORE_", "ZENML_SERVER", "ZENML_CONFIG_PATH", "LABELSPACE_PARAMS",
                     "LABELSPACE_TORCH_THREADS", "OMP_NUM_THREADS", "AWS_", "PYTHONPATH")


class RecordRefused(RuntimeError):
    """The tracking server refused this login a tag on the version (403): the verdict cannot be recorded."""


def _record_refusal(model_name: str, number: str, when: str) -> RecordRefused:
    login = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this login"
    return RecordRefused(
        f"{login} may not record the verdict on {model_name} version {number}{when}: the MLflow server refused "
        f"a tag on it (403: tagging a version needs EDIT on the registered model {model_name}; trainers, "
        "approvers and admins have it, readers do not): run with --no-record to reproduce without recording, "
        "or as a login that may (docs/team-server.md, People and roles)")


@contextmanager
def _refused_as_record_refusal(model_name: str, number: str, when: str = ""):
    """A 403 from the tracking server on a tag write becomes RecordRefused; any other error stays itself."""
    try:
        yield
    except Exception as e:
        if not is_refusal(e):
            raise
        raise _record_refusal(model_name, number, when) from None


def check_may_record(client, model_name: str, number: str, tags: dict[str, str]) -> None:
    """RecordRefused unless this login may tag the version: one of its tags is set to the value it has
    (nothing changes; a store without logins always allows it)."""
    key = "code.git_commit"  # refusal() made sure it is there
    with _refused_as_record_refusal(model_name, number):
        client.set_model_version_tag(model_name, number, key, tags[key])


@dataclass
class Reproduction:
    model: str
    version: str
    commit: str
    workdir: str
    threads: str
    seconds: float
    recorded_hash: str
    reproduced_hash: str
    verdict: Verdict
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": {**asdict(self.verdict), "max_delta": self.verdict.max_delta}}


def _git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=300)
    if check and done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {root} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip() if done.returncode == 0 else ""


def refusal(number: str, tags: dict[str, str]) -> str | None:
    """Why version `number` cannot be rebuilt from its tags, or None when it can."""
    commit, dirty = tags.get("code.git_commit", "unknown"), tags.get("code.git_dirty", "unknown")
    if commit in ("", "unknown"):
        return f"version {number} records no git commit (trained outside a git checkout): nothing to rebuild it from"
    if dirty != "false":
        return (f"version {number} was trained from a checkout with uncommitted changes (code.git_dirty={dirty} "
                f"at commit {commit[:12]}): the code that made it is in no commit, so it cannot be rebuilt; "
                "commit first and train again for a reproducible version")
    if tags.get("params.path", "").startswith("outside the checkout"):
        return f"version {number} read a params file {tags['params.path']}: only params inside the repository are rebuilt"
    for key in ("data.dataset_version", "data.vectors_version"):
        value = tags.get(key, "unknown")
        if value in ("", "unknown") or value.startswith(("untracked-", "parts-")):
            return (f"version {number} was trained on data DVC cannot restore by hash ({key}={value}: "
                    "untracked-* is a folder passed with --dataset, parts-* one tracked in pieces)")
    return None


def source_repository(project_root: Path, commit: str) -> Path:
    """The git checkout holding `commit`: the project's, else the one the running code comes from."""
    for folder in (project_root, code_checkout(project_root)):
        top = _git(folder, "rev-parse", "--show-toplevel", check=False)
        if top and subprocess.run(["git", "-C", top, "cat-file", "-e", f"{commit}^{{commit}}"],
                                  capture_output=True).returncode == 0:
            return Path(top)
    raise RuntimeError(f"commit {commit} is not in the git repository of {project_root}: `git fetch` it, or run "
                       "from a clone that has it")


def make_worktree(source: Path, commit: str, tree: Path) -> None:
    if tree.exists():
        _git(source, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(tree, ignore_errors=True)
    _git(source, "worktree", "prune")
    _git(source, "worktree", "add", "--detach", str(tree), commit)


def remove_worktree(source: Path, tree: Path) -> None:
    _git(source, "worktree", "remove", "--force", str(tree), check=False)
    shutil.rmtree(tree, ignore_errors=True)
    _git(source, "worktree", "prune", check=False)


def _artifact_json(client, run_id: str | None, path: str) -> Any:
    if not run_id:
        return None
    folder = path.rsplit("/", 1)[0]
    if not any(a.path == path for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")
    return json.loads(text) if path.endswith(".json") else text


def place_params(tree: Path, tags: dict[str, str], recorded: dict | None, notes: list[str]) -> Path:
    """The params file in the worktree, holding exactly the version's params (module doc)."""
    import yaml


    path = tree / tags.get("params.path", "params.yaml")
    if path.is_file() and params_hash(load_params(path)) == tags.get("params.hash"):
        return path
    if recorded is None or params_hash(recorded) != tags.get("params.hash"):
        raise RuntimeError(f"{path.relative_to(tree)} at commit {tags['code.git_commit'][:12]} is not the params the "
                           "version trained with (params.hash differs) and its run holds no params/params.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recorded, sort_keys=False), encoding="utf-8")
    notes.append(f"{path.relative_to(tree)} of the commit differs from the run's: the run's params/params.yaml is used")
    return path


def restore_data(tree: Path, params_file: Path, tags: dict[str, str], source: Path, echo) -> None:

    params = load_params(params_file)
    for key, path in (("data.dataset_version", params["ingest"]["dataset"]),
                      ("data.vectors_version", params["vectors"]["path"])):
        rel = relative_to_tree(path, params_file.parent, tree)
        if rel.startswith("..") or Path(rel).is_absolute():
            raise DataUnavailable(f"{path} ({key}) lies outside the repository: DVC cannot restore it by hash")
        restore_output(tree, rel, tags[key], source=source)
        echo(f"restored {rel} @ {tags[key]}")


def child_environment(tree: Path, params_file: Path, workdir: Path, threads: str | None, cpu_only: bool) -> dict:

    env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROPPED)}
    env.update(TELEMETRY_OFF)
    env.update(PYTHONPATH=str(tree / "src"), LABELSPACE_PARAMS=str(params_file),
               ZENML_CONFIG_PATH=str(workdir / "zenml"), ZENML_LOGGING_VERBOSITY="WARN",
               MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}", LABELSPACE_PROGRESS="log")
    if threads:
        env["LABELSPACE_TORCH_THREADS"] = env["OMP_NUM_THREADS"] = threads
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def retrain(tree: Path, params_file: Path, workdir: Path, env: dict, echo) -> None:
    """`labelspace run --no-cache` of the worktree's code; its output goes to workdir/run.log (and `echo`)."""
    log_path = workdir / "run.log"
    (workdir / "mlflow").mkdir(parents=True, exist_ok=True)
    echo(f"training at commit {_git(tree, 'rev-parse', '--short', 'HEAD')} (log: {log_path})")
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "labelspace", "run", "--no-cache"], cwd=params_file.parent,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-15:]
            if " epoch " in line or line.startswith(("registered", "dataset", "vectors")):
                echo("  " + line.rstrip())
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"the reproduction's training failed (exit {code}); see {log_path}:\n" + "\n".join(tail))


def reproduced_version(workdir: Path, model_name: str) -> tuple[dict[str, str], dict[str, float], dict | None]:
    """(tags, test metrics, installed packages) of the version the reproduction registered in its own store."""
    client = mlflow_client(f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    found = versions(model_name, client)
    if not found:
        raise RuntimeError(f"the reproduction registered no version of {model_name}; see {workdir / 'run.log'}")
    v = found[-1]
    return dict(v.tags), version_metrics(client, v.run_id), _artifact_json(client, v.run_id, PACKAGES_ARTIFACT)


def environment_now(source: Path, tags: dict[str, str], threads: str | None, cpu_only: bool) -> dict[str, str]:
    """The reproducing environment's env.* tags, where the reproduction's code did not record them (a
    commit from before env.* existed): this interpreter, machine and the thread count it was given."""
    import torch


    device = "cpu" if cpu_only or not torch.cuda.is_available() else "cuda"
    runtime = describe_runtime(device, int(threads or torch.get_num_threads()))
    return {**{f"env.{k}": v for k, v in runtime.items()}, **tags}


def reproduce(model_name: str, ref: str, *, project_root: Path, workdir: Path | None = None,
              threads: int | None = None, record: bool = True, echo=print) -> Reproduction:
    """Rebuild version `ref` of `model_name` and judge it (module doc); records `reproduced.*` on it."""
    client = mlflow_client()
    version = resolve_candidate(model_name, ref, client=client)
    number, tags = str(version.version), dict(version.tags)
    why = refusal(number, tags)
    if why:
        raise ValueError(why)
    commit = tags["code.git_commit"]
    source = source_repository(project_root, commit)
    if record:
        check_may_record(client, model_name, number, tags)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"labelspace-reproduce-v{number}-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("mlflow", "zenml"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    tree, notes = workdir / WORKTREE, []
    recorded_threads = tags.get("env.torch_threads", "unknown")
    chosen = str(threads) if threads else (recorded_threads if recorded_threads.isdigit() else None)
    cpu_only = tags.get("env.device", "cpu") == "cpu"
    echo(f"reproducing {model_name} version {number}: commit {commit[:12]}, data {tags['data.dataset_version']}, "
         f"vectors {tags['data.vectors_version']}, {chosen or 'default'} torch threads, "
         f"{'CPU' if cpu_only else 'GPU'}; work folder {workdir}")
    start = time.perf_counter()
    make_worktree(source, commit, tree)
    try:
        params_file = place_params(tree, tags, run_params(client, version.run_id), notes)
        registered_as = load_params(params_file)["register"]["model_name"]
        restore_data(tree, params_file, tags, source, echo)
        retrain(tree, params_file, workdir, child_environment(tree, params_file, workdir, chosen, cpu_only), echo)
        recorded_lock = _git(source, "show", f"{commit}:requirements.lock", check=False)
    finally:
        remove_worktree(source, tree)
    seconds = time.perf_counter() - start
    again, again_metrics, again_packages = reproduced_version(workdir, registered_as)
    again = environment_now(source, again, chosen, cpu_only) if "env.torch" not in again else again
    checkout = code_checkout(project_root)  # the venv running this was installed from its lock
    again["env.lock_hash"] = lock_hash(checkout)
    lock_now = (checkout / "requirements.lock").read_text(encoding="utf-8") if (checkout / "requirements.lock").is_file() else ""
    verdict = judge(tags, again, version_metrics(client, version.run_id), again_metrics,
                    packages=package_differences(_artifact_json(client, version.run_id, PACKAGES_ARTIFACT), again_packages),
                    lock_changes=package_differences(lock_pins(recorded_lock), lock_pins(lock_now)))
    result = Reproduction(model=model_name, version=number, commit=commit, workdir=str(workdir),
                          threads=chosen or "default", seconds=round(seconds, 1),
                          recorded_hash=tags.get("model.content_hash", "unknown"),
                          reproduced_hash=again.get("model.content_hash", "unknown"), verdict=verdict, notes=notes)
    (workdir / "reproduction.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    if record:
        when = f" (it was {verdict.verdict}, the report is {workdir / 'reproduction.json'})"
        with _refused_as_record_refusal(model_name, number, when):
            record_verdict(client, model_name, number, result)
    return result


def record_verdict(client, model_name: str, number: str, r: Reproduction) -> dict[str, str]:
    """`reproduced.*` tags on the version: when, the verdict, what differed, both hashes, the tolerance."""
    v = r.verdict
    tags = {"reproduced.date": datetime.now(UTC).isoformat(timespec="seconds"), "reproduced.verdict": v.verdict,
            "reproduced.differences": ("; ".join(v.differences) or "none")[:4000],
            "reproduced.weights_hash": r.reproduced_hash, "reproduced.tolerance": f"{v.tolerance:.2f}",
            "reproduced.max_metric_delta": f"{v.max_delta:.4f}", "reproduced.threads": r.threads,
            "reproduced.seconds": f"{r.seconds:.0f}"}
    if v.note:
        tags["reproduced.note"] = v.note[:4000]
    for key, value in tags.items():
        client.set_model_version_tag(model_name, number, key, value)
    return tags


def format_reproduction(r: Reproduction) -> str:
    v = r.verdict
    lines = [f"{r.model} version {r.version}: {v.verdict.upper()}",
             f"  weights      recorded {r.recorded_hash}, reproduced {r.reproduced_hash}",
             f"  trained in   {r.seconds:.0f} s at commit {r.commit[:12]}, {r.threads} torch threads ({r.workdir})"]
    lines += [f"  differs      {d}" for d in v.differences] or ["  differs      nothing recorded"]
    if v.metrics:
        lines.append(f"  test metrics within {v.tolerance:.2f} allowed: largest change {v.max_delta:.4f}")
        worst = sorted(v.metrics, key=lambda m: -abs(m["delta"]))[:5]
        lines += [f"    {m['key']:<28} {m['recorded']:.4f} -> {m['reproduced']:.4f} ({m['delta']:+.4f})" for m in worst]
    lines += [f"  note         {n}" for n in ([v.note] if v.note else []) + r.notes]
    return "\n".join(lines)
