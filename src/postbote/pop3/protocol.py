"""The sans-IO POP3 server core (RFC 1939, with RFC 2449, 2595, 3206 and 5034).

Theory of operation
-------------------
The core owns every POP3 transition. It is driven by three things only:

* bytes from the client: ``receive_data(data, now)`` and ``receive_eof()``;
* the glue's answers to decision events: ``login_ok()``, ``login_failed()``,
  ``auth_challenge()``, ``send_message()``, ``message_unavailable()``,
  ``update_done()``, plus ``tls_established()`` and ``start_shutdown()``;
* time, given to it: ``get_timer()`` says when to call ``handle_timer(now)``.

It answers by appending response bytes to an output buffer (``data_to_send()``) and by
emitting events (``next_event()``, see events.py). It never verifies a password, reads
a mailbox or touches a socket: logins, SASL steps, message bodies and the UPDATE state
are decisions the glue makes while the core is PAUSED. Protocol mechanics — syntax,
states, message numbers, deletion marks, STAT/LIST/UIDL from the login snapshot, line
limits, dot-stuffing, the error budget, autologout — are answered by the core itself.

Two variables describe a session:

* ``state`` — RFC 1939 §3: AUTHORIZATION, TRANSACTION (after a login) or UPDATE
  (after QUIT in TRANSACTION, while the glue applies the deletions);
* ``mode`` — how input is read: COMMAND lines, AUTH response lines (RFC 5034 §4),
  nothing while a TLS handshake is pending (TLS_PENDING), or nothing at all (CLOSED).

``_COMMAND_STATES`` below is the whole table of which command is legal in which state;
a known command missing from its state is answered ``-ERR``, an unknown one likewise.
Replies go out strictly in command order (RFC 2449 §6.6): while a decision is pending,
later pipelined commands wait in the input buffer (``buffered`` says how much).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postbote.errors import LocalProtocolError
from postbote.pop3 import responses as R
from postbote.pop3.events import (
    NEED_DATA,
    PAUSED,
    AuthAborted,
    AuthRequested,
    AuthResponse,
    ConnectionClosed,
    Event,
    LoginRequested,
    RetrieveRequested,
    Sentinel,
    StlsRequested,
    UpdateRequested,
)
from postbote.pop3.maildrop import Maildrop
from postbote.pop3.maildrop import MessageEntry as MessageEntry

# RFC 2449 §4: a command line is at most 255 octets, including the terminating CRLF.
MAX_COMMAND_LINE = 255
# RFC 5034 §4: client lines in a SASL exchange are not bound by that limit; we take 8 KiB.
MAX_AUTH_LINE = 8192
# Message numbers and TOP line counts: digits only, at most this many (RFC 1939 §3).
MAX_NUMBER_DIGITS = 10


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


class Mode(enum.Enum):
    COMMAND = "COMMAND"
    AUTH = "AUTH"
    TLS_PENDING = "TLS_PENDING"
    CLOSED = "CLOSED"


_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION
# Which command is legal in which state: RFC 1939 §4-7, RFC 2449 §5 (CAPA), RFC 2595 §4
# (STLS), RFC 5034 §4 (AUTH). APOP is known so that it gets a clear "not supported".
_COMMAND_STATES: dict[str, frozenset[State]] = {
    "CAPA": _BOTH,
    "QUIT": _BOTH,
    "USER": _AUTHORIZATION,
    "PASS": _AUTHORIZATION,
    "APOP": _AUTHORIZATION,
    "AUTH": _AUTHORIZATION,
    "STLS": _AUTHORIZATION,
    "STAT": _TRANSACTION,
    "LIST": _TRANSACTION,
    "RETR": _TRANSACTION,
    "DELE": _TRANSACTION,
    "NOOP": _TRANSACTION,
    "RSET": _TRANSACTION,
    "TOP": _TRANSACTION,
    "UIDL": _TRANSACTION,
}


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    """What the core needs to know about its listener; fixed for a connection."""

    hostname: str
    implementation: str = "postbote"
    stls_available: bool = False  # offer STLS (plain port with a certificate)
    in_tls: bool = False  # POP3S (RFC 8314), or set by tls_established() after STLS
    plaintext_auth: bool = False  # USER/PASS and AUTH allowed without TLS
    sasl_mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256")
    autologout: float = 600.0  # RFC 1939 §3: at least 10 minutes of inactivity
    login_delay: int = 0  # RFC 2449 §6.5: minimum seconds between logins; 0: none
    max_errors: int = 10  # bad commands before the session is closed

    def __post_init__(self) -> None:
        # Both go into response lines (RFC 2449 §4: at most 512 octets).
        if not self.hostname or len(self.hostname) > 255 or not self.hostname.isprintable():
            raise ValueError(f"bad POP3 hostname: {self.hostname!r}")
        if " " in self.hostname or len(self.implementation) > 200:
            raise ValueError(f"bad POP3 hostname or implementation: {self.hostname!r}")
        if not self.implementation.isprintable():
            raise ValueError(f"bad POP3 implementation text: {self.implementation!r}")
        for mech in self.sasl_mechanisms:
            if not mech or mech != mech.upper() or not mech.isascii() or " " in mech:
                raise ValueError(f"bad SASL mechanism name: {mech!r}")
        if self.autologout <= 0 or self.max_errors < 1 or self.login_delay < 0:
            raise ValueError("autologout and max_errors must be positive")


class Pop3Connection:
    """One POP3 server session, without I/O.

    Driven by: ``receive_data``/``receive_eof`` (client bytes), the glue's answers to
    decision events (``login_ok``, ``login_failed``, ``auth_challenge``,
    ``send_message``, ``message_unavailable``, ``update_done``), ``tls_established``,
    ``start_shutdown`` and ``handle_timer`` (time).
    """

    __slots__ = (
        "_buf",
        "_discard_line",
        "_eof",
        "_events",
        "_last_activity",
        "_out",
        "_pending",
        "_shutting_down",
        "_user",
        "errors",
        "in_tls",
        "maildrop",
        "mode",
        "settings",
        "state",
    )

    def __init__(self, settings: Pop3Settings, now: float) -> None:
        self.settings = settings
        self.state = State.AUTHORIZATION
        self.mode = Mode.COMMAND
        self.in_tls = settings.in_tls
        self.errors = 0
        self._buf = bytearray()
        self._out = bytearray()
        self._events: list[Event] = []
        self._pending: Event | None = None
        self._last_activity = now
        self._shutting_down = False
        self._eof = False
        self._discard_line = False  # swallowing an over-long line up to its LF
        self._user: str | None = None  # USER given, waiting for PASS (RFC 1939 §7)
        self.maildrop = Maildrop()  # the login snapshot (RFC 1939 §5)

    # -- glue-facing API: bytes and time ------------------------------------------------

    def greeting(self) -> None:
        """Queue the greeting (RFC 1939 §4); no APOP timestamp, APOP is not offered."""
        self._send(R.ok(f"{self.settings.hostname} POP3 server ready"))

    @property
    def buffered(self) -> int:
        """Input bytes received but not yet processed (stop reading while PAUSED)."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        return self.mode is Mode.CLOSED

    def receive_data(self, data: bytes, now: float) -> None:
        if self.mode is Mode.CLOSED or self.mode is Mode.TLS_PENDING or self._eof:
            return  # RFC 2595 §4 / CVE-2011-0411: nothing crosses the TLS boundary
        self._last_activity = now
        self._buf += data

    def receive_eof(self) -> None:
        """The client closed its side. Complete commands already received are still
        answered (a pipelined QUIT counts); then the session closes without UPDATE
        (RFC 1939 §6: no deletions without QUIT)."""
        if self.mode is Mode.TLS_PENDING:
            self._close(None, "peer closed the connection")
        self._eof = True

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | Sentinel:
        while True:
            if self._events:
                return self._events.pop(0)
            if self._pending is not None or self.mode is Mode.TLS_PENDING:
                return PAUSED
            if self.mode is Mode.CLOSED:
                return NEED_DATA
            if self.mode is Mode.COMMAND:
                progressed = self._read_command()
            else:
                progressed = self._read_auth_line()
            if not progressed:
                if not self._eof:
                    return NEED_DATA
                self._close(None, "peer closed the connection")

    def get_timer(self) -> float | None:
        """When handle_timer() must be called next, or None (no timer needed)."""
        if self.mode in (Mode.CLOSED, Mode.TLS_PENDING) or self._pending is not None:
            return None
        return self._last_activity + self.settings.autologout

    def handle_timer(self, now: float) -> None:
        """RFC 1939 §3 autologout: close without entering UPDATE."""
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            self._close(R.R_AUTOLOGOUT, "autologout")

    def start_shutdown(self) -> None:
        """Server is stopping: close now if idle, else right after the pending answer
        (or TLS handshake). A session in TRANSACTION closes without UPDATE."""
        self._shutting_down = True
        self._shutdown_if_idle()

    def tls_established(self) -> None:
        """The TLS handshake after STLS completed (RFC 2595 §4): a fresh AUTHORIZATION
        state; the client asks CAPA again, no new greeting is sent."""
        if self.mode is Mode.CLOSED:
            return
        if self.mode is not Mode.TLS_PENDING:
            raise LocalProtocolError("tls_established() without STLS")
        self.in_tls = True
        self.mode = Mode.COMMAND
        self.state = State.AUTHORIZATION
        self._user = None
        self._buf.clear()
        self._shutdown_if_idle()

    # -- glue-facing API: answers to decision events --------------------------------------

    def login_ok(self, messages: Sequence[MessageEntry], now: float) -> None:
        """Accept LoginRequested/AuthRequested/AuthResponse: the mailbox is locked and
        ``messages`` is its snapshot for the session (RFC 1939 §5)."""
        if self._answer(_LOGIN_DECISIONS, "login_ok", now) is None:
            return
        self.mode = Mode.COMMAND
        self.state = State.TRANSACTION
        self.maildrop = Maildrop(messages)
        self._send(self._maildrop_reply())
        self._shutdown_if_idle()

    def login_failed(
        self, code: str | None, text: str, close: bool = False, now: float | None = None
    ) -> None:
        """Refuse a login with ``-ERR [code] text``: code "AUTH" (bad credentials,
        RFC 3206 §4), "IN-USE" or "LOGIN-DELAY" (RFC 2449 §8), "SYS/TEMP" ... A refusal
        counts as an error; ``close`` (a lockout) ends the session after the reply."""
        R.check_code(code)
        R.check_text(text)
        if self._answer(_LOGIN_DECISIONS, "login_failed", now) is None:
            return
        self.mode = Mode.COMMAND
        if close:
            self._close(R.err(text, code), "login refused")
            return
        self._error(R.err(text, code))
        self._shutdown_if_idle()

    def auth_challenge(self, data: bytes, now: float) -> None:
        """Continue a SASL exchange: send ``+ base64(data)`` (RFC 5034 §4)."""
        if self._answer(_AUTH_DECISIONS, "auth_challenge", now) is None:
            return
        self._send(b"+ " + base64.b64encode(data) + b"\r\n")
        self.mode = Mode.AUTH
        self._shutdown_if_idle()

    def send_message(self, data: bytes, top: int | None, now: float) -> None:
        """Answer RetrieveRequested with the stored message ``data`` (any line endings):
        ``+OK``, the message CRLF-normalised and dot-stuffed, ``.`` (RFC 1939 §3, §7).
        ``top`` must repeat the event's ``top``."""
        pending = self._pending
        if isinstance(pending, RetrieveRequested) and pending.top != top:
            raise LocalProtocolError(f"send_message(top={top}) answers TOP {pending.top}")
        ev = self._answer((RetrieveRequested,), "send_message", now)
        if ev is None:
            return
        assert isinstance(ev, RetrieveRequested)
        if top is None:
            first = R.ok(f"{self.maildrop.size(ev.index)} octets")
            self.maildrop.mark_retrieved(ev.index)
        else:
            first = R.R_TOP_FOLLOWS
        self._send(R.message_response(first, data, top))
        self._shutdown_if_idle()

    def message_unavailable(self, text: str, now: float) -> None:
        """Answer RetrieveRequested when the message cannot be read (file gone)."""
        R.check_text(text)
        if self._answer((RetrieveRequested,), "message_unavailable", now) is None:
            return
        self._send(R.err(text, "SYS/TEMP"))  # RFC 3206 §4
        self._shutdown_if_idle()

    def update_done(self, ok: bool, now: float) -> None:
        """Answer UpdateRequested; the session then closes (RFC 1939 §6)."""
        if self._answer((UpdateRequested,), "update_done", now) is None:
            return
        self._close(self._signoff() if ok else R.R_UPDATE_FAILED, "quit")

    def _answer(self, allowed: tuple[type, ...], verb: str, now: float | None) -> Event | None:
        """Take the pending decision if ``verb`` may answer it; None if the connection
        closed meanwhile."""
        ev = self._pending
        if ev is None:
            raise LocalProtocolError(f"{verb}(): no decision is pending")
        if not isinstance(ev, allowed):
            raise LocalProtocolError(f"{verb}() does not answer {type(ev).__name__}")
        self._pending = None
        if now is not None:
            self._last_activity = now
        if self.mode is Mode.CLOSED:
            return None
        return ev

    def _shutdown_if_idle(self) -> None:
        idle = self._pending is None and self.mode in (Mode.COMMAND, Mode.AUTH)
        if self._shutting_down and idle:
            self._close(R.R_SHUTDOWN, "shutdown")

    # -- output helpers --------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out += data

    def _close(self, reply: bytes | None, reason: str) -> None:
        if self.mode is Mode.CLOSED:
            return
        if reply is not None:
            self._send(reply)
        self.mode = Mode.CLOSED
        self._buf.clear()
        self._events.append(ConnectionClosed(reason))

    def _error(self, reply: bytes) -> None:
        """Answer a bad command. The last one allowed is answered with the closing
        ``-ERR [SYS/PERM]`` instead, so every command still gets exactly one reply."""
        self.errors += 1
        if self.errors >= self.settings.max_errors:
            self._close(R.R_TOO_MANY_ERRORS, "too many errors")
        else:
            self._send(reply)

    def _decide(self, ev: Event) -> None:
        """Emit a decision event and pause until the glue answers it."""
        self._pending = ev
        self._events.append(ev)

    def _signoff(self) -> bytes:
        return R.ok(f"{self.settings.hostname} POP3 server signing off")

    def _maildrop_reply(self) -> bytes:
        return R.ok(f"maildrop has {self._maildrop_text()}")

    def _maildrop_text(self) -> str:
        return f"{self.maildrop.count} messages ({self.maildrop.octets} octets)"

    # -- reading lines ---------------------------------------------------------------------

    def _take_line(self, limit: int) -> tuple[bytes | None, bytes | None]:
        """Split one line (CRLF, or a bare LF from lenient clients) off the input:
        (line, None); (None, error reply) for an over-long line or one with a bare CR,
        already removed; (None, None) when more data is needed. Memory stays bounded by
        ``limit`` whatever the chunking."""
        buf = self._buf
        idx = buf.find(b"\n")
        if idx < 0:
            if self._discard_line or len(buf) > limit:
                self._discard_line = True  # the line is refused at its LF, whatever the
                buf.clear()  # chunking; until then nothing of it is kept
            return None, None
        raw = bytes(buf[: idx + 1])
        del buf[: idx + 1]
        if self._discard_line or len(raw) > limit:
            self._discard_line = False
            return None, R.R_LINE_TOO_LONG
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if b"\r" in line:
            return None, R.R_BARE_CR
        return line, None

    def _read_command(self) -> bool:
        line, error = self._take_line(MAX_COMMAND_LINE)
        if error is not None:
            self._user = None
            self._error(error)
            return True
        if line is None:
            return False
        verb_b, _, arg_b = line.partition(b" ")
        verb = verb_b.decode("ascii", "replace").upper()
        if verb != "PASS":
            self._user = None  # RFC 1939 §7: PASS only right after USER
        states = _COMMAND_STATES.get(verb)
        if states is None:
            self._error(R.R_UNKNOWN_COMMAND)
        elif self.state not in states:
            self._error(R.R_BAD_STATE)
        else:
            try:
                arg = arg_b.decode("utf-8")
            except UnicodeDecodeError:
                self._error(R.R_BAD_UTF8)
                return True
            _HANDLERS[verb](self, arg)
        return True

    def _read_auth_line(self) -> bool:
        """One client line of a SASL exchange (RFC 5034 §4)."""
        line, error = self._take_line(MAX_AUTH_LINE)
        if line is None:
            if error is None:
                return False
            self._abort_auth(error)
        elif line == b"*":
            self._abort_auth(R.R_AUTH_CANCELLED)  # RFC 5034 §4: the client cancels
        else:
            try:
                data = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                self._abort_auth(R.R_BAD_BASE64)
                return True
            self._decide(AuthResponse(data))
        return True

    def _abort_auth(self, reply: bytes) -> None:
        self.mode = Mode.COMMAND
        self._events.append(AuthAborted())
        self._error(reply)

    # -- argument helpers ------------------------------------------------------------------

    def _no_arguments(self, arg: str) -> bool:
        if arg.strip(" "):
            self._error(R.R_NO_ARGUMENTS)
            return False
        return True

    def _message(self, token: str) -> int | None:
        """The undeleted message numbered ``token`` (1-based), or None after replying."""
        n = _number(token)
        if n is None:
            self._error(R.R_BAD_NUMBER)
            return None
        if not self.maildrop.exists(n):
            self._send(R.R_NO_SUCH_MESSAGE)  # RFC 1939 §5; a client slip, not counted
            return None
        return n

    @property
    def _auth_allowed(self) -> bool:
        # RFC 2595 §2.3, RFC 8314 §3: no plaintext passwords unless configured.
        return self.in_tls or self.settings.plaintext_auth

    def _capabilities(self) -> list[str]:
        """RFC 2449 §5: the same list in both states (what AUTHORIZATION offers must be
        announced in TRANSACTION too); it changes only with TLS."""
        s = self.settings
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self._auth_allowed:
            caps.append("USER")  # RFC 2449 §6.2
            if s.sasl_mechanisms:
                caps.append("SASL " + " ".join(s.sasl_mechanisms))  # RFC 5034 §5
        if s.stls_available and not self.in_tls:
            caps.append("STLS")  # RFC 2595 §4: not offered once in TLS
        if s.login_delay > 0:
            caps.append(f"LOGIN-DELAY {s.login_delay}")  # RFC 2449 §6.5 (glue enforces it)
        if s.implementation:
            caps.append(f"IMPLEMENTATION {s.implementation}")  # RFC 2449 §6.9
        return caps

    # -- AUTHORIZATION commands (RFC 1939 §4, §7; RFC 2595 §4; RFC 5034 §4) -----------------

    def cmd_capa(self, arg: str) -> None:
        if self._no_arguments(arg):
            self._send(R.multiline("capability list follows", self._capabilities()))

    def cmd_user(self, arg: str) -> None:
        name = arg.strip(" ")
        if not self._auth_allowed:
            self._error(R.R_NEED_TLS)
        elif not name:
            self._error(R.R_NO_USER)
        else:
            self._user = name  # RFC 1939 §7: "+OK" whether or not the user exists
            self._send(R.R_SEND_PASS)

    def cmd_pass(self, arg: str) -> None:
        # RFC 1939 §7: the password is the rest of the line, spaces included.
        user, self._user = self._user, None
        if not self._auth_allowed:
            self._error(R.R_NEED_TLS)
        elif user is None:
            self._error(R.R_USER_FIRST)
        elif not arg:
            self._error(R.R_NO_PASSWORD)
        else:
            self._decide(LoginRequested(user, arg))

    def cmd_apop(self, arg: str) -> None:
        self._error(R.R_APOP)  # RFC 1939 §7: optional; we send no timestamp

    def cmd_auth(self, arg: str) -> None:
        mechanisms = self.settings.sasl_mechanisms
        if not self._auth_allowed:
            self._error(R.R_NEED_TLS)
            return
        args = arg.split(" ")
        if not arg.strip(" "):
            # RFC 5034 §4 is silent; de facto (RFC 1734 clients): AUTH alone lists them.
            self._send(R.multiline("supported mechanisms follow", mechanisms))
            return
        if len(args) > 2 or not all(args):
            self._error(R.R_SYNTAX)
            return
        mech = args[0].upper()
        if mech not in mechanisms:
            self._error(R.R_NO_MECHANISM)
            return
        initial: bytes | None = None
        if len(args) == 2:
            if args[1] == "=":
                initial = b""  # RFC 5034 §4: "=" is an empty initial response
            else:
                try:
                    initial = base64.b64decode(args[1], validate=True)
                except (binascii.Error, ValueError):
                    self._error(R.R_BAD_BASE64)
                    return
        self._decide(AuthRequested(mech, initial))

    def cmd_stls(self, arg: str) -> None:
        if not self._no_arguments(arg):
            return
        if self.in_tls:
            self._error(R.R_TLS_ACTIVE)
        elif not self.settings.stls_available:
            self._error(R.R_STLS_UNAVAILABLE)
        else:
            self._send(R.R_BEGIN_TLS)
            self._buf.clear()  # RFC 2595 §4, CVE-2011-0411: drop pipelined plaintext
            self.mode = Mode.TLS_PENDING
            self._events.append(StlsRequested())

    def cmd_quit(self, arg: str) -> None:
        if not self._no_arguments(arg):
            return
        if self.state is State.AUTHORIZATION:
            self._close(self._signoff(), "quit")  # RFC 1939 §4
            return
        # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE; the glue applies the marks.
        self.state = State.UPDATE
        self._decide(UpdateRequested(*self.maildrop.update_marks()))

    # -- TRANSACTION commands (RFC 1939 §5, §7) -------------------------------------------

    def cmd_stat(self, arg: str) -> None:
        if self._no_arguments(arg):
            self._send(R.ok(f"{self.maildrop.count} {self.maildrop.octets}"))

    def cmd_list(self, arg: str) -> None:
        self._listing(arg, self.maildrop.size, self._maildrop_text())

    def cmd_uidl(self, arg: str) -> None:
        self._listing(arg, self.maildrop.uidl, "unique-id listing follows")

    def _listing(self, arg: str, value: Callable[[int], object], first: str) -> None:
        """LIST/UIDL: one message (``+OK n value``) or all undeleted ones (RFC 1939 §5)."""
        args = arg.split()
        if len(args) > 1:
            self._error(R.R_SYNTAX)
        elif args:
            n = self._message(args[0])
            if n is not None:
                self._send(R.ok(f"{n} {value(n)}"))
        else:
            lines = (f"{n} {value(n)}" for n in self.maildrop.numbers())
            self._send(R.multiline(first, lines))

    def cmd_retr(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._error(R.R_SYNTAX)
            return
        n = self._message(args[0])
        if n is not None:
            self._decide(RetrieveRequested(n, None))

    def cmd_top(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 2:
            self._error(R.R_SYNTAX)
            return
        lines = _number(args[1])
        if lines is None:
            self._error(R.R_BAD_LINES)  # RFC 1939 §7: a non-negative number
            return
        n = self._message(args[0])
        if n is not None:
            self._decide(RetrieveRequested(n, lines))

    def cmd_dele(self, arg: str) -> None:
        args = arg.split()
        if len(args) != 1:
            self._error(R.R_SYNTAX)
            return
        n = self._message(args[0])
        if n is not None:
            self.maildrop.delete(n)  # RFC 1939 §6: removed only in UPDATE
            self._send(R.ok(f"message {n} deleted"))

    def cmd_noop(self, arg: str) -> None:
        if self._no_arguments(arg):
            self._send(R.R_OK)

    def cmd_rset(self, arg: str) -> None:
        if self._no_arguments(arg):
            self.maildrop.reset()  # RFC 1939 §5: unmark all
            self._send(self._maildrop_reply())


def _number(token: str) -> int | None:
    """A non-negative decimal number of at most MAX_NUMBER_DIGITS ASCII digits."""
    if token.isascii() and token.isdigit() and len(token) <= MAX_NUMBER_DIGITS:
        return int(token)
    return None


_LOGIN_DECISIONS: tuple[type, ...] = (LoginRequested, AuthRequested, AuthResponse)
_AUTH_DECISIONS: tuple[type, ...] = (AuthRequested, AuthResponse)

_HANDLERS: dict[str, Callable[[Pop3Connection, str], None]] = {
    "CAPA": Pop3Connection.cmd_capa,
    "QUIT": Pop3Connection.cmd_quit,
    "USER": Pop3Connection.cmd_user,
    "PASS": Pop3Connection.cmd_pass,
    "APOP": Pop3Connection.cmd_apop,
    "AUTH": Pop3Connection.cmd_auth,
    "STLS": Pop3Connection.cmd_stls,
    "STAT": Pop3Connection.cmd_stat,
    "LIST": Pop3Connection.cmd_list,
    "RETR": Pop3Connection.cmd_retr,
    "DELE": Pop3Connection.cmd_dele,
    "NOOP": Pop3Connection.cmd_noop,
    "RSET": Pop3Connection.cmd_rset,
    "TOP": Pop3Connection.cmd_top,
    "UIDL": Pop3Connection.cmd_uidl,
}
assert set(_HANDLERS) == set(_COMMAND_STATES)
