"""Champion moves, their history, the registry lock and a busy backend, against real MLflow registries
(sqlite in a temporary folder; one slow test through a real `mlflow server`), with real concurrent
`labelspace` processes. No pipeline here: versions are registered from a tiny logged artifact."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient

from labelspace.cli import main as cli_main
from labelspace.lifecycle import champion, history
from labelspace.lifecycle.lock import LockBusy, RegistryLock, holders
from labelspace.lifecycle.registry import production_copy

LABELSPACE = str(Path(sys.executable).parent / "labelspace")
MODEL = "labelspace"
PRODUCTION = "labelspace-production"  # what champion names: copies of MODEL's versions


def add_versions(uri: str, n: int, model: str = MODEL) -> list[str]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)
    try:
        client.create_registered_model(model)
    except mlflow.exceptions.MlflowException:
        pass
    # Artifacts beside the database: a sqlite backend's default is ./mlruns of whatever the cwd is.
    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri() if uri.startswith("sqlite:") else None
    experiment = client.get_experiment_by_name("t") or client.get_experiment(
        client.create_experiment("t", artifact_location=artifacts))
    made = []
    for _ in range(n):
        run = client.create_run(experiment.experiment_id)
        client.log_text(run.info.run_id, "not a model", "model/README.txt")
        client.set_terminated(run.info.run_id)
        v = client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                        tags={"data.dataset_version": "md5:abc.dir"})
        made.append(str(v.version))
    return made


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A registry with versions 1-3, built once (creating MLflow's schema takes seconds); each test copies it."""
    folder = tmp_path_factory.mktemp("template")
    add_versions(f"sqlite:///{folder / 'mlflow.db'}", 3)
    return folder / "mlflow.db"


@pytest.fixture
def registry(template, tmp_path, monkeypatch):
    shutil.copy(template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("LABELSPACE_PARAMS", raising=False)
    monkeypatch.chdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "LABELSPACE_"))}
    env.update(MLFLOW_TRACKING_URI=uri, ZENML_CONFIG_PATH=str(tmp_path / "zenml"))
    return SimpleNamespace(uri=uri, tmp=tmp_path, client=MlflowClient(tracking_uri=uri, registry_uri=uri), env=env)


