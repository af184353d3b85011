"""Tests for Maildir snapshots: stable UIDs, sizes, moves, expunge, the index and the locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from postbote.store import mailbox as mailbox_module
from postbote.store.mailbox import (
    INDEX_LOCK_NAME,
    INDEX_NAME,
    Mailbox,
    MailboxStore,
    Snapshot,
    StoredMessage,
    crlf_size,
)
from postbote.store.maildir import MaildirItem, deliver_batch, mailbox_root

BASE_NS = 1_700_000_000 * 10**9
MSG = b"Subject: hi\r\n\r\nbody\r\n"


def deliver(
    root: Path, name: str, data: bytes = MSG, mtime_ns: int | None = None, sub: str = "new"
) -> Path:
    """Deliver like maildir.py (tmp/ then rename), with a chosen modification time."""
    tmp = root / "tmp" / name.partition(":")[0]
    tmp.write_bytes(data)
    if mtime_ns is not None:
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
    path = root / sub / name
    os.rename(tmp, path)
    return path


def by_key(snap: Snapshot) -> dict[str, StoredMessage]:
    return {m.key: m for m in snap.messages}


def uids(snap: Snapshot) -> dict[str, int]:
    return {m.key: m.uid for m in snap.messages}


@pytest.fixture
def box(tmp_path: Path) -> Mailbox:
    return Mailbox(mailbox_root(tmp_path, "alice@example.org"))


def test_mailbox_implements_the_protocol(box: Mailbox) -> None:
    store: MailboxStore = box
    assert store.snapshot().messages == ()


def test_creates_maildir_directories_0700(tmp_path: Path) -> None:
    root = tmp_path / "mail" / "example.org" / "bob"
    Mailbox(root)
    for d in (root.parent, root, *(root / s for s in ("tmp", "new", "cur"))):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_uids_ascend_in_delivery_order(box: Mailbox) -> None:
    # Delivery order is (mtime, key): not the order of the names, nor of the listing.
    deliver(box.root, "300.c.host", mtime_ns=BASE_NS + 1)
    deliver(box.root, "100.a.host", mtime_ns=BASE_NS + 3)
    deliver(box.root, "200.z.host", mtime_ns=BASE_NS + 2)
    deliver(box.root, "200.y.host", mtime_ns=BASE_NS + 2)
    snap = box.snapshot()
    assert [m.key for m in snap.messages] == [
        "300.c.host",
        "200.y.host",
        "200.z.host",
        "100.a.host",
    ]
    assert [m.uid for m in snap.messages] == [1, 2, 3, 4]
    assert snap.uidvalidity > 0


def test_uids_stable_across_snapshots_restarts_and_moves(box: Mailbox) -> None:
    for i in range(5):
        deliver(box.root, f"1.m{i}.host", mtime_ns=BASE_NS + i)
    first = box.snapshot()
    assert box.snapshot() == first
    restarted = Mailbox(box.root)
    assert restarted.snapshot() == first
    # An IMAP client or another tool moves messages to cur/ and changes flags.
    os.rename(box.root / "new" / "1.m1.host", box.root / "cur" / "1.m1.host:2,RS")
    restarted.mark_seen([m for m in first.messages if m.key == "1.m3.host"])
    again = Mailbox(box.root).snapshot()
    assert again.uidvalidity == first.uidvalidity
    assert uids(again) == uids(first)
    assert by_key(again)["1.m1.host"].flags == "RS"
    assert by_key(again)["1.m3.host"].path == box.root / "cur" / "1.m3.host:2,S"


def test_expunged_uid_is_never_given_again(box: Mailbox) -> None:
    deliver(box.root, "1.a.host", mtime_ns=BASE_NS)
    deliver(box.root, "1.b.host", mtime_ns=BASE_NS + 1)
    snap = box.snapshot()
    box.expunge([by_key(snap)["1.b.host"]])
    assert uids(box.snapshot()) == {"1.a.host": 1}
    # Even the same key delivered again is a new message with a new UID.
    deliver(box.root, "1.b.host", mtime_ns=BASE_NS + 2)
    deliver(box.root, "1.c.host", mtime_ns=BASE_NS + 3)
    assert uids(Mailbox(box.root).snapshot()) == {"1.a.host": 1, "1.b.host": 3, "1.c.host": 4}


def test_mail_arriving_after_a_snapshot_gets_higher_uids(box: Mailbox) -> None:
    deliver(box.root, "1.a.host", mtime_ns=BASE_NS + 50)
    held = box.snapshot()
    deliver(box.root, "1.b.host", mtime_ns=BASE_NS)  # older mtime, arrived later
    assert held.messages == box.snapshot().messages[:1]
    assert uids(box.snapshot()) == {"1.a.host": 1, "1.b.host": 2}


def test_uidl_is_uidvalidity_and_uid_in_hex(box: Mailbox) -> None:
    deliver(box.root, "1.a.host")
    snap = box.snapshot()
    uidl = snap.uidl(snap.messages[0])
    assert uidl == f"{snap.uidvalidity:08x}00000001"
    assert re.fullmatch(r"[\x21-\x7e]{1,70}", uidl)  # RFC 1939 §7


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"", 0),
        (b"a\r\nb\r\n", 6),
        (b"a\nb\n", 6),  # bare LF is sent as CRLF
        (b"a\rb\r", 6),  # so is a bare CR
        (b"a\r\r\nb", 6),
        (b"\n\r", 4),
        (b"no final newline", 16),
        (b"x" * 3000 + b"\n" * 3000, 9000),
    ],
)
def test_size_counts_crlf_line_endings(box: Mailbox, data: bytes, size: int) -> None:
    deliver(box.root, "1.a.host", data)
    assert box.snapshot().messages[0].size == size


@given(st.binary(max_size=64).map(lambda b: b.replace(b"\x00", b"\r")), st.integers(1, 7))
@settings(max_examples=300)
def test_crlf_size_matches_normalisation_in_any_chunking(data: bytes, chunk: int) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        f.seek(0)
        assert crlf_size(f.fileno(), chunk) == len(re.sub(rb"\r\n|\r|\n", b"\r\n", data))


def test_size_is_computed_once_and_cached(box: Mailbox) -> None:
    path = deliver(box.root, "1.a.host", b"12345\n")
    assert box.snapshot().messages[0].size == 7
    index = json.loads((box.root / INDEX_NAME).read_bytes())
    assert index["messages"] == {"1.a.host": [1, 7]}
    path.write_bytes(b"changed behind our back")  # Maildir files are never rewritten
    assert box.snapshot().messages[0].size == 7


def test_foreign_names_and_info(box: Mailbox) -> None:
    deliver(box.root, "1700000000.M1P2.host,S=123:2,TS", sub="cur", mtime_ns=BASE_NS)
    deliver(box.root, "1700000001.M2P2.host,S=9", sub="cur", mtime_ns=BASE_NS + 1)
    deliver(box.root, "1700000002.M3P2.host,S=9", mtime_ns=BASE_NS + 2)
    (box.root / "new" / ".hidden").write_bytes(b"not a message")
    (box.root / "cur" / "subdir").mkdir()
    snap = box.snapshot()
    assert [(m.key, m.flags) for m in snap.messages] == [
        ("1700000000.M1P2.host,S=123", "ST"),
        ("1700000001.M2P2.host,S=9", ""),
        ("1700000002.M3P2.host,S=9", ""),
    ]
    box.mark_seen(snap.messages)
    assert sorted(os.listdir(box.root / "cur")) == [
        "1700000000.M1P2.host,S=123:2,TS",  # already seen: left as it was
        "1700000001.M2P2.host,S=9:2,S",
        "1700000002.M3P2.host,S=9:2,S",
        "subdir",
    ]


def test_mark_seen_moves_and_keeps_flags_sorted(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(box.root, "1.new.host", mtime_ns=BASE_NS)
    deliver(box.root, "1.flagged.host:2,TF", sub="cur", mtime_ns=BASE_NS + 1)
    deliver(box.root, "1.plain.host:2,", sub="cur", mtime_ns=BASE_NS + 2)
    deliver(box.root, "1.seen.host:2,RS", sub="cur", mtime_ns=BASE_NS + 3)
    snap = box.snapshot()
    synced: list[Path] = []
    monkeypatch.setattr(mailbox_module, "fsync_path", synced.append)
    box.mark_seen(snap.messages)
    assert sorted(set(synced)) == [box.root / "cur", box.root / "new"]
    assert os.listdir(box.root / "new") == []
    assert sorted(os.listdir(box.root / "cur")) == [
        "1.flagged.host:2,FST",
        "1.new.host:2,S",
        "1.plain.host:2,S",
        "1.seen.host:2,RS",
    ]
    monkeypatch.undo()
    after = box.snapshot()
    assert [(m.uid, m.flags) for m in after.messages] == [(1, "S"), (2, "FST"), (3, "S"), (4, "RS")]
    box.mark_seen(snap.messages)  # stale paths: found by key, nothing left to change
    assert box.snapshot() == after


def test_expunge_removes_files_wherever_they_are(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        deliver(box.root, f"1.m{i}.host", mtime_ns=BASE_NS + i)
    snap = box.snapshot()
    os.rename(box.root / "new" / "1.m1.host", box.root / "cur" / "1.m1.host:2,S")
    os.unlink(box.root / "new" / "1.m2.host")  # gone already: skipped
    synced: list[Path] = []
    monkeypatch.setattr(mailbox_module, "fsync_path", synced.append)
    box.expunge(snap.messages[:3])
    assert sorted(set(synced)) == [box.root / "cur", box.root / "new"]
    monkeypatch.undo()
    assert os.listdir(box.root / "cur") == []
    assert os.listdir(box.root / "new") == ["1.m3.host"]
    assert uids(box.snapshot()) == {"1.m3.host": 4}


def test_read_follows_moves_and_reports_vanished_messages(box: Mailbox) -> None:
    deliver(box.root, "1.a.host", b"message a")
    deliver(box.root, "1.b.host", b"message b")
    a, b = sorted(box.snapshot().messages, key=lambda m: m.key)
    assert box.read(a) == b"message a"
    os.rename(box.root / "new" / "1.a.host", box.root / "cur" / "1.a.host:2,S")
    assert box.read(a) == b"message a"
    box.mark_seen([a])
    os.rename(box.root / "cur" / "1.a.host:2,S", box.root / "cur" / "1.a.host:2,RS")
    assert box.read(a) == b"message a"
    os.unlink(box.root / "new" / "1.b.host")
    with pytest.raises(FileNotFoundError):
        box.read(b)


def test_missing_index_gets_a_larger_uidvalidity(box: Mailbox) -> None:
    deliver(box.root, "1.a.host", mtime_ns=BASE_NS)
    deliver(box.root, "1.b.host", mtime_ns=BASE_NS + 1)
    first = box.snapshot()
    os.unlink(box.root / INDEX_NAME)
    other = Mailbox(box.root)  # a new process, the same second: only the disk remembers
    second = other.snapshot()
    assert second.uidvalidity > first.uidvalidity
    assert uids(second) == uids(first)
    (box.root / INDEX_LOCK_NAME).unlink()
    os.unlink(box.root / INDEX_NAME)
    assert other.snapshot().uidvalidity > second.uidvalidity  # this object remembers


@pytest.mark.parametrize(
    "corrupt",
    [
        b"",
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format":"other"}',
        b'{"format":"postbote-mailbox-index/1","uidvalidity":0,"next_uid":1,"messages":{}}',
        b'{"format":"postbote-mailbox-index/1","uidvalidity":5,"next_uid":2,'
        b'"messages":{"a":[2,1]}}',  # uid not below next_uid
        b'{"format":"postbote-mailbox-index/1","uidvalidity":5,"next_uid":9,'
        b'"messages":{"a":[2,1],"b":[2,1]}}',  # one uid, two keys
        b'{"format":"postbote-mailbox-index/1","uidvalidity":5,"next_uid":9,'
        b'"messages":{"a":[true,1]}}',
        b'{"format":"postbote-mailbox-index/1","uidvalidity":5,"next_uid":9,'
        b'"messages":{"a":[1,-1]}}',
    ],
)
def test_corrupt_index_is_rebuilt_with_a_larger_uidvalidity(box: Mailbox, corrupt: bytes) -> None:
    deliver(box.root, "1.a.host")
    first = box.snapshot()
    (box.root / INDEX_NAME).write_bytes(corrupt)
    rebuilt = Mailbox(box.root).snapshot()  # a new process, the same second
    assert rebuilt.uidvalidity > first.uidvalidity
    assert uids(rebuilt) == {"1.a.host": 1}
    assert json.loads((box.root / INDEX_NAME).read_bytes())["uidvalidity"] == rebuilt.uidvalidity


def test_torn_index_uidvalidity_is_salvaged(box: Mailbox) -> None:
    deliver(box.root, "1.a.host")
    first = box.snapshot()
    raw = (box.root / INDEX_NAME).read_bytes()
    (box.root / INDEX_NAME).write_bytes(raw[: len(raw) - 3])  # torn, its number intact
    (box.root / INDEX_LOCK_NAME).write_bytes(b"")  # the record of issued values lost too
    rebuilt = Mailbox(box.root, clock=lambda: first.uidvalidity - 100.0).snapshot()
    assert rebuilt.uidvalidity == first.uidvalidity + 1


def test_rebuilt_index_takes_the_clock_when_nothing_is_known(box: Mailbox) -> None:
    deliver(box.root, "1.a.host")
    first = box.snapshot()
    os.unlink(box.root / INDEX_NAME)
    os.unlink(box.root / INDEX_LOCK_NAME)
    rebuilt = Mailbox(box.root, clock=lambda: first.uidvalidity + 1000.5).snapshot()
    assert rebuilt.uidvalidity == first.uidvalidity + 1000


def test_uid_exhaustion_renumbers_under_a_new_uidvalidity(box: Mailbox) -> None:
    deliver(box.root, "1.a.host", mtime_ns=BASE_NS)
    deliver(box.root, "1.b.host", mtime_ns=BASE_NS + 1)
    first = box.snapshot()
    index = json.loads((box.root / INDEX_NAME).read_bytes())
    index["next_uid"] = 0xFFFFFFFF
    index["messages"] = {"1.a.host": [0xFFFFFFFD, 5], "1.b.host": [0xFFFFFFFE, 6]}
    (box.root / INDEX_NAME).write_text(json.dumps(index))
    deliver(box.root, "1.c.host", mtime_ns=BASE_NS + 2)
    deliver(box.root, "1.d.host", mtime_ns=BASE_NS + 3)
    snap = box.snapshot()
    assert snap.uidvalidity > first.uidvalidity
    assert [(m.key, m.uid, m.size) for m in snap.messages] == [
        ("1.a.host", 1, 5),
        ("1.b.host", 2, 6),
        ("1.c.host", 3, len(MSG)),
        ("1.d.host", 4, len(MSG)),
    ]


def test_index_write_failure_fails_the_snapshot(
    box: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(box.root, "1.a.host")
    first = box.snapshot()
    deliver(box.root, "1.b.host")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        box.snapshot()
    monkeypatch.undo()
    assert uids(box.snapshot()) == {"1.a.host": 1, "1.b.host": 2}
    assert box.snapshot().uidvalidity == first.uidvalidity


def test_maildir_delivery_and_snapshot_work_together(tmp_path: Path) -> None:
    root = mailbox_root(tmp_path, "carol@example.org")
    items = [MaildirItem(root, f"ID{i}", b"m%d\n" % i, 1_700_000_000 + i) for i in range(3)]
    assert deliver_batch(items, "mx.example.org") == [None] * 3
    snap = Mailbox(root).snapshot()
    assert [(m.key, m.size) for m in snap.messages] == [
        (f"{1_700_000_000 + i}.ID{i}.mx.example.org", 4) for i in range(3)
    ]


# -- the POP3 session lock ----------------------------------------------------------------


def test_lock_exclusive_one_holder_at_a_time(box: Mailbox) -> None:
    lock = box.lock_exclusive()
    assert lock is not None and lock.held
    other = Mailbox(box.root)
    assert other.lock_exclusive() is None
    assert box.lock_exclusive() is None  # the same object, a second session
    lock.release()
    assert not lock.held
    lock.release()  # idempotent
    second = other.lock_exclusive()
    assert second is not None
    with second:
        assert box.lock_exclusive() is None
    assert not second.held
    relock = box.lock_exclusive()
    assert relock is not None
    relock.release()


def test_lock_is_released_when_garbage_collected(box: Mailbox) -> None:
    lock = box.lock_exclusive()
    assert lock is not None
    del lock
    later = box.lock_exclusive()
    assert later is not None
    later.release()


def _hold_lock_and_die(root: str, locked: Any, die: Any) -> None:
    lock = Mailbox(Path(root)).lock_exclusive()
    assert lock is not None
    locked.set()
    die.wait(30)
    os._exit(0)  # no release: the kernel drops the flock


def test_lock_is_released_when_the_process_dies(box: Mailbox) -> None:
    ctx = multiprocessing.get_context("spawn")
    locked, die = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock_and_die, args=(str(box.root), locked, die))
    proc.start()
    try:
        assert locked.wait(30)
        assert box.lock_exclusive() is None
    finally:
        die.set()
        proc.join(30)
    assert proc.exitcode == 0
    lock = box.lock_exclusive()
    assert lock is not None
    lock.release()


# -- concurrency between processes --------------------------------------------------------


def _deliverer(root: str, count: int, go: Any) -> None:
    go.wait(30)
    for i in range(count):
        item = MaildirItem(Path(root), f"D{i}", b"x\n" * (i % 5), 1_700_000_000)
        assert deliver_batch([item], "mx.example.org") == [None]


def _snapshotter(root: str, rounds: int, worker: int, out: str, go: Any) -> None:
    box = Mailbox(Path(root))
    seen: list[tuple[int, str, int]] = []
    go.wait(30)
    for r in range(rounds):
        snap = box.snapshot()
        assert [m.uid for m in snap.messages] == sorted({m.uid for m in snap.messages})
        seen.extend((snap.uidvalidity, m.key, m.uid) for m in snap.messages)
        box.mark_seen(m for m in snap.messages if (m.uid + r) % 3 == worker)
        box.expunge(m for m in snap.messages if m.uid % 11 == worker and r % 4 == 0)
    Path(out).write_text(json.dumps(seen))


def test_concurrent_processes_never_disagree_on_uids(tmp_path: Path) -> None:
    root = tmp_path / "box"
    Mailbox(root)
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    outs = [tmp_path / f"seen{w}.json" for w in range(3)]
    procs = [ctx.Process(target=_deliverer, args=(str(root), 300, go))]
    procs += [
        ctx.Process(target=_snapshotter, args=(str(root), 100, w, str(out), go))
        for w, out in enumerate(outs)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(100)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    seen = [tuple(t) for out in outs for t in json.loads(out.read_text())]
    seen += [(s.uidvalidity, m.key, m.uid) for s in [Mailbox(root).snapshot()] for m in s.messages]
    assert len({v for v, _, _ in seen}) == 1
    key_to_uid: dict[str, int] = {}
    uid_to_key: dict[int, str] = {}
    for _, key, uid in seen:
        assert key_to_uid.setdefault(key, uid) == uid
        assert uid_to_key.setdefault(uid, key) == key
    assert len(key_to_uid) == 300


# -- a model: random deliveries, moves, expunges, restarts and snapshots -------------------


class MailboxModel(RuleBasedStateMachine):
    """Files on disk are the truth; the model remembers every UID ever handed out."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.box = Mailbox(self.tmp / "box")
        self.data: dict[str, bytes] = {}  # present messages
        self.mtime: dict[str, int] = {}
        self.counter = 0
        self.uidvalidity = 0
        self.uid_of: dict[str, int] = {}  # under self.uidvalidity
        self.key_of: dict[int, str] = {}
        self.snap: Snapshot | None = None

    def teardown(self) -> None:
        shutil.rmtree(self.tmp)

    def file_of(self, key: str) -> Path | None:
        for sub in ("new", "cur"):
            for name in os.listdir(self.box.root / sub):
                if name.partition(":")[0] == key:
                    return self.box.root / sub / name
        return None

    @initialize()
    def first_snapshot(self) -> None:
        self.check_snapshot()

    @rule(target=keys, data=st.binary(max_size=20), same_time=st.booleans(), foreign=st.booleans())
    def deliver(self, data: bytes, same_time: bool, foreign: bool) -> str:
        self.counter += 1
        key = f"{self.counter}.M{self.counter}P7.host,S=1" if foreign else f"9.k{self.counter}.h"
        mtime = BASE_NS + (self.counter // 3 if same_time else self.counter) * 1000
        deliver(self.box.root, key, data, mtime_ns=mtime)
        self.data[key], self.mtime[key] = data, mtime
        return key

    @rule(key=consumes(keys), ours=st.booleans())
    def expunge(self, key: str, ours: bool) -> None:
        msg = None if self.snap is None else by_key(self.snap).get(key)
        if ours and msg is not None:
            self.box.expunge([msg])  # maybe moved since the snapshot: found by key
        else:
            path = self.file_of(key)
            assert path is not None
            os.unlink(path)
        del self.data[key]

    @rule(key=keys)
    def mark_seen(self, key: str) -> None:
        msg = None if self.snap is None else by_key(self.snap).get(key)
        if msg is not None:
            self.box.mark_seen([msg])

    @rule(key=keys, flag=st.sampled_from("FRT"))
    def another_tool_flags(self, key: str, flag: str) -> None:
        path = self.file_of(key)
        if path is not None:
            key_, _, info = path.name.partition(":")
            flags = "".join(sorted(set(info[2:]) | {flag}))
            os.rename(path, self.box.root / "cur" / f"{key_}:2,{flags}")

    @rule()
    def restart(self) -> None:
        self.box = Mailbox(self.box.root)

    @rule(corrupt=st.booleans())
    def lose_index(self, corrupt: bool) -> None:
        if corrupt:
            (self.box.root / INDEX_NAME).write_bytes(b'{"format":')
        else:
            os.unlink(self.box.root / INDEX_NAME)
        self.check_snapshot(expect_new_uidvalidity=True)

    @rule()
    def take_snapshot(self) -> None:
        self.check_snapshot()

    def check_snapshot(self, expect_new_uidvalidity: bool = False) -> None:
        snap = self.box.snapshot()
        assert (snap.uidvalidity > self.uidvalidity) == expect_new_uidvalidity or (
            self.uidvalidity == 0
        )
        if snap.uidvalidity != self.uidvalidity:
            self.uidvalidity, self.uid_of, self.key_of = snap.uidvalidity, {}, {}
        got = [m.uid for m in snap.messages]
        assert got == sorted(set(got))  # ascending and unique
        assert {m.key for m in snap.messages} == set(self.data)
        top = max(self.key_of, default=0)
        arrivals = [m for m in snap.messages if m.key not in self.uid_of]
        assert all(m.uid > top for m in arrivals)  # never reused, always higher
        assert [m.key for m in arrivals] == sorted(
            (m.key for m in arrivals), key=lambda k: (self.mtime[k], k)
        )
        for m in snap.messages:
            assert self.uid_of.setdefault(m.key, m.uid) == m.uid  # stable
            assert self.key_of.setdefault(m.uid, m.key) == m.key
            assert m.size == len(re.sub(rb"\r\n|\r|\n", b"\r\n", self.data[m.key]))
            assert m.path == self.file_of(m.key)
            assert self.box.read(m) == self.data[m.key]
        self.snap = snap

    @invariant()
    def index_matches_disk(self) -> None:
        index = json.loads((self.box.root / INDEX_NAME).read_bytes())
        assert index["uidvalidity"] == self.uidvalidity
        assert index["next_uid"] > max(self.key_of, default=0)


TestMailboxModel = MailboxModel.TestCase
TestMailboxModel.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
