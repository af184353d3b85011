"""asyncio glue for the SMTP server core: listeners, TLS, timers, limits.

Thin on purpose: bytes go into ``ServerConnection``, events come out and are answered
by a ``SmtpBackend`` (policy and spool live there, not here). One ``SmtpSession``
(an ``asyncio.Protocol``) per connection; one ``SmtpServer`` per listener kind owns the
connection counts and the graceful shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from postbote.auth import Outcome
from postbote.smtp import replies as R
from postbote.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthRequested,
    AuthResponse,
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    StartTlsRequested,
)
from postbote.smtp.protocol import ServerConnection, ServerSettings
from postbote.smtp.replies import Reply
from postbote.starttls import TlsUpgrade

if TYPE_CHECKING:
    from postbote.sasl import Exchange

log = logging.getLogger("postbote.smtp")

# Stop reading from a client that pipelines more than this while we decide.
_READ_HIGH_WATER = 256 * 1024


class BodyMemory:
    """The bytes of message bodies that the sessions of all listeners hold in memory:
    while they arrive, and until the spool has them. A message whose growth takes the
    total over ``limit`` is dropped (ServerConnection.drop_message: read to its end,
    then 452 4.3.1), so that many large messages at once cannot exhaust memory."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0


@dataclass(slots=True)
class SessionInfo:
    """What the backend may know about the client of one session."""

    listener: str  # "smtp" | "submission" | "submissions"
    client_ip: str
    client_port: int
    helo: str = ""
    tls: bool = False
    authenticated: str | None = None
    esmtp: bool = False
    sasl: Exchange | None = None  # the AUTH exchange under way, if any


class SmtpBackend(Protocol):
    """Decisions for the SMTP glue. The sync hooks run on the event loop and must be
    quick (memory lookups); ``deliver`` may await storage.

    Each hook returns None to accept, or the Reply to refuse with."""

    def check_mail(self, info: SessionInfo, event: MailFrom) -> Reply | None: ...

    def check_rcpt(self, info: SessionInfo, event: RcptTo) -> Reply | None: ...

    def auth(self, info: SessionInfo, event: AuthRequested | AuthResponse) -> Awaitable[Outcome]:
        """One step of SMTP AUTH (RFC 4954): the next challenge, success, or a reply
        (501/535, or 421 with ``close``)."""
        ...

    def deliver(self, info: SessionInfo, conn: ServerConnection, body: bytes) -> Awaitable[Reply]:
        """Durably accept the message of the current transaction (``conn.sender``,
        ``conn.mail_params``, ``conn.recipients``) and return the 250 reply, or return
        a 4xx/5xx reply. Must not return a 2xx before the message is on stable storage."""
        ...


