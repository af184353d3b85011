"""Outbound SMTP sessions: the asyncio glue around the sans-IO client (smtp/client.py).

``Connector`` opens a session to one address of one host (TCP, then the client core's
greeting, EHLO, STARTTLS and AUTH), applying the RFC 5321 §4.5.3.2 timeouts the core
names; ``Session.send`` runs one transaction and returns one reply per recipient.
``SessionPool`` keeps idle sessions a short while so that further mail to the same
destination reuses the connection (issue 4 §1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

from postbote.smtp.client import (
    NEED_DATA,
    ClientConnection,
    Closed,
    Ready,
    SessionFailed,
    StartTls,
    Transaction,
    TransactionDone,
    TransactionResult,
)

log = logging.getLogger("postbote.outbound")

READ_SIZE = 1 << 16
IDLE_TIME = 2.0  # seconds an unused session stays open for reuse


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0
    command: float = 300.0  # greeting, EHLO, MAIL, RCPT, DATA, QUIT
    data: float = 600.0  # waiting for the reply after the end of data

    def for_kind(self, kind: str | None) -> float:
        # RFC 5321 §4.5.3.2: 5 min greeting/MAIL/RCPT, 2 min DATA, 3 min per block, 10 min end.
        if kind == "data_end":
            return self.data
        if kind in ("data_init", "data_block"):
            return min(self.command, 180.0)
        return self.command


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """How one destination is secured. ``mode``: "opportunistic" | "required" | "none"
    (STARTTLS) or "implicit" (a smarthost on port 465). ``verify``: the certificate must
    be valid for ``server_name`` (required TLS; MTA-STS and DANE plug in here later)."""

    mode: str = "opportunistic"
    verify: bool = False
    server_name: str = ""


class SessionError(Exception):
    """A session could not be used. ``reply``: the server's reply or our diagnosis, e.g.
    "4.4.1 connection refused"; ``permanent``: a 5xx from the server."""

    def __init__(self, reply: str, *, permanent: bool = False, tls: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent
        self.tls = tls  # the TLS handshake itself failed


class Session:
    """One open SMTP connection, ready for transactions."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: ClientConnection,
        *,
        peer: str,
        timeouts: Timeouts,
    ) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn
        self.peer = peer  # "host[address]" for logs and DSNs
        self.timeouts = timeouts
        self.extensions: dict[str, str] = {}
        self.idle_since = time.monotonic()
        self.broken = False

    async def _event(self, verify: bool = False, server_name: str = "") -> object:
        """Drive the core until it has an event other than NEED_DATA."""
        conn = self.conn
        while True:
            event = conn.next_event()  # may queue bytes to send: write them first
            out = conn.data_to_send()
            if out:
                self.writer.write(out)
                await self.writer.drain()
            if event is not NEED_DATA:
                if isinstance(event, StartTls):
                    await self._start_tls(verify, server_name)
                    continue
                return event
            timeout = self.timeouts.for_kind(conn.timeout_kind())
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            except TimeoutError:
                self.broken = True
                raise SessionError(f"4.4.2 {self.peer}: timed out waiting for the server") from None
            except (OSError, ssl.SSLError) as exc:
                self.broken = True
                raise SessionError(f"4.4.2 {self.peer}: connection lost: {exc}") from None
            if data:
                conn.receive_data(data)
            else:
                conn.receive_eof()

    async def _start_tls(self, verify: bool, server_name: str) -> None:
        ctx = client_context(verify)
        try:
            await asyncio.wait_for(
                self.writer.start_tls(ctx, server_hostname=server_name or None),
                self.timeouts.command,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.broken = True
            raise SessionError(
                f"4.7.5 {self.peer}: TLS handshake failed: {exc}", tls=True
            ) from None
        self.conn.tls_established()

    async def open(self, policy: TlsPolicy) -> None:
        event = await self._event(policy.verify, policy.server_name)
        if isinstance(event, Ready):
            self.extensions = dict(event.extensions)
            return
        self.broken = True
        raise _session_error(event, self.peer)

    async def send(self, tx: Transaction) -> TransactionResult:
        self.conn.start_transaction(tx)
        event = await self._event()
        if isinstance(event, TransactionDone):
            self.idle_since = time.monotonic()
            return event.result
        self.broken = True
        raise _session_error(event, self.peer)

    async def close(self) -> None:
        if not self.broken:
            with contextlib.suppress(SessionError, OSError, ssl.SSLError, ValueError):
                self.conn.quit()
                await asyncio.wait_for(self._event(), 5.0)
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)


