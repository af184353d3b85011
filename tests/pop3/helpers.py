"""A scripted driver for the sans-IO POP3 server core (tests only).

``drive()`` feeds a byte stream into a ``Pop3Connection`` in chunks of a given size,
answers every decision event with a ``Policy`` (a fake mailbox and account list) and
returns the events and the response bytes. ``run_all_chunkings()`` re-feeds the same
stream in chunks of 1, 2, 3, 4, 7, 8, 16, 64, 512 octets and all at once, asserts that
every chunking gives the same result and returns it.

A stream is ``bytes`` or a sequence of *segments*: chunking applies inside a segment,
and an STLS accepted inside a segment is completed (``tls_established()``) at the
segment's end, so plaintext pipelined after STLS in the same segment never reaches the
core, whatever the chunking (RFC 2595 §4, CVE-2011-0411).

While driving, the output is checked never to contain a bare CR or LF, the input the
core holds back is checked against the line limits whenever it asks for data, and the
(never due) timer is polled. ``NOW`` never triggers a timer.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from postbote.pop3.events import (
    NEED_DATA,
    PAUSED,
    AuthRequested,
    AuthResponse,
    ConnectionClosed,
    Event,
    LoginRequested,
    RetrieveRequested,
    Sentinel,
    UpdateRequested,
)
from postbote.pop3.protocol import (
    MAX_AUTH_LINE,
    MAX_COMMAND_LINE,
    MessageEntry,
    Mode,
    Pop3Connection,
    Pop3Settings,
)

CHUNK_SIZES: tuple[int | None, ...] = (1, 2, 3, 4, 7, 8, 16, 64, 512, None)
NOW = 1.0  # every test clock reading; far below the autologout
HOST = "pop.example.net"
MODE_BOUND = {
    Mode.COMMAND: MAX_COMMAND_LINE,
    Mode.AUTH: MAX_AUTH_LINE,
    Mode.TLS_PENDING: 0,
    Mode.CLOSED: 0,
}

# The default mailbox: plain CRLF; bare LF, dot lines and no final newline; a longer one.
MESSAGES: tuple[bytes, ...] = (
    b"Subject: one\r\n\r\nHello\r\n",
    b"Subject: dots\n\n.x\n.\n..\nend",
    b"Subject: three\r\nFrom: a@example.org\r\n\r\nline1\r\nline2\r\nline3\r\n",
)

# Scripted SCRAM-like exchange (client line -> server challenge), RFC 5802 shaped.
SCRAM_CLIENT_FIRST = b"n,,n=alice,r=abc"
SCRAM_SERVER_FIRST = b"r=abcdef,s=c2FsdA==,i=4096"
SCRAM_CLIENT_FINAL = b"c=biws,r=abcdef,p=proof"
SCRAM_SERVER_FINAL = b"v=verifier"


def crlf(data: bytes) -> bytes:
    """An independent CRLF normalisation: every CR, LF or CRLF -> CRLF, final CRLF."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


def entries(messages: Iterable[bytes]) -> list[MessageEntry]:
    return [MessageEntry(len(crlf(m)), f"uid-{i}") for i, m in enumerate(messages, 1)]


def settings(**overrides: Any) -> Pop3Settings:
    """Pop3Settings for tests: hostname ``HOST``, everything else default or given."""
    return Pop3Settings(hostname=HOST, **overrides)


TLS = settings(in_tls=True)


@dataclass(frozen=True)
class Policy:
    """How the scripted glue answers: PLAIN and USER/PASS check ``credentials``,
    SCRAM-SHA-256 follows the scripted exchange above."""

    messages: tuple[bytes, ...] = MESSAGES
    credentials: Mapping[str, str] = field(default_factory=lambda: {"alice": "s3cret"})
    in_use: bool = False  # the mailbox is locked by another session
    lockout: bool = False  # a failed login ends the session
    missing: frozenset[int] = frozenset()  # messages whose file has gone
    update_ok: bool = True
    establish_tls: bool = True  # call tls_established() at the end of the segment


DEFAULT = Policy()


class Glue:
    """Answers decisions for one connection according to a Policy."""

    def __init__(self, conn: Pop3Connection, policy: Policy) -> None:
        self.conn = conn
        self.policy = policy
        self.mechanism: str | None = None
        self.scram_step = 0

    def answer(self, ev: Event) -> None:
        conn, p = self.conn, self.policy
        if isinstance(ev, LoginRequested):
            self._finish(ev.user, ev.password)
        elif isinstance(ev, AuthRequested):
            self.mechanism = ev.mechanism
            self.scram_step = 0
            if ev.initial is None:
                conn.auth_challenge(b"", NOW)  # RFC 5034 §4: empty challenge
            else:
                self._auth_step(ev.initial)
        elif isinstance(ev, AuthResponse):
            self._auth_step(ev.data)
        elif isinstance(ev, RetrieveRequested):
            if ev.index in p.missing:
                conn.message_unavailable("message file has gone", NOW)
            else:
                conn.send_message(p.messages[ev.index - 1], ev.top, NOW)
        elif isinstance(ev, UpdateRequested):
            conn.update_done(p.update_ok, NOW)

    def _auth_step(self, data: bytes) -> None:
        if self.mechanism == "PLAIN":
            parts = data.split(b"\0")  # RFC 4616 §2
            if len(parts) != 3:
                self._fail()
            else:
                self._finish(
                    parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
                )
            return
        script = [
            (SCRAM_CLIENT_FIRST, SCRAM_SERVER_FIRST),
            (SCRAM_CLIENT_FINAL, SCRAM_SERVER_FINAL),
        ]
        if self.scram_step < len(script):
            expected, challenge = script[self.scram_step]
            self.scram_step += 1
            if data == expected:
                self.conn.auth_challenge(challenge, NOW)
            else:
                self._fail()
        elif data == b"":
            self._finish("alice", self.policy.credentials.get("alice", ""))
        else:
            self._fail()

    def _finish(self, user: str, password: str) -> None:
        p = self.policy
        if p.credentials.get(user) != password or not password:
            self._fail()
        elif p.in_use:
            self.conn.login_failed("IN-USE", "mailbox in use by another session", now=NOW)
        else:
            self.conn.login_ok(entries(p.messages), NOW)

    def _fail(self) -> None:
        self.conn.login_failed("AUTH", "invalid credentials", close=self.policy.lockout, now=NOW)


