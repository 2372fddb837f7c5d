"""The team stack for real: PostgreSQL, the SeaweedFS S3 store and an authenticated MLflow server,
started once for the module in a temporary folder on free ports of 127.0.0.1, used the way a team
member would (MLflow client, DVC from a second clone), broken on purpose, restarted (nothing is
lost), and stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import team_support

from labelspace.cli import team as team_cli
from labelspace.deploy import postgres, processes, s3server, team
from labelspace.deploy.dvc_remote import configure_team_remote

pytestmark = pytest.mark.team


if (_reason := team_support.missing()) is not None:
    pytest.skip(_reason, allow_module_level=True)

from mlflow import MlflowClient  # noqa: E402  (after the skip: needs the team extra's packages)
from mlflow.exceptions import MlflowException  # noqa: E402

QUIET = lambda *_: None  # noqa: E731
DVC = str(Path(sys.executable).parent / "dvc")


def _folder(prefix: str) -> Path:
    # Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which cannot enter
    # /tmp/pytest-of-root (mode 700).
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def _pids(folder: Path) -> list[int]:
    """Every live process of the stack: each PID file's process and what it started."""
    pids = []
    for name in team.SERVICES:
        record = json.loads(team.Layout(folder).pid_file(name).read_text())
        pids += [record["pid"], *processes.related(record["pid"])]
    return pids


@pytest.fixture(scope="module")
def stack():
    folder = _folder("labelspace-team-")
    t0 = time.monotonic()
    try:
        info = team.team_up(folder, **team_support.ANY_FREE_PORT, workers=1, out=QUIET)
        info["startup_s"] = round(time.monotonic() - t0, 1)
        print(f"\nteam stack up in {info['startup_s']} s: {info['mlflow_uri']}")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in info["env"].items():
                mp.setenv(key, value)
            mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            mp.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
            mp.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
            yield info
    finally:
        team.team_down(folder, out=QUIET)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def client(stack):
    return MlflowClient(tracking_uri=stack["mlflow_uri"], registry_uri=stack["mlflow_uri"])


@pytest.fixture(scope="module")
def s3(stack):
    return s3server.s3_client(stack["ports"]["s3"], json.loads(Path(stack["folder"], "secrets.json").read_text()))


@pytest.fixture(scope="module")
def logged_run(client, tmp_path_factory):
    """A run with a parameter, a metric and one artifact file."""
    experiment_id = client.create_experiment("team-test")
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "lr", 0.01)
    client.log_metric(run.info.run_id, "f1", 0.5)
    note = tmp_path_factory.mktemp("artifact") / "note.txt"
    note.write_text("logged through the team server\n")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    return experiment_id, run.info.run_id


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    return processes.http_status(url, auth=auth, timeout=10)


def test_anonymous_requests_get_401(stack):
    status, body = _get(f"{stack['mlflow_uri']}/api/2.0/mlflow/experiments/search?max_results=1")
    assert status == 401, body
    assert "not authenticated" in body
    assert Path(stack["folder"], "secrets.json").stat().st_mode & 0o777 == 0o600
    assert Path(stack["folder"], "mlflow", "basic_auth.ini").stat().st_mode & 0o777 == 0o600


def test_wrong_password_gives_a_clear_401(stack, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowException) as caught:
        client.search_experiments()
    message = str(caught.value)
    assert "401" in message and "not authenticated" in message, message


def test_logged_artifact_lands_in_the_s3_bucket(stack, client, s3, logged_run):
    experiment_id, run_id = logged_run
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.01"} and run.data.metrics == {"f1": 0.5}
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    key = f"artifacts/{experiment_id}/{run_id}/artifacts/note.txt"
    body = s3.get_object(Bucket=stack["buckets"]["artifacts"], Key=key)["Body"].read()
    assert body == b"logged through the team server\n"


