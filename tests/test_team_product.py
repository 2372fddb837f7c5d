"""The whole product against one team stack (issue 11): a tiny project, a git + DVC repository whose
dataset is `dvc add`ed, runs the real `labelspace run` with nothing but the server's URI and the team
credentials in its environment; the challenger lands in the registry with its artifacts in S3;
`labelspace promote` by an approver moves champion (the shared `team` login's is refused); a second "machine" (another process and folder, the URI and
credentials only) loads and serves the champion; a second clone pulls the dataset from the S3 remote
and finds the version the registry recorded; another member reproduces the version from a fresh clone
(the data from the S3 remote, the training in stores of its own, the verdict tagged on the server), a
reader may not; the tracking server restarted during a run leaves the registry consistent. The stack
runs in a temporary folder on free ports and is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import team_support
import yaml

from labelspace.app import TELEMETRY_OFF
from labelspace.deploy import processes, s3server, team

pytestmark = [pytest.mark.slow, pytest.mark.team]

VENV_BIN = Path(sys.executable).parent
MODEL = "labelspace"
QUIET = lambda *_: None  # noqa: E731
TIMES: dict[str, float] = {}  # what each step took, printed at the end (pytest -s)


if (_reason := team_support.missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from mlflow import MlflowClient  # noqa: E402  (after the skip: needs the team extra's packages)


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children: the machine is shared, wall time is not."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


CPU_AT_IMPORT = _cpu()


def _timed(what: str, seconds: float, cpu: float | None = None) -> None:
    TIMES[what] = round(seconds, 1)
    print(f"\n[{seconds:6.1f} s{f', {cpu:6.1f} s CPU' if cpu is not None else ''}] {what}")


def _member_env(stack: dict, **extra: str) -> dict[str, str]:
    """A team member's environment: the caller's, minus every MLflow, ZenML, AWS, PostgreSQL, DVC and
    labelspace setting, plus the three variables `team env` prints, telemetry off, the venv on PATH."""
    dropped = ("MLFLOW_", "ZENML_", "AWS_", "PG", "DVC_", "LABELSPACE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(TELEMETRY_OFF)
    env.update(stack["env"])
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    env.update(extra)
    assert not any(stack["folder"] in value for value in env.values())  # nothing points at the server's files
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300, check: bool = True,
         what: str | None = None) -> subprocess.CompletedProcess:
    if argv[0] in ("labelspace", "dvc", "mlflow"):
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
    t0, cpu0 = time.monotonic(), _cpu()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if what:
        _timed(what, time.monotonic() - t0, _cpu() - cpu0)
        print(textwrap.indent((result.stdout + result.stderr).strip()[-3000:], "    | "))
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def _python(code: str, cwd: Path, env: dict[str, str], what: str) -> dict:
    result = _run([sys.executable, "-c", textwrap.dedent(code)], cwd, env, what=what)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def stack():
    # Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which cannot enter
    # /tmp/pytest-of-root (mode 700).
    folder = Path(tempfile.mkdtemp(prefix="labelspace-product-"))
    folder.chmod(0o711)
    t0, cpu0 = time.monotonic(), _cpu()
    try:
        info = team.team_up(folder, **team_support.ANY_FREE_PORT, workers=1, out=QUIET)
        _timed("team up (fresh stack, 1 MLflow worker)", time.monotonic() - t0, _cpu() - cpu0)
        with pytest.MonkeyPatch.context() as mp:  # this process reads the registry as a team member
            for key, value in info["env"].items():
                mp.setenv(key, value)
            mp.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
            yield info
    finally:
        t0 = time.monotonic()
        team.team_down(folder, out=QUIET)
        _timed("team down", time.monotonic() - t0)
        shutil.rmtree(folder, ignore_errors=True)
        print("\nwhat each step took (s):\n" + "\n".join(f"  {v:6.1f}  {k}" for k, v in TIMES.items())
              + f"\nCPU of the whole module: {_cpu() - CPU_AT_IMPORT:.1f} s")


@pytest.fixture(scope="module")
def client(stack):
    return MlflowClient(tracking_uri=stack["mlflow_uri"], registry_uri=stack["mlflow_uri"])


@pytest.fixture(scope="module")
def s3(stack):
    return s3server.s3_client(stack["ports"]["s3"], json.loads(Path(stack["folder"], "secrets.json").read_text()))


@pytest.fixture(scope="module")
def project(stack, tiny_dataset, small_vectors, tmp_path_factory, repo_root):
    """A team member's checkout of the project: a git repository holding the code (a copy of this
    working tree's src/, run from there with `_code`, so a version names a commit holding its code), the
    tiny dataset and the vectors `dvc add`ed under data/, the team's DVC remote set as `team up` prints
    it, and params.yaml shrunk to run in about a minute."""
    root = tmp_path_factory.mktemp("team-project")
    env = _member_env(stack)
    shutil.copytree(repo_root / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(repo_root / name, root / name)
    (root / "data" / "vectors").mkdir(parents=True)
    os.link(small_vectors, root / "data" / "vectors" / small_vectors.name)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset="data/fashion-canvas", image_size=32)
    params["vectors"]["path"] = f"data/vectors/{small_vectors.name}"
    params["train"].update(epochs=1, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    if "promote" in params:  # the promotion gate, where there is one, leaves champion to `labelspace promote`
        params["promote"]["auto"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_dataset[0], root / "data" / "fashion-canvas")
    t0 = time.monotonic()
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    team_support.configure_dvc(root, stack, env)  # what `team up` shows: two `dvc remote` lines, `team dvc-remote`
    _run(["dvc", "add", "-q", "data/fashion-canvas", f"data/vectors/{small_vectors.name}"], root, env)
    (root / ".gitignore").write_text("/data/cache/\n/checkpoints/\n/reports/\n/.zenml/\n")
    _run(["git", "add", "."], root, env)  # data/.gitignore (from dvc add) keeps the dataset itself out
    _run(["git", "commit", "-qm", "tiny project"], root, env)
    _timed("git init, dvc init, dvc remote (team), dvc add of the dataset and vectors", time.monotonic() - t0)
    return root


def _code(checkout: Path) -> dict[str, str]:
    """Run the code of `checkout` (its src/ ahead of the installed package), as a member of a clone does."""
    return {"PYTHONPATH": str(checkout / "src")}


def _restart_mlflow(stack) -> float:
    t0 = time.monotonic()
    assert team.team_down(stack["folder"], out=QUIET, only=("mlflow",)) == ["mlflow"]
    info = team.team_up(stack["folder"], workers=1, out=QUIET)
    assert info["started"] == ["mlflow"]
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def first_run(stack, project, client, s3):
    """`labelspace run` of the project, the tracking server stopped and started again once ZenML
    logs that the register step has started. MLflow's client retries a refused connection and 5xx
    answers (7 times, backoff 2 s), so the run completes, or it fails with one line; in that case
    the registry is checked and the run repeated (ZenML's cache skips what had finished)."""
    env = _member_env(stack, ZENML_LOGGING_VERBOSITY="INFO", ZENML_LOGGING_COLORS_DISABLED="true", **_code(project))
    t0, cpu0 = time.monotonic(), _cpu()
    with team_support.run_until_step("register", project, env) as (proc, lines):
        restart_s = _restart_mlflow(stack)
        _timed("tracking server restarted while the register step runs", restart_s)
        rc = proc.wait(timeout=900)
    _timed(f"labelspace run (tiny project), the server restarted during it: exit {rc}", time.monotonic() - t0,
           _cpu() - cpu0)
    output = "".join(lines)
    print(textwrap.indent(output.strip()[-3000:], "    | "))
    run = SimpleNamespace(rc=rc, output=output, restart_s=restart_s, problems=_consistent(client, s3, stack),
                          final=output)
    if rc != 0:
        run.final = _run(["labelspace", "run"], project, _member_env(stack, **_code(project)), timeout=900,
                         what="labelspace run again, after the failed one").stdout
    return run


@pytest.fixture(scope="module")
def promoted(stack, project, first_run):
    from labelspace.cli import promote

    parser = argparse.ArgumentParser()
    promote.configure_parser(parser)
    argv = ["labelspace", "promote", "--version", "1"]
    if any("--reason" in action.option_strings for action in parser._actions):
        argv += ["--reason", "first model on the team server"]
    shared = _run(argv, project, _member_env(stack), check=False, what="labelspace promote as the shared login")
    team_support.assert_shared_login_may_not_promote(shared)
    return _run(argv, project, _member_env(stack, **team_support.approver(stack)),
                what="labelspace promote --version 1 (an approver)")


@pytest.fixture(scope="module")
def machine(stack, tiny_dataset, tmp_path_factory):
    """A second machine: its own empty folder (no params.yaml, no stack folder) holding one photo."""
    folder = tmp_path_factory.mktemp("second-machine")
    shutil.copy(next((tiny_dataset[0] / "Flickr").rglob("*.jpg")), folder / "photo.jpg")
    return folder


def _artifact_keys(client, s3, stack, version) -> list[str]:
    """The S3 keys under the artifact location of a model version (relative to it)."""
    uri = client.get_model_version_download_uri(version.name, version.version)
    assert uri.startswith("mlflow-artifacts:/"), uri  # proxied: clients never see the bucket
    prefix = "artifacts/" + uri.removeprefix("mlflow-artifacts:").lstrip("/").rstrip("/") + "/"
    listing = s3.list_objects_v2(Bucket=stack["buckets"]["artifacts"], Prefix=prefix)
    return [o["Key"].removeprefix(prefix) for o in listing.get("Contents", [])]


def _consistent(client, s3, stack) -> list[str]:
    """Problems of the registry: a version stuck registering, or READY without its MLmodel in S3."""
    problems = []
    for v in client.search_model_versions(f"name = '{MODEL}'"):
        if v.status != "READY":
            problems.append(f"version {v.version} is {v.status}: {v.status_message}")
        elif "MLmodel" not in _artifact_keys(client, s3, stack, v):
            problems.append(f"version {v.version} is READY but has no MLmodel in S3")
    return problems


# --------------------------------------------------------------------------------------- tests


def test_run_registers_the_challenger_with_its_artifacts_in_s3(stack, project, first_run, client, s3):
    assert f"MLflow: {stack['mlflow_uri']}" in first_run.final  # not the project's sqlite
    assert "labelspace" in first_run.final and "mAP" in first_run.final  # the metrics table
    version = client.get_model_version_by_alias(MODEL, "challenger")
    assert (version.version, version.status) == ("1", "READY")
    for tag in ("data.dataset_version", "params.hash", "model.content_hash", "zenml.run_id"):
        assert version.tags.get(tag), f"lineage tag {tag} missing: {version.tags}"
    assert version.tags["data.dataset_version"].endswith(".dir")  # DVC's hash of the added folder
    keys = _artifact_keys(client, s3, stack, version)
    assert "MLmodel" in keys and any(k.startswith("artifacts/bundle/") for k in keys), keys
    run_artifacts = [a.path for a in client.list_artifacts(version.run_id, "plots")]
    assert "plots/per_class_f1.png" in run_artifacts
    # Nothing tracked locally: no sqlite store, no ./mlruns.
    assert not (project / "mlflow").exists() and not (project / "mlruns").exists()


def test_the_server_restarted_during_the_run_left_nothing_half_registered(stack, first_run, client):
    """The run completes on the client's retries, or fails with one line naming the server; every
    version is READY with its MLmodel in S3 (checked right after the run, before any rerun)."""
    if first_run.rc == 0:
        assert "registered labelspace version 1 as @challenger" in first_run.output, first_run.output[-4000:]
    else:
        last = first_run.output.strip().splitlines()[-1]
        assert last.startswith("labelspace run:") and stack["mlflow_uri"] in last, first_run.output[-4000:]
    assert first_run.problems == []
    assert "Traceback" not in first_run.output.strip().splitlines()[-1]
    assert team.team_status(stack["folder"])["mlflow"]["healthy"]


def test_promote_moves_champion_on_the_server(promoted, client):
    assert "champion" in promoted.stdout and "version 1" in promoted.stdout, promoted.stdout
    assert client.get_model_version_by_alias(f"{MODEL}-production", "champion").version == "1"


@pytest.fixture(scope="module")
def serving(stack, promoted, machine):
    """`mlflow models serve` of the champion on the second machine, started before the in-process
    prediction so that the two load the model side by side; (url, process, log, start time)."""
    port = processes.free_port()
    log = machine / "serve.log"
    argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}-production@champion", "--env-manager", "local",
            "-h", processes.HOST, "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=machine, env=_member_env(stack), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield f"http://{processes.HOST}:{port}", proc, log, time.monotonic()
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group `proc` leads (`mlflow models serve` and the uvicorn it execs),
    SIGKILL to what is left after `timeout`; returns once none of them is alive."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None and not processes.related(proc.pid):
                return
            time.sleep(0.2)
    raise AssertionError(f"process group {proc.pid} did not stop")