def run(env, *args, cwd, timeout=300):
    done = subprocess.run([LABELSPACE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    done.output = done.stdout + done.stderr
    return done


def aliases(registry) -> dict[str, str]:
    """Production's aliases, by the candidate version each names a copy of."""
    held = registry.client.get_registered_model(PRODUCTION).aliases.items()
    return {k: registry.client.get_model_version(PRODUCTION, v).tags["candidate.version"] for k, v in held}


def moves(registry) -> list[tuple]:
    from labelspace.lifecycle.retry import client

    return [(e.seq, e.version, e.previous, e.source, e.status) for e in history.events(client(), PRODUCTION)]


def test_promote_and_rollback_move_both_aliases_and_write_the_history(registry):
    first = champion.promote_version(MODEL, 1, reason="first model")
    assert first.line() == ("labelspace-production@champion: no version -> version 1 (manual, history #1), "
                            "served as labelspace-production version 1")
    assert champion.promote_version(MODEL, 2, reason="better").previous == "1"
    again = champion.promote_version(MODEL, "@champion", reason="no-op")
    assert not again.moved and again.line() == "labelspace-production@champion already names labelspace version 2; nothing moved"
    back = champion.rollback(MODEL)
    assert (back.version, back.previous, back.source) == ("1", "2", "rollback")
    assert aliases(registry) == {"champion": "1", "previous-champion": "2"}
    assert champion.rollback(MODEL, reason="undo the rollback").version == "2"  # a second rollback undoes the first
    assert moves(registry) == [(1, "1", None, "manual", "moved"), (2, "2", "1", "manual", "moved"),
                               (3, "1", "2", "rollback", "moved"), (4, "2", "1", "rollback", "moved")]
    tags = registry.client.get_model_version(PRODUCTION, "2").tags
    assert tags["champion.source"] == "rollback" and tags["champion.reason"] == "undo the rollback"
    assert tags["champion.event_seq"] == "4" and tags["champion.promoted_by"] == history.actor()
    assert registry.client.get_model_version(PRODUCTION, "1").tags["champion.replaced_by_event"] == "4"
    assert tags["candidate.model"] == MODEL and tags["candidate.version"] == "2"
    assert tags["data.dataset_version"] == "md5:abc.dir"  # the copy carries the candidate's lineage


def test_clear_errors_for_missing_deleted_and_unready_versions_and_nothing_to_roll_back(registry, capsys):
    with pytest.raises(champion.NothingToRollBack, match="labelspace-production has no champion: nothing to roll back"):
        champion.rollback(MODEL)
    champion.promote_version(MODEL, 1, reason="first")
    with pytest.raises(champion.NothingToRollBack, match="no earlier champion is recorded"):
        champion.rollback(MODEL)
    with pytest.raises(ValueError, match="needs a reason"):
        champion.promote_version(MODEL, 2, reason="  ")
    champion.promote_version(MODEL, 2, reason="second")
    registry.client.delete_model_version(PRODUCTION, "1")  # MLflow drops its aliases with it
    registry.client.delete_model_version(MODEL, "1")
    with pytest.raises(champion.NothingToRollBack, match="the version it replaced, version 1, was deleted"):
        champion.rollback(MODEL)
    with sqlite3.connect(registry.tmp / "mlflow.db") as db:  # a registration still in progress
        db.execute("UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE version = 3")

    for args, message in [
        (["promote", "--version", "1", "--reason", "x"], "has no version 1 (deleted, or never registered); "
                                                         "its versions are 2, 3"),
        (["promote", "--version", "3", "--reason", "x"], "version 3 is PENDING_REGISTRATION, not READY"),
        (["promote", "--version", "@nope", "--reason", "x"], "has no alias @nope; its aliases: @champion -> version 2"),
        (["rollback"], "the version it replaced, version 1, was deleted"),
        (["audit", "@previous-champion"], "has no alias @previous-champion"),
    ]:
        assert cli_main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"labelspace {args[0]}: error: ") and message in err, (args, err)
    assert cli_main(["audit", "--dataset-version", "md5:zzz"]) == 0
    assert "no version of labelspace was trained on data version md5:zzz" in capsys.readouterr().out
    assert cli_main(["audit", "--dataset-version", "md5:ab"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^  2 .* champion ", listing, re.M) and re.search(r"^  3 ", listing, re.M)
    assert not re.search(r"^  1 ", listing, re.M)  # deleted


GATE_PROCESS = textwrap.dedent("""
    from labelspace.config import PromoteConfig
    from labelspace.lifecycle.promotion_gate import run_gate
    from labelspace.lifecycle.scoring import Scored
    rules = PromoteConfig(auto=True, metrics=["labelspace.mAP"], minimum={"labelspace.mAP": 0.1},
                          max_regression={"labelspace.mAP": 0.5})
    result = run_gate("labelspace", "6", {"labelspace": {"mAP": 0.9}}, rules,
                      lambda champion: Scored({"labelspace": {"mAP": 0.8}}, None))
    print("GATE", result.decision, result.previous)
""")


def test_concurrent_promotes_rollbacks_and_a_gate_leave_one_champion_and_a_consistent_history(registry):
    add_versions(registry.uri, 3)  # versions 4, 5, 6
    champion.promote_version(MODEL, 1, reason="start")
    champion.promote_version(MODEL, 2, reason="start")
    procs = [subprocess.Popen([LABELSPACE, "promote", "--version", str(v), "--reason", f"race {v}"], env=registry.env,
                              cwd=registry.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in (3, 4, 5)]
    procs.append(subprocess.Popen([LABELSPACE, "rollback", "--reason", "race"], env=registry.env, cwd=registry.tmp,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    procs.append(subprocess.Popen([sys.executable, "-c", GATE_PROCESS], env=registry.env, cwd=registry.tmp,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    events = moves(registry)
    assert [e[0] for e in events] == list(range(1, 8)) and {e[4] for e in events} == {"moved"}
    for before, after in zip(events, events[1:], strict=False):
        assert after[2] == before[1], events  # each move replaced the holder the move before it left
    now = aliases(registry)
    assert now["champion"] == events[-1][1] and now["previous-champion"] == events[-1][2]
    by_seq = {e[0]: e for e in events}
    for out, _ in outputs[:4]:  # each process reports the move it really made
        m = re.search(r"version (\d+) -> version (\d+) \((\w+), history #(\d+)\)", out)
        seq = int(m.group(4))
        assert by_seq[seq][1] == m.group(2) and by_seq[seq][2] == m.group(1) and by_seq[seq][3] == m.group(3)
    gate_line = next(line for line in outputs[4][0].splitlines() if line.startswith("GATE"))
    _, decision, previous = gate_line.split()
    gate_event = next(e for e in events if e[3] == "gate")
    assert decision == "promoted" and gate_event[1] == "6" and gate_event[2] == previous
    v6 = registry.client.get_model_version(MODEL, "6").tags
    assert v6["gate.decision"] == "promoted" and v6["gate.compared_with"] == previous
    gate_run = registry.client.get_run(v6["gate.run_id"])
    assert gate_run.data.metrics == {"challenger.labelspace.mAP": 0.9, "champion.labelspace.mAP": 0.8}
    assert {a.path for a in registry.client.list_artifacts(gate_run.info.run_id, "gate")} == {
        "gate/comparison.md", "gate/decision.json", "gate/side_by_side.png"}
    assert holders(PRODUCTION, "champion") == []  # every ticket given back


def test_a_move_interrupted_after_its_intent_is_reconciled_by_the_next(registry):
    from labelspace.lifecycle.retry import client

    champion.promote_version(MODEL, 1, reason="first")
    c = client()
    history.start_move(c, PRODUCTION, alias="champion", version="2", previous="1", source="manual", reason="killed")
    history.start_move(c, PRODUCTION, alias="champion", version="3", previous="1", source="manual",
                       reason="moved, killed")
    copy = production_copy(c, MODEL, "3")
    c.set_registered_model_alias(PRODUCTION, "champion", copy.version)  # this one moved the alias, then died
    champion.promote_version(MODEL, 2, reason="after the crashes")
    assert moves(registry) == [(1, "1", None, "manual", "moved"), (2, "2", "1", "manual", "not applied"),
                               (3, "3", "1", "manual", "moved"), (4, "2", "3", "manual", "moved")]


def test_the_lock_excludes_and_forgets_dead_and_silent_holders(registry):
    held = RegistryLock(MODEL, "retrain", wait_s=0)
    held.acquire()
    try:
        with pytest.raises(LockBusy, match=rf"the retrain lock of labelspace is held by .*PID {os.getpid()}"):
            RegistryLock(MODEL, "retrain", wait_s=0).acquire()
    finally:
        held.release()
    assert holders(MODEL, "retrain") == []

    # A holder killed without giving its ticket back: on this machine, its dead PID frees the lock at once.
    dead = subprocess.run([sys.executable, "-c", "import os\nfrom labelspace.lifecycle.lock import RegistryLock\n"
                           "RegistryLock('labelspace', 'retrain').acquire()\nos._exit(9)"],
                          env=registry.env, cwd=registry.tmp, capture_output=True, text=True, timeout=120)
    assert dead.returncode == 9 and len(holders(MODEL, "retrain")) == 1
    with RegistryLock(MODEL, "retrain", wait_s=0):  # wait_s 0: taken at once, or LockBusy
        assert [t.pid for t in holders(MODEL, "retrain")] == [os.getpid()]
    # A holder on another machine that stopped renewing: freed once its lease (here 2 s) has run out.
    registry.client.create_model_version("labelspace--retrain-lock", "labelspace-lock:ticket", tags={
        "lock.host": "elsewhere/0000", "lock.pid": "1", "lock.owner": "ci@elsewhere", "lock.lease_s": "2"})
    with pytest.raises(LockBusy, match="ci@elsewhere"):
        RegistryLock(MODEL, "retrain", wait_s=0).acquire()
    started = time.monotonic()
    with RegistryLock(MODEL, "retrain", wait_s=30):
        assert time.monotonic() - started > 1  # it waited for the lease to run out (load only lengthens it)
    assert holders(MODEL, "retrain") == []


HOLD = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
    db.execute("BEGIN EXCLUSIVE")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    db.execute("COMMIT")
""")


def _hold(registry, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(registry.tmp / "mlflow.db"), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def test_a_busy_sqlite_database_is_waited_for_then_reported_in_one_line(registry):
    holder = _hold(registry, 8)  # another writer holds the database for 8 s
    done = run(registry.env, "promote", "--version", "1", "--reason", "while busy", cwd=registry.tmp)
    holder.wait()
    assert done.returncode == 0, done.output[-3000:]
    assert "labelspace-production@champion: no version -> version 1" in done.stdout and "Traceback" not in done.output

    holder = _hold(registry, 60)
    try:
        env = {**registry.env, "LABELSPACE_REGISTRY_RETRY_S": "2"}
        done = run(env, "promote", "--version", "2", "--reason", "while busy", cwd=registry.tmp)
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait()
    assert done.returncode == 2
    assert done.stderr.startswith("labelspace promote: error: the MLflow backend sqlite:///")
    assert "stayed busy" in done.stderr and "LABELSPACE_REGISTRY_RETRY_S" in done.stderr
    assert len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output  # no sqlalchemy traceback


@pytest.mark.slow
def test_the_lifecycle_commands_work_the_same_through_a_tracking_server(mlflow_server, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "LABELSPACE_", "MLFLOW_"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_server, ZENML_CONFIG_PATH=str(tmp_path / "zenml"))
    add_versions(mlflow_server, 3)
    racers = [subprocess.Popen([LABELSPACE, "promote", "--version", str(v), "--reason", f"http {v}"], env=env,
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for v in (1, 2)]
    for p in racers:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    back = run(env, "rollback", "--reason", "over http", cwd=tmp_path)
    assert back.returncode == 0, back.output[-3000:]
    listed = run(env, "history", "--json", cwd=tmp_path)
    import json

    events = json.loads(listed.stdout)["events"]
    assert [e["seq"] for e in events] == [1, 2, 3] and events[0]["previous"] is None
    assert all(b["previous"] == a["version"] for a, b in zip(events, events[1:], strict=False))
    assert events[-1]["source"] == "rollback" and json.loads(listed.stdout)["holder"] == events[-1]["version"]
    audit = run(env, "audit", "@champion", cwd=tmp_path)
    assert audit.returncode == 0 and "champion history of this version" in audit.stdout


@pytest.fixture
def mlflow_server(tmp_path):
    import socket

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 's.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow server not healthy after 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_the_gate_records_once_holds_when_auto_is_off_and_falls_back_when_the_champion_cannot_be_scored(registry):
    from labelspace.config import PromoteConfig
    from labelspace.lifecycle.promotion_gate import run_gate
    from labelspace.lifecycle.scoring import Scored

    rules = PromoteConfig(auto=False, metrics=["labelspace.mAP"], minimum={"labelspace.mAP": 0.5},
                          max_regression={"labelspace.mAP": 0.01})
    report = {"labelspace": {"mAP": 0.9}}
    first = run_gate(MODEL, "1", report, rules, lambda v: pytest.fail("there is no champion to score"))
    assert (first.decision, first.champion, first.compared_with) == ("passed", None, None)
    assert registry.client.get_registered_model(MODEL).aliases == {}  # auto false: a person promotes
    assert registry.client.search_registered_models(f"name = '{PRODUCTION}'") == []
    again = run_gate(MODEL, "1", report, rules, lambda v: pytest.fail("judged already"))
    assert again.decision == "passed" and "already judged against none with these rules" in again.reasons[0]
    assert len(history.search(registry_client(), PRODUCTION, history.GATE)) == 1  # recorded once

    champion.promote_version(MODEL, 1, reason="by hand after the gate passed it")
    auto = PromoteConfig(**{**rules.__dict__, "auto": True})

    def broken(version):
        raise OSError(f"artifacts of version {version} are gone")

    fallback = run_gate(MODEL, "2", report, auto, broken)
    assert fallback.decision == "promoted" and fallback.compared_with is None
    assert "champion v1 is not comparable: it could not be loaded or scored (OSError: artifacts of version 1 are " \
           "gone); judged by the absolute minimums alone" in fallback.reasons
    tags = registry.client.get_model_version(MODEL, "2").tags
    assert tags["gate.compared_with"].startswith("none: champion v1 is not comparable")
    same = run_gate(MODEL, "2", report, auto, broken)
    assert same.decision == "unchanged" and same.reasons == ["version 2 already is the champion: nothing to decide"]
    worse = run_gate(MODEL, "3", {"labelspace": {"mAP": 0.85}}, auto, lambda v: Scored({"labelspace": {"mAP": 0.9}}, None))
    assert worse.decision == "rejected" and worse.champion == "2"
    assert worse.reasons == ["labelspace.mAP 0.8500 is 0.0500 below champion v2's 0.9000 (at most 0.0100 allowed)"]


def registry_client():
    from labelspace.lifecycle.retry import client

    return client()


def test_a_store_with_champion_on_the_candidates_is_carried_over_by_the_first_promote(registry, capsys):
    """The layout before labelspace-production: champion and previous-champion on labelspace itself."""
    registry.client.set_registered_model_alias(MODEL, "champion", "2")
    registry.client.set_registered_model_alias(MODEL, "previous-champion", "1")
    assert cli_main(["history"]) == 0
    assert "labelspace@champion names version 2: the layout before labelspace-production" in capsys.readouterr().out
    assert cli_main(["audit", "@champion"]) == 0  # read-only commands see the old champion until it is carried over
    assert capsys.readouterr().out.startswith("labelspace version 2: READY")
    carried = champion.promote_version(MODEL, 2, reason="carry over")  # the one command: promote the old champion
    assert (carried.source, carried.version, carried.previous) == ("migration", "2", None)
    assert aliases(registry) == {"champion": "2", "previous-champion": "1"}  # rollback still returns to 1
    assert registry.client.get_registered_model(MODEL).aliases == {}  # one champion, in production
    champion.promote_version(MODEL, 3, reason="after the move")
    assert champion.rollback(MODEL).version == "2"
    assert moves(registry) == [(1, "2", None, "migration", "moved"), (2, "3", "2", "manual", "moved"),
                               (3, "2", "3", "rollback", "moved")]
    assert "carried over from labelspace@champion" in history.events(registry_client(), PRODUCTION)[0].reason
    assert cli_main(["audit", "--verify"]) == 0
    assert "is whole: 3 records" in capsys.readouterr().out