def test_a_download_goes_through_a_presigned_url_the_store_checks(stack, client, logged_run, tmp_path):
    """MLflow's server hands a client a presigned URL of the bucket for each download; the store
    checks its signature."""
    experiment_id, run_id = logged_run
    auth = (stack["env"]["MLFLOW_TRACKING_USERNAME"], stack["env"]["MLFLOW_TRACKING_PASSWORD"])
    status, body = _get(f"{stack['mlflow_uri']}/api/2.0/mlflow-artifacts/presigned/{experiment_id}/{run_id}/"
                        "artifacts/note.txt", auth=auth)
    assert status == 200, body
    url = json.loads(body)["url"]
    assert url.startswith(f"{stack['s3_endpoint']}/{stack['buckets']['artifacts']}/") and "X-Amz-Signature=" in url
    assert _get(url) == (200, "logged through the team server\n")
    status, body = _get(url[:-4] + ("0000" if not url.endswith("0000") else "1111"))
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in body
    path = client.download_artifacts(run_id, "note.txt", str(tmp_path))  # what load_model does, file by file
    assert Path(path).read_text() == "logged through the team server\n"


def test_register_a_version_and_set_an_alias(client, logged_run):
    _, run_id = logged_run
    client.create_registered_model("labelspace-team-test")
    version = client.create_model_version("labelspace-team-test", f"runs:/{run_id}/note.txt", run_id=run_id)
    client.set_registered_model_alias("labelspace-team-test", "champion", version.version)
    assert client.get_model_version_by_alias("labelspace-team-test", "champion").version == version.version


def _run(argv: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    argv = [DVC, *argv[1:]] if argv[0] == "dvc" else argv
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def test_dvc_push_and_pull_from_a_second_clone(stack, s3, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    _run(["git", "init", "-q"], first)
    _run(["dvc", "init", "-q"], first)
    for argv in stack["dvc_commands"]:  # the two lines `team up` shows (no key): they go into git
        _run(argv, first)
    configure_team_remote(stack["folder"], first)  # `labelspace team dvc-remote`: the key
    (first / "data.txt").write_text("versioned by DVC on the team remote\n")
    _run(["dvc", "add", "-q", "data.txt"], first)
    _run(["git", "add", "."], first)
    _run(["git", "commit", "-qm", "data"], first)
    _run(["dvc", "push", "-r", team.DVC_REMOTE], first)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack["buckets"]["dvc"]).get("Contents", [])]
    assert any(k.startswith(f"{team.DVC_PREFIX}/files/md5/") for k in keys), keys

    _run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert not (second / ".dvc" / "config.local").exists()  # the key stayed out of git
    configure_team_remote(stack["folder"], second)
    _run(["dvc", "remote", "modify", "--local", team.DVC_REMOTE, "secret_access_key", "wrong-secret"], second)
    refused = _run(["dvc", "pull", "-r", team.DVC_REMOTE], second, check=False)
    assert refused.returncode != 0 and "403" in refused.stdout + refused.stderr
    configure_team_remote(stack["folder"], second)  # run again, it puts the right key back
    _run(["dvc", "pull", "-r", team.DVC_REMOTE], second)
    assert (second / "data.txt").read_text() == "versioned by DVC on the team remote\n"


def test_status_env_and_a_second_up(stack, capsys):
    status = team.team_status(stack["folder"])
    assert all(s["running"] and s["healthy"] for s in status.values()), status
    again = team.team_up(stack["folder"], out=QUIET)  # a second up finds every service healthy: nothing restarts
    assert again["started"] == [] and again["pids"] == stack["pids"]
    assert team_cli.main(["env", "--dir", stack["folder"]]) == 0
    printed = capsys.readouterr().out
    assert f"export MLFLOW_TRACKING_URI={stack['mlflow_uri']}" in printed
    assert "export MLFLOW_TRACKING_USERNAME=team" in printed
    assert f"export MLFLOW_TRACKING_PASSWORD={stack['env']['MLFLOW_TRACKING_PASSWORD']}\n" in printed  # to be eval'ed


