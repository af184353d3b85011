"""SqliteStore's outbound queue (sqlite_queue.py): enqueue and its durability, claims under
leases by several nodes, results, reports, purge and the operator's commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postbote.envelope import Envelope, Recipient
from postbote.errors import NotFound, StoreError
from postbote.store import sqlite_queue
from postbote.store.interfaces import (
    QUEUE_STATES,
    Claim,
    QueuedMessage,
    QueueEntry,
    QueueStore,
    RecipientResult,
)
from postbote.store.sqlite import MIGRATIONS, SqliteStore


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "postbote.db", tmp_path / "queue"


@pytest.fixture
def store(paths: tuple[Path, Path]) -> Iterator[SqliteStore]:
    s = SqliteStore(*paths)
    yield s
    s.close()


def envelope(msg_id: str, received_at: float = 1000.0, sender: str = "a@example.org") -> Envelope:
    return Envelope(
        id=msg_id,
        sender=sender,
        recipients=(Recipient("x@remote.test"),),
        received_at=received_at,
    )


def raw_rows(paths: tuple[Path, Path], sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(paths[0])
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def states(store: SqliteStore) -> dict[tuple[str, str], str]:
    return {(e.message_id, e.recipient): e.state for e in store.list_queue()}


def test_implements_the_protocol(store: SqliteStore) -> None:
    queue: QueueStore = store
    assert queue.list_queue() == []
    assert queue.next_due() is None


# --- enqueue ---------------------------------------------------------------------------------


def test_enqueue_and_list(paths: tuple[Path, Path], store: SqliteStore) -> None:
    store.enqueue(envelope("m2", 2000.0), b"second", ["z@remote.test"])
    store.enqueue(envelope("m1", 1000.0, sender=""), b"first\r\n", ["y@remote.test", "X@r.test"])
    assert store.list_queue() == [
        QueueEntry("m1", "X@r.test", "", "queued", 0, 1000.0, "", 7, 1000.0),
        QueueEntry("m1", "y@remote.test", "", "queued", 0, 1000.0, "", 7, 1000.0),
        QueueEntry("m2", "z@remote.test", "a@example.org", "queued", 0, 2000.0, "", 6, 2000.0),
    ]
    assert store.queued_body("m1") == b"first\r\n"
    assert store.queued_body("m2") == b"second"
    assert sorted(p.name for p in paths[1].iterdir()) == ["m1.eml", "m2.eml"]  # no tmp files


def test_enqueue_stores_envelope(paths: tuple[Path, Path], store: SqliteStore) -> None:
    env = envelope("m1")
    store.enqueue(env, b"x", ["x@remote.test"])
    conn = sqlite3.connect(paths[0])
    try:
        (raw,) = conn.execute("SELECT envelope_json FROM queue_messages").fetchone()
    finally:
        conn.close()
    assert Envelope.from_json(raw) == env


def test_enqueue_is_idempotent(paths: tuple[Path, Path], store: SqliteStore) -> None:
    store.enqueue(envelope("m1"), b"body", ["a@remote.test", "b@remote.test"])
    first = store.list_queue()
    store.enqueue(envelope("m1"), b"body", ["a@remote.test", "b@remote.test"])
    assert store.list_queue() == first
    # a known id does not get its body rewritten; a new recipient is added once
    store.enqueue(envelope("m1"), b"other body", ["b@remote.test", "c@remote.test"])
    assert store.queued_body("m1") == b"body"
    assert [e.recipient for e in store.list_queue()] == [
        "a@remote.test",
        "b@remote.test",
        "c@remote.test",
    ]


def delete_queued(paths: tuple[Path, Path], msg_id: str) -> None:
    """What the outbound queue does once a message is done: rows and body go."""
    conn = sqlite3.connect(paths[0])
    with conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM queue_messages WHERE id = ?", (msg_id,))
    conn.close()
    (paths[1] / f"{msg_id}.eml").unlink()


def test_enqueue_after_removal_writes_body_again(
    paths: tuple[Path, Path], store: SqliteStore
) -> None:
    store.enqueue(envelope("m1"), b"body", ["a@remote.test"])
    delete_queued(paths, "m1")
    assert store.list_queue() == []
    store.enqueue(envelope("m1"), b"body", ["a@remote.test"])
    assert store.queued_body("m1") == b"body"
    assert [e.recipient for e in store.list_queue()] == ["a@remote.test"]


def test_enqueue_row_removed_between_check_and_insert(
    paths: tuple[Path, Path], store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.enqueue(envelope("m1"), b"body", ["a@remote.test"])
    real_transaction = store._transaction
    raced: list[bool] = []

    @contextlib.contextmanager
    def racing_transaction() -> Iterator[sqlite3.Connection]:
        if not raced:  # the row was there when enqueue looked; it goes before the insert
            raced.append(True)
            delete_queued(paths, "m1")
        with real_transaction() as conn:
            yield conn

    monkeypatch.setattr(store, "_transaction", racing_transaction)
    store.enqueue(envelope("m1"), b"body", ["b@remote.test"])
    assert raced
    assert store.queued_body("m1") == b"body"  # a row never exists without its body
    assert [e.recipient for e in store.list_queue()] == ["b@remote.test"]


def test_enqueue_bare_str_is_one_recipient(store: SqliteStore) -> None:
    store.enqueue(envelope("m1"), b"body", "a@remote.test")
    assert [e.recipient for e in store.list_queue()] == ["a@remote.test"]


def test_enqueue_duplicate_recipients_in_one_call(store: SqliteStore) -> None:
    store.enqueue(envelope("m1"), b"body", ["a@remote.test", "a@remote.test"])
    assert [e.recipient for e in store.list_queue()] == ["a@remote.test"]


def test_queue_survives_reopen(paths: tuple[Path, Path]) -> None:
    with SqliteStore(*paths) as s:
        s.enqueue(envelope("m1"), b"durable", ["a@remote.test"])
        entries = s.list_queue()
    with SqliteStore(*paths) as s:
        assert s.list_queue() == entries
        assert s.queued_body("m1") == b"durable"


def test_enqueue_nothing(paths: tuple[Path, Path], store: SqliteStore) -> None:
    store.enqueue(envelope("m1"), b"body", [])
    assert store.list_queue() == []
    assert list(paths[1].iterdir()) == []


@pytest.mark.parametrize("bad_id", ["", "../evil", ".hidden", "a/b", "a\x00", "x" * 201, "a b"])
def test_enqueue_rejects_unsafe_ids(
    paths: tuple[Path, Path], store: SqliteStore, bad_id: str
) -> None:
    with pytest.raises(StoreError, match="invalid queue id"):
        store.enqueue(envelope(bad_id), b"body", ["a@remote.test"])
    assert list(paths[1].iterdir()) == []
    assert not (paths[1].parent / "evil.eml").exists()


@pytest.mark.parametrize("bad", ["", "a@remote.test\r\nDATA", "a\x00@remote.test"])
def test_enqueue_rejects_bad_recipients(store: SqliteStore, bad: str) -> None:
    with pytest.raises(StoreError, match="invalid recipient"):
        store.enqueue(envelope("m1"), b"body", ["ok@remote.test", bad])
    assert store.list_queue() == []


def test_queued_body_errors(paths: tuple[Path, Path], store: SqliteStore) -> None:
    with pytest.raises(NotFound):
        store.queued_body("nope")
    store.enqueue(envelope("m1"), b"body", ["a@remote.test"])
    os.unlink(paths[1] / "m1.eml")
    with pytest.raises(StoreError, match="cannot read"):
        store.queued_body("m1")


def test_enqueue_write_failure_is_store_error(paths: tuple[Path, Path], store: SqliteStore) -> None:
    paths[1].rmdir()
    paths[1].write_bytes(b"")  # queue_dir is now a file: creating the body fails
    with pytest.raises(StoreError, match="cannot write"):
        store.enqueue(envelope("m1"), b"body", ["a@remote.test"])
    assert store.list_queue() == []


def test_enqueue_body_mode(paths: tuple[Path, Path], store: SqliteStore) -> None:
    store.enqueue(envelope("m1"), b"body", ["x@remote.test"])
    assert stat.S_IMODE((paths[1] / "m1.eml").stat().st_mode) == 0o600


# --- enqueue_batch: durable with a constant number of syncs --------------------------------


def batch(n: int, received_at: float = 1000.0) -> list[tuple[Envelope, bytes, list[str]]]:
    return [
        (envelope(f"b{i:03d}", received_at + i), f"body {i}".encode(), [f"r{i}@remote.test"])
        for i in range(n)
    ]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every sync our code asks for, in order (SQLite's own syncs are not os.fsync calls),
    with the renames and the SQL transactions between them."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    def syncfs(fd: int) -> int:
        events.append("syncfs")
        return 0

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(sqlite_queue, "_syncfs", syncfs)
    return events


def transactions_logged(store: SqliteStore, events: list[str]) -> None:
    real = store._transaction

    @contextlib.contextmanager
    def logged() -> Iterator[sqlite3.Connection]:
        with real() as conn:
            yield conn
        events.append("commit")

    store._transaction = logged  # type: ignore[method-assign]


def test_enqueue_batch_one_syncfs_one_directory_fsync(
    paths: tuple[Path, Path], store: SqliteStore, syncs: list[str]
) -> None:
    items = batch(50)
    transactions_logged(store, syncs)
    store.enqueue_batch(items)
    # data made durable, then every name, then one directory fsync, then one transaction
    assert syncs == ["syncfs", *["rename"] * 50, "fsync dir", "commit"]
    assert len(store.list_queue()) == 50
    for env, body, _ in items:
        assert store.queued_body(env.id) == body
    names = sorted(p.name for p in paths[1].iterdir())
    assert names == sorted(f"{env.id}.eml" for env, _, _ in items)  # no tmp files left


def test_enqueue_batch_of_few_fsyncs_each(store: SqliteStore, syncs: list[str]) -> None:
    transactions_logged(store, syncs)
    store.enqueue_batch(batch(3))
    assert syncs == [*["fsync file"] * 3, *["rename"] * 3, "fsync dir", "commit"]


def test_enqueue_batch_without_syncfs(
    store: SqliteStore, syncs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_queue, "_syncfs", None)
    store.enqueue_batch(batch(10))
    assert syncs == [*["fsync file"] * 10, *["rename"] * 10, "fsync dir"]


def test_enqueue_batch_syncfs_failure_falls_back(
    store: SqliteStore, syncs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: Path) -> None:
        syncs.append("syncfs failed")
        raise OSError(5, "I/O error")

    monkeypatch.setattr(sqlite_queue, "_syncfs_path", failing)
    store.enqueue_batch(batch(10))
    assert syncs == ["syncfs failed", *["fsync file"] * 10, *["rename"] * 10, "fsync dir"]
    assert len(store.list_queue()) == 10


def test_real_syncfs(store: SqliteStore) -> None:
    if sqlite_queue._syncfs is None:
        pytest.skip("no syncfs(2) here")
    sqlite_queue._syncfs_path(store._queue_dir)  # raises OSError on failure


def test_enqueue_batch_known_messages_write_no_body(store: SqliteStore, syncs: list[str]) -> None:
    store.enqueue_batch(batch(10))
    syncs.clear()
    first = store.list_queue()
    store.enqueue_batch(batch(10))  # a redelivery of the whole batch
    assert syncs == []
    assert store.list_queue() == first


def test_enqueue_batch_is_idempotent_per_recipient(store: SqliteStore) -> None:
    store.enqueue_batch(
        [
            (envelope("m1"), b"one", ["a@remote.test"]),
            (envelope("m1"), b"ignored", ["a@remote.test", "b@remote.test"]),  # same id
            (envelope("m2", 2000.0), b"two", []),  # no recipients: nothing queued
        ]
    )
    store.enqueue_batch([(envelope("m1"), b"new body", ["b@remote.test", "c@remote.test"])])
    assert [(e.message_id, e.recipient) for e in store.list_queue()] == [
        ("m1", "a@remote.test"),
        ("m1", "b@remote.test"),
        ("m1", "c@remote.test"),
    ]
    assert store.queued_body("m1") == b"one"
    with pytest.raises(NotFound):
        store.queued_body("m2")


def test_enqueue_batch_invalid_item_writes_nothing(
    paths: tuple[Path, Path], store: SqliteStore
) -> None:
    items = [*batch(5), (envelope("bad/id"), b"x", ["a@remote.test"])]
    with pytest.raises(StoreError, match="invalid queue id"):
        store.enqueue_batch(items)
    with pytest.raises(StoreError, match="invalid recipient"):
        store.enqueue_batch([*batch(5), (envelope("ok"), b"x", ["a@remote.test\r\nRSET"])])
    assert store.list_queue() == []
    assert list(paths[1].iterdir()) == []


def test_enqueue_batch_rows_gone_before_insert_get_their_body_again(
    paths: tuple[Path, Path], store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.enqueue_batch(batch(2))
    real_transaction = store._transaction
    raced: list[bool] = []

    @contextlib.contextmanager
    def racing_transaction() -> Iterator[sqlite3.Connection]:
        if not raced:  # b000 was there when the batch looked; it goes before the insert
            raced.append(True)
            store.delete("b000")
        with real_transaction() as conn:
            yield conn

    monkeypatch.setattr(store, "_transaction", racing_transaction)
    store.enqueue_batch([*batch(2), (envelope("new"), b"new", ["n@remote.test"])])
    assert raced
    assert store.queued_body("b000") == b"body 0"
    assert store.queued_body("new") == b"new"
    assert len(store.list_queue()) == 3


# --- claim -------------------------------------------------------------------------------------


def queue_message(
    store: SqliteStore, msg_id: str, rcpts: list[str], received_at: float = 1000.0
) -> Envelope:
    env = Envelope(
        id=msg_id,
        sender="a@example.org",
        recipients=tuple(Recipient(r) for r in rcpts),
        received_at=received_at,
    )
    store.enqueue(env, f"Subject: {msg_id}\r\n\r\nbody\r\n".encode(), rcpts)
    return env


def test_claim_groups_recipients_per_domain(store: SqliteStore) -> None:
    rcpts = ["b@x.test", "a@X.Test", '"odd@local"@y.test', "c@y.test"]
    env = queue_message(store, "m1", rcpts)
    claims = store.claim(1000.0, node="n1", lease=60.0, limit=10)
    size = len(b"Subject: m1\r\n\r\nbody\r\n")
    assert claims == [
        Claim("m1", env, "x.test", ("a@X.Test", "b@x.test"), 1, 1000.0, size),
        Claim("m1", env, "y.test", ('"odd@local"@y.test', "c@y.test"), 1, 1000.0, size),
    ]


def test_claim_marks_rows_inflight(paths: tuple[Path, Path], store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    store.claim(1500.0, node="n1", lease=60.0, limit=1)
    (entry,) = store.list_queue()
    assert (entry.state, entry.attempts, entry.last_attempt) == ("inflight", 1, 1500.0)
    assert raw_rows(paths, "SELECT claimed_by, lease_until FROM queue_recipients") == [
        ("n1", 1560.0)
    ]


def test_claim_oldest_first_up_to_limit_groups(store: SqliteStore) -> None:
    queue_message(store, "new", ["a@x.test"], received_at=3000.0)
    queue_message(store, "old", ["a@x.test", "a@y.test", "a@z.test"], received_at=1000.0)
    queue_message(store, "mid", ["a@x.test"], received_at=2000.0)
    first = store.claim(5000.0, node="n1", lease=60.0, limit=2)
    assert [(c.message_id, c.domain) for c in first] == [("old", "x.test"), ("old", "y.test")]
    second = store.claim(5000.0, node="n1", lease=60.0, limit=2)
    assert [(c.message_id, c.domain) for c in second] == [("old", "z.test"), ("mid", "x.test")]
    third = store.claim(5000.0, node="n1", lease=60.0, limit=2)
    assert [(c.message_id, c.domain) for c in third] == [("new", "x.test")]
    assert store.claim(5000.0, node="n1", lease=60.0, limit=2) == []
    assert store.claim(5000.0, node="n1", lease=60.0, limit=0) == []


def test_claim_takes_only_due_rows(store: SqliteStore) -> None:
    queue_message(store, "later", ["a@x.test"], received_at=2000.0)  # due at 2000
    queue_message(store, "held", ["a@x.test"])
    store.hold("held")
    queue_message(store, "done", ["a@x.test", "b@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=10)
    store.record(
        "n1",
        "done",
        [
            RecipientResult("a@x.test", "delivered", "250 ok"),
            RecipientResult("b@x.test", "failed", "550 no"),
        ],
    )
    queue_message(store, "inflight", ["a@x.test"])
    assert [c.message_id for c in store.claim(1000.0, node="n1", lease=60, limit=10)] == [
        "inflight"
    ]
    assert store.claim(1059.0, node="n2", lease=60.0, limit=10) == []  # under lease; not due
    assert [c.message_id for c in store.claim(2000.0, node="n2", lease=60, limit=10)] == [
        "inflight",  # its lease ran out at 1060
        "later",
    ]


def test_expired_lease_moves_the_rows_to_another_node(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    (claim,) = store.claim(1000.0, node="n1", lease=60.0, limit=1)
    assert claim.attempts == 1
    assert store.claim(1060.0, node="n2", lease=60.0, limit=1) == []  # lease until 1060
    (taken,) = store.claim(1060.5, node="n2", lease=60.0, limit=1)
    assert (taken.message_id, taken.attempts) == ("m1", 2)
    # n1 wakes up late: its result is ignored, n2's counts
    store.record("n1", "m1", [RecipientResult("a@x.test", "failed", "550 late")])
    assert states(store) == {("m1", "a@x.test"): "inflight"}
    store.record("n2", "m1", [RecipientResult("a@x.test", "delivered", "250 ok")])
    assert states(store) == {("m1", "a@x.test"): "delivered"}


def test_claim_needs_a_node(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        store.claim(1000.0, node="", lease=60.0, limit=1)


def test_unreadable_envelope_is_held_not_blocking(
    paths: tuple[Path, Path], store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    queue_message(store, "broken", ["a@x.test"], received_at=500.0)
    queue_message(store, "fine", ["a@x.test"])
    conn = sqlite3.connect(paths[0])
    with conn:
        conn.execute("UPDATE queue_messages SET envelope_json = '{' WHERE id = 'broken'")
    conn.close()
    assert [c.message_id for c in store.claim(1000.0, node="n1", lease=60, limit=5)] == ["fine"]
    (entry,) = [e for e in store.list_queue() if e.message_id == "broken"]
    assert entry.state == "held"
    assert "unreadable" in entry.last_reply
    assert "broken" in caplog.text


# --- record ------------------------------------------------------------------------------------


def test_record_outcomes(store: SqliteStore) -> None:
    rcpts = ["ok@x.test", "bad@x.test", "later@x.test"]
    queue_message(store, "m1", rcpts)
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    store.record(
        "n1",
        "m1",
        [
            RecipientResult("ok@x.test", "delivered", "250 2.0.0 ok", 0.0, "mx.x.test"),
            RecipientResult("bad@x.test", "failed", "550 5.1.1 no", 0.0, "mx.x.test", "failed"),
            RecipientResult("later@x.test", "deferred", "451 4.7.1 later", 1900.0, "mx.x.test"),
        ],
    )
    by_rcpt = {e.recipient: e for e in store.list_queue()}
    assert by_rcpt["ok@x.test"] == QueueEntry(
        "m1", "ok@x.test", "a@example.org", "delivered", 1, 1000.0, "250 2.0.0 ok",
        by_rcpt["ok@x.test"].size, 1000.0, 1000.0, "mx.x.test", None,
    )  # fmt: skip
    assert (by_rcpt["bad@x.test"].state, by_rcpt["bad@x.test"].report) == ("failed", "failed")
    later = by_rcpt["later@x.test"]
    assert (later.state, later.next_attempt, later.last_reply) == (
        "deferred",
        1900.0,
        "451 4.7.1 later",
    )
    assert store.next_due() == 1900.0
    assert store.claim(1899.0, node="n1", lease=60.0, limit=5) == []
    (again,) = store.claim(1900.0, node="n1", lease=60.0, limit=5)
    assert (again.recipients, again.attempts) == (("later@x.test",), 2)


def test_record_ignores_rows_the_node_does_not_hold(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test", "b@y.test"])
    queue_message(store, "m2", ["a@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)  # m1 a@x.test only
    before = store.list_queue()
    store.record("n2", "m1", [RecipientResult("a@x.test", "delivered", "250")])  # not n2's
    store.record("n1", "m1", [RecipientResult("b@y.test", "delivered", "250")])  # not claimed
    store.record("n1", "m2", [RecipientResult("a@x.test", "delivered", "250")])  # not claimed
    store.record("n1", "m1", [RecipientResult("c@x.test", "delivered", "250")])  # no such row
    store.record("n1", "gone", [RecipientResult("a@x.test", "delivered", "250")])
    assert store.list_queue() == before
    store.record("n1", "m1", [RecipientResult("a@x.test", "delivered", "250")])
    store.record("n1", "m1", [RecipientResult("a@x.test", "failed", "550")])  # no longer held
    assert states(store)[("m1", "a@x.test")] == "delivered"


def test_record_after_delete_is_ignored(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    store.delete("m1")
    store.record("n1", "m1", [RecipientResult("a@x.test", "delivered", "250")])
    assert store.list_queue() == []


@pytest.mark.parametrize(
    "result",
    [
        RecipientResult("a@x.test", "inflight", "250"),
        RecipientResult("a@x.test", "held", "250"),
        RecipientResult("a@x.test", "queued", "250"),
        RecipientResult("a@x.test", "failed", "550", report="bounced"),
    ],
)
def test_record_refuses_invalid_results(store: SqliteStore, result: RecipientResult) -> None:
    queue_message(store, "m1", ["a@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    with pytest.raises(StoreError, match="invalid"):
        store.record("n1", "m1", [result])
    assert states(store) == {("m1", "a@x.test"): "inflight"}


def test_states_outside_queue_states_are_refused_by_the_database(
    paths: tuple[Path, Path], store: SqliteStore
) -> None:
    queue_message(store, "m1", ["a@x.test"])
    conn = sqlite3.connect(paths[0])
    try:
        for sql in (
            "UPDATE queue_recipients SET state = 'bogus'",
            "UPDATE queue_recipients SET report = 'bogus'",
            "INSERT INTO queue_recipients (message_id, recipient, state, next_attempt)"
            " VALUES ('m1', 'b@x.test', 'sent', 0)",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="invalid queue state"):
                conn.execute(sql)
    finally:
        conn.close()
    assert set(states(store).values()) <= set(QUEUE_STATES)


# --- recover, next_due -------------------------------------------------------------------------


def test_recover(store: SqliteStore) -> None:
    queue_message(store, "mine", ["a@x.test"])
    queue_message(store, "expired", ["a@x.test"], received_at=1001.0)
    queue_message(store, "current", ["a@x.test"], received_at=1002.0)
    store.claim(1000.0, node="me", lease=1000.0, limit=1)
    store.claim(1001.0, node="dead", lease=10.0, limit=1)
    store.claim(1002.0, node="alive", lease=1000.0, limit=1)
    assert store.recover("me", 1500.0) == 2
    entries = {e.message_id: e for e in store.list_queue()}
    for msg_id in ("mine", "expired"):
        assert (entries[msg_id].state, entries[msg_id].next_attempt) == ("deferred", 1500.0)
        assert entries[msg_id].attempts == 1  # the attempt may have been made
    assert entries["current"].state == "inflight"
    assert store.recover("me", 1500.0) == 0
    assert {c.message_id for c in store.claim(1500.0, node="me", lease=60, limit=5)} == {
        "mine",
        "expired",
    }


def test_next_due(store: SqliteStore) -> None:
    assert store.next_due() is None
    queue_message(store, "m1", ["a@x.test"], received_at=1000.0)
    queue_message(store, "m2", ["a@x.test"], received_at=2000.0)
    assert store.next_due() == 1000.0
    store.claim(1000.0, node="n1", lease=60.0, limit=1)  # inflight: not waiting
    assert store.next_due() == 2000.0
    store.hold("m2")
    assert store.next_due() is None
    store.record("n1", "m1", [RecipientResult("a@x.test", "deferred", "451", 1234.5)])
    assert store.next_due() == 1234.5


# --- reports and purge -------------------------------------------------------------------------


def test_report_lifecycle(paths: tuple[Path, Path], store: SqliteStore) -> None:
    env = queue_message(store, "m1", ["a@x.test", "b@x.test", "c@x.test"])
    queue_message(store, "m2", ["a@x.test"], received_at=2000.0)
    assert store.pending_reports(10) == []
    store.claim(2000.0, node="n1", lease=60.0, limit=10)
    store.record(
        "n1",
        "m1",
        [
            RecipientResult("a@x.test", "failed", "550 5.1.1 no", remote_mta="mx", report="failed"),
            RecipientResult("b@x.test", "deferred", "451 later", 3000.0, report="delayed"),
            RecipientResult("c@x.test", "delivered", "250 ok"),
        ],
    )
    store.record(
        "n1", "m2", [RecipientResult("a@x.test", "delivered", "250 ok", report="delivered")]
    )
    work = store.pending_reports(10)
    assert [w.message_id for w in work] == ["m1", "m2"]
    assert work[0].envelope == env
    assert [(e.recipient, e.report) for e in work[0].entries] == [
        ("a@x.test", "failed"),
        ("b@x.test", "delayed"),
    ]
    assert work[0].entries[0].remote_mta == "mx"
    assert store.pending_reports(1) == work[:1]
    assert store.purge() == []  # reports pending, b deferred
    # the delay warning is remembered for the next claim
    (claim,) = store.claim(3000.0, node="n1", lease=60.0, limit=10)
    assert claim.warned == frozenset({"b@x.test"})
    store.reports_sent("m1", ["a@x.test", "b@x.test"])
    store.reports_sent("m2", "a@x.test")
    assert store.pending_reports(10) == []
    assert store.purge() == ["m2"]
    assert not (paths[1] / "m2.eml").exists()
    store.record("n1", "m1", [RecipientResult("b@x.test", "delivered", "250 ok")])
    assert store.purge() == ["m1"]
    assert store.list_queue() == []
    assert list(paths[1].iterdir()) == []


def test_final_result_drops_a_pending_delay_warning(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test", "b@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    store.record(
        "n1",
        "m1",
        [
            RecipientResult("a@x.test", "deferred", "451", 1100.0, report="delayed"),
            RecipientResult("b@x.test", "deferred", "451", 1100.0, report="delayed"),
        ],
    )
    store.claim(1100.0, node="n1", lease=60.0, limit=1)
    store.record(
        "n1",
        "m1",
        [
            RecipientResult("a@x.test", "deferred", "451", 1200.0),  # still due to be sent
            RecipientResult("b@x.test", "delivered", "250"),  # moot now
        ],
    )
    (work,) = store.pending_reports(10)
    assert [(e.recipient, e.report) for e in work.entries] == [("a@x.test", "delayed")]


def test_purge_tolerates_a_missing_body(paths: tuple[Path, Path], store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    store.record("n1", "m1", [RecipientResult("a@x.test", "failed", "550")])
    (paths[1] / "m1.eml").unlink()
    assert store.purge() == ["m1"]
    assert store.list_queue() == []


def test_purged_id_can_be_queued_again(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)
    store.record("n1", "m1", [RecipientResult("a@x.test", "delivered", "250")])
    assert store.purge() == ["m1"]
    store.enqueue(envelope("m1"), b"again", ["a@x.test"])
    assert store.queued_body("m1") == b"again"


def test_failed_deletion_keeps_the_body(
    paths: tuple[Path, Path], store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_message(store, "m1", ["a@x.test"])
    real_transaction = store._transaction

    @contextlib.contextmanager
    def failing_commit() -> Iterator[sqlite3.Connection]:
        with real_transaction() as conn:
            yield conn
            raise StoreError("database error: disk I/O error")  # before the commit

    monkeypatch.setattr(store, "_transaction", failing_commit)
    with pytest.raises(StoreError, match="disk I/O"):
        store.delete("m1")
    monkeypatch.undo()
    assert store.queued_body("m1") == b"Subject: m1\r\n\r\nbody\r\n"
    assert sorted(p.name for p in paths[1].iterdir()) == ["m1.eml"]


# --- the operator ------------------------------------------------------------------------------


def test_show(store: SqliteStore) -> None:
    env = queue_message(store, "m1", ["b@x.test", "a@x.test"])
    shown = store.show("m1")
    assert shown == QueuedMessage("m1", env, shown.size, 1000.0, tuple(store.list_queue()))
    assert [e.recipient for e in shown.entries] == ["a@x.test", "b@x.test"]
    assert shown.size == len(store.queued_body("m1"))


def test_flush_and_retry(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    queue_message(store, "m2", ["a@x.test", "b@y.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=10)
    for msg_id in ("m1", "m2"):
        store.record(
            "n1",
            msg_id,
            [
                RecipientResult("a@x.test", "deferred", "451", 9000.0),
                RecipientResult("b@y.test", "deferred", "451", 1100.0),
            ],
        )
    assert store.retry("m1", 1500.0) == 1
    assert [c.message_id for c in store.claim(1500.0, node="n1", lease=60, limit=10)] == [
        "m1",
        "m2",  # b@y.test was due at 1100 already: retry and flush never postpone
    ]
    store.record("n1", "m1", [RecipientResult("a@x.test", "deferred", "451", 9000.0)])
    store.record("n1", "m2", [RecipientResult("b@y.test", "deferred", "451", 9000.0)])
    assert store.flush(2000.0) == 3
    assert store.next_due() == 2000.0
    assert len(store.claim(2000.0, node="n1", lease=60.0, limit=10)) == 3
    assert store.flush(2000.0) == 0


def test_hold_and_release(store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test", "b@y.test", "c@z.test"])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)  # a@x.test inflight
    store.record("n1", "m1", [RecipientResult("a@x.test", "delivered", "250")])
    store.claim(1000.0, node="n1", lease=60.0, limit=1)  # b@y.test inflight
    assert store.hold("m1") == 1  # only c@z.test waits
    assert states(store) == {
        ("m1", "a@x.test"): "delivered",
        ("m1", "b@y.test"): "inflight",
        ("m1", "c@z.test"): "held",
    }
    (taken,) = store.claim(5000.0, node="n2", lease=60.0, limit=10)  # b's lease expired
    assert taken.recipients == ("b@y.test",)  # and c@z.test is held
    store.record("n2", "m1", [RecipientResult("b@y.test", "delivered", "250")])
    assert store.claim(9000.0, node="n2", lease=1, limit=9) == []
    assert store.hold("m1") == 0
    assert store.release("m1", 9500.0) == 1
    entry = store.show("m1").entries[2]
    assert (entry.state, entry.next_attempt) == ("deferred", 9500.0)
    assert [c.domain for c in store.claim(9500.0, node="n2", lease=1, limit=9)] == ["z.test"]
    assert store.release("m1", 9500.0) == 0


def test_delete(paths: tuple[Path, Path], store: SqliteStore) -> None:
    queue_message(store, "m1", ["a@x.test"])
    queue_message(store, "m2", ["a@x.test"])
    store.delete("m1")
    assert [e.message_id for e in store.list_queue()] == ["m2"]
    assert sorted(p.name for p in paths[1].iterdir()) == ["m2.eml"]
    assert store.pending_reports(10) == []
    with pytest.raises(NotFound):
        store.queued_body("m1")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.show("nope"),
        lambda s: s.retry("nope", 0.0),
        lambda s: s.hold("nope"),
        lambda s: s.release("nope", 0.0),
        lambda s: s.delete("nope"),
        lambda s: s.queued_body("nope"),
    ],
)
def test_unknown_message_is_not_found(
    store: SqliteStore, call: Callable[[SqliteStore], object]
) -> None:
    queue_message(store, "m1", ["a@x.test"])
    with pytest.raises(NotFound, match="nope"):
        call(store)
    assert len(store.list_queue()) == 1


# --- schema ----------------------------------------------------------------------------------


def test_version_2_queue_is_migrated(paths: tuple[Path, Path]) -> None:
    db = paths[0]
    db.parent.mkdir(parents=True)
    paths[1].mkdir()
    conn = sqlite3.connect(db, isolation_level=None)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    env = envelope("old")
    conn.execute(
        "INSERT INTO queue_messages VALUES ('old', ?, ?, 4, 1000.0, 'old.eml')",
        (env.sender, env.to_json().decode()),
    )
    conn.execute(
        "INSERT INTO queue_recipients VALUES ('old', 'a@x.test', 'deferred', 2, 1000.0, '451')"
    )
    conn.close()
    (paths[1] / "old.eml").write_bytes(b"body")
    with SqliteStore(*paths) as s:
        assert s.list_queue() == [
            QueueEntry("old", "a@x.test", env.sender, "deferred", 2, 1000.0, "451", 4, 1000.0)
        ]
        (claim,) = s.claim(1000.0, node="n1", lease=60.0, limit=1)
        assert (claim.envelope, claim.attempts, claim.warned) == (env, 3, frozenset())
    assert raw_rows(paths, "PRAGMA user_version") == [(len(MIGRATIONS),)]


# --- several nodes on one file -------------------------------------------------------------


def fill(store: SqliteStore, n: int, received_at: float) -> set[tuple[str, str]]:
    """n messages with two recipients at one domain and one at another; all rows."""
    rcpts = ["a@one.test", "b@one.test", "c@two.test"]
    items = [(envelope(f"t{received_at:.0f}-{i}", received_at), b"x", rcpts) for i in range(n)]
    store.enqueue_batch(items)
    return {(env.id, r) for env, _, _ in items for r in rcpts}


def drain(store: SqliteStore, node: str, now: float, limit: int) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    while claims := store.claim(now, node=node, lease=1e9, limit=limit):
        got += [(c.message_id, r) for c in claims for r in c.recipients]
    return got


def test_threads_on_separate_stores_never_share_a_row(paths: tuple[Path, Path]) -> None:
    stores = [SqliteStore(*paths) for _ in range(4)]
    try:
        for round_ in range(8):
            now = 1000.0 * (round_ + 1)
            expected = fill(stores[0], 30, now)
            start = threading.Barrier(len(stores))

            def run(
                i: int, now: float = now, start: threading.Barrier = start
            ) -> list[tuple[str, str]]:
                start.wait()
                return drain(stores[i], f"node{i}", now, limit=1 + i % 3)

            with ThreadPoolExecutor(max_workers=len(stores)) as pool:
                results = list(pool.map(run, range(len(stores))))
            got = [row for rows in results for row in rows]
            assert len(got) == len(set(got))  # nobody got a row twice
            assert set(got) == expected  # and every row went to someone
    finally:
        for s in stores:
            s.close()


_CLAIMER = """
import json, sys
from pathlib import Path
from postbote.store.sqlite import SqliteStore
db, queue, node = sys.argv[1:4]
with SqliteStore(Path(db), Path(queue)) as s:
    print("ready", flush=True)
    sys.stdin.readline()
    got = []
    while claims := s.claim(5000.0, node=node, lease=600.0, limit=2):
        got += [[c.message_id, r] for c in claims for r in c.recipients]
    print(json.dumps(got), flush=True)
