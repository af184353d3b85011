"""The sans-IO SMTP server core (RFC 5321 and the extensions postbote offers).

Theory of operation
-------------------
The core owns every SMTP transition. It is driven by three things only:

* bytes from the peer: ``receive_data(data, now)`` and ``receive_eof()``;
* the glue's decisions: ``accept()``, ``reject()``, ``auth_challenge()``,
  ``auth_success()``, ``tls_established()``, ``start_shutdown()``;
* time, given to it: ``get_timer()`` says when to call ``handle_timer(now)``.

It answers by appending reply bytes to an output buffer (``data_to_send()``) and by
emitting events (``next_event()``, see events.py). Protocol mechanics — syntax errors,
sequence errors, NOOP, RSET, VRFY, HELP, QUIT, DATA transparency, BDAT counting, line
limits, the error budget — are answered by the core itself. Decisions that need policy
or storage (HELO/EHLO, MAIL, RCPT, end of message, STARTTLS, AUTH) are emitted as
events, and the core stays PAUSED until the glue answers; bytes that arrive meanwhile
are buffered (``buffered`` tells how many, so the glue can stop reading).

Two state variables describe a session (RFC 5321 §4.1.4):

* ``phase`` — where the session is: GREETED (no HELO/EHLO yet), HELLO, MAIL (a
  sender accepted), RCPT (at least one recipient accepted), BDAT (chunks under way);
* ``mode`` — how the next input bytes are read: COMMAND lines, DATA text, a BDAT
  CHUNK of counted octets, an AUTH response line, nothing while a TLS handshake is
  pending (TLS_PENDING), or nothing at all (CLOSED).

``_VERB_PHASES`` below is the whole table of which command is legal in which phase;
anything missing from it is answered 503 5.5.1.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from postbote.errors import LocalProtocolError
from postbote.smtp import replies as R
from postbote.smtp.data import MAX_TEXT_LINE as MAX_TEXT_LINE
from postbote.smtp.data import DataError, MessageReader
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
    TransactionReset,
)
from postbote.smtp.grammar import (
    Address,
    GrammarError,
    MailParams,
    RcptParams,
    parse_helo_name,
    parse_mail_from,
    parse_rcpt_to,
)
from postbote.smtp.replies import Reply

# RFC 5321 §4.5.3.1.4: 512 octets per command line. RFC 1870 §3, RFC 3461 §4-5 and
# RFC 6531 §3.4 extend MAIL/RCPT for their parameters (ENVID 100, ORCPT 500, ...):
# we allow 512 plus a 1536-octet margin for every command.
MAX_COMMAND_LINE = 2048
# RFC 4954 §4: an AUTH response line may be up to 12288 octets.
MAX_AUTH_LINE = 12288


class Phase(enum.Enum):
    GREETED = "GREETED"
    HELLO = "HELLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    BDAT = "BDAT"

    # Members are singletons compared by identity: hash them so too (Enum's own
    # __hash__ is Python code, and each command looks its phase up in a set).
    __hash__ = object.__hash__


class Mode(enum.Enum):
    COMMAND = "COMMAND"
    DATA = "DATA"
    CHUNK = "CHUNK"
    AUTH = "AUTH"
    TLS_PENDING = "TLS_PENDING"
    CLOSED = "CLOSED"


_ANY = frozenset(Phase)
_OUTSIDE_TRANSACTION = frozenset({Phase.GREETED, Phase.HELLO})
# Which command is legal in which phase (RFC 5321 §4.1.4, RFC 3030 §2, RFC 3207 §4,
# RFC 4954 §4). DATA and BDAT are listed wider than legal on purpose: their handlers
# choose between 503 and 554 (RFC 5321 §3.3) and BDAT must consume its chunk anyway.
_VERB_PHASES: dict[str, frozenset[Phase]] = {
    "HELO": _ANY,
    "EHLO": _ANY,
    "MAIL": frozenset({Phase.HELLO}),
    "RCPT": frozenset({Phase.MAIL, Phase.RCPT}),
    "DATA": frozenset({Phase.HELLO, Phase.MAIL, Phase.RCPT}),
    "BDAT": _ANY,
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "VRFY": _ANY,
    "EXPN": _ANY,
    "HELP": _ANY,
    "STARTTLS": _OUTSIDE_TRANSACTION,
    "AUTH": frozenset({Phase.HELLO}),
}

C220_GREETING_FMT = "{host} ESMTP {banner}"
C501_NO_ARGS = Reply.make(501, "5.5.4", "Syntax error: no parameters allowed")
C501_AUTH_CANCELLED = Reply.make(501, "5.0.0", "Authentication cancelled")
C501_BAD_BASE64 = Reply.make(501, "5.5.2", "Invalid base64 data")
C502_EXPN = Reply.make(502, "5.5.1", "EXPN not available")
C503_HELLO_FIRST = Reply.make(503, "5.5.1", "Send HELO/EHLO first")
C503_NESTED_MAIL = Reply.make(503, "5.5.1", "Sender already specified")
C503_NEED_MAIL = Reply.make(503, "5.5.1", "Need MAIL command")
C503_ALREADY_AUTH = Reply.make(503, "5.5.1", "Already authenticated")
C503_AUTH_IN_TRANSACTION = Reply.make(503, "5.5.1", "AUTH not permitted during a transaction")
C503_TLS_ACTIVE = Reply.make(503, "5.5.1", "TLS already active")
C503_DATA_AFTER_BDAT = Reply.make(503, "5.5.1", "DATA not allowed after BDAT")
C503_BDAT_AFTER_FAILURE = Reply.make(503, "5.5.1", "No transaction in progress")
C504_UNKNOWN_MECHANISM = Reply.make(504, "5.5.4", "Unrecognized authentication mechanism")
C538_ENCRYPTION_REQUIRED = Reply.make(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
C552_SIZE_DECLARED = Reply.make(552, "5.3.4", "Declared message size exceeds fixed maximum")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the core needs to know about its listener; fixed for a connection."""

    hostname: str
    max_message_size: int = 26214400
    max_recipients: int = 1000
    max_errors: int = 10
    tls_available: bool = False  # STARTTLS can be offered
    in_tls: bool = False  # the connection is already TLS (implicit TLS, RFC 8314)
    auth_mechanisms: tuple[str, ...] = ()
    auth_requires_tls: bool = True  # RFC 4954 §4 / RFC 8314: no AUTH over plaintext
    auth_required: bool = False  # MAIL before AUTH gets 530 5.7.0
    bare_newlines: str = "reject"  # "reject" | "normalize"
    banner: str = "postbote"
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7
    data_timeout: float = 180.0  # RFC 5321 §4.5.3.2.5 (per data block)


