"""The delivery worker process and its framing (queue/worker.py, queue/frames.py)."""

from __future__ import annotations

import email
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from postbote.envelope import Envelope, Recipient
from postbote.queue import frames
from postbote.queue.local import Deliverer
from postbote.queue.worker import serve
from postbote.spool import SpooledMessage
from postbote.store.sqlite import SqliteStore


def message(i: int, *rcpts: str) -> SpooledMessage:
    env = Envelope(
        id=f"ID{i:04d}",
        sender="sender@remote.test",
        recipients=tuple(Recipient(r) for r in rcpts),
        received_at=1_700_000_000.0,
    )
    return SpooledMessage(env, f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())


def test_message_frame_round_trip() -> None:
    m = message(1, "a@example.test", "b@remote.test")
    for fresh in (True, False):
        buf = bytearray(frames.encode_message(m, fresh))
        (payload,) = frames.split_frames(buf)
        assert buf == b""
        assert frames.decode_message(payload) == (m, fresh)


def test_split_frames_keeps_partial_frames() -> None:
    data = frames.encode_ids(b"D", ["a", "b"]) + frames.encode_ids(b"F", ["c"])
    buf = bytearray()
    got: list[bytes] = []
    for i in range(len(data)):  # byte by byte
        buf += data[i : i + 1]
        got += frames.split_frames(buf)
    assert [frames.decode_ids(p) for p in got] == [["a", "b"], ["c"]]
    assert [p[:1] for p in got] == [b"D", b"F"]


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "db", tmp_path / "queue")
    s.add_domain("example.test")
    s.add_user("alice@example.test", "pw")
    yield s
    s.close()


def run_worker(store: SqliteStore, data_dir: Path, messages: list[tuple[SpooledMessage, bool]]):
    """Feed the worker loop through real pipes; return the report frames."""
    to_worker_r, to_worker_w = os.pipe()
    from_worker_r, from_worker_w = os.pipe()
    deliverer = Deliverer(directory=store, queue=store, data_dir=data_dir, hostname="mx.test")
    thread = threading.Thread(target=serve, args=(deliverer, to_worker_r, from_worker_w))
    thread.start()
    for m, fresh in messages:
        os.write(to_worker_w, frames.encode_message(m, fresh))
    os.close(to_worker_w)  # EOF: the worker finishes and returns
    thread.join(30)
    assert not thread.is_alive()
    os.close(from_worker_w)
    buf = bytearray()
    while chunk := os.read(from_worker_r, 1 << 16):
        buf += chunk
    os.close(from_worker_r)
    os.close(to_worker_r)
    return frames.split_frames(buf)


def test_worker_delivers_and_reports_done(store: SqliteStore, tmp_path: Path) -> None:
    msgs = [(message(i, "alice@example.test"), True) for i in range(5)]
    reports = run_worker(store, tmp_path, msgs)
    assert reports[0] == b"R"
    done = [i for p in reports[1:] if p[:1] == b"D" for i in frames.decode_ids(p)]
    assert sorted(done) == [f"ID{i:04d}" for i in range(5)]
    files = sorted((tmp_path / "mail" / "example.test" / "alice" / "new").iterdir())
    assert len(files) == 5
    assert all(f.read_bytes().startswith(b"Return-Path: <sender@remote.test>\r\n") for f in files)


def test_worker_redelivery_is_idempotent(store: SqliteStore, tmp_path: Path) -> None:
    m = message(7, "alice@example.test")
    run_worker(store, tmp_path, [(m, True)])
    reports = run_worker(store, tmp_path, [(m, False)])  # e.g. after a crash
    assert frames.decode_ids(reports[1]) == ["ID0007"] and reports[1][:1] == b"D"
    assert len(list((tmp_path / "mail" / "example.test" / "alice" / "new").iterdir())) == 1