def test_the_champion_predicts_on_a_second_machine(stack, promoted, machine, serving, tiny_dataset):
    ranked = _python("""
        import base64, json, mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("models:/labelspace-production@champion")
        frame = pd.DataFrame({"image": [base64.b64encode(open("photo.jpg", "rb").read()).decode()]})
        out = model.predict(frame, params={"top_k": 3})
        print(json.dumps({"labels": list(out["labels"][0]), "distances": [float(x) for x in out["distances"][0]]}))
    """, machine, _member_env(stack), what="second machine: load models:/labelspace-production@champion and predict")
    assert len(ranked["labels"]) == 3 and set(ranked["labels"]) <= set(tiny_dataset[2])
    assert ranked["distances"] == sorted(ranked["distances"])


def test_mlflow_models_serve_the_champion_on_a_second_machine(serving, machine, tiny_dataset):
    url, proc, log, t0 = serving
    processes.wait_healthy("mlflow models serve", lambda: processes.http_status(f"{url}/ping", timeout=2)[0] == 200,
                           lambda: proc.poll() is None, log, 240)
    _timed("second machine: mlflow models serve, up (started before the prediction above)", time.monotonic() - t0)
    image = base64.b64encode((machine / "photo.jpg").read_bytes()).decode()
    t0 = time.monotonic()
    status, body = processes.http_status(f"{url}/invocations", method="POST", timeout=120, body={
        "dataframe_split": {"columns": ["image"], "data": [[image]]}, "params": {"top_k": 3}})
    _timed("POST /invocations", time.monotonic() - t0)
    assert status == 200, body
    (prediction,) = json.loads(body)["predictions"]
    assert len(prediction["labels"]) == 3 and set(prediction["labels"]) <= set(tiny_dataset[2]), prediction
    _stop_group(proc)
    assert processes.http_status(f"{url}/ping", timeout=2)[0] == 0  # stopped, with its uvicorn


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pushed(stack, project, first_run, s3):
    """The member who trained pushes the version's data (the dataset and the vectors) to the team's remote."""
    _run(["dvc", "push", "-q", "-r", team.DVC_REMOTE], project, _member_env(stack),
         what="dvc push -r team (the dataset folder and the vectors)")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack["buckets"]["dvc"]).get("Contents", [])]
    assert any(k.endswith(".dir") for k in keys), keys  # the folder's manifest, beside its files
    return keys


