"""The sans-IO SMTP client core (RFC 5321 client role) for outbound delivery and relay.

Theory of operation
-------------------
``ClientConnection`` owns every client-side SMTP transition. It is driven by:

* bytes from the server: ``receive_data(data)`` and ``receive_eof()``;
* the caller: ``start_transaction(tx)``, ``quit()``, ``tls_established()``.

It answers with command bytes (``data_to_send()``) and events (``next_event()``, see
client_data.py). It never reads a clock: ``timeout_kind()`` names the RFC 5321 §4.5.3.2
timeout the glue should apply to what it waits for now.

Two variables describe the session:

* ``phase``: HANDSHAKE (greeting, EHLO/HELO, STARTTLS, AUTH), TLS_PENDING (the glue runs
  the handshake), READY (idle: a transaction may start), TRANSACTION, QUITTING, CLOSED;
* ``_pending``: the commands sent whose replies are still due, oldest first. Every reply
  answers the oldest one and goes to that command's handler (``_HANDLERS``): with
  PIPELINING (RFC 2920) several are outstanding, otherwise one (lock-step).

A 421 ends the session at any point (RFC 5321 §3.8); a reply that arrives when none is
due, or that the handler's command cannot get, is a protocol error.

Input is processed up to the next event: ``receive_data`` does it at once (so the
commands the replies call for are in ``data_to_send()`` right after it), and
``next_event`` goes on once the caller has taken the event. The caller thus sees each
event in the state it describes, whatever else the server already sent.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from postbote.errors import LocalProtocolError, RemoteProtocolError
from postbote.smtp.client_data import (
    NEED_DATA,
    Closed,
    Event,
    NeedData,
    OutgoingRecipient,
    Ready,
    RecipientOutcome,
    ReplyReader,
    ServerReply,
    SessionFailed,
    StartTls,
    Transaction,
    TransactionDone,
    TransactionResult,
    auth_plain,
    b64_line,
    encode_body,
    parse_ehlo,
    prepare_transaction,
)
from postbote.smtp.grammar import GrammarError, parse_helo_name

__all__ = [
    "NEED_DATA",
    "ClientConnection",
    "Closed",
    "Event",
    "NeedData",
    "OutgoingRecipient",
    "Phase",
    "Ready",
    "RecipientOutcome",
    "ServerReply",
    "SessionFailed",
    "StartTls",
    "Transaction",
    "TransactionDone",
    "TransactionResult",
    "encode_body",
]

TLS_MODES = frozenset({"opportunistic", "required", "none"})
PROTOCOL_ERROR = "protocol error"
CONNECTION_CLOSED = "connection closed"
_CLOSED = Closed()


class Phase(enum.Enum):
    HANDSHAKE = "HANDSHAKE"
    TLS_PENDING = "TLS_PENDING"
    READY = "READY"
    TRANSACTION = "TRANSACTION"
    QUITTING = "QUITTING"
    CLOSED = "CLOSED"


class Cmd(enum.Enum):
    """A command whose reply is due (or, for GREETING, the connection itself)."""

    GREETING = "GREETING"
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"  # the final reply of AUTH (235)
    AUTH_USERNAME = "AUTH_USERNAME"  # LOGIN: 334 asking for the user name
    AUTH_PASSWORD = "AUTH_PASSWORD"  # LOGIN: 334 asking for the password
    RSET = "RSET"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DATA_END = "DATA_END"
    QUIT = "QUIT"


# SessionFailed.stage for a failure while each reply is due.
_STAGE = {
    Cmd.GREETING: "greeting",
    **dict.fromkeys((Cmd.EHLO, Cmd.HELO), "ehlo"),
    Cmd.STARTTLS: "starttls",
    **dict.fromkeys((Cmd.AUTH, Cmd.AUTH_USERNAME, Cmd.AUTH_PASSWORD), "auth"),
    **dict.fromkeys((Cmd.RSET, Cmd.MAIL, Cmd.RCPT, Cmd.DATA, Cmd.DATA_END), "transaction"),
    Cmd.QUIT: "quit",
}
# RFC 5321 §4.5.3.2: which timeout applies while each reply is due.
_TIMEOUT = {
    Cmd.GREETING: "greeting",  # §4.5.3.2.1, 5 minutes
    Cmd.DATA: "data_init",  # §4.5.3.2.4, 2 minutes
    Cmd.DATA_END: "data_end",  # §4.5.3.2.6, 10 minutes
}  # everything else: "command" (§4.5.3.2.2-3, 5 minutes)

_B_QUIT = b"QUIT\r\n"
_B_RSET = b"RSET\r\n"
_B_DATA = b"DATA\r\n"
_B_STARTTLS = b"STARTTLS\r\n"
_B_EMPTY_MESSAGE = b".\r\n"


@dataclass(slots=True)
class _Txn:
    """The transaction under way."""

    tx: Transaction
    body: bytes  # the encoded DATA text
    unsent: deque[tuple[Cmd, bytes]]  # lock-step: the commands still to send
    pipelined: bool
    mail: ServerReply | None = None
    rcpts: list[ServerReply] = field(default_factory=list)
    empty_data: bool = False  # 354 with nobody accepted: sent only ".\r\n"

    @property
    def mail_ok(self) -> bool:
        return self.mail is not None and self.mail.code < 300

    @property
    def any_accepted(self) -> bool:
        return self.mail_ok and any(r.code < 300 for r in self.rcpts)


class ClientConnection:
    """One outbound SMTP session, without I/O.

    Driven by: ``receive_data``/``receive_eof`` (server bytes), ``start_transaction``,
    ``quit`` and ``tls_established`` (the caller). Emits events from ``next_event`` and
    command bytes from ``data_to_send``; ``timeout_kind`` names the timer to run.
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_events",
        "_extensions",
        "_needs_rset",
        "_out",
        "_pending",
        "_reader",
        "_txn",
        "authenticated",
        "credentials",
        "esmtp",
        "helo_name",
        "in_tls",
        "phase",
        "tls",
    )

    def __init__(
        self,
        *,
        helo_name: str,
        tls: str = "opportunistic",
        in_tls: bool = False,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        try:
            if parse_helo_name(helo_name) != helo_name:
                raise ValueError(f"bad HELO name: {helo_name!r}")
        except GrammarError:
            raise ValueError(f"bad HELO name: {helo_name!r}") from None
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {sorted(TLS_MODES)}, not {tls!r}")
        if credentials is not None and any("\0" in part for part in credentials):
            raise ValueError("credentials must not contain NUL")  # RFC 4616 §2
        self.helo_name = helo_name
        self.tls = tls
        self.in_tls = in_tls
        self.credentials = credentials
        self.phase = Phase.HANDSHAKE
        self.esmtp = False
        self.authenticated = False
        self._extensions: dict[str, str] = {}
        self._buf = bytearray()
        self._out = bytearray()
        self._eof = False
        self._events: deque[Event] = deque()
        self._pending: deque[Cmd] = deque([Cmd.GREETING])
        self._reader = ReplyReader()
        self._txn: _Txn | None = None
        self._needs_rset = False  # a MAIL was accepted and its transaction not ended

    # -- caller-facing API ---------------------------------------------------------

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keywords (upper-case) -> parameters; empty after HELO."""
        return dict(self._extensions)

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Take server bytes and process them up to the next event: the commands they
        call for are ready in ``data_to_send()`` right after this call."""
        if self.phase is not Phase.CLOSED and not self._eof:
            self._buf += data
            self._run()

    def receive_eof(self) -> None:
        self._eof = True
        self._run()

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """The bytes to write, at most ``max_bytes`` of them (the rest stays queued: a
        glue may write a long body block by block under the "data_block" timeout)."""
        n = len(self._out) if max_bytes is None else max_bytes
        out = bytes(self._out[:n])
        del self._out[:n]
        return out

    def next_event(self) -> Event | NeedData:
        """The next event, NEED_DATA, or (once the session is over) Closed forever."""
        self._run()
        if self._events:
            return self._events.popleft()
        return _CLOSED if self.phase is Phase.CLOSED else NEED_DATA

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: forget what the server said in
        plaintext and EHLO again (RFC 3207 §4.2). Ignored once the session failed."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is not Phase.TLS_PENDING:
            raise LocalProtocolError("tls_established() without a pending STARTTLS")
        if self._buf:
            self._injection()
            return
        self.in_tls = True
        self._extensions = {}
        self.esmtp = False
        self.phase = Phase.HANDSHAKE
        self._ehlo()

    def start_transaction(self, tx: Transaction) -> None:
        """Send one transaction. Only when idle (after Ready or TransactionDone); does
        nothing if the session ended meanwhile (``next_event()`` says how).

        Raises ValueError, with nothing sent, for an address or parameter that must not
        reach the wire. A message the server cannot take (SMTPUTF8, 8BITMIME, SIZE) is
        answered at once by a TransactionDone with a local reply for every recipient."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is not Phase.READY:
            raise LocalProtocolError(f"start_transaction() while {self.phase.name}")
        prepared = prepare_transaction(tx, self._extensions)
        if isinstance(prepared, ServerReply):
            outcomes = tuple(RecipientOutcome(r.address, prepared) for r in tx.recipients)
            self._events.append(TransactionDone(TransactionResult(outcomes)))
            return
        commands = [(Cmd.RSET, _B_RSET)] if self._needs_rset else []  # RFC 5321 §4.1.1.5
        commands.append((Cmd.MAIL, prepared.mail))
        commands += [(Cmd.RCPT, line) for line in prepared.rcpts]
        commands.append((Cmd.DATA, _B_DATA))
        ext = self._extensions
        pipelined = "PIPELINING" in ext
        txn = _Txn(tx, prepared.body, deque(commands), pipelined)
        self._txn = txn
        self.phase = Phase.TRANSACTION
        if pipelined:
            # RFC 2920 §3.1: RSET, MAIL and RCPT anywhere in a group, DATA last.
            while txn.unsent:
                self._send_next()
        else:
            self._send_next()

    def quit(self) -> None:
        """Send QUIT (RFC 5321 §4.1.1.10); Closed follows its reply or EOF. Only when
        idle; does nothing once the session is closed."""
        if self.phase is Phase.CLOSED:
            return
        if self.phase is not Phase.READY:
            raise LocalProtocolError(f"quit() while {self.phase.name}")
        self._send(Cmd.QUIT, _B_QUIT)
        self.phase = Phase.QUITTING

    def timeout_kind(self) -> str | None:
        """The RFC 5321 §4.5.3.2 timeout that applies now: "greeting", "command",
        "data_init", "data_block" (body bytes still queued for writing), "data_end", or
        None when nothing is awaited from the server (idle, TLS handshake, closed)."""
        if self.phase in (Phase.READY, Phase.TLS_PENDING, Phase.CLOSED) or not self._pending:
            return None
        cmd = self._pending[0]
        if cmd is Cmd.DATA_END and self._out:
            return "data_block"  # RFC 5321 §4.5.3.2.5
        return _TIMEOUT.get(cmd, "command")

    # -- plumbing ------------------------------------------------------------------

    def _run(self) -> None:
        """Process input until an event is due (the caller sees events one at a time, in
        the state they describe) or more input is needed."""
        while not self._events and self.phase is not Phase.CLOSED and self._advance():
            pass

    def _advance(self) -> bool:
        """Process one reply (or the EOF); False when more input is needed."""
        if self.phase is Phase.TLS_PENDING:
            if self._buf:
                self._injection()
            elif self._eof:
                self._fail(None, CONNECTION_CLOSED, "starttls")
            else:
                return False
            return True
        try:
            reply = self._reader.read(self._buf)
        except RemoteProtocolError as exc:
            self._fail(None, PROTOCOL_ERROR, self._stage(), detail=str(exc))
            return True
        if reply is not None:
            self._dispatch(reply)
        elif self._eof:
            self._on_eof()
        else:
            return False
        return True

    def _send(self, cmd: Cmd, line: bytes) -> None:
        self._out += line
        self._pending.append(cmd)

    def _send_next(self) -> None:
        assert self._txn is not None
        self._send(*self._txn.unsent.popleft())

    def _stage(self) -> str:
        if self._pending:
            return _STAGE[self._pending[0]]
        return "quit" if self.phase is Phase.QUITTING else "idle"

    def _fail(
        self,
        reply: ServerReply | None,
        reason: str,
        stage: str,
        *,
        quit: bool = False,
        detail: str = "",
    ) -> None:
        """End the session with SessionFailed; ``quit``: queue a polite QUIT
        (RFC 5321 §4.1.1.10) when the server can still read commands."""
        self._events.append(SessionFailed(reply, reason, stage, detail))
        if quit:
            self._out += _B_QUIT
        self.phase = Phase.CLOSED
        self._pending.clear()
        self._buf.clear()
        self._txn = None

    def _protocol_error(self, cmd: Cmd, reply: ServerReply) -> None:
        self._fail(None, PROTOCOL_ERROR, _STAGE[cmd], detail=f"unexpected reply {reply}")

    def _injection(self) -> None:
        # RFC 3207 §4.2, CVE-2011-0411: nothing may cross into the TLS session.
        detail = "data received between 220 to STARTTLS and the TLS handshake"
        self._fail(None, PROTOCOL_ERROR, "starttls", detail=detail)

    def _on_eof(self) -> None:
        if self.phase in (Phase.READY, Phase.QUITTING):
            self._events.append(_CLOSED)
            self.phase = Phase.CLOSED
            self._pending.clear()
        else:
            self._fail(None, CONNECTION_CLOSED, self._stage())

    def _dispatch(self, reply: ServerReply) -> None:
        if not self._pending:
            if reply.code == 421:  # RFC 5321 §3.8, e.g. an idle timeout
                self._fail(reply, "service not available", self._stage())
            else:
                self._fail(None, PROTOCOL_ERROR, self._stage(), detail=f"unsolicited {reply}")
            return
        cmd = self._pending.popleft()
        if reply.code == 421 and cmd is not Cmd.QUIT:
            # RFC 5321 §3.8: the server is closing the channel.
            self._fail(reply, "service not available", _STAGE[cmd])
            return
        _HANDLERS[cmd](self, reply)

    # -- session setup -------------------------------------------------------------

    def _ehlo(self) -> None:
        self._send(Cmd.EHLO, f"EHLO {self.helo_name}\r\n".encode())

    def _on_greeting(self, reply: ServerReply) -> None:
        if reply.code != 220:
            # RFC 5321 §3.1: after a 554 greeting the client should QUIT.
            self._fail(reply, "greeting refused", "greeting", quit=True)
            return
        self._ehlo()

    def _on_ehlo(self, reply: ServerReply) -> None:
        if 200 <= reply.code < 300:
            self.esmtp = True
            self._extensions = parse_ehlo(reply)
            self._after_hello()
        elif reply.code >= 500:
            # RFC 5321 §3.2, §4.1.4: a server without EHLO; fall back to HELO.
            self._send(Cmd.HELO, f"HELO {self.helo_name}\r\n".encode())
        elif reply.code >= 400:
            self._fail(reply, "EHLO refused", "ehlo", quit=True)
        else:
            self._protocol_error(Cmd.EHLO, reply)

    def _on_helo(self, reply: ServerReply) -> None:
        if 200 <= reply.code < 300:
            self._extensions = {}
            self._after_hello()
        elif reply.code >= 400:
            self._fail(reply, "HELO refused", "ehlo", quit=True)
        else:
            self._protocol_error(Cmd.HELO, reply)

    def _after_hello(self) -> None:
        if not self.in_tls and self.tls != "none":
            if "STARTTLS" in self._extensions:
                self._send(Cmd.STARTTLS, _B_STARTTLS)  # RFC 3207 §4
                return
            if self.tls == "required":
                self._fail(None, "STARTTLS not offered", "starttls", quit=True)
                return
        self._authenticate()

    def _on_starttls(self, reply: ServerReply) -> None:
        if reply.code == 220:
            self.phase = Phase.TLS_PENDING  # bytes after this 220 fail the session
            self._events.append(StartTls())
        elif reply.code >= 400:
            if self.tls == "required":
                self._fail(reply, "STARTTLS refused", "starttls", quit=True)
            else:
                self._authenticate()  # opportunistic (RFC 7435): carry on in plaintext
        else:
            self._protocol_error(Cmd.STARTTLS, reply)

    def _authenticate(self) -> None:
        if self.credentials is None:
            self._ready()
            return
        # RFC 4954 §4, RFC 4616 §6: a password never crosses the wire in plaintext.
        if not self.in_tls:
            self._fail(None, "AUTH needs TLS", "auth", quit=True)
            return
        mechanisms = self._extensions.get("AUTH")
        if mechanisms is None:
            self._fail(None, "AUTH not offered", "auth", quit=True)
            return
        offered = mechanisms.upper().split(" ")
        username, password = self.credentials
        if "PLAIN" in offered:
            self._send(Cmd.AUTH, auth_plain(username, password))
        elif "LOGIN" in offered:
            self._send(Cmd.AUTH_USERNAME, b"AUTH LOGIN\r\n")
        else:
            self._fail(None, "no supported AUTH mechanism", "auth", quit=True)

    def _on_auth(self, reply: ServerReply) -> None:
        if reply.code == 235:  # RFC 4954 §6
            self.authenticated = True
            self._ready()
        elif reply.code == 334:
            # A challenge where none is due: cancel the exchange (RFC 4954 §4).
            self._out += b"*\r\n"
            self._fail(reply, "AUTH failed", "auth", quit=True)
        elif reply.code >= 400:
            self._fail(reply, "AUTH failed", "auth", quit=True)
        else:
            self._protocol_error(Cmd.AUTH, reply)

    def _on_auth_username(self, reply: ServerReply) -> None:
        self._login_step(Cmd.AUTH_USERNAME, reply, 0, Cmd.AUTH_PASSWORD)

    def _on_auth_password(self, reply: ServerReply) -> None:
        self._login_step(Cmd.AUTH_PASSWORD, reply, 1, Cmd.AUTH)

    def _login_step(self, cmd: Cmd, reply: ServerReply, part: int, then: Cmd) -> None:
        assert self.credentials is not None
        if reply.code == 334:
            self._send(then, b64_line(self.credentials[part]))
        elif reply.code >= 400:
            self._fail(reply, "AUTH failed", "auth", quit=True)
        else:
            self._protocol_error(cmd, reply)

    def _ready(self) -> None:
        self.phase = Phase.READY
        self._events.append(Ready(dict(self._extensions)))

    # -- the transaction -------------------------------------------------------------

    def _on_rset(self, reply: ServerReply) -> None:
        if 200 <= reply.code < 300:
            self._needs_rset = False
            self._step()
        elif reply.code >= 400:
            self._fail(reply, "RSET refused", "transaction", quit=True)
        else:
            self._protocol_error(Cmd.RSET, reply)

    def _on_mail(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if 300 <= reply.code < 400:
            self._protocol_error(Cmd.MAIL, reply)
            return
        txn.mail = reply
        if reply.code < 300:
            self._needs_rset = True  # open on the server until end of data or RSET
            self._step()
        elif not txn.pipelined:
            self._finish(None)  # nothing else was sent

    def _on_rcpt(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if 300 <= reply.code < 400:
            self._protocol_error(Cmd.RCPT, reply)
            return
        txn.rcpts.append(reply)
        last = len(txn.rcpts) == len(txn.tx.recipients)
        if not txn.pipelined and last and not txn.any_accepted:
            # Lock-step: no DATA without a recipient; RSET before the next MAIL.
            self._finish(None)
            return
        self._step()

    def _on_data(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if reply.code == 354:
            if txn.any_accepted:
                self._send(Cmd.DATA_END, txn.body)
            else:
                # RFC 2920 §3.1: DATA went out with the group though every RCPT failed;
                # end an empty message so the server is back in command mode.
                txn.empty_data = True
                self._send(Cmd.DATA_END, _B_EMPTY_MESSAGE)
        elif reply.code >= 400:
            self._finish(reply)
        else:  # a 2xx without the body sent must never count as delivered
            self._protocol_error(Cmd.DATA, reply)

    def _on_data_end(self, reply: ServerReply) -> None:
        txn = self._txn
        assert txn is not None
        if 300 <= reply.code < 400:
            self._protocol_error(Cmd.DATA_END, reply)
            return
        self._needs_rset = False  # RFC 5321 §4.1.1.4: end of data clears the transaction
        self._finish(None if txn.empty_data else reply)

    def _on_quit(self, reply: ServerReply) -> None:
        self._events.append(_CLOSED)  # 221, or anything: we are leaving (RFC 5321 §4.1.1.10)
        self.phase = Phase.CLOSED

    def _step(self) -> None:
        """Lock-step: send the next command of the transaction, if any is left."""
        txn = self._txn
        if txn is not None and not txn.pipelined and txn.unsent:
            self._send_next()

    def _finish(self, final: ServerReply | None) -> None:
        """Emit the outcomes: MAIL's reply if it was refused, else each RCPT's if refused,
        else ``final`` (the reply to DATA or to the end of data)."""
        txn = self._txn
        assert txn is not None
        outcomes: list[RecipientOutcome] = []
        for i, rcpt in enumerate(txn.tx.recipients):
            if not txn.mail_ok:
                reply = txn.mail
            elif txn.rcpts[i].code >= 300:
                reply = txn.rcpts[i]
            else:
                reply = final
            assert reply is not None
            outcomes.append(RecipientOutcome(rcpt.address, reply))
        self._txn = None
        self.phase = Phase.READY
        self._events.append(TransactionDone(TransactionResult(tuple(outcomes))))


_HANDLERS: dict[Cmd, Callable[[ClientConnection, ServerReply], None]] = {
    Cmd.GREETING: ClientConnection._on_greeting,
    Cmd.EHLO: ClientConnection._on_ehlo,
    Cmd.HELO: ClientConnection._on_helo,
    Cmd.STARTTLS: ClientConnection._on_starttls,
    Cmd.AUTH: ClientConnection._on_auth,
    Cmd.AUTH_USERNAME: ClientConnection._on_auth_username,
    Cmd.AUTH_PASSWORD: ClientConnection._on_auth_password,
    Cmd.RSET: ClientConnection._on_rset,
    Cmd.MAIL: ClientConnection._on_mail,
    Cmd.RCPT: ClientConnection._on_rcpt,
    Cmd.DATA: ClientConnection._on_data,
    Cmd.DATA_END: ClientConnection._on_data_end,
    Cmd.QUIT: ClientConnection._on_quit,
}
assert set(_HANDLERS) == set(Cmd)
