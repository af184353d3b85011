"""POP3 over asyncio: the thin glue around the sans-IO core (pop3/protocol.py).

One ``Pop3Session`` per connection feeds bytes to a ``Pop3Connection``, answers its
decisions — logins through the shared ``Authenticator`` (the brute-force limiter of
SMTP AUTH applies to POP3 too), the mailbox snapshot, message reads, the UPDATE state —
and writes the replies. Mailbox work (Argon2 checks, file reads, renames, syncs) runs
in worker threads. A session holds its mailbox's exclusive lock from login to its end,
so a second login gets ``-ERR [IN-USE]`` (RFC 2449 §8).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from postbote import sasl
from postbote.auth import Authenticator, Outcome
from postbote.pop3.events import (
    AuthAborted,
    AuthRequested,
    AuthResponse,
    ConnectionClosed,
    LoginRequested,
    RetrieveRequested,
    Sentinel,
    StlsRequested,
    UpdateRequested,
)
from postbote.pop3.maildrop import MessageEntry
from postbote.pop3.protocol import Pop3Connection, Pop3Settings
from postbote.starttls import TlsUpgrade
from postbote.store.mailbox import Mailbox, MailboxLock, Snapshot
from postbote.store.maildir import mailbox_root

log = logging.getLogger("postbote.pop3")

_READ_HIGH_WATER = 64 * 1024
_READ_IN_LOOP = 64 * 1024  # messages up to this size are read without a worker thread


@dataclass(slots=True)
class _Login:
    """What a session holds once logged in."""

    user: str
    mailbox: Mailbox
    lock: MailboxLock
    snapshot: Snapshot


@dataclass(slots=True)
class Pop3Server:
    """The listeners of one kind ("pop3" or "pop3s") and their sessions."""

    kind: str
    settings: Pop3Settings
    authenticator: Authenticator
    data_dir: Path
    ssl_context: ssl.SSLContext | None
    plaintext_loopback: bool  # USER/PASS and AUTH without TLS for clients on loopback
    max_connections: int
    max_connections_per_ip: int
    local_user: Callable[[str], bool]  # is this identity a mailbox here?
    clock: Callable[[], float] = time.monotonic
    # RFC 2449 §8.1.1 LOGIN-DELAY: when each user last logged in (settings.login_delay > 0).
    last_login: dict[str, float] = field(default_factory=dict)
    sessions: set[Pop3Session] = field(default_factory=set)
    per_ip: dict[str, int] = field(default_factory=dict)
    shutting_down: bool = False

    def protocol_factory(self) -> Pop3Session:
        return Pop3Session(self)

    def register(self, session: Pop3Session, ip: str) -> bool:
        n = self.per_ip.get(ip, 0)
        if (
            self.shutting_down
            or len(self.sessions) >= self.max_connections
            or n >= self.max_connections_per_ip
        ):
            return False
        self.per_ip[ip] = n + 1
        self.sessions.add(session)
        return True

    def unregister(self, session: Pop3Session, ip: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            n = self.per_ip.get(ip, 1) - 1
            if n:
                self.per_ip[ip] = n
            else:
                self.per_ip.pop(ip, None)

    async def shutdown(self, grace: float) -> None:
        """Close idle sessions now; others after their current step or ``grace``."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.start_shutdown()
        deadline = asyncio.get_running_loop().time() + grace
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort()


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1")


