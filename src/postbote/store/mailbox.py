"""Mailbox views over Maildir, with persistent and stable message identifiers.

Owns the per-mailbox index ``root/postbote.index`` (UIDVALIDITY, the next UID, and for
every message key its UID and its CRLF size) and the two lock files beside it:
``postbote.index.lock`` serialises index updates and our own renames between processes
(and records the highest UIDVALIDITY issued, in case the index is lost),
``postbote.pop3.lock`` gives one POP3 session per mailbox. UIDs ascend in the order
messages are first seen and are never reused under one UIDVALIDITY (RFC 9051 §2.3.1.1),
so they serve as POP3 UIDLs now and IMAP UIDs later. Delivery itself is maildir.py's.
Everything here is synchronous: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeGuard

from postbote.errors import StoreError
from postbote.fsutil import fsync_path

_log = logging.getLogger(__name__)

INDEX_NAME = "postbote.index"
INDEX_LOCK_NAME = "postbote.index.lock"
POP3_LOCK_NAME = "postbote.pop3.lock"
_INDEX_TMP_NAME = "postbote.index.tmp"
_FORMAT = "postbote-mailbox-index/1"
_MAX_UID = 0xFFFFFFFF  # RFC 9051 §2.3.1.1 / §9 nz-number: UIDs and UIDVALIDITY are 32-bit
_CHUNK = 1 << 20
_SUBDIRS = ("tmp", "new", "cur")
_UIDVALIDITY_RE = re.compile(rb'"uidvalidity"\s*:\s*(\d{1,10})')


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a snapshot."""

    uid: int  # per mailbox, ascending in the order first seen, never reused
    key: str  # the Maildir unique part (name before ":"), stable across new/ -> cur/
    size: int  # RFC 1939 §5: octets with CRLF line endings (bare CR or LF counts as 2)
    flags: str  # Maildir info flags, sorted ("" in new/, e.g. "S", "RS" in cur/)
    path: Path  # where the file was when the snapshot was taken


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The messages of a mailbox at one moment, in ascending UID order."""

    uidvalidity: int
    messages: tuple[StoredMessage, ...]

    def uidl(self, m: StoredMessage) -> str:
        """RFC 1939 §7: a unique-id of 1..70 characters 0x21-0x7E, never reused. Includes
        UIDVALIDITY so a rebuilt index never repeats an old id for another message."""
        return f"{self.uidvalidity:08x}{m.uid:08x}"


class MailboxLock:
    """An exclusive lock on one mailbox (flock on ``postbote.pop3.lock``).

    Held until ``release()``, the end of a ``with`` block, garbage collection of the
    object, or the death of the process (the kernel drops the flock with the file)."""

    def __init__(self, fd: int) -> None:
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def release(self) -> None:
        """Release the lock; calling it again does nothing."""
        self._finalizer()

    def __enter__(self) -> MailboxLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class MailboxStore(Protocol):
    """What a retrieval server (POP3 now, IMAP later) needs from a mailbox.

    Synchronous; called from a worker thread. Messages delivered while a snapshot is in
    use are not in it; the next ``snapshot()`` gives them higher UIDs."""

    def snapshot(self) -> Snapshot:
        """The current messages with their UIDs, persisted before this returns. Raises
        OSError (e.g. disk full) if the index cannot be made durable."""
        ...

    def read(self, m: StoredMessage) -> bytes:
        """The message as stored, wherever it moved; FileNotFoundError if it is gone."""
        ...

    def expunge(self, messages: Iterable[StoredMessage]) -> None:
        """Delete the messages (ones already gone are skipped); durable on return."""
        ...

    def mark_seen(self, messages: Iterable[StoredMessage]) -> None:
        """Add the Seen flag (Maildir "S"), moving new/ messages to cur/; durable."""
        ...

    def lock_exclusive(self) -> MailboxLock | None:
        """The mailbox's session lock, or None if anyone holds it (RFC 2449 §8 IN-USE)."""
        ...


