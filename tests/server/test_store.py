"""The store on both databases it supports: SQLite (a file, WAL) and a real PostgreSQL."""

from __future__ import annotations

import time

import pytest
from postgres_server import running_postgres

from entropy_serve.server.core.batches import new_batch, with_live_counts
from entropy_serve.server.core.store import Store, metadata


@pytest.fixture(scope="module")
def postgres_url():
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.sqlite3"
    else:
        url = request.getfixturevalue("postgres_url")
    store = Store(url)
    yield store
    if request.param == "postgresql":  # one server for the module: empty it for the next test
        metadata.drop_all(store.engine)
    store.close()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/state.sqlite3")
    with store.engine.connect() as db:
        assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_files_are_seen_only_by_their_owner(store):
    added = store.add_file("alice", filename="in.jsonl", purpose="batch", content=b"{}\n")
    assert added["bytes"] == 3 and added["object"] == "file" and added["id"].startswith("file-")
    assert store.file("alice", added["id"])["filename"] == "in.jsonl"
    assert store.file("bob", added["id"]) is None
    assert store.file_content(added["id"], "bob") is None
    assert store.file_content(added["id"], "alice") == b"{}\n"
    assert store.file_content(added["id"], None) == b"{}\n"  # the runner's view
    assert [f["id"] for f in store.files("alice")] == [added["id"]] and store.files("bob") == []
    assert not store.delete_file("bob", added["id"])
    assert store.delete_file("alice", added["id"]) and store.file("alice", added["id"]) is None


def batch(store: Store, owner: str = "alice") -> dict:
    fields = new_batch(input_file_id="file-1", endpoint="/v1/chat/completions", completion_window="24h", metadata=None)
    return store.add_batch(owner, fields)


def test_a_batch_is_leased_to_one_runner_until_its_lease_lapses_or_is_released(store):
    batch_id = batch(store)["id"]
    assert store.claim_batches("runner-a", lease_s=60) == [batch_id]
    assert store.claim_batches("runner-b", lease_s=60) == []  # held
    assert store.claim_batches("runner-a", lease_s=60) == [batch_id]  # its own: renewed
    store.release_leases("runner-a")  # a server that stops cleanly
    assert store.claim_batches("runner-b", lease_s=0.01) == [batch_id]
    time.sleep(0.05)  # runner-b died: its lease lapses
    assert store.claim_batches("runner-c", lease_s=60) == [batch_id]
    store.update_batch(batch_id, status="completed")
    store.release_leases("runner-c")
    assert store.claim_batches("runner-d", lease_s=60) == []  # finished batches are not work


def test_a_line_is_recorded_once(store):
    batch_id = batch(store)["id"]
    assert store.add_line(batch_id, 2, ok=True, record={"custom_id": "b"})
    assert not store.add_line(batch_id, 2, ok=True, record={"custom_id": "b-again"})
    assert store.add_line(batch_id, 1, ok=False, record={"custom_id": "a"})
    assert store.answered_lines(batch_id) == {1, 2}
    assert store.line_counts(batch_id) == (1, 1)
    assert store.line_records(batch_id, ok=True) == [{"custom_id": "b"}]
    assert store.line_records(batch_id, ok=False) == [{"custom_id": "a"}]
    fields = store.update_batch(
        batch_id, status="in_progress", request_counts={"total": 3, "completed": 0, "failed": 0}
    )
    assert with_live_counts(store, fields)["request_counts"] == {"total": 3, "completed": 1, "failed": 1}


def test_a_batch_is_finished_once_files_and_status_together(store):
    batch_id = batch(store)["id"]
    store.update_batch(batch_id, status="in_progress")
    finished = store.finish_batch(
        batch_id, expect=("in_progress",), outputs={"output": b'{"a": 1}\n'}, status="completed", completed_at=7
    )
    assert finished["status"] == "completed" and finished["completed_at"] == 7
    output = store.file("alice", finished["output_file_id"])  # the batch owner's file
    assert output["filename"] == f"{batch_id}_output.jsonl" and output["purpose"] == "batch_output"
    assert store.file_content(output["id"], "alice") == b'{"a": 1}\n'
    # A runner that tries again (it resumed the batch) writes nothing.
    again = store.finish_batch(batch_id, expect=("in_progress",), outputs={"output": b"x"}, status="completed")
    assert again is None and len(store.files("alice")) == 1


def test_status_changes_only_from_the_expected_status(store):
    batch_id = batch(store)["id"]
    assert store.update_batch(batch_id, expect=("in_progress",), status="cancelling") is None
    assert (
        store.update_batch(batch_id, expect=("validating",), status="cancelling", cancelling_at=5)["cancelling_at"] == 5
    )
    assert store.batch(batch_id, "alice")["status"] == "cancelling"
    assert store.batch(batch_id, "bob") is None


def test_batches_list_newest_first_in_pages(store):
    ids = []
    for created_at in (10, 20, 30):
        fields = {**new_batch(input_file_id="f", endpoint="/v1/completions", completion_window="24h", metadata=None)}
        fields["created_at"] = created_at
        ids.append(store.add_batch("alice", fields)["id"])
    batch(store, owner="bob")
    first = store.batches("alice", after=None, limit=2)
    assert [b["id"] for b in first] == [ids[2], ids[1]]
    assert [b["id"] for b in store.batches("alice", after=first[-1]["id"], limit=2)] == [ids[0]]


def test_stored_responses_are_scoped_and_deletable(store):
    response = {"id": "resp_1", "created_at": 1, "output": []}
    store.add_response("alice", response, [{"role": "user", "content": "hi"}])
    assert store.response("alice", "resp_1") == (response, [{"role": "user", "content": "hi"}])
    assert store.response("bob", "resp_1") is None
    assert not store.delete_response("bob", "resp_1")
    assert store.delete_response("alice", "resp_1") and store.response("alice", "resp_1") is None
