"""The champion history's hash chain on a real sqlite MLflow store: `labelspace audit --verify` says the
history is whole, and names the record that was altered (a tag, a status) or deleted."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from test_champion import MODEL, PRODUCTION, add_versions

from labelspace.cli import main as cli_main
from labelspace.lifecycle import champion, history


@pytest.fixture
def moved(tmp_path, monkeypatch):
    """Three versions and four moves: 1, 2, 3, rollback to 2."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.chdir(tmp_path)
    add_versions(uri, 3)
    for number in (1, 2, 3):
        champion.promote_version(MODEL, number, reason=f"v{number}")
    champion.rollback(MODEL)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {int(r.data.tags["event.seq"]): r for r in history.search(client, PRODUCTION, history.MOVE)}
    return client, runs


def verify(capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = cli_main(["audit", "--verify", "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_an_untouched_history_is_whole_and_each_record_links_to_the_one_before(moved, capsys):
    client, runs = moved
    assert sorted(runs) == [1, 2, 3, 4]
    assert [runs[s].data.tags["event.prev_seq"] for s in (1, 2, 3, 4)] == ["", "1", "2", "3"]
    assert runs[3].data.tags["event.prev_hash"] == runs[2].data.tags["event.hash"]
    head = client.get_registered_model(PRODUCTION).tags["lifecycle.champion.head"]
    assert head == f"4:FINISHED:{runs[4].data.tags['event.hash']}"
    code, report = verify(capsys)
    assert code == 0 and report["whole"] and report["records"] == 4 and report["problems"] == []
    assert cli_main(["audit", "--verify"]) == 0
    assert "is whole: 4 records" in capsys.readouterr().out


def test_an_altered_tag_names_the_record(moved, capsys):
    client, runs = moved
    client.set_tag(runs[2].info.run_id, "event.reason", "nobody asked")
    code, report = verify(capsys)
    assert code == 1 and not report["whole"]
    assert report["problems"] == [f"record #2 of @champion (run {runs[2].info.run_id}) was altered: its content "
                                  "no longer matches its hash"]


def test_a_recomputed_hash_is_caught_by_the_next_record(moved, capsys):
    from labelspace.lifecycle.history_chain import content_hash

    client, runs = moved
    tags = {**runs[2].data.tags, "event.reason": "rewritten with care"}
    client.set_tag(runs[2].info.run_id, "event.reason", tags["event.reason"])
    client.set_tag(runs[2].info.run_id, "event.hash", content_hash(tags))
    code, report = verify(capsys)
    assert code == 1
    assert report["problems"] == [f"record #2 of @champion (run {runs[2].info.run_id}) was altered: record #3 "
                                  "holds another hash of it"]


def test_a_deleted_record_and_a_deleted_last_record_are_named(moved, capsys):
    client, runs = moved
    client.delete_run(runs[2].info.run_id)
    code, report = verify(capsys)
    assert code == 1
    assert report["problems"] == [f"record #2 of @champion is missing: record #3 follows it (run "
                                  f"{runs[2].info.run_id} was deleted; `mlflow runs restore --run-id "
                                  f"{runs[2].info.run_id}` brings it back)"]
    client.restore_run(runs[2].info.run_id)
    client.delete_run(runs[4].info.run_id)
    code, report = verify(capsys)
    assert code == 1 and len(report["problems"]) == 1
    assert report["problems"][0].startswith("record #4 of @champion is missing: the anchor lifecycle.champion.head "
                                            "names it")
    # A move made after the deletion links to the record that is gone: the gap stays visible.
    champion.promote_version(MODEL, 1, reason="after the deletion")
    code, report = verify(capsys)
    assert code == 1 and report["problems"][0].startswith("record #4 of @champion is missing: record #5 follows it")


def test_a_finished_move_rewritten_as_failed_is_named(moved, capsys):
    client, runs = moved
    client.set_terminated(runs[3].info.run_id, "FAILED")
    code, report = verify(capsys)
    assert code == 1
    assert report["problems"] == [f"record #3 of @champion (run {runs[3].info.run_id}) was altered: it ended "
                                  "FINISHED when record #4 was written and says FAILED now"]