def _fresh_clone(stack, project: Path, clone: Path, env: dict[str, str]) -> Path:
    """Another member's clone: `git clone`, then `labelspace team dvc-remote` for the remote's key (kept
    out of git: each clone sets it); no data, an empty DVC cache."""
    _run(["git", "clone", "-q", str(project), str(clone)], clone.parent, env)
    assert not (clone / "data" / "fashion-canvas").exists() and not (clone / ".dvc" / "config.local").exists()
    _run(["labelspace", "team", "dvc-remote", "--dir", stack["folder"]], clone, env)
    assert not _cached(clone)
    return clone


def _cached(clone: Path) -> list[str]:
    """The files in a clone's DVC cache."""
    return [p.name for p in (clone / ".dvc" / "cache").rglob("*") if p.is_file()]


def test_the_dataset_round_trips_through_the_s3_remote_to_a_second_clone(stack, project, first_run, pushed, client,
                                                                          tmp_path):
    env = _member_env(stack)
    clone = _fresh_clone(stack, project, tmp_path / "clone", env)
    _run(["dvc", "pull", "-q", "-r", team.DVC_REMOTE], clone, env, what="dvc pull -r team in a second clone")
    assert _tree(clone / "data" / "fashion-canvas") == _tree(project / "data" / "fashion-canvas")
    pulled = _run(["labelspace", "data-version", "data/fashion-canvas", "--verify"], clone, env).stdout.strip()
    # the registry recorded the version the second clone now has
    assert client.get_model_version(MODEL, "1").tags["data.dataset_version"] == pulled


