"""What the end-to-end team tests share (test_team_backup.py, test_team_faults.py): whether the stack
can run here, a stack in a temporary folder, a team member's environment and commands, a tiny
project whose `labelspace run` takes about a minute, and the checks that nothing was lost."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from labelspace.app import TELEMETRY_OFF
from labelspace.deploy import postgres, s3server, team
from labelspace.deploy.dvc_remote import configure_team_remote

VENV_BIN = Path(sys.executable).parent
MODEL = "labelspace"
QUIET = lambda *_: None  # noqa: E731
ANY_FREE_PORT = {f"{name}_port": 0 for name in team.SERVICES}  # team_up(..., **ANY_FREE_PORT): every service on a free port


def missing() -> str | None:
    """Why the team stack cannot run here, or None."""
    for module in ("psycopg2", "boto3", "flask_wtf", "alembic", "s3fs"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[team]')"
    try:
        postgres.pg_bin()
        s3server.weed_binary()
    except team.TeamError as e:
        return str(e)
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    return None


def stack_folder(prefix: str) -> Path:
    # Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which cannot enter
    # /tmp/pytest-of-root (mode 700).
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def member_env(stack: dict, *, ci: bool = False, **extra: str) -> dict[str, str]:
    """A team member's environment: the caller's minus every MLflow, ZenML, AWS, PostgreSQL, DVC and
    labelspace setting, plus what `team env` prints (`ci`: `team env --ci`, the scheduler's: MLflow as
    `retrain`, whose gate promotes, ZenML with the `ci` API key), telemetry off, the venv on PATH.
    MLflow's client retries a failing request twice, one second apart, so a killed service fails a
    command in seconds."""
    dropped = ("MLFLOW_", "ZENML_", "AWS_", "PG", "DVC_", "LABELSPACE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(TELEMETRY_OFF)
    env.update(stack["ci_env"] if ci else stack["env"])
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
               MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1", ZENML_LOGGING_COLORS_DISABLED="true")
    env.update(extra)
    return env


def person(stack: dict, name: str, role: str) -> dict[str, str]:
    """The MLflow variables of a person with `role`, added as `labelspace team user add NAME --role ROLE`
    does (once: a second call reads its password file), to merge into member_env."""
    from labelspace.deploy.users import Accounts

    st = team.read_stack(stack["folder"])
    accounts = Accounts(st.layout, st.config, st.sec)
    if accounts.users().get(name, {}).get("state") != "active":
        accounts.add(name, role)
    return {k: v for k, v in accounts.env(name).items() if k.startswith("MLFLOW_")}


def approver(stack: dict, name: str = "abe") -> dict[str, str]:
    """The MLflow variables of an approver (`person`): merged into member_env, its promote and rollback pass."""
    return person(stack, name, "approver")


def assert_shared_login_may_not_promote(result: subprocess.CompletedProcess) -> None:
    """`labelspace promote` as the shared `team` login (a trainer): refused by the server, in one line."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stdout[-2000:] + result.stderr[-4000:]
    assert lines[0].startswith("labelspace promote: error: team may not promote: the MLflow server refused it "
                               "(403: it needs EDIT on the registered model labelspace-production)"), lines


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    if argv[0] in ("labelspace", "dvc", "mlflow"):
        argv = [str(VENV_BIN / argv[0]), *argv[1:]]
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def python_json(code: str, cwd: Path, env: dict[str, str]) -> object:
    """The last line of `code`'s output, run by the venv's Python, read as JSON."""
    result = run([sys.executable, "-c", textwrap.dedent(code)], cwd, env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiny_project(root: Path, stack: dict, tiny_dataset, small_vectors: Path, repo_root: Path) -> Path:
    """A member's project: git + DVC, the tiny dataset `dvc add`ed, the team's DVC remote as `team up`
    prints it, params.yaml shrunk to train in about a minute, the gate's floors at 0 so that a first
    version is promoted by the gate (run as the scheduler, `member_env(stack, ci=True)`)."""
    env = member_env(stack)
    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["ingest"].update(dataset="data/fashion-canvas", image_size=32)
    params["vectors"]["path"] = str(small_vectors)
    params["train"].update(epochs=1, batch_size=32)
    params["register"]["open_vocabulary_size"] = 2000
    params["promote"].update(auto=True, minimum={metric: 0.0 for metric in params["promote"]["minimum"]})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(tiny_dataset[0], root / "data" / "fashion-canvas")
    run(["git", "init", "-q"], root, env)
    run(["dvc", "init", "-q"], root, env)
    configure_dvc(root, stack, env)
    run(["dvc", "add", "-q", "data/fashion-canvas"], root, env)
    (root / ".gitignore").write_text("/data/cache/\n/checkpoints/\n/reports/\n/.zenml/\n")
    run(["git", "add", "."], root, env)
    run(["git", "commit", "-qm", "tiny project"], root, env)
    return root


def configure_dvc(root: Path, stack: dict, env: dict[str, str]) -> None:
    """The DVC remote as `team up` shows it: its two `dvc remote` lines, then `team dvc-remote` for the key."""
    for argv in stack["dvc_commands"]:
        run(argv, root, env)
    configure_team_remote(stack["folder"], root)


def problems(stack: dict, env: dict[str, str], cwd: Path) -> list[str]:
    """What a fault may not leave behind: a version that is not READY, a READY version without its
    files or that does not load, champion naming another version than its last completed move."""
    return python_json(f"""
        import json, mlflow
        from mlflow import MlflowClient
        client, found = MlflowClient(), []
        for v in client.search_model_versions("name = '{MODEL}'"):
            if v.status != "READY":
                found.append(f"version {{v.version}} is {{v.status}}")
                continue
            files = [a.path for a in mlflow.artifacts.list_artifacts(f"models:/{MODEL}/{{v.version}}")]
            if "MLmodel" not in files:
                found.append(f"version {{v.version}} is READY without its MLmodel: {{files}}")
            try:
                mlflow.pyfunc.load_model(f"models:/{MODEL}/{{v.version}}")
            except Exception as e:
                found.append(f"version {{v.version}} does not load: {{e}}")
        print(json.dumps(found))
    """, cwd, env) + champion_problems(env, cwd)


def champion_problems(env: dict[str, str], cwd: Path) -> list[str]:
    """Champion names the version of its last completed move (no model registered yet: nothing to check)."""
    if not python_json(f"import json; from mlflow import MlflowClient; print(json.dumps(bool("
                       f"MlflowClient().search_registered_models(\"name = '{MODEL}'\"))))", cwd, env):
        return []
    return _champion_problems(env, cwd)


def _champion_problems(env: dict[str, str], cwd: Path) -> list[str]:
    history = json.loads(run(["labelspace", "history", "--json"], cwd, env).stdout)
    moved = [e for e in history["events"] if e["status"] == "moved"]
    last = str(moved[-1]["version"]) if moved else None
    holder = str(history["holder"]) if history["holder"] is not None else None
    return [] if holder == last else [f"champion names {holder}, its last completed move {last}: {history}"]


@contextlib.contextmanager
def run_until_step(step: str, cwd: Path, env: dict[str, str], timeout: float = 900
                   ) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """`labelspace run` in the background (env should ask ZenML for INFO logs); yields (the process, its
    output lines so far and to come) once ZenML logs that `step` has started, for a fault to be injected
    then; on leaving, a run still going is killed with its process group."""
    lines: list[str] = []
    started = threading.Event()
    proc = subprocess.Popen([str(VENV_BIN / "labelspace"), "run"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if re.search(rf"Step\W+{step}\W+has started", line):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    try:
        while not started.wait(1):
            assert proc.poll() is None, f"the run ended before its {step} step:\n" + "".join(lines[-80:])
            assert time.monotonic() - t0 < timeout, f"no {step} step after {timeout} s:\n" + "".join(lines[-80:])
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