_DATA_ERROR_REPLY = {
    DataError.TOO_BIG: R.C552_MESSAGE_TOO_BIG,
    DataError.BARE_NEWLINE: R.C550_BARE_NEWLINE,
    DataError.LINE_TOO_LONG: R.C552_LINE_TOO_LONG,
    DataError.NO_MEMORY: R.C452_INSUFFICIENT_STORAGE,  # RFC 5321 §4.2.3: try again later
}


# The 220 greeting per (hostname, banner): made once, not per connection.
_GREETINGS: dict[tuple[str, str], Reply] = {}


class ServerConnection:
    """One SMTP server session, without I/O.

    Driven by: ``receive_data``/``receive_eof`` (peer bytes), the glue's decisions
    (``accept``, ``reject``, ``auth_challenge``, ``auth_success``,
    ``tls_established``, ``start_shutdown``) and ``handle_timer`` (time).
    """

    __slots__ = (
        "_auth_mechanism",
        "_buf",
        "_chunk_error",
        "_chunk_last",
        "_chunk_remaining",
        "_discard_line",
        "_events",
        "_last_activity",
        "_out",
        "_pending",
        "_reader",
        "_shutting_down",
        "authenticated",
        "errors",
        "esmtp",
        "helo_name",
        "in_tls",
        "mail_params",
        "mode",
        "phase",
        "recipients",
        "sender",
        "settings",
    )

    def __init__(self, settings: ServerSettings, now: float = 0.0) -> None:
        self.settings = settings
        self.phase = Phase.GREETED
        self.mode = Mode.COMMAND
        self.in_tls = settings.in_tls
        self.helo_name: str | None = None
        self.esmtp = False
        self.authenticated: str | None = None
        self.sender: Address | None = None
        self.mail_params = _NO_PARAMS
        self.recipients: list[tuple[Address, RcptParams]] = []
        self.errors = 0
        self._buf = bytearray()
        self._out = bytearray()
        self._events: list[Event] = []  # a deque costs ~600 bytes per connection
        self._pending: Event | None = None
        self._last_activity = now
        self._shutting_down = False
        # Created by DATA/BDAT; an idle connection carries none (memory per connection).
        self._reader: MessageReader | None = None
        self._discard_line = False  # swallowing an over-long command line
        self._chunk_remaining = 0
        self._chunk_last = False
        self._chunk_error: Reply | None = None
        self._auth_mechanism: str | None = None

    # -- glue-facing API ---------------------------------------------------------

    def greeting(self) -> None:
        """Queue the 220 greeting (RFC 5321 §4.2; no enhanced code, RFC 2034 §3)."""
        settings = self.settings
        key = (settings.hostname, settings.banner)
        greeting = _GREETINGS.get(key)
        if greeting is None:
            text = C220_GREETING_FMT.format(host=settings.hostname, banner=settings.banner)
            greeting = _GREETINGS[key] = Reply.make(220, None, text)
        self._send(greeting)

    def refuse(self, reply: Reply) -> None:
        """Answer the connection with ``reply`` (a 421 or 554) and close."""
        self._close(reply, "refused")

    @property
    def buffered(self) -> int:
        """Input bytes received but not yet processed."""
        return len(self._buf)

    @property
    def body_size(self) -> int:
        """Bytes of the message being received (DATA or BDAT), held in memory."""
        return len(self._reader.body) if self._reader is not None else 0

    def drop_message(self) -> None:
        """The glue has no memory left for message bodies: free this message's body. The
        rest of it is read and discarded, and its end answered with 452 4.3.1; a BDAT
        transaction ends with the end of its current or next chunk (RFC 3030 §2). No
        effect outside a message, or once its body was handed over."""
        if self._reader is not None:
            self._reader.drop()

    @property
    def closed(self) -> bool:
        return self.mode is Mode.CLOSED

    @property
    def in_transaction(self) -> bool:
        return self.phase not in _OUTSIDE_TRANSACTION or self.mode in (Mode.DATA, Mode.CHUNK)

    def receive_data(self, data: bytes, now: float) -> None:
        self._last_activity = now
        if self.mode is Mode.CLOSED or self.mode is Mode.TLS_PENDING:
            return  # RFC 3207 §4.2 / CVE-2011-0411: nothing crosses the TLS boundary
        self._buf += data

    def receive_eof(self) -> None:
        """The peer closed its side: no reply is possible any more."""
        if self.mode is not Mode.CLOSED:
            self.mode = Mode.CLOSED
            self._buf.clear()
            self._events.append(ConnectionClosed("peer closed the connection"))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Sentinel:
        while True:
            if self._events:
                return self._events.pop(0)
            if self._pending is not None:
                return PAUSED
            mode = self.mode
            if mode is Mode.COMMAND:
                progressed = self._read_command()
            elif mode is Mode.DATA:
                progressed = self._read_data()
            elif mode is Mode.CHUNK:
                progressed = self._read_chunk()
            elif mode is Mode.AUTH:
                progressed = self._read_auth_line()
            else:
                return NEED_DATA
            if not progressed and not self._events and self._pending is None:
                return NEED_DATA

    def accept(self, reply: Reply | None = None, *, now: float | None = None) -> None:
        """Accept the pending decision event, answering with ``reply`` (a 2xx/3xx) or
        the default. ``now`` restarts the idle timer after a slow decision."""
        if reply is not None and reply.code >= 400:
            raise LocalProtocolError("accept() needs a positive reply; use reject()")
        ev = self._answer(_DECISIONS_ACCEPTED, "accept", now)
        if ev is None:
            return
        if isinstance(ev, Hello):
            if self.in_transaction:
                self._events.append(TransactionReset())  # RFC 5321 §4.1.4
            self._reset_transaction()
            self.phase = Phase.HELLO
            self.helo_name = ev.name
            self.esmtp = ev.verb == "EHLO"
            self._send(reply or self._hello_reply(ev.verb))
        elif isinstance(ev, MailFrom):
            self.sender = ev.sender
            self.mail_params = ev.params
            self.phase = Phase.MAIL
            self._send_bytes(reply.to_bytes() if reply else _B250_SENDER_OK)
        elif isinstance(ev, RcptTo):
            self.recipients.append((ev.recipient, ev.params))
            self.phase = Phase.RCPT
            self._send_bytes(reply.to_bytes() if reply else _B250_RCPT_OK)
        elif isinstance(ev, MessageComplete):
            self._send(reply or R.C250_OK)
            self._end_transaction()
        else:  # StartTlsRequested
            self._send(reply or R.C220_READY_TLS)
            self._buf.clear()  # RFC 3207 §4.2, CVE-2011-0411: drop pipelined plaintext
            self.mode = Mode.TLS_PENDING
            return
        self._shutdown_if_idle()

    def reject(self, reply: Reply, *, now: float | None = None) -> None:
        """Refuse the pending decision event with ``reply`` (a 4xx or 5xx)."""
        if reply.code < 400:
            raise LocalProtocolError("reject() needs a 4xx or 5xx reply")
        ev = self._answer(_ALL_DECISIONS, "reject", now)
        if ev is None:
            return
        if isinstance(ev, AuthRequested | AuthResponse):
            self.mode = Mode.COMMAND
            self._auth_mechanism = None
        self._send(reply)
        if isinstance(ev, MessageComplete):
            self._end_transaction()
        elif reply.code >= 500 and not isinstance(ev, StartTlsRequested):
            # A 4xx is the server's own passing trouble (disk full, DNS time-out): the
            # client did nothing wrong, and may retry without being cut off.
            self._count_error()
        self._shutdown_if_idle()

    def auth_challenge(self, data: bytes, *, now: float | None = None) -> None:
        """Continue a SASL exchange: send ``334 <base64(data)>`` (RFC 4954 §4)."""
        if self._answer(_AUTH_DECISIONS, "auth_challenge", now) is None:
            return
        self._send_bytes(b"334 " + base64.b64encode(data) + b"\r\n")
        self.mode = Mode.AUTH

    def auth_success(self, identity: str, *, now: float | None = None) -> None:
        """End a SASL exchange successfully: 235 2.7.0 (RFC 4954 §6)."""
        if self._answer(_AUTH_DECISIONS, "auth_success", now) is None:
            return
        self.authenticated = identity
        self._auth_mechanism = None
        self.mode = Mode.COMMAND
        self._send(R.C235_AUTH_OK)
        self._shutdown_if_idle()

    def _answer(self, allowed: tuple[type, ...], verb: str, now: float | None) -> Event | None:
        """Take the pending decision if ``verb`` may answer it. Returns None (and does
        nothing else) when the connection closed meanwhile."""
        ev = self._pending
        if ev is None:
            raise LocalProtocolError("no decision is pending")
        if not isinstance(ev, allowed):
            raise LocalProtocolError(f"{verb}() does not answer {type(ev).__name__}")
        self._pending = None
        if now is not None:
            self._last_activity = now
        if self.mode is Mode.CLOSED:
            return None
        return ev

    def _shutdown_if_idle(self) -> None:
        if (
            self._shutting_down
            and self.mode is Mode.COMMAND
            and self._pending is None
            and not self.in_transaction
        ):
            self._close(R.C421_SHUTTING_DOWN, "shutdown")

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS completed (RFC 3207 §4.2): forget everything
        learnt in plaintext — HELO/EHLO, AUTH, the transaction — and wait for EHLO."""
        if self.mode is not Mode.TLS_PENDING:
            raise LocalProtocolError("tls_established() without STARTTLS")
        self.in_tls = True
        self.mode = Mode.COMMAND
        self.phase = Phase.GREETED
        self.helo_name = None
        self.esmtp = False
        self.authenticated = None
        self._reset_transaction()
        self._buf.clear()

    def start_shutdown(self) -> None:
        """Server is stopping: close now if idle, else right after the transaction."""
        self._shutting_down = True
        if self.mode is Mode.COMMAND and self._pending is None and not self.in_transaction:
            self._close(R.C421_SHUTTING_DOWN, "shutdown")

    def get_timer(self) -> float | None:
        """When handle_timer() must be called next, or None (no timer needed)."""
        if self.mode in (Mode.CLOSED, Mode.TLS_PENDING) or self._pending is not None:
            return None
        if self.mode in (Mode.DATA, Mode.CHUNK):
            return self._last_activity + self.settings.data_timeout
        return self._last_activity + self.settings.command_timeout

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            self._close(R.C421_TIMEOUT, "timeout")

    # -- output helpers ----------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._out += reply.to_bytes()

    def _send_bytes(self, data: bytes) -> None:
        self._out += data

    def _close(self, reply: Reply, reason: str) -> None:
        if self.mode is Mode.CLOSED:
            return
        self._send(reply)
        self.mode = Mode.CLOSED
        self._buf.clear()
        self._events.append(ConnectionClosed(reason))

    def _error(self, reply: Reply) -> None:
        self._send(reply)
        self._count_error()

    def _count_error(self) -> None:
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._close(R.C421_TOO_MANY_ERRORS, "too many errors")

    def _decide(self, ev: Event) -> None:
        """Emit a decision event and pause until the glue answers it."""
        self._pending = ev
        self._events.append(ev)

    def _hello_reply(self, verb: str) -> Reply:
        host = self.settings.hostname
        if verb == "HELO":
            return Reply.make(250, None, host)
        s = self.settings
        lines = [
            host,
            "PIPELINING",  # RFC 2920
            f"SIZE {s.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "SMTPUTF8",  # RFC 6531
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "CHUNKING",  # RFC 3030
            "DSN",  # RFC 3461
        ]
        if s.tls_available and not self.in_tls:
            lines.append("STARTTLS")  # RFC 3207 §4: not offered once in TLS
        if s.auth_mechanisms and (self.in_tls or not s.auth_requires_tls):
            lines.append("AUTH " + " ".join(s.auth_mechanisms))  # RFC 4954 §3
        return Reply(250, None, tuple(lines))

    def _new_reader(self) -> MessageReader:
        s = self.settings
        return MessageReader(s.max_message_size, s.bare_newlines == "normalize")

    def _reset_transaction(self) -> None:
        self.sender = None
        self.mail_params = _NO_PARAMS
        self.recipients = []
        self._reader = None
        if self.phase is not Phase.GREETED:
            self.phase = Phase.HELLO

    def _end_transaction(self) -> None:
        """RFC 5321 §4.1.1.4: after the end of data the transaction is over."""
        self._reset_transaction()
        self._shutdown_if_idle()

    # -- command mode ------------------------------------------------------------

    def _take_line(self, limit: int) -> tuple[bytes | None, bool]:
        """Split one line off the input. Returns (line without its ending, ok) or
        (None, False) when more data is needed. Over-long lines and bare CR/LF give
        (b"", False) after replying."""
        buf = self._buf
        idx = buf.find(b"\n")
        if idx < 0:
            if len(buf) > limit:
                self._discard_line = True
                del buf[:-1]  # keep a possible trailing CR; memory stays bounded
            return None, False
        raw = bytes(buf[: idx + 1])
        del buf[: idx + 1]
        if self._discard_line or len(raw) > limit:
            self._discard_line = False
            self._error(R.C500_LINE_TOO_LONG)
            return b"", False
        if raw.endswith(b"\r\n"):
            line = raw[:-2]
            if b"\r" not in line:
                return line, True
        elif self.settings.bare_newlines == "normalize" and b"\r" not in raw[:-1]:
            return raw[:-1], True
        self._error(R.C500_BARE_NEWLINE)  # bare CR or LF in a command line
        return b"", False

    def _read_command(self) -> bool:
        line, ok = self._take_line(MAX_COMMAND_LINE)
        if line is None:
            return False
        if not ok or self.mode is Mode.CLOSED:
            return True
        verb_b, _, arg_b = line.partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        allowed = _VERB_PHASES.get(verb)
        if allowed is None:
            self._error(R.C500_UNKNOWN_COMMAND)
            return True
        if self._shutting_down and not self.in_transaction and verb != "QUIT":
            self._close(R.C421_SHUTTING_DOWN, "shutdown")
            return True
        if self.phase not in allowed:
            self._error(self._sequence_reply(verb))
            return True
        try:
            arg = arg_b.decode("utf-8")
        except UnicodeDecodeError:
            self._error(R.C500_SYNTAX_ERROR)
            return True
        _HANDLERS[verb](self, arg.strip(" "))
        return True

    def _sequence_reply(self, verb: str) -> Reply:
        if self.phase is Phase.GREETED and verb in ("MAIL", "RCPT", "AUTH", "DATA"):
            return C503_HELLO_FIRST
        if verb == "MAIL":
            return C503_NESTED_MAIL
        if verb == "RCPT":
            return C503_NEED_MAIL
        if verb == "AUTH":
            return C503_AUTH_IN_TRANSACTION
        if verb == "DATA" and self.phase is Phase.BDAT:
            return C503_DATA_AFTER_BDAT
        return R.C503_BAD_SEQUENCE

    def cmd_helo(self, arg: str, verb: str = "HELO") -> None:
        try:
            name = parse_helo_name(arg)
        except GrammarError as exc:
            # RFC 2034 §3: no enhanced code in any reply to HELO/EHLO.
            self._error(Reply(exc.reply.code, None, exc.reply.lines))
            return
        self._decide(Hello(verb, name))

    def cmd_ehlo(self, arg: str) -> None:
        self.cmd_helo(arg, "EHLO")

    def cmd_mail(self, arg: str) -> None:
        s = self.settings
        if s.auth_required and self.authenticated is None:
            self._error(R.C530_AUTH_REQUIRED)  # RFC 4954 §6
            return
        try:
            sender, params = parse_mail_from(arg, esmtp=self.esmtp)
        except GrammarError as exc:
            self._error(exc.reply)
            return
        if params.size is not None and params.size > s.max_message_size:
            self._error(C552_SIZE_DECLARED)  # RFC 1870 §6.1
            return
        self._decide(MailFrom(sender, params))

    def cmd_rcpt(self, arg: str) -> None:
        if len(self.recipients) >= self.settings.max_recipients:
            # RFC 5321 §4.5.3.1.10: a 452 the client should expect; not a client error.
            self._send(R.C452_TOO_MANY_RECIPIENTS)
            return
        try:
            rcpt, params = parse_rcpt_to(arg, esmtp=self.esmtp, smtputf8=self.mail_params.smtputf8)
        except GrammarError as exc:
            self._error(exc.reply)
            return
        self._decide(RcptTo(rcpt, params))

    def cmd_data(self, arg: str) -> None:
        if arg:
            self._error(C501_NO_ARGS)
        elif self.phase is Phase.HELLO:
            self._error(C503_NEED_MAIL)
        elif self.phase is Phase.MAIL:
            self._error(R.C554_NO_VALID_RECIPIENTS)  # RFC 5321 §3.3, RFC 2920 §3.1
        else:
            self._send(R.C354_START_INPUT)
            self.mode = Mode.DATA
            self._reader = self._new_reader()

    def cmd_bdat(self, arg: str) -> None:
        # RFC 3030 §2: BDAT <size> [LAST]; the chunk is read even when refused.
        parts = arg.split()
        size = parts[0] if parts else ""
        if not (size.isascii() and size.isdigit()) or len(size) > 20 or len(parts) > 2:
            self._error(R.C501_SYNTAX_PARAMS)
            return
        if len(parts) == 2 and parts[1].upper() != "LAST":
            self._error(R.C501_SYNTAX_PARAMS)
            return
        self._chunk_remaining = int(size)
        self._chunk_last = len(parts) == 2
        self._chunk_error = None
        if self.phase in _OUTSIDE_TRANSACTION:
            self._chunk_error = C503_NEED_MAIL if self.phase is Phase.HELLO else C503_HELLO_FIRST
        elif self.phase is Phase.MAIL:
            self._chunk_error = R.C554_NO_VALID_RECIPIENTS
        elif self.phase is Phase.RCPT:
            self._reader = self._new_reader()
            self.phase = Phase.BDAT
        self.mode = Mode.CHUNK

    def cmd_rset(self, arg: str) -> None:
        if arg:
            self._error(C501_NO_ARGS)
            return
        self._reset_transaction()
        self._send(R.C250_RESET)
        self._events.append(TransactionReset())
        self._shutdown_if_idle()

    def cmd_noop(self, arg: str) -> None:
        self._send(R.C250_OK)  # RFC 5321 §4.1.1.9: the argument is ignored

    def cmd_quit(self, arg: str) -> None:
        if arg:
            self._error(C501_NO_ARGS)
            return
        self._close(R.C221_CLOSING, "quit")

    def cmd_vrfy(self, arg: str) -> None:
        if not arg:
            self._error(R.C501_SYNTAX_PARAMS)
            return
        self._send(R.C252_CANNOT_VRFY)  # RFC 5321 §3.5.3: no user enumeration

    def cmd_expn(self, arg: str) -> None:
        self._error(C502_EXPN)  # RFC 5321 §3.5.2: EXPN may be disabled

    def cmd_help(self, arg: str) -> None:
        self._send(R.C214_HELP)

    def cmd_starttls(self, arg: str) -> None:
        if arg:
            self._error(C501_NO_ARGS)  # RFC 3207 §4
        elif self.in_tls:
            self._error(C503_TLS_ACTIVE)
        elif not self.settings.tls_available:
            self._error(R.C454_TLS_UNAVAILABLE)
        else:
            self._decide(StartTlsRequested())

    def cmd_auth(self, arg: str) -> None:
        s = self.settings
        if not s.auth_mechanisms:
            self._error(R.C502_NOT_IMPLEMENTED)
            return
        if self.authenticated is not None:
            self._error(C503_ALREADY_AUTH)  # RFC 4954 §4
            return
        if s.auth_requires_tls and not self.in_tls:
            self._error(C538_ENCRYPTION_REQUIRED)  # RFC 4954 §4, §6
            return
        mech, _, initial = arg.partition(" ")
        mech = mech.upper()
        if not mech:
            self._error(R.C501_SYNTAX_PARAMS)
            return
        if mech not in s.auth_mechanisms:
            self._error(C504_UNKNOWN_MECHANISM)
            return
        data: bytes | None = None
        if initial:
            if initial == "=":  # RFC 4954 §4: empty initial response
                data = b""
            else:
                try:
                    data = base64.b64decode(initial, validate=True)
                except (binascii.Error, ValueError):
                    self._error(C501_BAD_BASE64)
                    return
        self._auth_mechanism = mech
        self._decide(AuthRequested(mech, data))

    # -- AUTH response lines -----------------------------------------------------

    def _read_auth_line(self) -> bool:
        line, ok = self._take_line(MAX_AUTH_LINE)
        if line is None:
            return False
        if self.mode is Mode.CLOSED:
            return True
        if not ok:
            self.mode = Mode.COMMAND
            return True
        if line == b"*":  # RFC 4954 §4: the client cancels
            self.mode = Mode.COMMAND
            self._auth_mechanism = None
            self._error(C501_AUTH_CANCELLED)
            return True
        try:
            data = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self.mode = Mode.COMMAND
            self._error(C501_BAD_BASE64)
            return True
        self._decide(AuthResponse(data))
        return True

    # -- DATA and BDAT (RFC 5321 §4.1.1.4, RFC 3030; the rules live in data.py) -------

    def _read_data(self) -> bool:
        assert self._reader is not None
        done = self._reader.feed_text(self._buf)
        if done is None:
            return False
        if done:
            self.mode = Mode.COMMAND
            self._complete_message()
        return True

    def _complete_message(self) -> None:
        assert self._reader is not None
        err = self._reader.error
        if err is not None:
            self._send(_DATA_ERROR_REPLY[err])
            self._end_transaction()
            return
        self._decide(MessageComplete(self._reader.take_body()))

    def _read_chunk(self) -> bool:
        buf = self._buf
        if self._chunk_remaining:
            if not buf:
                return False
            take = min(self._chunk_remaining, len(buf))
            if self._chunk_error is None and self.phase is Phase.BDAT:
                assert self._reader is not None
                self._reader.feed_chunk(buf[:take])
            del buf[:take]
            self._chunk_remaining -= take
            if self._chunk_remaining:
                return True
        self.mode = Mode.COMMAND
        if self._chunk_error is not None:
            self._error(self._chunk_error)
            return True
        assert self._reader is not None
        err = self._reader.error
        if err is DataError.TOO_BIG or err is DataError.NO_MEMORY:
            self._send(_DATA_ERROR_REPLY[err])  # RFC 3030 §2: refuse, transaction over
            self._end_transaction()
            return True
        if not self._chunk_last:
            self._send_bytes(b"250 2.0.0 chunk received\r\n")
            return True
        self._reader.finish_chunks()
        self._complete_message()
        return True


_DECISIONS_ACCEPTED: tuple[type, ...] = (
    Hello,
    MailFrom,
    RcptTo,
    MessageComplete,
    StartTlsRequested,
)
_AUTH_DECISIONS: tuple[type, ...] = (AuthRequested, AuthResponse)
_ALL_DECISIONS = _DECISIONS_ACCEPTED + _AUTH_DECISIONS
_B250_SENDER_OK = R.C250_SENDER_OK.to_bytes()
_B250_RCPT_OK = R.C250_RCPT_OK.to_bytes()
_NO_PARAMS = MailParams()

_HANDLERS = {
    "HELO": ServerConnection.cmd_helo,
    "EHLO": ServerConnection.cmd_ehlo,
    "MAIL": ServerConnection.cmd_mail,
    "RCPT": ServerConnection.cmd_rcpt,
    "DATA": ServerConnection.cmd_data,
    "BDAT": ServerConnection.cmd_bdat,
    "RSET": ServerConnection.cmd_rset,
    "NOOP": ServerConnection.cmd_noop,
    "QUIT": ServerConnection.cmd_quit,
    "VRFY": ServerConnection.cmd_vrfy,
    "EXPN": ServerConnection.cmd_expn,
    "HELP": ServerConnection.cmd_help,
    "STARTTLS": ServerConnection.cmd_starttls,
    "AUTH": ServerConnection.cmd_auth,
}
assert set(_HANDLERS) == set(_VERB_PHASES)