def test_no_secret_in_what_team_up_prints_nor_on_a_command_line_during_dvc_push(stack, tmp_path, capsys):
    """What `team up` prints may go to a log (CI, the journal), and every command line is public
    (`ps`): neither holds a value of secrets.json, while a member sets the DVC remote with `team
    dvc-remote` and pushes. The key is in .dvc/config.local, mode 600."""
    secrets = json.loads(Path(stack["folder"], "secrets.json").read_text())
    assert team_cli.main(["up", "--dir", stack["folder"], "--workers", "1"]) == 0
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["dvc", "init", "-q", "--no-scm"], repo)
    assert team_cli.main(["dvc-remote", "--dir", stack["folder"], "--repo", str(repo)]) == 0
    printed = capsys.readouterr()
    assert "export MLFLOW_TRACKING_PASSWORD=…  # secret" in printed.out
    assert f"labelspace team dvc-remote --dir {stack['folder']}" in printed.out
    assert (repo / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
    (repo / "data.txt").write_text("pushed while ps looks on\n")
    _run(["dvc", "add", "-q", "data.txt"], repo)
    push = subprocess.Popen([DVC, "push", "-r", team.DVC_REMOTE], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    listings = []
    while push.poll() is None:
        listings.append(subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout)
        time.sleep(0.05)
    pushed = push.communicate()[0]
    assert push.returncode == 0, pushed
    assert any(f"dvc push -r {team.DVC_REMOTE}" in listing for listing in listings)  # ps saw the push
    seen = [printed.out, printed.err, pushed, *listings]
    assert [key for key, value in secrets.items() if any(value in text for text in seen)] == []


def test_a_taken_port_is_refused_clearly(stack):
    folder = _folder("labelspace-team-port-")
    try:
        with socket.socket() as s:
            s.bind((team.HOST, 0))
            s.listen()
            port = s.getsockname()[1]
            with pytest.raises(team.TeamError, match=rf"port {port} on 127\.0\.0\.1, wanted for PostgreSQL, is taken"):
                team.team_up(folder, postgres_port=port, out=QUIET)
        # the stack's own MLflow port: the message names the process that holds it
        with pytest.raises(team.TeamError, match=r"is taken \(PID \d+: .*uvicorn") as caught:
            team.team_up(folder, postgres_port=stack["ports"]["mlflow"], out=QUIET)
        assert "--postgres-port" in str(caught.value)
        assert not team.Layout(folder).pid_file("postgres").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_process_that_dies_at_start_shows_its_log(tmp_path):
    layout = team.Layout(tmp_path)
    proc = processes.spawn(layout, "s3", [sys.executable, "-c", "print('bad setting: xyz', flush=True); raise SystemExit(3)"],
                       dict(os.environ))
    with pytest.raises(team.TeamError, match=r"(?s)exited during start-up.*bad setting: xyz"):
        processes.wait_healthy("s3", lambda: False, lambda: proc.poll() is None, layout.log("s3"), 30)


def _superuser(stack):
    import psycopg2

    secrets = json.loads(Path(stack["folder"], "secrets.json").read_text())
    return secrets, psycopg2.connect(host=team.HOST, port=stack["ports"]["postgres"], user="postgres",
                                     password=secrets["postgres_password"], dbname="postgres")


def test_an_older_schema_is_refused_then_backed_up_and_upgraded(stack):
    """A real older schema: MLflow's migrations run up to the revision before the installed head."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    secrets, conn = _superuser(stack)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE mlflow_old OWNER {postgres.DB_ROLE}")
    conn.close()
    port = stack["ports"]["postgres"]
    url = f"postgresql://{postgres.DB_ROLE}:{secrets['db_password']}@{team.HOST}:{port}/mlflow_old"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    older = script.get_revision(head).down_revision
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, older)
    engine.dispose()

    layout, dbs = team.Layout(Path(stack["folder"])), {"mlflow_old": postgres.TRACKING_DB}
    state = postgres.schema_state(port, secrets["postgres_password"], "mlflow_old", postgres.TRACKING_DB)
    assert (state.state, state.current, state.head, state.pending) == ("older", older, head, 1)
    with pytest.raises(team.TeamError, match=r"older than the installed MLflow.*--upgrade-db"):
        postgres.ensure_schemas(layout, port, secrets, upgrade=False, databases=dbs, out=QUIET)
    backups = postgres.ensure_schemas(layout, port, secrets, upgrade=True, databases=dbs, out=QUIET)
    assert len(backups) == 1 and backups[0].stat().st_size > 0 and backups[0].stat().st_mode & 0o777 == 0o600
    assert postgres.schema_state(port, secrets["postgres_password"], "mlflow_old", postgres.TRACKING_DB).state == "current"
    assert postgres.schema_state(port, secrets["postgres_password"], postgres.AUTH_DB).state == "current"


def test_team_up_refuses_to_start_mlflow_on_an_older_schema(stack):
    secrets, conn = _superuser(stack)
    conn.close()
    state = postgres.schema_state(stack["ports"]["postgres"], secrets["postgres_password"], postgres.TRACKING_DB)
    from alembic.script import ScriptDirectory

    older = ScriptDirectory(str(postgres.migrations_dir(("store", "db_migrations")))).get_revision(state.head).down_revision
    assert team.team_down(stack["folder"], out=QUIET, only=("mlflow",)) == ["mlflow"]

    def stamp(revision):
        import psycopg2

        with psycopg2.connect(host=team.HOST, port=stack["ports"]["postgres"], user="postgres",
                              password=secrets["postgres_password"], dbname=postgres.TRACKING_DB) as c, c.cursor() as cur:
            cur.execute("UPDATE alembic_version SET version_num = %s", (revision,))

    stamp(older)  # as if the database had been written by the previous MLflow release
    try:
        with pytest.raises(team.TeamError, match=r"'mlflow' has schema revision .*older.*--upgrade-db"):
            team.team_up(stack["folder"], workers=1, out=QUIET)
        assert not team.team_status(stack["folder"])["mlflow"]["running"]
    finally:
        stamp(state.head)
    info = team.team_up(stack["folder"], workers=1, out=QUIET)
    assert info["started"] == ["mlflow"]
    stack["pids"] = info["pids"]


def test_s3_down_during_log_artifact_gives_a_clear_error(stack, client, logged_run, tmp_path, monkeypatch):
    _, run_id = logged_run
    assert team.team_down(stack["folder"], out=QUIET, only=("s3",)) == ["s3"]
    upload = tmp_path / "late.txt"
    upload.write_text("x")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match=r"mlflow-artifacts/artifacts/.*500 error"):
        client.log_artifact(run_id, str(upload))
    status = team.team_status(stack["folder"])
    assert not status["s3"]["running"] and status["mlflow"]["healthy"]
    log = Path(status["mlflow"]["log"]).read_text()
    assert f"Could not connect to the endpoint URL: \"{stack['s3_endpoint']}/" in log

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    assert team.team_up(stack["folder"], out=QUIET)["started"] == ["s3"]
    client.log_artifact(run_id, str(upload))
    assert {"late.txt", "note.txt"} <= {a.path for a in client.list_artifacts(run_id)}


def test_postgres_down_gives_a_clear_error(stack, client, monkeypatch):
    assert team.team_down(stack["folder"], out=QUIET, only=("postgres",)) == ["postgres"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match=r"experiments/search.*503 error"):
        client.search_experiments()
    status, body = _get(f"{stack['mlflow_uri']}/api/2.0/mlflow/experiments/search?max_results=1",
                        auth=(stack["env"]["MLFLOW_TRACKING_USERNAME"], stack["env"]["MLFLOW_TRACKING_PASSWORD"]))
    assert status == 503 and "TEMPORARILY_UNAVAILABLE" in body
    assert f"port {stack['ports']['postgres']} failed: Connection refused" in body
    assert not team.team_status(stack["folder"])["postgres"]["running"]

    assert team.team_up(stack["folder"], out=QUIET)["started"] == ["postgres"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    assert "team-test" in [e.name for e in client.search_experiments()]


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket `pid` listens on."""
    inodes = {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{pid}/fd").iterdir()
              if os.readlink(fd).startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                address, port = parts[1].rsplit(":", 1)
                found.add((socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address,
                           int(port, 16)))
    return found


def test_the_store_listens_on_its_own_loopback_ports_and_guards_its_back_doors(stack):
    """Every port SeaweedFS opens is on 127.0.0.1 and named in team.json; its keys are in files of
    mode 600, never on its command line; the filer's and volume server's HTTP ports refuse a read
    that does not come through the S3 gateway, and the gateway refuses an anonymous one."""
    folder = Path(stack["folder"])
    config = json.loads((folder / "team.json").read_text())
    secrets = json.loads((folder / "secrets.json").read_text())
    pid = team.team_status(folder)["s3"]["pid"]
    expected = {stack["ports"]["s3"], *config["s3_ports"].values(),
                config["s3_ports"]["admin"] + s3server.ADMIN_GRPC_OFFSET}
    assert _listening_ports(pid) == {("127.0.0.1", port) for port in expected}
    assert (folder / "s3" / "identities.json").stat().st_mode & 0o777 == 0o600
    command_line = processes.cmdline(pid)
    assert "-master.telemetry=false" in command_line
    assert not any(value in command_line for value in secrets.values())
    key = "artifacts/not-there.txt"
    assert _get(f"{stack['s3_endpoint']}/{stack['buckets']['artifacts']}/{key}")[0] == 403
    assert _get(f"http://{team.HOST}:{config['s3_ports']['filer']}/buckets/{stack['buckets']['artifacts']}/")[0] == 401


def test_a_restarted_stack_keeps_every_artifact_and_dvc_object(stack, client, s3, logged_run, tmp_path):
    """The whole stack stopped and started again (the in-memory store used before SeaweedFS lost every object here):
    the artifact downloads through MLflow as before, the DVC objects are in their bucket, and an
    overwritten object keeps its old version."""
    _, run_id = logged_run
    s3.put_object(Bucket=stack["buckets"]["dvc"], Key=f"{team.DVC_PREFIX}/files/md5/0f/restart", Body=b"dvc object")
    dvc_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=stack["buckets"]["dvc"]).get("Contents", [])}
    s3.put_object(Bucket=stack["buckets"]["dvc"], Key="overwritten.txt", Body=b"first")
    s3.put_object(Bucket=stack["buckets"]["dvc"], Key="overwritten.txt", Body=b"second")
    assert team.team_down(stack["folder"], out=QUIET) == list(reversed(team.SERVICES))
    info = team.team_up(stack["folder"], workers=1, out=QUIET)
    assert info["started"] == list(team.SERVICES)
    stack["pids"] = info["pids"]
    path = client.download_artifacts(run_id, "note.txt", str(tmp_path))
    assert Path(path).read_text() == "logged through the team server\n"
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=stack["buckets"]["dvc"]).get("Contents", [])}
    assert dvc_keys <= after
    versions = s3.list_object_versions(Bucket=stack["buckets"]["dvc"], Prefix="overwritten.txt")["Versions"]
    bodies = [s3.get_object(Bucket=stack["buckets"]["dvc"], Key="overwritten.txt", VersionId=v["VersionId"])["Body"].read()
              for v in versions]
    assert sorted(bodies) == [b"first", b"second"]


def test_team_down_leaves_no_process_behind(stack):
    pids = _pids(Path(stack["folder"]))
    assert len(pids) >= 3
    assert team.team_down(stack["folder"], out=QUIET) == list(reversed(team.SERVICES))
    assert [pid for pid in pids if processes.alive(pid)] == []
    assert team.team_down(stack["folder"], out=QUIET) == []  # idempotent
    assert not any(s["running"] for s in team.team_status(stack["folder"]).values())
    status, _ = _get(f"{stack['mlflow_uri']}/health")
    assert status == 0