Chunking = int | Sequence[int] | None


def chunks(data: bytes, size: Chunking) -> Iterable[bytes]:
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


def check_wire(out: bytes) -> None:
    """No bare CR or LF is ever sent (RFC 1939 §3), and output ends at a line end."""
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n"), out
    assert not out or out.endswith(b"\r\n"), out


@dataclass
class Result:
    """What one drive produced. ``replies`` includes the greeting (if sent)."""

    events: list[Event]
    replies: bytes
    conn: Pop3Connection

    def snapshot(self) -> tuple[object, ...]:
        c = self.conn
        d = c.maildrop
        marks = (d.count, d.octets, d.update_marks())
        return (self.events, self.replies, c.state, c.mode, c.in_tls, c.errors, c.buffered, marks)


class Session:
    """One connection plus a scripted glue, fed step by step.

    With ``auto`` the Policy answers every decision as it is emitted; without it the
    decision events are recorded and left pending for the test to answer (then call
    ``pump()``). ``replies`` accumulates all output, ``feed()`` returns the new part.
    """

    def __init__(
        self,
        config: Pop3Settings | None = None,
        policy: Policy = DEFAULT,
        *,
        greet: bool = True,
        auto: bool = True,
        now: float = NOW,
    ) -> None:
        self.conn = Pop3Connection(config or settings(), now)
        self.auto = auto
        self.events: list[Event] = []
        self.replies = b""
        self.paused = False
        self.glue = Glue(self.conn, policy)
        if greet:
            self.conn.greeting()
            self.output()

    def feed(self, data: bytes, now: float = NOW, chunk_size: Chunking = None) -> bytes:
        """Receive ``data`` (in chunks), process it and return the new response bytes."""
        before = len(self.replies)
        for chunk in chunks(data, chunk_size):
            self.conn.receive_data(chunk, now)
            self.pump()
        self.output()
        return self.replies[before:]

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
                self.glue.answer(ev)
        return new

    def output(self) -> bytes:
        out = self.conn.data_to_send()
        self.replies += out
        check_wire(self.replies)
        return out

    def establish_tls(self) -> bytes:
        self.conn.tls_established()
        self.pump()
        return self.output()

    def eof(self) -> bytes:
        self.conn.receive_eof()
        self.pump()
        return self.output()

    def result(self) -> Result:
        self.output()
        return Result(list(self.events), self.replies, self.conn)


def drive(
    stream: bytes | Sequence[bytes],
    policy: Policy = DEFAULT,
    chunk_size: Chunking = None,
    config: Pop3Settings | None = None,
    *,
    greet: bool = True,
    eof: bool = False,
) -> Result:
    """Feed ``stream`` split by ``chunk_size`` (None: each segment at once), answering
    decisions with ``policy``; return the events and all response bytes."""
    session = Session(config, policy, greet=greet)
    conn = session.conn
    segments = [stream] if isinstance(stream, bytes | bytearray) else list(stream)
    for segment in segments:
        for chunk in chunks(bytes(segment), chunk_size):
            session.feed(chunk)
            conn.handle_timer(NOW)  # never due: must not close anything
            # Every decision has been answered; only a TLS handshake may be owed.
            assert not session.paused or conn.mode is Mode.TLS_PENDING
        if conn.mode is Mode.TLS_PENDING and policy.establish_tls:
            session.establish_tls()
    if eof:
        session.eof()
    result = session.result()
    assert sum(isinstance(e, ConnectionClosed) for e in result.events) <= 1
    return result


def run_all_chunkings(
    stream: bytes | Sequence[bytes],
    policy: Policy = DEFAULT,
    config: Pop3Settings | None = None,
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


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def unstuff(body: bytes) -> bytes:
    """Undo RFC 1939 §3 byte-stuffing of a multi-line body (without its ".CRLF")."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


__all__ = [
    "CHUNK_SIZES",
    "DEFAULT",
    "HOST",
    "MESSAGES",
    "NOW",
    "TLS",
    "Glue",
    "Policy",
    "Result",
    "Session",
    "b64",
    "check_wire",
    "crlf",
    "drive",
    "entries",
    "run_all_chunkings",
    "settings",
    "unstuff",
]
