"""Tests for the group-commit spool: round trips, torn tails, rotation, faults, SIGKILL."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from postbote.envelope import Envelope, Recipient
from postbote.errors import SpoolError, SpoolFull
from postbote.spool import Spool
from postbote.spool_sync import SyncHelper

REAL_SYNC = SyncHelper.sync  # the spool's fdatasync runs in a helper (spool_sync.py)

pytestmark = pytest.mark.timeout(60)


def make_envelope(spool: Spool, n: int = 0) -> Envelope:
    return Envelope(
        id=spool.new_id(),
        sender="alice@example.org",
        recipients=(
            Recipient("bob@example.net", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;bob@x"),
            Recipient("carol@example.net"),
        ),
        received_at=1_700_000_000.25 + n,
        body_type="8BITMIME",
        smtputf8=True,
        envid=f"env-{n}",
        client_ip="127.0.0.1",
        helo="client.example",
        tls=True,
        extra={"n": str(n), "ü": "ß"},
    )


def body_for(n: int, size: int = 1024) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size] + f"#{n}".encode()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def recover_all(directory: Path, **kwargs: int) -> list[tuple[Envelope, bytes]]:
    spool = Spool(directory, **kwargs)
    try:
        return [(m.envelope, m.body) for m in spool.recover()]
    finally:
        asyncio.run(spool.close())


async def running(directory: Path, **kwargs: int) -> Spool:
    spool = Spool(directory, **kwargs)
    spool.recover()
    await spool.start()
    return spool


async def accept_n(spool: Spool, count: int, first: int = 0) -> list[tuple[Envelope, bytes]]:
    out = []
    for n in range(first, first + count):
        env = make_envelope(spool, n)
        await spool.accept(env, body_for(n))
        out.append((env, body_for(n)))
    return out


def test_accept_then_recover_is_byte_identical(tmp_path: Path) -> None:
    directory = tmp_path / "spool"

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(directory)
        accepted = await accept_n(spool, 3)
        big = make_envelope(spool, 99)
        await spool.accept(big, b"\r\n.\r\n\x00" * 500_000)  # a 3 MB body in one record
        accepted.append((big, b"\r\n.\r\n\x00" * 500_000))
        assert spool.pending_count == 4
        await spool.close()
        return accepted

    accepted = asyncio.run(run())
    assert recover_all(directory) == accepted
    assert directory.stat().st_mode & 0o777 == 0o700


def test_mark_done_then_recover_returns_nothing_and_deletes_segments(tmp_path: Path) -> None:
    async def run() -> None:
        spool = await running(tmp_path)
        accepted = await accept_n(spool, 5)
        spool.mark_done([env.id for env, _ in accepted[:2]])
        spool.mark_done(["unknown-id", accepted[0][0].id])  # ignored
        assert spool.pending_count == 3
        spool.mark_done([env.id for env, _ in accepted[2:]])
        assert spool.pending_count == 0
        await spool.close()

    asyncio.run(run())
    assert recover_all(tmp_path) == []
    assert segments(tmp_path) == []


def test_recovered_messages_come_back_until_marked_done(tmp_path: Path) -> None:
    async def first() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        accepted = await accept_n(spool, 4)
        spool.mark_done([accepted[1][0].id])
        await spool.close()
        return accepted

    accepted = asyncio.run(first())

    async def second() -> None:
        spool = Spool(tmp_path)
        recovered = spool.recover()
        assert [(m.envelope, m.body) for m in recovered] == [accepted[i] for i in (0, 2, 3)]
        await spool.start()
        assert spool.pending_count == 3
        spool.mark_done([recovered[0].envelope.id])
        await spool.close()

    asyncio.run(second())
    assert recover_all(tmp_path) == [accepted[2], accepted[3]]


def test_torn_tail_at_every_offset_recovers_earlier_records_and_appends(tmp_path: Path) -> None:
    source = tmp_path / "source"

    async def write() -> tuple[list[tuple[Envelope, bytes]], int, int]:
        spool = await running(source)
        accepted = await accept_n(spool, 2)
        (seg,) = segments(source)
        assert spool._active is not None
        good = spool._active.size  # the file itself is zero-filled ahead (PREFILL)
        env = Envelope(id=spool.new_id(), sender="", recipients=(), received_at=0.0)
        await spool.accept(env, b"x" * 8)
        end = spool._active.size
        await spool.close()
        assert seg.stat().st_size == end  # close() cut the unused zeros
        return accepted, good, end

    accepted, good, end = asyncio.run(write())
    (source_seg,) = segments(source)
    data = source_seg.read_bytes()
    assert end - good > 50
    for cut in range(good, end):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / source_seg.name).write_bytes(data[:cut])

        async def recover_and_append(directory: Path = directory) -> list[tuple[Envelope, bytes]]:
            spool = Spool(directory)
            recovered = [(m.envelope, m.body) for m in spool.recover()]
            assert recovered == accepted
            await spool.start()
            later = await accept_n(spool, 1, first=7)
            await spool.close()
            return later

        later = asyncio.run(recover_and_append())
        assert (directory / source_seg.name).stat().st_size == good
        assert recover_all(directory) == accepted + later
        shutil.rmtree(directory)


def test_corrupt_crc_in_last_segment_truncates_from_there(tmp_path: Path) -> None:
    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        accepted = await accept_n(spool, 3)
        await spool.close()
        return accepted

    accepted = asyncio.run(run())
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    record = len(data) // 3
    data[record + record // 2] ^= 0x40  # a flipped bit inside the second record's body
    seg.write_bytes(bytes(data))
    assert recover_all(tmp_path) == accepted[:1]
    assert seg.stat().st_size == record


def test_corrupt_record_in_older_segment_skips_rest_of_that_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def session() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        accepted = await accept_n(spool, 3)
        await spool.close()
        return accepted

    first = asyncio.run(session())
    second = asyncio.run(session())  # a new segment: the first is no longer last
    old = segments(tmp_path)[0]
    data = bytearray(old.read_bytes())
    size = len(data)
    data[size // 3 + 12] ^= 0xFF
    old.write_bytes(bytes(data))
    assert recover_all(tmp_path) == first[:1] + second
    assert old.stat().st_size == size  # an older segment is never truncated
    assert "rest of segment skipped" in caplog.text


def test_rotation_keeps_segments_holding_done_records_of_older_ones(tmp_path: Path) -> None:
    """segment_size=1: every commit batch starts a new segment."""

    async def run() -> dict[str, str]:
        spool = await running(tmp_path, segment_size=1)
        ids = {"A": spool.new_id(), "A2": spool.new_id()}
        await asyncio.gather(*(spool.accept(_env(ids[n]), b"body " + n.encode()) for n in ids))
        spool.mark_done([ids["A"]])  # DONE(A) goes into segment 2, next to B
        ids["B"] = spool.new_id()
        await spool.accept(_env(ids["B"]), b"body B")
        spool.mark_done([ids["B"]])
        ids["C"] = spool.new_id()
        await spool.accept(_env(ids["C"]), b"body C")
        await spool.close()
        return ids

    ids = asyncio.run(run())
    # Segment 2 has no undone message but holds DONE(A) while segment 1 (A2) exists.
    assert [p.name for p in segments(tmp_path)] == [f"seg-{n:020d}.log" for n in (1, 2, 3)]
    assert [env.id for env, _ in recover_all(tmp_path, segment_size=1)] == [ids["A2"], ids["C"]]

    async def finish() -> None:
        spool = Spool(tmp_path, segment_size=1)
        spool.recover()
        await spool.start()
        spool.mark_done([ids["A2"]])
        await spool.accept(_env(spool.new_id()), b"D")
        await spool.close()

    asyncio.run(finish())
    names = [p.name for p in segments(tmp_path)]
    assert f"seg-{1:020d}.log" not in names and f"seg-{2:020d}.log" not in names
    assert f"seg-{3:020d}.log" in names
    assert [body for _, body in recover_all(tmp_path)] == [b"body C", b"D"]


def _env(msg_id: str) -> Envelope:
    return Envelope(id=msg_id, sender="s@example.org", recipients=(), received_at=1.0)


def test_rotation_with_small_segments_recovers_everything(tmp_path: Path) -> None:
    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path, segment_size=4000)
        accepted = await accept_n(spool, 20)
        assert len(segments(tmp_path)) >= 5
        spool.mark_done([env.id for env, _ in accepted[:10]])
        await spool.close()
        return accepted

    accepted = asyncio.run(run())
    assert recover_all(tmp_path, segment_size=4000) == accepted[10:]
    remaining = segments(tmp_path)
    assert all(int(p.name[4:24]) > 3 for p in remaining)  # the oldest ones are gone


def test_ids_are_unique_sortable_and_filename_safe(tmp_path: Path) -> None:
    a, b = Spool(tmp_path / "a"), Spool(tmp_path / "b")
    ids = [a.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-Za-z]{21}", i) for i in ids)
    other = b.new_id()
    assert other not in ids and other[:11] >= ids[-1][:11]  # time prefix orders across spools
    # The parts are base32hex numbers: the time in µs, and a counter within one µs.
    before = time.time_ns() // 1000
    fresh = a.new_id()
    assert before <= int(fresh[:11], 32) <= time.time_ns() // 1000 + 1
    same = [int(i[17:], 32) for i in ids if i[:11] == ids[-1][:11]]
    assert same == list(range(len(same)))


def test_concurrent_accepts_share_fdatasyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = 0

    async def counting(self: SyncHelper, fd: int) -> None:
        nonlocal syncs
        syncs += 1
        await REAL_SYNC(self, fd)

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        monkeypatch.setattr(SyncHelper, "sync", counting)
        envs = [make_envelope(spool, n) for n in range(500)]
        await asyncio.gather(*(spool.accept(e, body_for(n)) for n, e in enumerate(envs)))
        assert syncs < 500 / 5
        await spool.close()
        return [(e, body_for(n)) for n, e in enumerate(envs)]

    accepted = asyncio.run(run())
    assert syncs >= 1
    assert recover_all(tmp_path) == accepted


@pytest.mark.parametrize("partial", [False, True])
def test_enospc_raises_spool_full_and_journal_stays_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: bool
) -> None:
    real_write = os.pwrite

    def failing_write(fd: int, data: bytes, offset: int) -> int:
        if partial and len(data) > 100:
            return real_write(fd, memoryview(data)[:100], offset)  # the next call fails
        raise OSError(errno.ENOSPC, "No space left on device")

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        before = await accept_n(spool, 2)
        assert spool._active is not None
        spool._active.filled = spool._active.size  # the failing write must grow the file
        monkeypatch.setattr(os, "pwrite", failing_write)
        with pytest.raises(SpoolFull):
            await spool.accept(make_envelope(spool, 50), body_for(50))
        monkeypatch.setattr(os, "pwrite", real_write)
        after = await accept_n(spool, 2, first=60)
        await spool.close()
        return before + after

    accepted = asyncio.run(run())
    assert recover_all(tmp_path) == accepted


def test_done_record_that_failed_to_write_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def enospc(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        (done, _), *kept = await accept_n(spool, 2)
        monkeypatch.setattr(os, "pwrite", enospc)
        spool.mark_done([done.id])  # its DONE record shares the failing batch
        with pytest.raises(SpoolFull):
            await spool.accept(make_envelope(spool, 9), body_for(9))
        monkeypatch.undo()
        kept += await accept_n(spool, 1, first=10)
        await spool.close()
        return kept

    kept = asyncio.run(run())
    assert recover_all(tmp_path) == kept


def test_fdatasync_error_is_spool_error_not_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: SyncHelper, fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")  # as the helper reports it

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        before = await accept_n(spool, 1)
        monkeypatch.setattr(SyncHelper, "sync", broken)
        with pytest.raises(SpoolError) as info:
            await spool.accept(make_envelope(spool, 5), body_for(5))
        assert not isinstance(info.value, SpoolFull)
        monkeypatch.undo()
        after = await accept_n(spool, 1, first=6)
        await spool.close()
        return before + after

    accepted = asyncio.run(run())
    assert recover_all(tmp_path) == accepted


def test_has_space_and_min_free_space(tmp_path: Path) -> None:
    roomy = Spool(tmp_path, min_free_space=0)
    assert roomy.has_space()
    assert not roomy.has_space(needed=2**62)
    tight = Spool(tmp_path, min_free_space=2**62)
    assert not tight.has_space()

    async def run() -> None:
        tight.recover()
        await tight.start()
        with pytest.raises(SpoolFull):
            await tight.accept(make_envelope(tight), b"body")
        assert tight.pending_count == 0
        await tight.close()

    asyncio.run(run())
    assert recover_all(tmp_path) == []


def test_lifecycle_errors_and_idempotent_close(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path)
        with pytest.raises(SpoolError):
            await spool.start()  # recover() first
        spool.recover()
        with pytest.raises(SpoolError):
            Spool(tmp_path).recover()  # locked by the first
        await spool.start()
        env = make_envelope(spool)
        await spool.accept(env, b"x")
        with pytest.raises(SpoolError):
            await spool.accept(env, b"x")  # duplicate id
        await spool.close()
        await spool.close()
        with pytest.raises(SpoolError):
            await spool.accept(make_envelope(spool), b"x")

    asyncio.run(run())
    assert len(recover_all(tmp_path)) == 1


def test_cancelled_accept_is_not_delivered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session cancelled while its record is being synced never said 250: drop it."""

    async def run() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow(self: SyncHelper, fd: int) -> None:
            entered.set()
            await release.wait()
            await REAL_SYNC(self, fd)

        spool = await running(tmp_path)
        monkeypatch.setattr(SyncHelper, "sync", slow)
        task = asyncio.create_task(spool.accept(make_envelope(spool), b"gone"))
        await entered.wait()
        task.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        keep = make_envelope(spool, 1)
        await spool.accept(keep, b"kept")
        assert spool.pending_count == 1
        await spool.close()

    asyncio.run(run())
    assert [body for _, body in recover_all(tmp_path)] == [b"kept"]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from postbote.envelope import Envelope
    from postbote.spool import Spool

    async def main():
        spool = Spool(Path(sys.argv[1]), segment_size=20_000)
        old = spool.recover()
        await spool.start()
        spool.mark_done([m.envelope.id for m in old])
        n = 0
        while True:
            env = Envelope(id=spool.new_id(), sender="", recipients=(), received_at=0.0)
            await spool.accept(env, b"body of " + env.id.encode())
            print("A", env.id, flush=True)
            n += 1
            if n % 3 == 0:
                spool.mark_done([env.id])
                print("D", env.id, flush=True)

    asyncio.run(main())
    """
)


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    for _round in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        acked: set[str] = set()
        done: set[str] = set()
        while len(acked) < 400:
            line = proc.stdout.readline()
            assert line, "child exited early"
            kind, msg_id = line.split()
            (acked if kind == "A" else done).add(msg_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        recovered = recover_all(tmp_path)
        ids = [env.id for env, _ in recovered]
        assert len(ids) == len(set(ids))
        assert acked - done <= set(ids)
        assert all(body == b"body of " + env.id.encode() for env, body in recovered)


def test_zero_filled_tail_is_a_clean_end_but_garbage_after_zeros_is_not() -> None:
    import io

    from postbote.spool import MESSAGE, _read_records, encode_record

    rec = encode_record(MESSAGE, b"\x02\x00\x00\x00{}", b"body")
    records, good, problem = _read_records(io.BytesIO(rec + bytes(5000)))
    assert (len(records), good, problem) == (1, len(rec), None)
    records, good, problem = _read_records(io.BytesIO(rec + bytes(5000) + b"x"))
    assert (len(records), good) == (1, len(rec)) and problem is not None


def test_killed_spool_recovers_from_its_preallocated_segment(tmp_path: Path) -> None:
    """A crash leaves the active segment zero-filled past its last record."""

    async def run() -> list[tuple[Envelope, bytes]]:
        spool = await running(tmp_path)
        accepted = await accept_n(spool, 3)
        (seg,) = segments(tmp_path)
        assert seg.stat().st_size > spool._active.size  # type: ignore[union-attr]
        # Simulate SIGKILL: no close(); just drop the lock so a new Spool can open.
        os.close(spool._lock_fd)
        spool._lock_fd = -1
        assert spool._syncer is not None
        await spool._syncer.close()  # only the process's helper, not the journal
        return accepted

    accepted = asyncio.run(run())
    assert recover_all(tmp_path) == accepted