class Pop3Session(asyncio.Protocol):
    """One POP3 connection."""

    def __init__(self, server: Pop3Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn: Pop3Connection | None = None
        self.ip = ""
        self.login: _Login | None = None
        self._exchange: sasl.Exchange | None = None
        self._task: asyncio.Task[None] | None = None  # the decision under way
        self._timer: asyncio.TimerHandle | None = None
        self._tls = TlsUpgrade()  # STLS under way (see starttls.py)
        self._closing = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.ip = str(peer[0])
        server = self.server
        settings = server.settings
        if server.plaintext_loopback and _is_loopback(self.ip):
            settings = dataclasses.replace(settings, plaintext_auth=True)
        self.conn = Pop3Connection(settings, self.loop.time())
        if not server.register(self, self.ip):
            transport.write(b"-ERR [SYS/TEMP] too many connections, try again later\r\n")
            self._closing = True
            transport.close()
            return
        self.conn.greeting()
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn is None or self._closing:
            return
        if self._tls.in_progress:  # decrypted before start_tls() returned
            if not self._tls.keep(data):
                self.abort()
            return
        self.conn.receive_data(data, self.loop.time())
        self._pump()

    def eof_received(self) -> bool | None:
        if self.conn is not None:
            self.conn.receive_eof()
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task = self._task
        if task is not None and not task.done():
            # A decision is under way (QUIT's UPDATE may be deleting): keep the mailbox
            # locked until it is over, so that no new session sees it half-updated.
            task.add_done_callback(lambda _: self._release())
        else:
            self._release()
        self.server.unregister(self, self.ip)

    # -- the event pump ----------------------------------------------------------------------

    def _pump(self) -> None:
        conn, transport = self.conn, self.transport
        if conn is None or transport is None:
            return
        while not self._closing:
            ev = conn.next_event()
            if isinstance(ev, Sentinel):  # NEED_DATA or PAUSED
                break
            if isinstance(ev, ConnectionClosed):
                self._flush()
                self._closing = True
                self._release()
                transport.close()
                return
            if isinstance(ev, AuthAborted):
                self._exchange = None
                continue
            if isinstance(ev, StlsRequested):
                self._flush()
                self._task = self.loop.create_task(self._start_tls())
                break
            self._flush()
            self._task = self.loop.create_task(self._decide(ev))
            break
        self._flush()
        if conn.buffered > _READ_HIGH_WATER:
            transport.pause_reading()
        elif transport.is_reading() is False:
            transport.resume_reading()

    def _flush(self) -> None:
        if self.conn is None or self.transport is None:
            return
        out = self.conn.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    async def _decide(
        self,
        ev: LoginRequested | AuthRequested | AuthResponse | RetrieveRequested | UpdateRequested,
    ) -> None:
        try:
            if isinstance(ev, LoginRequested | AuthRequested | AuthResponse):
                await self._authenticate(ev)
            elif isinstance(ev, RetrieveRequested):
                await self._retrieve(ev)
            else:
                await self._update(ev)
        except Exception:
            log.exception("POP3 session with %s failed internally", self.ip)
            self.abort()
            return
        if not self._closing:
            self._pump()

    # -- decisions -------------------------------------------------------------------------

    async def _authenticate(self, ev: LoginRequested | AuthRequested | AuthResponse) -> None:
        conn, auth = self.conn, self.server.authenticator
        assert conn is not None
        if isinstance(ev, LoginRequested | AuthRequested):
            mechanism = "PLAIN" if isinstance(ev, LoginRequested) else ev.mechanism
            exchange, refusal = auth.begin(self.ip, mechanism)
            if refusal is not None:
                self._refused(refusal)
                return
            assert exchange is not None
            self._exchange = exchange
            if isinstance(ev, LoginRequested):  # USER/PASS as a PLAIN exchange
                initial: bytes | None = b"\0" + ev.user.encode() + b"\0" + ev.password.encode()
            else:
                initial = ev.initial
            outcome = await auth.step(self.ip, exchange, initial, first=True)
        else:
            if self._exchange is None:
                conn.login_failed("AUTH", "no authentication in progress", now=self.loop.time())
                return
            outcome = await auth.step(self.ip, self._exchange, ev.data, first=False)
        if conn.closed:
            return
        if outcome.challenge is not None:
            conn.auth_challenge(outcome.challenge, self.loop.time())
            return
        self._exchange = None
        if outcome.identity is None:
            self._refused(outcome)
            return
        await self._open_mailbox(outcome.identity)

    def _refused(self, outcome: Outcome) -> None:
        assert self.conn is not None
        now = self.loop.time()
        if outcome.close:  # the limiter's lockout (421 in SMTP)
            self.conn.login_failed("AUTH", "too many failed logins, try later", True, now)
        elif outcome.reply is not None and outcome.reply.code == 501:
            self.conn.login_failed("AUTH", "malformed authentication data", now=now)
        else:  # RFC 3206 §4: the credentials are at fault
            self.conn.login_failed("AUTH", "authentication failed", now=now)

    async def _open_mailbox(self, user: str) -> None:
        conn, server = self.conn, self.server
        assert conn is not None
        if not server.local_user(user):
            conn.login_failed("AUTH", "authentication failed", now=self.loop.time())
            return
        delay = server.settings.login_delay
        if delay > 0:  # checked after a valid password, so it reveals nothing to guessers
            now, last = server.clock(), server.last_login.get(user)
            if last is not None and now - last < delay:
                text = f"wait {delay} seconds between logins"
                conn.login_failed("LOGIN-DELAY", text, now=self.loop.time())
                return
            server.last_login[user] = now
        mailbox = Mailbox(mailbox_root(self.server.data_dir, user))
        lock = await asyncio.to_thread(mailbox.lock_exclusive)
        if lock is None:  # RFC 2449 §8
            conn.login_failed("IN-USE", "mailbox in use by another session", now=self.loop.time())
            return
        try:
            snapshot = await asyncio.to_thread(mailbox.snapshot)
        except OSError as exc:
            lock.release()
            log.error("cannot open the mailbox of %s: %s", user, exc)
            conn.login_failed("SYS/TEMP", "mailbox unavailable, try later", now=self.loop.time())
            return
        if conn.closed or self._closing:
            lock.release()
            return
        self.login = _Login(user, mailbox, lock, snapshot)
        entries = [MessageEntry(m.size, snapshot.uidl(m)) for m in snapshot.messages]
        log.info("pop3 login ip=%s user=%r messages=%d", self.ip, user, len(entries))
        conn.login_ok(entries, self.loop.time())

    async def _retrieve(self, ev: RetrieveRequested) -> None:
        conn, login = self.conn, self.login
        assert conn is not None and login is not None
        message = login.snapshot.messages[ev.index - 1]
        try:
            if message.size <= _READ_IN_LOOP:
                # A small file is read in microseconds; a thread hop per RETR cost more
                # than the read itself (bench/pop3_retr.py).
                data = login.mailbox.read(message)
            else:
                data = await asyncio.to_thread(login.mailbox.read, message)
        except OSError:
            conn.message_unavailable("message no longer available", self.loop.time())
            return
        conn.send_message(data, ev.top, self.loop.time())

    async def _update(self, ev: UpdateRequested) -> None:
        """RFC 1939 §6: remove the deleted messages, mark the retrieved ones seen."""
        conn, login = self.conn, self.login
        assert conn is not None and login is not None
        messages = login.snapshot.messages
        deleted = [messages[n - 1] for n in ev.deleted]
        retrieved = [messages[n - 1] for n in ev.retrieved]
        ok = True
        try:
            if deleted:
                await asyncio.to_thread(login.mailbox.expunge, deleted)
            if retrieved:
                await asyncio.to_thread(login.mailbox.mark_seen, retrieved)
        except OSError as exc:
            log.error("POP3 update for %s failed: %s", login.user, exc)
            ok = False
        conn.update_done(ok, self.loop.time())

    async def _start_tls(self) -> None:
        conn, transport, ctx = self.conn, self.transport, self.server.ssl_context
        assert conn is not None and transport is not None and ctx is not None
        new, early = await self._tls.start_tls(self.loop, transport, self, ctx, self.ip)
        if new is None:
            self.abort()
            return
        self.transport = new
        conn.tls_established()
        if early:
            conn.receive_data(early, self.loop.time())
        self._pump()

    # -- timers, shutdown, cleanup -----------------------------------------------------------

    def _arm_timer(self) -> None:
        conn = self.conn
        if conn is None or self._closing:
            return
        deadline = conn.get_timer()
        when = deadline if deadline is not None else self.loop.time() + 60.0
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.conn is None or self._closing:
            return
        self.conn.handle_timer(self.loop.time())
        self._pump()
        self._arm_timer()

    def start_shutdown(self) -> None:
        if self.conn is not None and not self._closing:
            self.conn.start_shutdown()
            self._pump()

    def abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()  # connection_lost releases the mailbox

    def _release(self) -> None:
        if self.login is not None:
            self.login.lock.release()
            self.login = None