def test_worker_queues_remote_and_unwritable_mailboxes(store: SqliteStore, tmp_path: Path) -> None:
    broken = tmp_path / "mail" / "example.test"
    broken.mkdir(parents=True)
    (broken / "alice").write_text("not a directory")  # delivery to alice must fail
    store.add_alias("both@example.test", ["alice@example.test", "ext@remote.test"])
    reports = run_worker(
        store,
        tmp_path,
        [(message(1, "ext@remote.test"), True), (message(2, "alice@example.test"), True)],
    )
    kinds = {p[:1]: frames.decode_ids(p) for p in reports[1:]}
    # alice's mailbox cannot be written: her copy waits in the outbound queue, which
    # retries it on its schedule and bounces it in the end; the spool is done with both.
    assert kinds[b"D"] == ["ID0001", "ID0002"] and b"F" not in kinds
    assert [(e.message_id, e.recipient) for e in store.list_queue()] == [
        ("ID0001", "ext@remote.test"),
        ("ID0002", "alice@example.test"),
    ]


def _deliver(store: SqliteStore, data_dir: Path, *rcpts: Recipient) -> SpooledMessage:
    m = message(7)
    m = SpooledMessage(replace(m.envelope, recipients=rcpts), m.body)
    deliverer = Deliverer(directory=store, queue=store, data_dir=data_dir, hostname="mx.test")
    assert deliverer.deliver([(m, True)]) == (["ID0007"], [])
    return m


def _queued_params(store: SqliteStore, address: str) -> Recipient:
    (rcpt,) = [r for r in store.show("ID0007").envelope.recipients if r.address == address]
    return rcpt


def test_alias_targets_in_the_queue_keep_the_senders_dsn_parameters(
    store: SqliteStore, tmp_path: Path
) -> None:
    """RFC 3461 for aliases: the remote target inherits NOTIFY (without SUCCESS) and the
    ORCPT, or the alias address as one; the sender's SUCCESS request is answered with an
    "expanded" report for the alias."""
    store.add_alias("team@example.test", ["alice@example.test", "ext@remote.test"])
    _deliver(store, tmp_path, Recipient("team@example.test", notify=("SUCCESS", "FAILURE")))
    assert _queued_params(store, "ext@remote.test") == Recipient(
        "ext@remote.test", notify=("FAILURE",), orcpt="rfc822;team@example.test"
    )
    (report_id,) = {e.message_id for e in store.list_queue()} - {"ID0007"}
    report = email.message_from_bytes(store.queued_body(report_id))
    fields = report.get_payload()[1].get_payload()[1]  # the per-recipient block
    assert fields["Action"] == "expanded" and fields["Final-Recipient"].endswith(
        "team@example.test"
    )


@pytest.mark.parametrize(
    ("notify", "orcpt", "expected"),
    [
        (("NEVER",), None, Recipient("ext@remote.test", ("NEVER",), "rfc822;list@example.test")),
        (("SUCCESS",), "rfc822;x@y", Recipient("ext@remote.test", ("NEVER",), "rfc822;x@y")),
        (None, None, Recipient("ext@remote.test", None, "rfc822;list@example.test")),
    ],
)
def test_alias_target_notify_and_orcpt(
    store: SqliteStore,
    tmp_path: Path,
    notify: tuple[str, ...] | None,
    orcpt: str | None,
    expected: Recipient,
) -> None:
    store.add_alias("list@example.test", ["ext@remote.test"])
    _deliver(store, tmp_path, Recipient("list@example.test", notify=notify, orcpt=orcpt))
    assert _queued_params(store, "ext@remote.test") == expected
    reports = {e.message_id for e in store.list_queue()} - {"ID0007"}
    assert len(reports) == (1 if notify == ("SUCCESS",) else 0)


def test_a_recipient_given_directly_keeps_its_own_dsn_parameters(
    store: SqliteStore, tmp_path: Path
) -> None:
    store.add_alias("list@example.test", ["ext@remote.test"])
    own = Recipient("ext@remote.test", notify=("DELAY",), orcpt="rfc822;own@x")
    _deliver(store, tmp_path, own, Recipient("list@example.test", notify=("NEVER",)))
    assert _queued_params(store, "ext@remote.test") == own
