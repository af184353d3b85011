"""Durable acceptance: an append-only journal with group commit.

The spool owns the promise behind "250" at the end of DATA: a server that accepts a
message takes responsibility for it and must not lose it when the host crashes
(RFC 5321 §6.1). ``Spool.accept`` returns only after an ``fdatasync`` covering the
message's record has completed; ``Spool.recover`` returns, after any crash, every
accepted message that was not marked done, each exactly once.

Group commit: ``accept`` appends its record to an in-memory list and waits on a future.
One committer task takes *all* waiting records, writes them with one ``os.pwrite`` and
has one ``os.fdatasync`` done by the sync helper process (spool_sync.py; the event loop
keeps serving other sessions meanwhile), then resolves the futures. Records arriving
during a sync form the next batch, so one sync covers the messages of many sessions.
Small batches are written from the event loop; large ones, segment creation and deletion
use a worker thread.

On-disk format (version 1). The directory holds ``seg-<20-digit number>.log`` files;
lexical order is creation order. A segment is a sequence of records::

    offset  size  field
    0       1     magic/version byte 0xA1
    1       1     type: 1 = MESSAGE, 2 = DONE
    2       4     payload length N (u32, little-endian)
    6       4     CRC-32 (zlib) of bytes 0..5 followed by the payload (u32, little-endian)
    10      N     payload

    MESSAGE payload: u32 length J of the envelope JSON, J bytes Envelope.to_json(), body
    DONE payload:    the spool id (UTF-8) of a message recorded earlier

Invariants: a batch is written only after the previous batch's sync completed, so in
the newest segment everything after the first invalid record belongs to an unacknowledged
batch: recovery truncates it (a torn tail). A new segment's directory entry is synced
before any record in it is acknowledged. DONE records are written with the next batch
but not waited for (redelivery is idempotent). A segment is deleted once all its
messages are done and no older segment still exists whose DONE records it holds; each
unlink is followed by a directory fsync, so a crash cannot resurrect a message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from postbote.envelope import Envelope
from postbote.errors import SpoolError, SpoolFull
from postbote.fsutil import fsync_path
from postbote.spool_sync import SyncHelper

log = logging.getLogger(__name__)

MAGIC = 0xA1  # format version 1
MESSAGE = 1
DONE = 2
_HEADER = struct.Struct("<BBII")
_U32 = struct.Struct("<I")
PREFILL = 4 << 20  # bytes of zeros kept ahead of the last record (see Spool._append)
_INLINE_WRITE = 256 << 10  # larger batches are written by the worker thread (Spool._write)
_SPACE_TTL = 0.1  # seconds a has_space() measurement is reused
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_SEGMENT_RE = re.compile(r"seg-(\d{20})\.log")
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUV"  # RFC 4648 base32hex: ids sort by time


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """One accepted message as recorded in the spool."""

    envelope: Envelope
    body: bytes


@dataclass(eq=False, slots=True)
class _Segment:
    number: int
    path: Path
    size: int = 0
    undone: set[str] = field(default_factory=set)  # ids of its messages not yet done
    refs: set[int] = field(default_factory=set)  # older segments its DONE records refer to
    fd: int = -1  # open only while active
    filled: int = 0  # bytes of the file already written (zeros ahead of ``size``)
    broken: bool = False  # a failed write could not be rolled back: rotate away


@dataclass(eq=False, slots=True)
class _Pending:
    kind: int
    id: str
    record: bytes
    future: asyncio.Future[None] | None = None  # MESSAGE only
    target: _Segment | None = None  # DONE only: the segment holding the message


def encode_record(kind: int, *parts: bytes) -> bytes:
    """Serialise one record whose payload is the concatenation of ``parts``."""
    length = sum(len(p) for p in parts)
    head = _HEADER.pack(MAGIC, kind, length, 0)[:6]
    crc = zlib.crc32(head)
    for p in parts:
        crc = zlib.crc32(p, crc)
    return b"".join((head, _U32.pack(crc), *parts))


def _read_records(f: BinaryIO) -> tuple[list[tuple[int, bytes]], int, str | None]:
    """Read records until EOF or the first invalid one: (records, good end, problem)."""
    records: list[tuple[int, bytes]] = []
    good = 0
    while True:
        head = f.read(_HEADER.size)
        if not head:
            return records, good, None
        if len(head) < _HEADER.size:
            return records, good, "truncated header"
        magic, kind, length, crc = _HEADER.unpack(head)
        if magic == 0 and _rest_is_zero(head, f):
            return records, good, None  # the preallocated, never used end of a segment
        if magic != MAGIC or kind not in (MESSAGE, DONE):
            return records, good, "bad magic or type"
        payload = f.read(length)
        if len(payload) < length:
            return records, good, "truncated payload"
        if zlib.crc32(payload, zlib.crc32(head[:6])) != crc:
            return records, good, "CRC mismatch"
        records.append((kind, payload))
        good += _HEADER.size + length


def _rest_is_zero(head: bytes, f: BinaryIO) -> bool:
    """True if ``head`` and everything after it in ``f`` are zero bytes."""
    if head.strip(b"\0"):
        return False
    while chunk := f.read(1 << 20):
        if chunk.strip(b"\0"):
            return False
    return True


def _decode_message(payload: bytes) -> SpooledMessage:
    (jlen,) = _U32.unpack_from(payload)
    end = _U32.size + jlen
    if end > len(payload):
        raise ValueError("envelope length exceeds record")
    return SpooledMessage(Envelope.from_json(payload[_U32.size : end]), payload[end:])


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _spool_error(exc: OSError) -> SpoolError:
    if exc.errno in _FULL_ERRNOS:
        return SpoolFull(f"spool full: {exc.strerror}")
    return SpoolError(f"spool write failed: {exc.strerror}")


class Spool:
    """The durable spool of accepted, not yet delivered messages.

    Driven by: ``accept`` (SMTP sessions, on the event loop), ``mark_done`` (the delivery
    side, on the event loop), and the committer task started by ``start``. Lifecycle:
    ``recover()`` once, then ``await start()``, then ``await close()``. One process at a
    time: ``recover`` takes an exclusive lock on ``<directory>/lock``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_size: int = 64 * 2**20,
        min_free_space: int = 100 * 2**20,
    ) -> None:
        self._dir = Path(directory)
        self._segment_size = segment_size
        self._min_free = min_free_space
        self._free = 0
        self._space_at = float("-inf")
        self._segments: dict[int, _Segment] = {}  # ascending by number
        self._where: dict[str, _Segment] = {}  # undone id -> its segment
        self._inflight: set[str] = set()  # ids accepted but not yet committed
        self._active: _Segment | None = None
        self._next_number = 1
        self._pending: list[_Pending] = []
        self._deferred_done: list[_Pending] = []  # DONE records whose write failed
        self._check_deletions = False
        self._lock_fd = -1
        self._recovered = False
        self._closing = False
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._syncer: SyncHelper | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._id_random = "".join(_ID_ALPHABET[b & 31] for b in os.urandom(6))
        self._id_last_us = 0
        self._id_counter = 0

    # -- ids ---------------------------------------------------------------------------

    def new_id(self) -> str:
        """A new spool id: 11 chars of time in µs, 6 random chars, a 4-char counter.

        Unique across restarts and machines (time + random), sortable by time, and
        strictly increasing within one Spool even if the clock steps back.
        """
        now = max(time.time_ns() // 1000, self._id_last_us)
        if now == self._id_last_us:
            self._id_counter += 1
            if self._id_counter >= 32**4:
                now, self._id_counter = now + 1, 0
        else:
            self._id_counter = 0
        self._id_last_us = now
        # 11 base32hex digits of ``now`` and 4 of the counter, from one encoding of 80
        # bits whose top 5 are zero (``now`` fits in 55 bits until the year 3111).
        digits = base64.b32hexencode(((now << 20) | self._id_counter).to_bytes(10, "big"))
        return digits[1:12].decode() + self._id_random + digits[12:].decode()

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> list[SpooledMessage]:
        """Load the journal; return the messages not done, in acceptance order."""
        if self._recovered:
            raise SpoolError("recover() may be called only once")
        try:
            return self._recover()
        except OSError as exc:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            raise SpoolError(f"spool recovery failed: {exc}") from exc

    def _recover(self) -> list[SpooledMessage]:
        self._prepare_directory()
        numbers = sorted(
            int(m.group(1)) for name in os.listdir(self._dir) if (m := _SEGMENT_RE.fullmatch(name))
        )
        self._next_number = (numbers[-1] + 1) if numbers else 1
        live: dict[str, tuple[_Segment, SpooledMessage]] = {}
        for i, number in enumerate(numbers):
            seg = _Segment(number, self._segment_path(number))
            self._load_segment(seg, live, last=i == len(numbers) - 1)
            self._segments[number] = seg
        self._where = {msg_id: seg for msg_id, (seg, _) in live.items()}
        self._recovered = True
        for seg in self._deletable():
            self._unlink_segment(seg.path)
            del self._segments[seg.number]
        return [msg for _, msg in live.values()]

    def _prepare_directory(self) -> None:
        if not self._dir.is_dir():
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_path(self._dir.parent)
        fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"spool {self._dir} is in use by another process") from exc
        self._lock_fd = fd

    def _load_segment(
        self, seg: _Segment, live: dict[str, tuple[_Segment, SpooledMessage]], *, last: bool
    ) -> None:
        with open(seg.path, "rb") as f:
            records, good, problem = _read_records(f)
        for kind, payload in records:
            if kind == DONE:
                entry = live.pop(payload.decode("utf-8", "replace"), None)
                if entry is not None:
                    entry[0].undone.discard(entry[1].envelope.id)
                    if entry[0] is not seg:
                        seg.refs.add(entry[0].number)
                continue
            try:
                msg = _decode_message(payload)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("spool %s: undecodable message record skipped: %s", seg.path, exc)
                continue
            earlier = live.get(msg.envelope.id)
            if earlier is not None:  # accept() refuses duplicates; keep the newest copy
                log.warning("spool %s: duplicate id %s", seg.path, msg.envelope.id)
                earlier[0].undone.discard(msg.envelope.id)
            live[msg.envelope.id] = (seg, msg)
            seg.undone.add(msg.envelope.id)
        seg.size = good
        if problem is None:
            return
        if last:
            # A torn tail: never acknowledged (see the module docstring). Cut it off so
            # the journal is valid again before anything is appended.
            log.warning("spool %s: %s at offset %d, truncating torn tail", seg.path, problem, good)
            fd = os.open(seg.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        else:
            log.error("spool %s: %s at offset %d, rest of segment skipped", seg.path, problem, good)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open a new segment for appending and start the committer task."""
        if not self._recovered or self._task is not None or self._closing:
            raise SpoolError("start() needs recover() first and may be called once")
        self._loop = loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spool-commit")
        self._syncer = SyncHelper()
        self._wake = asyncio.Event()
        try:
            await self._syncer.start()
            await self._syncer.sync(self._lock_fd)  # the helper works (or the server stops)
            await self._rotate()
        except OSError as exc:
            await self._syncer.close()
            raise _spool_error(exc) from exc
        self._task = loop.create_task(self._committer(), name="spool-committer")

    async def close(self) -> None:
        """Write and sync everything pending, then stop. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None and self._wake is not None:
            self._wake.set()
            await self._task
        if self._syncer is not None:
            await self._syncer.close()
        if self._executor is not None:
            active = self._active
            if active is not None and active.fd >= 0:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, _sync_and_close, active.fd, active.size
                )
                active.fd = -1
            self._executor.shutdown(wait=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._closed = True

    # -- the hot path ------------------------------------------------------------------

    async def accept(self, envelope: Envelope, body: bytes) -> None:
        """Record one message; return once it is on stable storage.

        Raises SpoolFull (disk full, quota, free space below ``min_free_space``) or
        SpoolError (any other I/O error); the journal stays valid either way. If the
        caller is cancelled while waiting, the message counts as not accepted (its sender
        saw no "250"): a record already written is marked done at once.
        """
        if self._task is None or self._closing or self._wake is None or self._loop is None:
            raise SpoolError("spool is not running")
        msg_id = envelope.id
        if not msg_id or msg_id in self._where or msg_id in self._inflight:
            raise SpoolError(f"invalid or duplicate spool id {msg_id!r}")
        env = envelope.to_json()
        record = encode_record(MESSAGE, _U32.pack(len(env)), env, body)
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending.append(_Pending(MESSAGE, msg_id, record, future))
        self._inflight.add(msg_id)
        self._wake.set()
        try:
            await future
        finally:
            self._inflight.discard(msg_id)

    def mark_done(self, ids: Iterable[str]) -> None:
        """Queue DONE records for delivered messages (written with the next batch).

        Call from the event-loop thread. Unknown or already done ids are ignored.
        """
        for msg_id in ids:
            seg = self._where.pop(msg_id, None)
            if seg is None:
                continue
            seg.undone.discard(msg_id)
            record = encode_record(DONE, msg_id.encode("utf-8", "surrogatepass"))
            self._pending.append(_Pending(DONE, msg_id, record, target=seg))
            self._check_deletions = True
        if self._wake is not None and self._pending:
            self._wake.set()

    def has_space(self, needed: int = 0) -> bool:
        """True if the spool's filesystem keeps ``min_free_space`` after ``needed`` bytes.

        This runs for every MAIL and every batch, so the free space is measured at most
        every ``_SPACE_TTL`` seconds and the spool's own writes are subtracted meanwhile;
        anything else filling the disk faster than that makes the write fail with ENOSPC,
        which is refused with SpoolFull too."""
        return self._free_space() - needed >= self._min_free

    def _free_space(self) -> int:
        now = time.monotonic()
        if now - self._space_at > _SPACE_TTL:
            st = os.statvfs(self._dir)
            self._free, self._space_at = st.f_bavail * st.f_frsize, now
        return self._free

    @property
    def pending_count(self) -> int:
        """Messages accepted (or recovered) and not yet marked done."""
        return len(self._where)

    # -- the committer -----------------------------------------------------------------

    async def _committer(self) -> None:
        assert self._wake is not None
        last_try = False
        while True:
            if not self._pending:
                if not self._closing:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                if last_try or not self._deferred_done:
                    break
                last_try = True  # one more try for DONE records whose write failed
            batch = self._deferred_done + self._pending
            self._deferred_done, self._pending = [], []
            try:
                await self._commit(batch)
            except Exception:  # never leave a session waiting forever
                log.exception("spool committer failed")
                _fail(batch, SpoolError("internal spool error"))

    async def _commit(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if p.future is None or not p.future.done()]
        if not batch:
            return
        try:
            seg = await self._ensure_segment()
            kept = self._fits(batch)
            data = b"".join(p.record for p, keep in zip(batch, kept, strict=True) if keep)
            # DONE records need no sync of their own (module docstring).
            sync = any(p.kind == MESSAGE for p, keep in zip(batch, kept, strict=True) if keep)
            if data:
                await self._write(seg, data, sync=sync)
        except OSError as exc:
            self._deferred_done.extend(p for p in batch if p.kind == DONE)
            _fail(batch, _spool_error(exc))
            return
        seg.size += len(data)
        self._free -= len(data)
        orphans: list[str] = []
        for p, keep in zip(batch, kept, strict=True):
            if p.kind == DONE:
                target = p.target
                if target is not None and target is not seg and self._is_live(target):
                    seg.refs.add(target.number)
            elif not keep:
                _fail([p], SpoolFull("spool free space below minimum"))
            elif p.future is not None:
                seg.undone.add(p.id)
                self._where[p.id] = seg
                if p.future.cancelled():
                    orphans.append(p.id)  # its sender never saw "250": not accepted
                elif not p.future.done():
                    p.future.set_result(None)
        self.mark_done(orphans)
        if self._check_deletions:
            await self._delete_done_segments()

    def _fits(self, batch: list[_Pending]) -> list[bool]:
        """Which records to write: messages only while ``min_free_space`` stays free."""
        budget = self._free_space() - self._min_free
        kept: list[bool] = []
        for p in batch:
            keep = p.kind == DONE or len(p.record) <= budget
            budget -= len(p.record) if keep else 0
            kept.append(keep)
        return kept

    async def _write(self, seg: _Segment, data: bytes, *, sync: bool) -> None:
        """Append one batch, then (if ``sync``) have the sync helper make it durable.

        A small batch is written from the event loop: into the page cache, a few µs, and
        no hand-off to the worker thread (see spool_sync.py for why that matters). A large
        one, or one that needs the zero-filled end extended, is written by the thread. A
        failed write or sync is cut off again, so the journal stays valid."""
        loop, syncer = self._loop, self._syncer
        assert loop is not None and syncer is not None
        try:
            if seg.size + len(data) > seg.filled or len(data) > _INLINE_WRITE:
                await loop.run_in_executor(self._executor, self._append, seg, data)
            else:
                _pwrite_all(seg.fd, data, seg.size)
            if sync:
                await syncer.sync(seg.fd)
        except OSError:
            await loop.run_in_executor(self._executor, self._roll_back, seg)
            raise

    def _append(self, seg: _Segment, data: bytes) -> None:
        """Worker thread: write a batch, zero-filling ``PREFILL`` bytes ahead of it.

        With the zeros in place, most syncs only write data into blocks the file already
        owns: no size change, no journal commit, about half the latency of a sync that
        grows the file. The zeros are synced with the batch."""
        end = seg.size + len(data)
        if end > seg.filled:
            target = end + PREFILL
            _pwrite_all(seg.fd, bytes(target - seg.filled), seg.filled)
            seg.filled = target
        _pwrite_all(seg.fd, data, seg.size)

    def _roll_back(self, seg: _Segment) -> None:
        """Worker thread: cut a failed write off so the segment stays a valid journal."""
        try:
            os.ftruncate(seg.fd, seg.size)
            seg.filled = seg.size
            os.fdatasync(seg.fd)
        except OSError as exc:
            log.error("spool %s: cannot truncate failed write: %s", seg.path, exc)
            seg.broken = True

    async def _ensure_segment(self) -> _Segment:
        seg = self._active
        if seg is None or seg.broken or seg.size >= self._segment_size:
            seg = await self._rotate()
        return seg

    async def _rotate(self) -> _Segment:
        number = self._next_number
        path = self._segment_path(number)
        old = self._active
        fd = await asyncio.get_running_loop().run_in_executor(
            self._executor,
            self._create_segment,
            path,
            old.fd if old else -1,
            old.size if old else 0,
        )
        self._next_number = number + 1
        seg = _Segment(number, path, fd=fd)
        self._segments[number] = seg
        self._active = seg
        if old is not None:
            old.fd = -1
            self._check_deletions = True
        return seg

    def _create_segment(self, path: Path, old_fd: int, old_size: int) -> int:
        """Worker thread: create the segment and make its directory entry durable."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            fsync_path(self._dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if old_fd >= 0:
            # All its batches were synced already; drop the unused zero-filled end.
            with contextlib.suppress(OSError):
                os.ftruncate(old_fd, old_size)
            os.close(old_fd)
        return fd

    # -- deletion ----------------------------------------------------------------------

    def _is_live(self, seg: _Segment) -> bool:
        return self._segments.get(seg.number) is seg

    def _deletable(self) -> list[_Segment]:
        """Segments that may go, oldest first (see the module docstring)."""
        existing = set(self._segments)
        victims: list[_Segment] = []
        for number, seg in self._segments.items():
            if seg is self._active:
                break
            if not seg.undone and not (seg.refs & existing):
                victims.append(seg)
                existing.discard(number)
        return victims

    async def _delete_done_segments(self) -> None:
        self._check_deletions = False
        victims = self._deletable()
        if not victims:
            return
        deleted = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._unlink_in_order, [s.path for s in victims]
        )
        for seg in victims[:deleted]:
            del self._segments[seg.number]
        if deleted < len(victims):
            self._check_deletions = True  # retry with a later batch

    def _unlink_in_order(self, paths: list[Path]) -> int:
        """Worker thread: unlink oldest first, stopping at the first failure."""
        for i, path in enumerate(paths):
            try:
                self._unlink_segment(path)
            except OSError as exc:
                log.error("spool: cannot delete %s: %s", path, exc)
                return i
        return len(paths)

    def _unlink_segment(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fsync_path(self._dir)

    def _segment_path(self, number: int) -> Path:
        return self._dir / f"seg-{number:020d}.log"


def _sync_and_close(fd: int, size: int) -> None:
    """Drop the unused zero-filled end, sync, close."""
    try:
        os.ftruncate(fd, size)
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _fail(batch: list[_Pending], exc: SpoolError) -> None:
    for p in batch:
        if p.future is not None and not p.future.done():
            p.future.set_exception(exc)