def _registry_counts(client) -> tuple[int, int]:
    """(model versions of every registered model, runs of the training experiment) on the server."""
    experiment = client.get_experiment_by_name(MODEL)
    return (len(client.search_model_versions(max_results=10000)),
            len(client.search_runs([experiment.experiment_id], max_results=10000)))


def test_another_member_reproduces_the_version_from_a_fresh_clone_with_the_team_credentials(
        stack, project, first_run, pushed, client, tmp_path):
    """`labelspace reproduce 1` by a member who did not train it: a fresh clone (no data, an empty DVC
    cache), `team env`'s variables (the shared `team` login, a trainer: EDIT on the candidates' model, so
    it may tag the version) and `team dvc-remote`. The data comes from the S3 remote, the training runs
    in stores of its own (nothing new on the server), on the machine that trained it: bit-identical."""
    env = _member_env(stack)
    clone = _fresh_clone(stack, project, tmp_path / "clone", env)
    before = _registry_counts(client)
    recorded = client.get_model_version(MODEL, "1").tags
    done = _run(["labelspace", "reproduce", "1", "--workdir", str(tmp_path / "work")], clone,
                {**env, **_code(clone)}, timeout=900, what="labelspace reproduce 1 in a fresh clone (team login)")
    assert f"{MODEL} version 1: BIT-IDENTICAL" in done.stdout, done.stdout[-3000:]  # the verdict, printed
    for rel in ("data/fashion-canvas", "data/vectors/glove-6b-50d.bin"):
        assert f"restored {rel} @ " in done.stdout, done.stdout[-3000:]
    # restored from the remote into the clone's (empty) cache: the dataset's manifest and the vectors
    cached = _cached(clone)
    assert recorded["data.dataset_version"].removesuffix(".dir")[2:] + ".dir" in cached, cached
    assert recorded["data.vectors_version"][2:] in cached, cached
    assert not (clone / "data" / "fashion-canvas").exists()  # into the worktree only, removed since
    assert _registry_counts(client) == before  # retrained in the work folder's stores, not the server's
    report = json.loads((tmp_path / "work" / "reproduction.json").read_text())
    assert report["reproduced_hash"] == recorded["model.content_hash"] != "unknown", report
    tags = client.get_model_version(MODEL, "1").tags
    assert tags["reproduced.verdict"] == "bit-identical" and tags["reproduced.weights_hash"] == \
        recorded["model.content_hash"], tags
    assert tags["reproduced.threads"] == recorded["env.torch_threads"]
    lineage = lambda t: {k: v for k, v in t.items() if not k.startswith("reproduced.")}  # noqa: E731
    assert lineage(tags) == lineage(recorded)  # the lineage untouched
    secrets = [v for k, v in env.items() if k in ("MLFLOW_TRACKING_PASSWORD", "ZENML_STORE_PASSWORD")]
    secrets += list(json.loads(Path(stack["folder"], "secrets.json").read_text()).values())
    logs = done.stdout + done.stderr + (tmp_path / "work" / "run.log").read_text() + json.dumps(report)
    assert not [s for s in secrets if isinstance(s, str) and len(s) >= 8 and s in logs]
    assert len(_run(["git", "worktree", "list"], clone, env).stdout.strip().splitlines()) == 1