"""


def test_processes_never_share_a_row(paths: tuple[Path, Path], store: SqliteStore) -> None:
    expected = fill(store, 150, 1000.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(paths[0]), str(paths[1]), f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        for p in procs:  # both are ready, then both go
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0]
    got = [tuple(row) for out in outputs for row in json.loads(out)]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert all(e.state == "inflight" for e in store.list_queue())


# --- the queue against a model ---------------------------------------------------------------


@dataclass
class Row:
    state: str = "queued"
    attempts: int = 0
    next_attempt: float = 0.0
    node: str | None = None
    lease_until: float = 0.0
    report: str | None = None


ADDRESSES = ("a@one.test", "b@ONE.test", "c@two.test", "d@three.test")
NODES = ("n1", "n2")
LEASE = 30.0


def model_domain(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower()


class QueueModel(RuleBasedStateMachine):
    """Random sequences of every queue operation, checked against a few dicts."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="queue-model-"))
        self.store = SqliteStore(self.dir / "db", self.dir / "queue")
        self.now = 1000.0
        self.created: dict[str, float] = {}
        self.rows: dict[tuple[str, str], Row] = {}
        self.claims: list[tuple[str, Claim]] = []  # (node, claim) not recorded yet

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    def due(self, row: Row) -> bool:
        if row.state == "inflight":
            return row.lease_until < self.now
        return row.state in ("queued", "deferred") and row.next_attempt <= self.now

    @rule(msg=st.sampled_from(["m1", "m2", "m3"]), rcpts=st.sets(st.sampled_from(ADDRESSES)))
    def enqueue(self, msg: str, rcpts: set[str]) -> None:
        self.store.enqueue(envelope(msg, self.now), msg.encode(), sorted(rcpts))
        if rcpts:
            self.created.setdefault(msg, self.now)
        for rcpt in rcpts:
            self.rows.setdefault((msg, rcpt), Row(next_attempt=self.now))

    @rule(seconds=st.sampled_from([0.0, 1.0, 10.0, 31.0, 100.0]))
    def wait(self, seconds: float) -> None:
        self.now += seconds

    @rule(node=st.sampled_from(NODES), limit=st.integers(1, 4))
    def claim(self, node: str, limit: int) -> None:
        expected: list[tuple[str, str, tuple[str, ...]]] = []
        for msg in sorted(self.created, key=lambda m: (self.created[m], m)):
            groups: dict[str, list[str]] = {}
            for (m, rcpt), row in sorted(self.rows.items()):
                if m == msg and self.due(row):
                    groups.setdefault(model_domain(rcpt), []).append(rcpt)
            expected += [(msg, d, tuple(r)) for d, r in sorted(groups.items())]
        expected = expected[:limit]
        claims = self.store.claim(self.now, node=node, lease=LEASE, limit=limit)
        assert [(c.message_id, c.domain, c.recipients) for c in claims] == expected
        for c in claims:
            self.claims.append((node, c))
            for rcpt in c.recipients:
                row = self.rows[(c.message_id, rcpt)]
                row.state, row.node, row.lease_until = "inflight", node, self.now + LEASE
                row.attempts += 1
                assert c.attempts >= row.attempts

    @precondition(lambda self: self.claims)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(
            [("delivered", None), ("failed", "failed"), ("deferred", None), ("deferred", "delayed")]
        ),
    )
    def record(self, data: st.DataObject, outcome: tuple[str, str | None]) -> None:
        node, claim = self.claims.pop(data.draw(st.integers(0, len(self.claims) - 1)))
        state, report = outcome
        results = [
            RecipientResult(r, state, "reply", self.now + 50.0, report=report)
            for r in claim.recipients
        ]
        self.store.record(node, claim.message_id, results)
        for rcpt in claim.recipients:
            row = self.rows.get((claim.message_id, rcpt))
            if row is None or row.state != "inflight" or row.node != node:
                continue  # deleted, or taken over after the lease expired
            row.state, row.node = state, None
            if state == "deferred":
                row.next_attempt = self.now + 50.0
            if report is not None:
                row.report = report
            elif state != "deferred" and row.report == "delayed":
                row.report = None

    @rule(node=st.sampled_from(NODES))
    def recover(self, node: str) -> None:
        n = 0
        for row in self.rows.values():
            if row.state == "inflight" and (row.node == node or row.lease_until < self.now):
                row.state, row.node, row.next_attempt = "deferred", None, self.now
                n += 1
        assert self.store.recover(node, self.now) == n

    @rule(msg=st.sampled_from(["m1", "m2", "m3"]), op=st.sampled_from(["hold", "release"]))
    def hold_or_release(self, msg: str, op: str) -> None:
        if msg not in self.created:
            with pytest.raises(NotFound):
                getattr(self.store, op)(msg) if op == "hold" else self.store.release(msg, 0)
            return
        n = 0
        for (m, _), row in self.rows.items():
            if m == msg and op == "hold" and row.state in ("queued", "deferred"):
                row.state, n = "held", n + 1
            elif m == msg and op == "release" and row.state == "held":
                row.state, row.next_attempt, n = "deferred", self.now, n + 1
        got = self.store.hold(msg) if op == "hold" else self.store.release(msg, self.now)
        assert got == n

    @rule()
    def flush(self) -> None:
        deferred = [row for row in self.rows.values() if row.state == "deferred"]
        for row in deferred:
            row.next_attempt = min(row.next_attempt, self.now)
        assert self.store.flush(self.now) == len(deferred)

    @rule()
    def reports(self) -> None:
        for work in self.store.pending_reports(10):
            rcpts = [e.recipient for e in work.entries]
            assert all(self.rows[(work.message_id, r)].report for r in rcpts)
            self.store.reports_sent(work.message_id, rcpts)
            for r in rcpts:
                self.rows[(work.message_id, r)].report = None

    @rule()
    def purge(self) -> None:
        done = [
            msg
            for msg in self.created
            if all(
                row.state in ("delivered", "failed") and row.report is None
                for (m, _), row in self.rows.items()
                if m == msg
            )
        ]
        assert sorted(self.store.purge()) == sorted(done)
        for msg in done:
            self.forget(msg)

    @rule(msg=st.sampled_from(["m1", "m2", "m3"]))
    def delete(self, msg: str) -> None:
        if msg not in self.created:
            with pytest.raises(NotFound):
                self.store.delete(msg)
            return
        self.store.delete(msg)
        self.forget(msg)

    def forget(self, msg: str) -> None:
        del self.created[msg]
        self.rows = {k: v for k, v in self.rows.items() if k[0] != msg}

    @invariant()
    def same_rows(self) -> None:
        got = {
            (e.message_id, e.recipient): (e.state, e.attempts, e.next_attempt, e.report)
            for e in self.store.list_queue()
        }
        want = {k: (r.state, r.attempts, r.next_attempt, r.report) for k, r in self.rows.items()}
        assert got == want
        assert {state for state, *_ in got.values()} <= set(QUEUE_STATES)
        files = sorted(p.name for p in (self.dir / "queue").iterdir())
        assert files == sorted(f"{m}.eml" for m in self.created)


QueueModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestQueueModel = QueueModel.TestCase
