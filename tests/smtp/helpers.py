"""A scripted driver for the sans-IO SMTP server core (tests only).

``drive()`` feeds a byte stream into a ``ServerConnection`` in chunks of a given size,
answers every decision event with a ``Policy`` and returns the events and the reply
bytes. ``run_all_chunkings()`` re-feeds the same stream in chunks of 1, 2, 3, 4, 7, 8,
16, 64, 512 octets and all at once, asserts that every chunking gives the same result
and returns it.

A stream is either ``bytes`` or a sequence of *segments* (bytes). Segments model what
the peer sends before and after a TLS handshake: chunking applies inside a segment,
and a STARTTLS accepted inside a segment is completed (``tls_established()``) at the
segment's end, so plaintext pipelined after STARTTLS in the same segment never
reaches the core, whatever the chunking.

While driving, every reply line is checked to be well-formed (``^\\d{3}[ -]`` and CRLF),
the input the core buffers is checked against the line limits, and the (never due)
timer is polled. ``NOW`` never triggers a timer.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from postbote.smtp.events import (
    NEED_DATA,
    PAUSED,
    AuthRequested,
    AuthResponse,
    ConnectionClosed,
    Event,
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    Sentinel,
    StartTlsRequested,
)
from postbote.smtp.protocol import (
    MAX_AUTH_LINE,
    MAX_COMMAND_LINE,
    Mode,
    ServerConnection,
    ServerSettings,
)
from postbote.smtp.replies import Reply

# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
MAX_TEXT_LINE = 1000
# The most input the core may hold back in each mode once it has said NEED_DATA
# (one partial line; a DATA line may keep its CRLF pending).
MODE_BOUND = {
    Mode.COMMAND: MAX_COMMAND_LINE,
    Mode.AUTH: MAX_AUTH_LINE,
    Mode.DATA: MAX_TEXT_LINE + 2,
    Mode.CHUNK: 0,
    Mode.TLS_PENDING: 0,
    Mode.CLOSED: 0,
}
BUFFER_BOUND = max(MODE_BOUND.values())
CHUNK_SIZES: tuple[int | None, ...] = (1, 2, 3, 4, 7, 8, 16, 64, 512, None)
NOW = 1.0  # every test clock reading; far below any timeout
HOST = "mx.example.net"
REPLY_LINE = re.compile(rb"\A[2-5]\d\d[ -][^\r\n]*\r\n\Z")

C535_AUTH_FAILED = Reply.make(535, "5.7.8", "Authentication credentials invalid")
C550_NO_SUCH_USER = Reply.make(550, "5.1.1", "No such user here")
C550_SENDER_REFUSED = Reply.make(550, "5.7.1", "Sender refused")


def settings(**overrides: Any) -> ServerSettings:
    """ServerSettings for tests: hostname ``HOST``, everything else default or given."""
    return ServerSettings(hostname=HOST, **overrides)


@dataclass(frozen=True)
class Policy:
    """How the scripted glue answers decision events.

    Addresses are matched with ``Address.key()`` (lower-cased ``local@domain``).
    AUTH: PLAIN (RFC 4616) and LOGIN are checked against ``credentials``.
    """

    reject_hello: Reply | None = None
    reject_senders: frozenset[str] = frozenset()
    reject_rcpts: frozenset[str] = frozenset()
    rcpt_reply: Reply = C550_NO_SUCH_USER
    reject_message: Reply | None = None
    accept_tls: bool = True
    establish_tls: bool = True  # call tls_established() at the end of the segment
    credentials: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret"})


ACCEPT_ALL = Policy()


@dataclass
class Result:
    """What one drive produced. ``replies`` includes the greeting (if sent)."""

    events: list[Event]
    replies: bytes
    conn: ServerConnection

    def snapshot(self) -> tuple[object, ...]:
        c = self.conn
        return (
            self.events,
            self.replies,
            c.phase,
            c.mode,
            c.authenticated,
            c.in_tls,
            c.errors,
            c.buffered,
        )

    @property
    def messages(self) -> list[bytes]:
        return [e.body for e in self.events if isinstance(e, MessageComplete)]

    @property
    def reply_list(self) -> list[bytes]:
        return split_replies(self.replies)

    @property
    def codes(self) -> list[str]:
        """Each reply as ``"250"`` or ``"550 5.1.1"`` (code plus enhanced code if any)."""
        return [reply_code(r) for r in self.reply_list]


class _Glue:
    """Answers decisions for one connection according to a Policy."""

    def __init__(self, conn: ServerConnection, policy: Policy) -> None:
        self.conn = conn
        self.policy = policy
        self.queued = 0
        self.mechanism: str | None = None
        self.login_user: str | None = None

    def answer(self, ev: Event) -> None:
        conn, p = self.conn, self.policy
        if isinstance(ev, Hello):
            conn.accept() if p.reject_hello is None else conn.reject(p.reject_hello)
        elif isinstance(ev, MailFrom):
            key = "<>" if ev.sender is None else ev.sender.key()
            conn.reject(C550_SENDER_REFUSED) if key in p.reject_senders else conn.accept()
        elif isinstance(ev, RcptTo):
            refused = ev.recipient.key() in p.reject_rcpts
            conn.reject(p.rcpt_reply) if refused else conn.accept()
        elif isinstance(ev, MessageComplete):
            if p.reject_message is not None:
                conn.reject(p.reject_message)
            else:
                self.queued += 1
                conn.accept(Reply.make(250, "2.0.0", f"Ok: queued as Q{self.queued}"))
        elif isinstance(ev, StartTlsRequested):
            if p.accept_tls:
                conn.accept()
            else:
                conn.reject(Reply.make(454, "4.7.0", "TLS not available due to local problem"))
        elif isinstance(ev, AuthRequested):
            self._auth_start(ev)
        elif isinstance(ev, AuthResponse):
            self._auth_step(ev.data)

    def _auth_start(self, ev: AuthRequested) -> None:
        self.mechanism = ev.mechanism
        self.login_user = None
        if ev.mechanism == "LOGIN":
            if ev.initial_response:  # RFC 4954 §4: LOGIN's initial response is the user
                self.login_user = ev.initial_response.decode("utf-8", "replace")
                self.conn.auth_challenge(b"Password:")
            else:
                self.conn.auth_challenge(b"Username:")
        elif ev.initial_response is None:
            self.conn.auth_challenge(b"")  # RFC 4954 §4: empty challenge for PLAIN
        else:
            self._check_plain(ev.initial_response)

    def _auth_step(self, data: bytes) -> None:
        if self.mechanism != "LOGIN":
            self._check_plain(data)
        elif self.login_user is None:
            self.login_user = data.decode("utf-8", "replace")
            self.conn.auth_challenge(b"Password:")
        else:
            self._finish(self.login_user, data.decode("utf-8", "replace"))

    def _check_plain(self, data: bytes) -> None:
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd
        parts = data.split(b"\0")
        if len(parts) != 3:
            self.conn.reject(C535_AUTH_FAILED)
            return
        self._finish(parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace"))

    def _finish(self, user: str, password: str) -> None:
        if self.policy.credentials.get(user) == password:
            self.conn.auth_success(user)
        else:
            self.conn.reject(C535_AUTH_FAILED)


Chunking = int | Sequence[int] | None


def _chunks(data: bytes, size: Chunking) -> Iterable[bytes]:
    """Split ``data``: all at once (None), in equal chunks (int), or in the given
    chunk sizes, repeated cyclically (a sequence of positive ints)."""
    if size is None or not data:
        yield data
        return
    sizes = itertools.cycle([size] if isinstance(size, int) else size)
    i = 0
    while i < len(data):
        n = next(sizes)
        assert n > 0
        yield data[i : i + n]
        i += n


def check_replies(out: bytes) -> None:
    """Every reply line is ``ddd`` then SP or ``-``, and ends with CRLF."""
    assert out.endswith(b"\r\n") or not out, out
    for line in out.splitlines(keepends=True):
        assert REPLY_LINE.match(line), line


class Session:
    """One connection plus a scripted glue, fed step by step.

    With ``auto`` the Policy answers every decision as it is emitted; without it the
    decision events are recorded and left pending for the test to answer (then call
    ``pump()``). ``replies`` accumulates all output, ``feed()`` returns the new part.
    """

    def __init__(
        self,
        config: ServerSettings | None = None,
        policy: Policy = ACCEPT_ALL,
        *,
        greet: bool = True,
        auto: bool = True,
        now: float = NOW,
    ) -> None:
        self.conn = ServerConnection(config or settings(), now=now)
        self.policy = policy
        self.auto = auto
        self.events: list[Event] = []
        self.replies = b""
        self.paused = False
        self._glue = _Glue(self.conn, policy)
        if greet:
            self.conn.greeting()

    def feed(self, data: bytes, now: float = NOW, chunk_size: Chunking = None) -> bytes:
        """Receive ``data`` (in chunks), process it and return the new reply bytes."""
        conn = self.conn
        for chunk in _chunks(data, chunk_size):
            conn.receive_data(chunk, now)
            if not self.paused:
                assert conn.buffered <= BUFFER_BOUND + len(chunk), conn.buffered
            self.pump()
        return self.output()

    def pump(self) -> list[Event]:
        """Drain events (answering them if ``auto``) until NEED_DATA or PAUSED."""
        conn = self.conn
        new: list[Event] = []
        while True:
            ev = conn.next_event()
            if isinstance(ev, Sentinel):
                self.paused = ev is PAUSED
                if ev is NEED_DATA:
                    assert conn.buffered <= MODE_BOUND[conn.mode], (conn.mode, conn.buffered)
                break
            self.events.append(ev)
            new.append(ev)
            if self.auto:
                self._glue.answer(ev)
        return new

    def output(self) -> bytes:
        out = self.conn.data_to_send()
        check_replies(out)
        self.replies += out
        return out

    def state(self) -> tuple[object, ...]:
        """(phase, mode, sender, recipients, in_transaction, in_tls, authenticated) now;
        a call, so that type narrowing does not outlive the next feed."""
        c = self.conn
        return (
            c.phase,
            c.mode,
            c.sender,
            c.recipients,
            c.in_transaction,
            c.in_tls,
            c.authenticated,
        )

    def establish_tls(self) -> bytes:
        self.conn.tls_established()
        self.pump()
        return self.output()

    def result(self) -> Result:
        self.output()
        return Result(list(self.events), self.replies, self.conn)


def drive(
    stream: bytes | Sequence[bytes],
    policy: Policy = ACCEPT_ALL,
    chunk_size: Chunking = None,
    config: ServerSettings | None = None,
    *,
    greet: bool = True,
    eof: bool = False,
) -> Result:
    """Feed ``stream`` split by ``chunk_size`` (None: each segment at once),
    answering decisions with ``policy``; return the events and all reply bytes."""
    session = Session(config, policy, greet=greet)
    conn = session.conn
    segments = [stream] if isinstance(stream, bytes | bytearray) else list(stream)
    for segment in segments:
        for chunk in _chunks(bytes(segment), chunk_size):
            session.feed(chunk)
            conn.handle_timer(NOW)  # never due: must not close anything
            # Every decision event the core emitted has been answered by now.
            assert not session.paused, "core PAUSED, but no unanswered decision event was emitted"
        if conn.mode is Mode.TLS_PENDING and policy.establish_tls:
            session.establish_tls()
    if eof:
        conn.receive_eof()
        session.pump()
    result = session.result()
    assert sum(isinstance(e, ConnectionClosed) for e in result.events) <= 1
    return result


def run_all_chunkings(
    stream: bytes | Sequence[bytes],
    policy: Policy = ACCEPT_ALL,
    config: ServerSettings | None = None,
    *,
    sizes: Sequence[int | None] = CHUNK_SIZES,
    greet: bool = True,
    eof: bool = False,
) -> Result:
    """Drive ``stream`` in every chunk size; assert identical results and return one."""
    reference = drive(stream, policy, None, config, greet=greet, eof=eof)
    for size in sizes:
        other = drive(stream, policy, size, config, greet=greet, eof=eof)
        assert other.snapshot() == reference.snapshot(), f"chunk size {size} differs"
    return reference


def split_replies(out: bytes) -> list[bytes]:
    """Split reply bytes into whole replies (a multi-line reply is one item)."""
    replies: list[bytes] = []
    current = b""
    for line in out.splitlines(keepends=True):
        current += line
        if line[3:4] != b"-":
            replies.append(current)
            current = b""
    assert not current, "unterminated multi-line reply"
    return replies


def reply_code(reply: bytes) -> str:
    """``b"550 5.1.1 No such user\\r\\n"`` -> ``"550 5.1.1"``; ``b"250 mx\\r\\n"`` -> ``"250"``."""
    last = reply.splitlines()[-1].decode("utf-8", "replace")
    m = re.match(r"(\d{3})[ -](\d\.\d{1,3}\.\d{1,3})(?: |$)", last)
    return f"{m[1]} {m[2]}" if m else last[:3]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


__all__ = [
    "ACCEPT_ALL",
    "BUFFER_BOUND",
    "CHUNK_SIZES",
    "HOST",
    "MAX_TEXT_LINE",
    "NOW",
    "Policy",
    "Result",
    "Session",
    "b64",
    "check_replies",
    "drive",
    "reply_code",
    "run_all_chunkings",
    "settings",
    "split_replies",
]