@dataclass(slots=True)
class _Index:
    uidvalidity: int
    next_uid: int
    entries: dict[str, tuple[int, int]]  # key -> (uid, size)
    dirty: bool = False  # differs from what is on disk


class Mailbox:
    """A Maildir mailbox seen through its persistent UID index (implements MailboxStore).

    Driven only by method calls; holds no open files between calls except the locks it
    hands out. Several Mailbox objects, threads and processes may use one mailbox at
    once: index updates take ``postbote.index.lock``."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock  # UNIX time, for new UIDVALIDITY values
        self._last_uidvalidity = 0  # the highest seen: a rebuilt index goes above it
        if not self.root.is_dir():
            for parent in reversed(self.root.parents):
                if not parent.is_dir():
                    parent.mkdir(mode=0o700, exist_ok=True)
        for d in (self.root, *(self.root / s for s in _SUBDIRS)):
            if not d.is_dir():
                d.mkdir(mode=0o700, exist_ok=True)

    # -- snapshots --------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._index_lock() as lock_fd:
            index = self._load_index(lock_fd)
            found = _list_messages(self.root)
            for key in index.entries.keys() - found.keys():
                del index.entries[key]  # expunged: its UID is never given out again
                index.dirty = True
            fresh = _new_arrivals(found, index.entries)
            if fresh:
                if index.next_uid + len(fresh) - 1 > _MAX_UID:
                    index = self._renumbered(lock_fd, index)
                for _, key, size in fresh:  # delivery order
                    index.entries[key] = (index.next_uid, size)
                    index.next_uid += 1
                index.dirty = True
            if index.dirty:
                self._write_index(index)
        messages: list[StoredMessage] = []
        for key, (path, flags) in found.items():
            entry = index.entries.get(key)
            if entry is not None:  # else it vanished before we could size it
                messages.append(StoredMessage(entry[0], key, entry[1], flags, path))
        messages.sort(key=lambda m: m.uid)
        return Snapshot(index.uidvalidity, tuple(messages))

    def _renumbered(self, lock_fd: int, index: _Index) -> _Index:
        """UIDs ran out: a new UIDVALIDITY, UIDs from 1 again (RFC 9051 §2.3.1.1)."""
        order = sorted(index.entries.items(), key=lambda kv: kv[1][0])
        entries = {key: (uid, size) for uid, (key, (_, size)) in enumerate(order, start=1)}
        uidvalidity = self._new_uidvalidity(lock_fd, index.uidvalidity)
        _log.warning("mailbox %s: UIDs exhausted, new UIDVALIDITY %d", self.root, uidvalidity)
        return _Index(uidvalidity, len(entries) + 1, entries, dirty=True)

    # -- the index file -----------------------------------------------------------------

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[int]:
        """Hold ``postbote.index.lock`` (blocking); yields its descriptor."""
        fd = os.open(self.root / INDEX_LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def _load_index(self, lock_fd: int) -> _Index:
        """The index on disk; a missing or corrupt one is replaced by an empty index with
        a new, larger UIDVALIDITY (so no UID is ever reused under an old one)."""
        path = self.root / INDEX_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            index = _Index(self._new_uidvalidity(lock_fd, 0), 1, {}, dirty=True)
        else:
            try:
                index = _parse_index(raw)
            except ValueError as exc:
                old = _salvage_uidvalidity(raw)
                index = _Index(self._new_uidvalidity(lock_fd, old), 1, {}, dirty=True)
                _log.warning(
                    "mailbox %s: corrupt index (%s), new UIDVALIDITY %d",
                    self.root,
                    exc,
                    index.uidvalidity,
                )
        self._last_uidvalidity = max(self._last_uidvalidity, index.uidvalidity)
        return index

    def _new_uidvalidity(self, lock_fd: int, old: int) -> int:
        """The current UNIX time, or more than every UIDVALIDITY known to be used: ``old``,
        the highest this object saw, and the highest ever issued here, which the lock file
        records (it survives the loss of the index). Recorded before it is used."""
        try:
            issued = int(os.pread(lock_fd, 32, 0).strip() or b"0")
        except ValueError:
            issued = 0
        if not 0 <= issued < _MAX_UID:
            issued = 0  # garbage, not a value we wrote
        value = max(int(self._clock()), old + 1, self._last_uidvalidity + 1, issued + 1)
        if value > _MAX_UID:
            raise StoreError(f"mailbox {self.root}: UIDVALIDITY exhausted")
        data = b"%d\n" % value
        if os.pwrite(lock_fd, data, 0) != len(data):  # in place: never an empty record
            raise OSError(errno.EIO, "short write", str(self.root / INDEX_LOCK_NAME))
        os.ftruncate(lock_fd, len(data))
        os.fsync(lock_fd)
        return value

    def _write_index(self, index: _Index) -> None:
        """Write tmp, fsync, rename over the index, fsync the directory."""
        doc = {
            "format": _FORMAT,
            "uidvalidity": index.uidvalidity,
            "next_uid": index.next_uid,
            "messages": {k: [uid, size] for k, (uid, size) in index.entries.items()},
        }
        data = json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        tmp = self.root / _INDEX_TMP_NAME
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.root / INDEX_NAME)
        fsync_path(self.root)
        index.dirty = False

    # -- messages -------------------------------------------------------------------------

    def read(self, m: StoredMessage) -> bytes:
        path: Path | None = m.path
        for _ in range(3):  # it may move again between finding and opening it
            if path is None:
                break
            try:
                return path.read_bytes()
            except FileNotFoundError:
                path = _locate(self.root, m.key)
        raise FileNotFoundError(errno.ENOENT, "message no longer in the mailbox", str(m.path))

    def expunge(self, messages: Iterable[StoredMessage]) -> None:
        with self._index_lock():
            touched = self._apply(messages, _unlink)
            for d in sorted(touched):
                fsync_path(d)

    def mark_seen(self, messages: Iterable[StoredMessage]) -> None:
        # Under the index lock: a rename inside cur/ while snapshot() lists it could hide
        # the message from that listing, which would drop its UID.
        with self._index_lock():
            touched = self._apply(messages, _add_seen)
            for d in sorted(touched):
                fsync_path(d)

    def _apply(
        self, messages: Iterable[StoredMessage], op: Callable[[Path], set[Path]]
    ) -> set[Path]:
        """Run ``op`` on each message's current file; skip messages that are gone.
        Returns the directories ``op`` changed."""
        touched: set[Path] = set()
        listing: dict[str, tuple[Path, str]] | None = None
        for m in messages:
            path: Path | None = m.path
            for attempt in range(3):
                if path is None:
                    break
                try:
                    touched |= op(path)
                    break
                except FileNotFoundError:
                    if listing is None or attempt > 0:
                        listing = _list_messages(self.root)
                    found = listing.get(m.key)
                    path = None if found is None else found[0]
        return touched

    # -- the POP3 session lock ----------------------------------------------------------------

    def lock_exclusive(self) -> MailboxLock | None:
        # RFC 1939 §8 / RFC 2449 §8 "[IN-USE]": one POP3 session per mailbox. flock belongs
        # to the open file description, so a second open in this process conflicts too.
        path = self.root / POP3_LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return MailboxLock(fd)


# -- helpers ----------------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str, str]:
    """(key, info, sorted flags) of a Maildir file name ``key[:info]``.

    maildir.html: the info part starts at ":"; "2," introduces the flags, which are kept
    in ASCII order. Other info ("1,...") carries no flags we know."""
    key, _, info = name.partition(":")
    flags = "".join(sorted(set(info[2:]))) if info.startswith("2,") else ""
    return key, info, flags


def _list_messages(root: Path) -> dict[str, tuple[Path, str]]:
    """key -> (path, flags) for every message file in new/ and cur/.

    new/ is listed before cur/: a message moved new/ -> cur/ during the listing is then
    seen at least once. A key in both (a tool's crash) is taken from cur/."""
    found: dict[str, tuple[Path, str]] = {}
    for sub in ("new", "cur"):
        directory = root / sub
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it if not e.name.startswith(".") and e.is_file())
        for name in names:
            key, _, flags = _split_name(name)
            if key:
                found[key] = (directory / name, flags)
    return found


