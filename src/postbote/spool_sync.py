"""fdatasync in a helper process, so the event loop's process never shares its GIL.

The spool's group commit needs one ``fdatasync`` per batch. Run in a worker thread, every
batch costs several hand-offs of the interpreter lock between that thread and the event
loop (futex waits and wake-ups, forced switches while the loop is busy): about a fifth of
the SMTP process's CPU at full load. A helper *process* syncs instead. The event loop
writes a batch with ``pwrite`` (into the page cache: microseconds) and sends the file
descriptor over a Unix socket (SCM_RIGHTS); the helper syncs it and answers with the
errno (0: on stable storage). fsync covers the file, not the descriptor (POSIX: "all
data for the open file descriptor"; the passed descriptor shares the open file
description), so the helper's sync covers what the loop wrote.

The helper keeps no state: each request carries its descriptor, which the helper closes
after the sync. If it dies, the requests in flight fail (the spool rolls the batch back
and its senders get a 4xx reply) and the next request starts a new helper.

The helper is ``python -m postbote.spool_syncd`` (a few standard modules only, so it
stays small); the wire format is described there.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket
import sys

from postbote.spool_syncd import ERRNO as _ERRNO
from postbote.spool_syncd import REQUEST as _REQUEST

log = logging.getLogger(__name__)
RESTART_DELAY = 1.0  # seconds between starts of the helper


class SyncHelper:
    """The event loop's side: ``await helper.sync(fd)`` returns once ``fd`` is synced.

    Requests are answered in order. Call ``close()`` when done.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0  # loop time of the last start
        self._closed = False

    async def start(self) -> None:
        """Start the helper process (also done on demand by ``sync``)."""
        if self._closed:
            raise OSError(errno.EBADF, "sync helper is closed")
        if self._sock is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        if self._proc is not None:  # one that died: its socket is closed, it exits
            await self._proc.wait()
            # One that keeps dying (it cannot even start, say) is replaced once a second.
            delay = self._started + RESTART_DELAY - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        self._started = loop.time()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "postbote.spool_syncd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        loop.add_reader(ours.fileno(), self._on_readable)

    async def sync(self, fd: int) -> None:
        """fdatasync ``fd`` in the helper; raises OSError with the helper's errno."""
        if self._sock is None:
            await self.start()
        sock, loop = self._sock, self._loop
        assert sock is not None and loop is not None
        future: asyncio.Future[None] = loop.create_future()
        try:
            socket.send_fds(sock, [_REQUEST], [fd])
        except OSError as exc:  # the helper is gone (EPIPE) or its queue is full
            self._lost(exc)
            raise OSError(errno.EIO, f"sync helper unavailable: {exc.strerror}") from exc
        self._waiting.append(future)
        await future

    def _on_readable(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:  # until EAGAIN, or nothing is waiting (saves a recv() per batch)
            try:
                reply = sock.recv(16)
            except BlockingIOError:
                return
            except OSError as exc:
                self._lost(exc)
                return
            if len(reply) != _ERRNO.size or not self._waiting:
                self._lost(None)  # EOF (the helper exited) or a reply nobody asked for
                return
            (code,) = _ERRNO.unpack(reply)
            future = self._waiting.popleft()
            if future.done():
                pass  # its waiter was cancelled
            elif code:
                future.set_exception(OSError(code, os.strerror(code)))
            else:
                future.set_result(None)
            if not self._waiting:
                return

    def _lost(self, exc: OSError | None) -> None:
        """The helper died: fail what waits; the next ``sync`` starts a new helper."""
        if not self._closed:
            log.error("spool sync helper exited%s", f": {exc}" if exc else "")
        self._disconnect()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(OSError(errno.EIO, "sync helper exited"))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(sock.fileno())
            sock.close()  # the helper reads EOF and exits

    async def close(self) -> None:
        """Stop the helper (after the syncs in flight); idempotent."""
        self._closed = True
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        self._disconnect()
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), 30.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
