"""Hands spooled messages to the delivery worker process and marks them done.

``LocalDelivery`` lives on the server's event loop. Messages arrive from the SMTP
backend right after the spool made them durable, and from ``Spool.recover()`` after a
restart. Each is sent to the worker (queue/worker.py); when the worker reports it
delivered, the message is marked done in the spool. A message the worker reports as
failed is sent again after a backoff (``RETRY_DELAYS``); if the worker dies, it is
restarted and everything it had not reported done is sent again — redelivery is
idempotent, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from postbote.queue import frames
from postbote.spool import Spool, SpooledMessage

log = logging.getLogger("postbote.delivery")

RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0)  # then every 10 minutes
RESTART_DELAY = 1.0  # after the worker died


class LocalDelivery:
    """Driven by ``submit()`` on the event loop; reports come from the worker."""

    def __init__(self, *, spool: Spool, data_dir: Path, hostname: str) -> None:
        self.spool = spool
        self.data_dir = data_dir
        self.hostname = hostname
        self.delivered = 0  # messages completely handled (for tests and metrics)
        self._loop = asyncio.get_running_loop()  # once: each lookup is a getpid() call
        self._inflight: dict[str, SpooledMessage] = {}  # sent, not yet reported done
        self._outbox: list[bytes] = []
        self._attempts: dict[str, int] = {}
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self._backoff: set[str] = set()  # in flight, but waiting for their retry time
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self._restarting: asyncio.Task[None] | None = None  # held: not garbage-collected
        self._idle = asyncio.Event()
        self._idle.set()
        # Called when the worker put mail into the outbound queue.
        self.on_queued: Callable[[], None] | None = None

    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        loop = self._loop
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "postbote.queue.worker",
            "--data-dir",
            str(self.data_dir),
            "--hostname",
            self.hostname,
            "--parent",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._ready = loop.create_future()
        self._reader = loop.create_task(self._read_reports(self._proc), name="delivery-reports")
        await self._ready

    def submit(self, message: SpooledMessage, *, fresh: bool = True) -> None:
        """Deliver a spooled message. ``fresh``: accepted by this process and never
        attempted (no earlier copy can exist); recovered messages pass False."""
        self._inflight[message.envelope.id] = message
        self._idle.clear()
        self._send(message, fresh)

    def _send(self, message: SpooledMessage, fresh: bool) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return  # the worker is restarting: it gets everything in flight again
        # Frames sent in one event-loop iteration go out in one write.
        if not self._outbox:
            self._loop.call_soon(self._flush_outbox)
        self._outbox.append(frames.encode_message(message, fresh))

    def _flush_outbox(self) -> None:
        data, self._outbox = b"".join(self._outbox), []
        proc = self._proc
        if data and proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(data)

    async def wait_idle(self) -> None:
        """Until every submitted message was reported done, or failed and waits for a
        retry (it stays in the spool: a restart delivers it)."""
        await self._idle.wait()

    def _update_idle(self) -> None:
        if len(self._inflight) <= len(self._backoff):
            self._idle.set()
        else:
            self._idle.clear()

    async def close(self) -> None:
        self._closing = True
        for handle in self._retry_handles:
            handle.cancel()
        self._retry_handles.clear()
        self._flush_outbox()
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()  # the worker finishes what it read and exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30.0)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read_reports(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        buf = bytearray()
        while True:
            data = await proc.stdout.read(1 << 16)
            if not data:
                break
            buf += data
            for payload in frames.split_frames(buf):
                self._report(payload)
        await proc.wait()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError(f"delivery worker exited ({proc.returncode})"))
        if not self._closing:
            log.error("delivery worker exited with %s; restarting", proc.returncode)
            asyncio.get_running_loop().call_later(RESTART_DELAY, self._restart)

    def _restart(self) -> None:
        async def restart() -> None:
            try:
                await self._spawn()
            except OSError as exc:
                log.error("cannot restart the delivery worker: %s", exc)
                return
            for message in list(self._inflight.values()):
                self._send(message, False)

        if not self._closing:
            self._restarting = asyncio.get_running_loop().create_task(restart())

    def _report(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"Q":
            if self.on_queued is not None:
                self.on_queued()
            return
        if kind == b"R":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        ids = frames.decode_ids(payload)
        if kind == b"D":
            done = [i for i in ids if self._inflight.pop(i, None) is not None]
            self._backoff.difference_update(done)
            self.spool.mark_done(done)
            self.delivered += len(done)
            for i in done:
                self._attempts.pop(i, None)
        elif kind == b"F":
            for i in ids:
                message = self._inflight.get(i)
                if message is not None:
                    self._schedule_retry(message)
        self._update_idle()

    def _schedule_retry(self, message: SpooledMessage) -> None:
        n = self._attempts.get(message.envelope.id, 0)
        self._attempts[message.envelope.id] = n + 1
        delay = RETRY_DELAYS[min(n, len(RETRY_DELAYS) - 1)]
        self._backoff.add(message.envelope.id)

        def retry() -> None:
            self._retry_handles.discard(handle)
            self._backoff.discard(message.envelope.id)
            if message.envelope.id in self._inflight and not self._closing:
                self._update_idle()
                self._send(message, False)

        handle = asyncio.get_running_loop().call_later(delay, retry)
        self._retry_handles.add(handle)