class SmtpServer:
    """All sessions of one listener kind; owns the connection limits."""

    def __init__(
        self,
        kind: str,
        settings: ServerSettings,
        backend: SmtpBackend,
        *,
        ssl_context: ssl.SSLContext | None,
        implicit_tls: bool,
        max_connections: int,
        max_connections_per_ip: int,
        body_memory: BodyMemory,
    ) -> None:
        self.kind = kind
        self.loop = asyncio.get_running_loop()  # looked up once, not per connection
        self.body_memory = body_memory
        self.settings = settings
        self.backend = backend
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.sessions: set[SmtpSession] = set()
        self.per_ip: dict[str, int] = {}
        self.shutting_down = False
        self._idle = asyncio.Event()
        self._idle.set()

    def protocol_factory(self) -> SmtpSession:
        return SmtpSession(self)

    def register(self, session: SmtpSession, ip: str) -> Reply | None:
        """Count a new connection; return a refusal if a limit is reached."""
        if self.shutting_down:
            return R.C421_SHUTTING_DOWN
        if len(self.sessions) >= self.max_connections:
            return R.C421_TOO_MANY_CONNECTIONS
        n = self.per_ip.get(ip, 0)
        if n >= self.max_connections_per_ip:
            return R.C421_TOO_MANY_CONNECTIONS
        self.per_ip[ip] = n + 1
        self.sessions.add(session)
        self._idle.clear()
        return None

    def unregister(self, session: SmtpSession, ip: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            n = self.per_ip.get(ip, 1) - 1
            if n:
                self.per_ip[ip] = n
            else:
                self.per_ip.pop(ip, None)
        if not self.sessions:
            self._idle.set()

    async def shutdown(self, grace: float) -> None:
        """Stop sessions: idle ones now, the rest after their transaction or ``grace``."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.start_shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            for session in list(self.sessions):
                session.abort()


class SmtpSession(asyncio.Protocol):
    """One SMTP connection: feeds the core, answers its events, writes its bytes."""

    __slots__ = (
        "_closing",
        "_delivering",
        "_held",
        "_task",
        "_timer",
        "_tls",
        "conn",
        "info",
        "loop",
        "server",
        "transport",
    )

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.conn: ServerConnection | None = None
        self.info: SessionInfo | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The one async decision under way (deliver, STARTTLS, AUTH): the core is paused
        # meanwhile. Held here so the task cannot be garbage-collected mid-flight.
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._tls = TlsUpgrade()  # STARTTLS under way (see starttls.py)
        self._held = 0  # this session's part of server.body_memory.held
        self._delivering = 0  # bytes of the message being handed to the spool

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        server = self.server
        self.info = SessionInfo(server.kind, str(peer[0]), int(peer[1]), tls=server.implicit_tls)
        self.conn = conn = ServerConnection(server.settings, self.loop.time())
        refusal = server.register(self, self.info.client_ip)
        if refusal is not None:
            conn.refuse(refusal)
            transport.write(conn.data_to_send())
            self._closing = True
            transport.close()
            return
        conn.greeting()
        transport.write(conn.data_to_send())
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None or self._closing:
            return
        if self._tls.in_progress:  # decrypted: the client's first command inside TLS
            if not self._tls.keep(data):
                self.abort()
            return
        conn.receive_data(data, self.loop.time())
        self._pump()
        if self._held or conn.body_size:
            self._account()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.receive_eof()
        self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._account(lost=True)  # what it was receiving is gone; a delivery holds its own
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.info is not None:
            self.server.unregister(self, self.info.client_ip)

    # -- event pump --------------------------------------------------------------

    def _pump(self) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        info = self.info
        assert info is not None
        backend = self.server.backend
        while not self._closing:
            ev = conn.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                break
            if type(ev) is RcptTo:
                refusal = backend.check_rcpt(info, ev)
                conn.accept() if refusal is None else conn.reject(refusal)
            elif type(ev) is MailFrom:
                refusal = backend.check_mail(info, ev)
                conn.accept() if refusal is None else conn.reject(refusal)
            elif type(ev) is Hello:
                info.helo = ev.name
                info.esmtp = ev.verb == "EHLO"
                conn.accept()
            elif type(ev) is MessageComplete:
                self._flush()
                self._delivering = len(ev.body)
                self._account()
                self._task = self.loop.create_task(self._deliver(ev.body))
                break
            elif type(ev) is StartTlsRequested:
                if self.server.ssl_context is None:
                    conn.reject(R.C454_TLS_UNAVAILABLE)
                    continue
                conn.accept()
                self._flush()
                self._task = self.loop.create_task(self._start_tls())
                break
            elif type(ev) is AuthRequested or type(ev) is AuthResponse:
                self._flush()
                self._task = self.loop.create_task(self._auth(ev))
                break
            elif type(ev) is ConnectionClosed:
                self._flush()
                self._closing = True
                transport.close()
                return
        self._flush()
        # Backpressure: stop reading while a decision is pending and input piles up.
        if conn.buffered > _READ_HIGH_WATER:
            transport.pause_reading()
        elif transport.is_reading() is False:
            transport.resume_reading()

    def _account(self, *, lost: bool = False) -> None:
        """Bring server.body_memory up to date with this session; drop the message being
        received if its growth took the total over the limit."""
        conn = self.conn
        receiving = conn.body_size if conn is not None and not lost else 0
        held = receiving + self._delivering
        memory = self.server.body_memory
        memory.held += held - self._held
        grew = held > self._held
        self._held = held
        if grew and receiving and memory.held > memory.limit:
            assert conn is not None
            log.warning(
                "message from %s dropped: bodies in memory over %d bytes",
                self.info.client_ip if self.info is not None else "?",
                memory.limit,
            )
            conn.drop_message()  # read to its end, then refused with 452 4.3.1
            memory.held -= receiving
            self._held -= receiving

    def _flush(self) -> None:
        assert self.conn is not None and self.transport is not None
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    async def _deliver(self, body: bytes) -> None:
        conn, info = self.conn, self.info
        assert conn is not None and info is not None
        try:
            reply = await self.server.backend.deliver(info, conn, body)
        except Exception:
            log.exception("delivery to the spool failed")
            reply = R.C451_LOCAL_ERROR
        finally:
            self._delivering = 0
            self._account(lost=self._closing)
        if conn.closed:
            return  # the client went away; the message is spooled or not, as decided
        if reply.code < 400:
            conn.accept(reply)
        else:
            conn.reject(reply)
        self._pump()

    async def _auth(self, ev: AuthRequested | AuthResponse) -> None:
        conn, info = self.conn, self.info
        assert conn is not None and info is not None
        try:
            outcome = await self.server.backend.auth(info, ev)
        except Exception:
            log.exception("AUTH failed internally")
            outcome = Outcome(reply=R.C451_LOCAL_ERROR)
        if conn.closed:
            return
        now = self.loop.time()
        if outcome.challenge is not None:
            conn.auth_challenge(outcome.challenge, now=now)
        elif outcome.identity is not None:
            conn.auth_success(outcome.identity, now=now)
            info.authenticated = outcome.identity
        else:
            assert outcome.reply is not None
            conn.reject(outcome.reply, now=now)
            if outcome.close:
                self._flush()
                self._closing = True
                if self.transport is not None:
                    self.transport.close()
                return
        self._pump()

    async def _start_tls(self) -> None:
        conn, transport, ctx = self.conn, self.transport, self.server.ssl_context
        assert conn is not None and transport is not None and ctx is not None
        peer = self.info.client_ip if self.info is not None else "?"
        new_transport, early = await self._tls.start_tls(self.loop, transport, self, ctx, peer)
        if new_transport is None:
            self.abort()
            return
        self.transport = new_transport
        conn.tls_established()
        if self.info is not None:
            self.info.tls = True
            self.info.authenticated = None
            self.info.helo = ""
        if early:
            conn.receive_data(early, self.loop.time())
        self._pump()

    # -- timers and shutdown -----------------------------------------------------

    def _arm_timer(self) -> None:
        conn = self.conn
        if conn is None or self._closing:
            return
        deadline = conn.get_timer()
        # While a decision is pending (no core timer), check again later.
        when = deadline if deadline is not None else self.loop.time() + 60.0
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        conn = self.conn
        if conn is None or self._closing:
            return
        conn.handle_timer(self.loop.time())
        if conn.closed:
            self._pump()
            if not self._closing and self.transport is not None:
                self._closing = True
                self.transport.close()
            return
        self._arm_timer()

    def start_shutdown(self) -> None:
        if self.conn is not None and not self._closing:
            self.conn.start_shutdown()
            self._pump()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