def test_a_reader_may_not_record_a_reproduction_and_is_refused_before_any_work(stack, project, first_run, client,
                                                                             tmp_path):
    """A reader has READ on the candidates' model: it may not tag a version, so `reproduce` (which
    records its verdict there) refuses in one line before any work, and names --no-record."""
    env = _member_env(stack, **team_support.person(stack, "rita", "reader"), **_code(project))
    tags = client.get_model_version(MODEL, "1").tags
    done = _run(["labelspace", "reproduce", "1", "--workdir", str(tmp_path / "work")], project, env, check=False,
                what="labelspace reproduce 1 as a reader")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout[-2000:] + done.stderr[-4000:]
    assert lines[0].startswith(f"labelspace reproduce: error: rita may not record the verdict on {MODEL} version 1: "
                               "the MLflow server refused"), lines
    assert "--no-record" in lines[0] and env["MLFLOW_TRACKING_PASSWORD"] not in done.stdout + done.stderr
    assert not (tmp_path / "work").exists()  # refused before the worktree, the data or the training
    assert client.get_model_version(MODEL, "1").tags == tags


def test_audit_history_and_rollback_against_the_server(stack, project, promoted, client):
    """The lifecycle commands of the lifecycle issue, run by a team member against the server. For
    a rollback champion must have moved twice: version 2 is version 1's model registered again
    through the API (a second training would double the test's time)."""
    env = _member_env(stack)
    audited = _run(["labelspace", "audit", "@challenger"], project, env, what="labelspace audit @challenger")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert f"version {challenger.version}" in audited.stdout, audited.stdout
    assert challenger.tags["data.dataset_version"] in audited.stdout  # what produced it, from the registry
    first = client.get_model_version(MODEL, "1")
    assert first.source.startswith("models:/m-"), first.source  # MLflow 3: the version names a logged model
    lineage = {k: v for k, v in first.tags.items() if not k.startswith("zenml.")}  # one ZenML version, one MLflow one
    second = client.create_model_version(MODEL, first.source, run_id=first.run_id, tags=lineage,
                                         model_id=first.source.removeprefix("models:/"),
                                         description="version 1's model, registered again")
    assert (second.version, second.status) == ("2", "READY")
    approver = _member_env(stack, **team_support.approver(stack))  # the one who promoted version 1
    _run(["labelspace", "promote", "--version", "2", "--reason", "second model"], project, approver,
         what="labelspace promote --version 2")
    assert client.get_model_version_by_alias(f"{MODEL}-production", "champion").version == "2"
    rolled = _run(["labelspace", "rollback", "--reason", "back to the first"], project, approver,
                  what="labelspace rollback")
    assert "-> version 1" in rolled.stdout, rolled.stdout
    assert client.get_model_version_by_alias(f"{MODEL}-production", "champion").version == "1"
    history = _run(["labelspace", "history"], project, env, what="labelspace history")
    assert "now names version 1" in history.stdout, history.stdout
    numbers = [line.split()[0] for line in history.stdout.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert numbers == ["1", "2", "3"], history.stdout
