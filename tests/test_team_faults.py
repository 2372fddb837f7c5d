"""Faults that lose nothing: on one team stack and one tiny project, SIGKILL mid-operation (the S3
store during the register step's upload; PostgreSQL during a run; every service at once, a host
crash, during a `dvc push`), each followed by `team up` and a rerun of the interrupted command.
Afterwards every version is READY with its files and loads, champion names the version of its last
completed move, the history is whole, and the DVC remote is in sync."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from team_support import (
    ANY_FREE_PORT,
    MODEL,
    QUIET,
    VENV_BIN,
    assert_shared_login_may_not_promote,
    member_env,
    missing,
    problems,
    run,
    stack_folder,
    tiny_project,
)

from labelspace.deploy import processes, s3server, team

pytestmark = [pytest.mark.slow, pytest.mark.team]

if (_reason := missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)


@pytest.fixture(scope="module")
def stack():
    folder = stack_folder("labelspace-faults-")
    try:
        yield team.team_up(folder, **ANY_FREE_PORT, workers=1, out=QUIET)
    finally:
        team.team_down(folder, out=QUIET)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def s3(stack):
    return s3server.s3_client(stack["ports"]["s3"], json.loads(Path(stack["folder"], "secrets.json").read_text()))


@pytest.fixture(scope="module")
def project(stack, tiny_dataset, small_vectors, repo_root, tmp_path_factory):
    return tiny_project(tmp_path_factory.mktemp("faults-project"), stack, tiny_dataset, small_vectors, repo_root)


def _kill(stack: dict, names: tuple[str, ...]) -> list[int]:
    """SIGKILL the processes of these services and everything they started, all at once, as a
    crash would: no service gets to shut down cleanly."""
    pids = []
    for name in names:
        record = json.loads(team.Layout(Path(stack["folder"])).pid_file(name).read_text())
        pids += [record["pid"], *processes.related(record["pid"])]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while any(processes.alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


class Watched:
    """A command whose output is read line by line while the test waits for a moment to strike."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([str(VENV_BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, pattern: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in list(self.lines)):
            assert self.proc.poll() is None, f"ended before {pattern!r}:\n" + "".join(self.lines[-60:])
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s:\n" + "".join(self.lines[-60:])
            time.sleep(0.05)

    def finish(self, timeout: float = 600) -> SimpleNamespace:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(timeout=10)
        return SimpleNamespace(rc=rc, output="".join(self.lines))


def _objects(s3, bucket: str) -> int:
    return sum(page.get("KeyCount", 0) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))


def _versions(stack: dict, project: Path) -> list[str]:
    result = run([str(VENV_BIN / "python"), "-c", "import json; from mlflow import MlflowClient; print(json.dumps("
                  f"sorted(v.version for v in MlflowClient().search_model_versions(\"name = '{MODEL}'\"))))"],
                 project, member_env(stack))
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_store_killed_during_the_register_upload(stack, s3, project):
    env = member_env(stack, ci=True, ZENML_LOGGING_VERBOSITY="INFO")  # the scheduler's run: its gate promotes
    running = Watched(["labelspace", "run"], project, env)
    running.wait_for(r"Step\W+register\W+has started")
    before = _objects(s3, stack["buckets"]["artifacts"])
    deadline = time.monotonic() + 120
    while _objects(s3, stack["buckets"]["artifacts"]) == before and running.proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    uploading = running.proc.poll() is None
    _kill(stack, ("s3",))
    interrupted = running.finish()
    print(f"\nS3 killed {'during' if uploading else 'after'} the upload; the run exited {interrupted.rc}")
    assert team.team_up(stack["folder"], workers=1, out=QUIET)["started"] == ["s3"]
    assert problems(stack, member_env(stack), project) == []  # nothing half-registered, before any rerun
    rerun = run(["labelspace", "run"], project, member_env(stack, ci=True))
    assert "labelspace" in rerun.stdout and "mAP" in rerun.stdout
    assert _versions(stack, project) == ["1"]
    assert problems(stack, member_env(stack), project) == []
    history = json.loads(run(["labelspace", "history", "--json"], project, member_env(stack)).stdout)
    assert history["holder"] == "1" and [e["source"] for e in history["events"]] == ["gate"], history
    assert history["events"][0]["actor"].split(" ")[0] == "retrain"
    shared = run(["labelspace", "promote", "--version", "1", "--reason", "the shared login's"], project,
                 member_env(stack), check=False)
    assert_shared_login_may_not_promote(shared)  # only the gate's service account and approvers move production


def test_postgres_killed_during_a_run(stack, project):
    """A rerun with nothing changed still evaluates, logs to MLflow and runs the gate: PostgreSQL is
    killed once the evaluate step starts, and started again while the run is retrying."""
    env = member_env(stack, ci=True, ZENML_LOGGING_VERBOSITY="INFO")  # the scheduler's run: its gate promotes
    running = Watched(["labelspace", "run"], project, env)
    running.wait_for(r"Step\W+evaluate\W+has started")
    _kill(stack, ("postgres",))
    time.sleep(1)
    assert team.team_up(stack["folder"], workers=1, out=QUIET)["started"] == ["postgres"]
    interrupted = running.finish()
    print(f"\nPostgreSQL killed during the run; the run exited {interrupted.rc}")
    if interrupted.rc != 0:
        run(["labelspace", "run"], project, member_env(stack, ci=True))
    assert _versions(stack, project) == ["1"]
    assert problems(stack, member_env(stack), project) == []


def test_a_host_crash_during_dvc_push(stack, s3, project, tmp_path):
    env = member_env(stack)
    pushing = Watched(["dvc", "push", "-j", "1", "-r", team.DVC_REMOTE], project, env)
    deadline = time.monotonic() + 120
    while _objects(s3, stack["buckets"]["dvc"]) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(pushing.proc.pid, signal.SIGKILL)  # the push runs on the crashed host too
    _kill(stack, team.SERVICES)
    interrupted = pushing.finish()
    assert interrupted.rc == -signal.SIGKILL, interrupted.output[-2000:]
    info = team.team_up(stack["folder"], workers=1, out=QUIET)
    assert info["started"] == list(team.SERVICES)
    partial = _objects(s3, stack["buckets"]["dvc"])
    run(["dvc", "push", "-r", team.DVC_REMOTE], project, env)
    status = run(["dvc", "status", "-c", "-r", team.DVC_REMOTE], project, env).stdout
    assert "in sync" in status.lower() or "up to date" in status.lower(), status
    assert partial < _objects(s3, stack["buckets"]["dvc"])  # the rerun pushed what the crash interrupted
    assert problems(stack, member_env(stack), project) == []
