"""The spool's sync helper process (spool_sync.py): errors, death, restart, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sys
from pathlib import Path

import pytest

from postbote.envelope import Envelope
from postbote.errors import SpoolError
from postbote.spool import Spool
from postbote.spool_sync import RESTART_DELAY, SyncHelper

pytestmark = pytest.mark.timeout(60)


def _pid(helper: SyncHelper) -> int:
    assert helper._proc is not None
    return helper._proc.pid


async def _kill(helper: SyncHelper) -> None:
    proc = helper._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()


def test_sync_covers_the_loops_writes_and_reports_the_helpers_errno(tmp_path: Path) -> None:
    async def run() -> None:
        helper = SyncHelper()
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
        r, w = os.pipe()
        try:
            os.pwrite(fd, b"data", 0)
            await helper.sync(fd)  # started on demand
            with pytest.raises(OSError) as info:
                await helper.sync(r)  # fdatasync(2) on a pipe: EINVAL, from the helper
            assert info.value.errno == errno.EINVAL
            await helper.sync(fd)  # an error is not fatal
        finally:
            await helper.close()
            for n in (fd, r, w):
                os.close(n)

    asyncio.run(run())
    assert (tmp_path / "f").read_bytes() == b"data"


def test_a_killed_helper_fails_at_most_one_sync_then_is_replaced(tmp_path: Path) -> None:
    async def run() -> None:
        helper = SyncHelper()
        await helper.start()
        first = _pid(helper)
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            await _kill(helper)
            failed = 0
            for _ in range(3):
                try:
                    await helper.sync(fd)
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    failed += 1
            assert failed <= 1
            assert _pid(helper) != first
        finally:
            await helper.close()
            os.close(fd)

    asyncio.run(run())


def test_close_ends_the_helper(tmp_path: Path) -> None:
    async def run() -> None:
        helper = SyncHelper()
        await helper.start()
        proc = helper._proc
        assert proc is not None
        await helper.close()
        assert proc.returncode == 0
        await helper.close()  # idempotent
        with pytest.raises(OSError):
            await helper.sync(0)  # closed for good

    asyncio.run(run())


def test_spool_survives_its_helper_being_killed(tmp_path: Path) -> None:
    """At most one batch is refused (a 451 for its senders); what was acknowledged is
    recovered, and nothing that was refused."""

    async def run() -> tuple[list[str], list[str]]:
        spool = Spool(tmp_path)
        spool.recover()
        await spool.start()
        acked: list[str] = []
        refused: list[str] = []
        for n in range(6):
            if n == 2:
                assert spool._syncer is not None
                await _kill(spool._syncer)
            env = Envelope(id=spool.new_id(), sender="", recipients=(), received_at=0.0)
            try:
                await spool.accept(env, b"body %d" % n)
                acked.append(env.id)
            except SpoolError:
                refused.append(env.id)
        await spool.close()
        return acked, refused

    acked, refused = asyncio.run(run())
    assert len(refused) <= 1 and len(acked) + len(refused) == 6
    spool = Spool(tmp_path)
    try:
        assert [m.envelope.id for m in spool.recover()] == acked
    finally:
        asyncio.run(spool.close())


def test_a_spool_whose_helper_cannot_run_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked at start, so the server stops with an error instead of refusing all mail."""
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once

    async def run() -> None:
        spool = Spool(tmp_path)
        spool.recover()
        with pytest.raises(SpoolError):
            await spool.start()

    asyncio.run(run())


def test_a_helper_that_keeps_dying_is_restarted_once_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def run() -> float:
        helper = SyncHelper()
        await helper.start()
        monkeypatch.setattr(sys, "executable", "/bin/false")
        loop = asyncio.get_running_loop()
        await _kill(helper)
        begin = loop.time()
        for _ in range(3):
            with contextlib.suppress(OSError):
                await helper.sync(0)
        elapsed = loop.time() - begin
        await helper.close()
        return elapsed

    assert asyncio.run(run()) >= 2 * RESTART_DELAY * 0.9