def _new_arrivals(
    found: dict[str, tuple[Path, str]], entries: dict[str, tuple[int, int]]
) -> list[tuple[int, str, int]]:
    """(mtime_ns, key, size) of the messages without a UID, in delivery order. A file
    that vanished since the listing is left for the next snapshot."""
    fresh: list[tuple[int, str, int]] = []
    for key, (path, _) in found.items():
        if key in entries:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fresh.append((os.fstat(fd).st_mtime_ns, key, crlf_size(fd)))
        finally:
            os.close(fd)
    fresh.sort()
    return fresh


def crlf_size(fd: int, chunk_size: int = _CHUNK) -> int:
    """The size of the open file's content once every line ending is CRLF (RFC 1939 §5
    LIST: "exact size"; §3: lines end in CRLF). A bare CR or LF counts as 2 octets, as
    the POP3 core sends them; no line ending is added at the end."""
    size = 0
    prev_cr = False
    while chunk := os.read(fd, chunk_size):
        crlf = chunk.count(b"\r\n") + (prev_cr and chunk[0] == 0x0A)
        size += len(chunk) + chunk.count(b"\r") + chunk.count(b"\n") - 2 * crlf
        prev_cr = chunk[-1] == 0x0D
    return size


def _parse_index(raw: bytes) -> _Index:
    """Parse and check the index; ValueError if anything is off."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError("unknown format")
    uidvalidity, next_uid, messages = (
        doc.get("uidvalidity"),
        doc.get("next_uid"),
        doc.get("messages"),
    )
    if not _is_int(uidvalidity, 1, _MAX_UID) or not _is_int(next_uid, 1, _MAX_UID + 1):
        raise ValueError("bad uidvalidity or next_uid")
    if not isinstance(messages, dict):
        raise ValueError("bad messages")
    entries: dict[str, tuple[int, int]] = {}
    uids: set[int] = set()
    for key, value in messages.items():
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"bad entry for {key!r}")
        uid, size = value
        if not _is_int(uid, 1, next_uid - 1) or not _is_int(size, 0, None) or uid in uids:
            raise ValueError(f"bad entry for {key!r}")
        uids.add(uid)
        entries[key] = (uid, size)
    return _Index(uidvalidity, next_uid, entries)


def _is_int(value: object, low: int, high: int | None) -> TypeGuard[int]:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def _salvage_uidvalidity(raw: bytes) -> int:
    """The UIDVALIDITY a corrupt index still shows, else 0."""
    match = _UIDVALIDITY_RE.search(raw)
    return 0 if match is None else min(int(match.group(1)), _MAX_UID - 1)


def _locate(root: Path, key: str) -> Path | None:
    """Where the message ``key`` is now (new/ or cur/), or None."""
    candidate = root / "new" / key
    if candidate.is_file():
        return candidate
    found = _list_messages(root).get(key)
    return None if found is None else found[0]


def _unlink(path: Path) -> set[Path]:
    os.unlink(path)
    return {path.parent}


def _add_seen(path: Path) -> set[Path]:
    """new/key -> cur/key:2,S; cur/key:2,FL -> cur/key:2,FLS (maildir.html: flags in
    ASCII order). Messages already seen, or with info other than "2,", are left alone."""
    key, info, flags = _split_name(path.name)
    in_new = path.parent.name == "new"
    if info and not info.startswith("2,"):
        return set()
    if "S" in flags and not in_new:
        return set()
    cur = path.parent.parent / "cur"
    target = cur / f"{key}:2,{''.join(sorted(set(flags) | {'S'}))}"
    os.rename(path, target)
    return {path.parent, cur}