def _session_error(event: object, peer: str) -> SessionError:
    if isinstance(event, SessionFailed):
        if event.reply is not None:
            return SessionError(f"{event.reply} (from {peer})", permanent=event.reply.code >= 500)
        return SessionError(f"4.4.2 {peer}: {event.reason}")
    if isinstance(event, Closed):
        return SessionError(f"4.4.2 {peer}: connection closed")
    return SessionError(f"4.4.2 {peer}: unexpected {type(event).__name__}")


_CONTEXTS: dict[tuple[bool, str | None], ssl.SSLContext] = {}
_CA_FILE: list[str | None] = [None]


def set_ca_file(path: str | None) -> None:
    """Trust these CAs in addition to the system's (tests, private CAs)."""
    _CA_FILE[0] = path
    _CONTEXTS.clear()


def client_context(verify: bool) -> ssl.SSLContext:
    key = (verify, _CA_FILE[0])
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = ssl.create_default_context()
        if _CA_FILE[0]:
            ctx.load_verify_locations(_CA_FILE[0])
        if not verify:
            # Opportunistic TLS (RFC 7435): encrypt, but accept any certificate; a failed
            # check would only make us fall back to plaintext, which is worse.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _CONTEXTS[key] = ctx
    return ctx


class Connector:
    """Opens sessions with one configuration (HELO name, timeouts, credentials)."""

    def __init__(
        self,
        *,
        helo_name: str,
        timeouts: Timeouts,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.credentials = credentials

    async def open(self, host: str, address: str, port: int, policy: TlsPolicy) -> Session:
        peer = f"{host}[{address}]:{port}"
        implicit = policy.mode == "implicit"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    port,
                    ssl=client_context(policy.verify) if implicit else None,
                    server_hostname=(policy.server_name or host) if implicit else None,
                    limit=READ_SIZE,
                ),
                self.timeouts.connect,
            )
        except TimeoutError:
            raise SessionError(f"4.4.1 {peer}: connection timed out") from None
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SessionError(f"4.4.1 {peer}: cannot connect: {reason}") from None
        conn = ClientConnection(
            helo_name=self.helo_name,
            tls="none" if implicit else ("required" if policy.mode == "required" else policy.mode),
            in_tls=implicit,
            credentials=self.credentials,
        )
        session = Session(reader, writer, conn, peer=peer, timeouts=self.timeouts)
        try:
            await session.open(policy)
        except BaseException:
            await session.close()
            raise
        return session


class SessionPool:
    """Idle sessions per destination key, closed after ``IDLE_TIME`` unused."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Session]] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: str) -> Session | None:
        sessions = self._idle.get(key)
        now = time.monotonic()
        while sessions:
            session = sessions.pop()
            if not session.broken and now - session.idle_since < IDLE_TIME:
                return session
            self._close_later(session)
        return None

    def give(self, key: str, session: Session) -> None:
        if session.broken:
            self._close_later(session)
            return
        session.idle_since = time.monotonic()
        self._idle.setdefault(key, []).append(session)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_TIME, self._reap)

    def _reap(self) -> None:
        self._reaper = None
        now = time.monotonic()
        for key, sessions in list(self._idle.items()):
            keep = [s for s in sessions if now - s.idle_since < IDLE_TIME]
            for s in sessions:
                if s not in keep:
                    self._close_later(s)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._reaper = asyncio.get_running_loop().call_later(IDLE_TIME, self._reap)

    def _close_later(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for sessions in self._idle.values():
            for s in sessions:
                self._close_later(s)
        self._idle.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
