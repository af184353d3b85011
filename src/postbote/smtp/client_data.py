"""What the SMTP client role reads and writes, as data and pure functions (sans-IO).

This module owns the server's replies (``ReplyReader`` turns bytes into ``ServerReply``),
the outgoing transaction types, the events of ``ClientConnection`` and the functions that
put a transaction on the wire: ``encode_body`` (RFC 5321 §4.5.2), the MAIL/RCPT parameters
(RFC 1870, RFC 6152, RFC 6531, RFC 3461, RFC 6533) and ``check_transaction``, which keeps
anything but a valid path off the wire. The state machine is smtp/client.py.
"""

from __future__ import annotations

import base64
import enum
import re
from dataclasses import dataclass

from postbote.errors import RemoteProtocolError
from postbote.smtp.data import normalize_newlines
from postbote.smtp.grammar import GrammarError, parse_mailbox, xtext_encode

# A reply line may be long (EHLO lists, RFC 5321 §4.5.3.1.5 says 512 octets incl. the
# code); we allow this many octets of text per line and this many lines per reply.
MAX_REPLY_LINE = 2000
MAX_REPLY_LINES = 200
# RFC 3461 §4.4: ENVID at most 100 characters; §4.2: ORCPT at most 500 characters.
MAX_ENVID = 100
MAX_ORCPT = 500


# ---------------------------------------------------------------------------------------------
# Server replies


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One reply from the server: ``lines`` is the text of each line without the code and
    without the enhanced code (RFC 2034 §3), which is in ``enhanced`` when it was given."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        if not self.lines:
            raise ValueError("a reply needs at least one line")
        if any("\r" in line or "\n" in line for line in self.lines):
            raise ValueError("reply text must not contain CR or LF")

    @classmethod
    def make(cls, code: int, enhanced: str | None, *lines: str) -> ServerReply:
        return cls(code, enhanced, tuple(lines) if lines else ("",))

    @property
    def text(self) -> str:
        """The text of all lines joined by one space."""
        return " ".join(line for line in self.lines if line)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.enhanced or "", self.text) if p)


# RFC 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
#                             Reply-code [ SP textstring ] CRLF
#   Reply-code = %x32-35 %x30-35 %x30-39
_REPLY_LINE_RE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
# RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126); RFC 6531 §3.7.4 adds UTF-8. Control
# characters are refused: reply text ends up in logs and DSN headers.
_REPLY_CONTROL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3463 §2: status-code = class "." subject "." detail; class = "2" / "4" / "5";
#   subject = 1*3digit; detail = 1*3digit
_ENHANCED_RE = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |\Z)")


class ReplyReader:
    """Reads replies off an input buffer, resuming over any chunking.

    A bare LF ends a line as well as CRLF (lenient in what we accept). Raises
    ``RemoteProtocolError`` for anything that is not a reply or is over the bounds."""

    __slots__ = ("_code", "_lines")

    def __init__(self) -> None:
        self._code = 0
        self._lines: list[bytes] = []

    def read(self, buf: bytearray) -> ServerReply | None:
        """Consume one complete reply from ``buf`` (in place), or None if incomplete."""
        while True:
            idx = buf.find(b"\n")
            if idx < 0:
                if len(buf) > MAX_REPLY_LINE + 1:  # room for a pending CR
                    raise RemoteProtocolError("reply line too long")
                return None
            raw = bytes(buf[:idx])
            del buf[: idx + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > MAX_REPLY_LINE:
                raise RemoteProtocolError("reply line too long")
            m = _REPLY_LINE_RE.fullmatch(raw)
            if m is None or _REPLY_CONTROL_RE.search(raw) is not None:
                raise RemoteProtocolError("malformed reply line")
            code = int(m[1])
            if self._lines and code != self._code:
                raise RemoteProtocolError("reply code changed within a multi-line reply")
            self._code = code
            self._lines.append(m[3] or b"")
            if len(self._lines) > MAX_REPLY_LINES:
                raise RemoteProtocolError("too many reply lines")
            if m[2] != b"-":
                lines, self._lines = self._lines, []
                return _make_reply(code, lines)


def _make_reply(code: int, raw_lines: list[bytes]) -> ServerReply:
    lines = [line.decode("utf-8", "replace") for line in raw_lines]
    m = _ENHANCED_RE.match(lines[0])
    enhanced = None
    # RFC 3463 §2 / RFC 2034 §3: the class must be the reply's first digit.
    if m is not None and int(m[1]) == code // 100:
        enhanced = m[0]
        n = len(enhanced)
        lines = [
            line[n + 1 :] if line.startswith(enhanced) and line[n : n + 1] in ("", " ") else line
            for line in lines
        ]
    return ServerReply(code, enhanced, tuple(lines))


# RFC 5321 §4.1.1.1: ehlo-line = ehlo-keyword *( SP ehlo-param )
#   ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_EHLO_LINE_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?: +(.*))?")


def parse_ehlo(reply: ServerReply) -> dict[str, str]:
    """EHLO keywords (upper-case) -> their parameters (single-spaced); the first line is
    the server's name. Lines that are not keywords are ignored."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        m = _EHLO_LINE_RE.fullmatch(line.strip(" "))
        if m is not None:
            extensions.setdefault(m[1].upper(), " ".join((m[2] or "").split()))
    return extensions


def size_limit(extensions: dict[str, str]) -> int | None:
    """The server's fixed maximum message size; None when unknown or unlimited
    (RFC 1870 §4: no parameter, or 0)."""
    value = extensions.get("SIZE", "").split(" ")[0]
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        return None
    return int(value)


# ---------------------------------------------------------------------------------------------
# The transaction


@dataclass(frozen=True, slots=True)
class OutgoingRecipient:
    """One forward-path; ``notify`` and ``orcpt`` as in envelope.Recipient (decoded)."""

    address: str
    notify: tuple[str, ...] | None = None  # ("NEVER",) or subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # "addr-type;address", decoded, e.g. "rfc822;a@b"


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message for one server: sender, recipients, body and the MAIL parameters."""

    sender: str  # "" for <>
    recipients: tuple[OutgoingRecipient, ...]
    body: bytes  # the message as stored (CRLF or not; normalised on output)
    smtputf8: bool = False  # the envelope needs SMTPUTF8 (also if any address is non-ASCII)
    body_type: str | None = None  # "8BITMIME" | "7BIT" | None
    ret: str | None = None  # "FULL" | "HDRS" (RFC 3461 §4.3)
    envid: str | None = None  # RFC 3461 §4.4, decoded


@dataclass(frozen=True, slots=True)
class RecipientOutcome:
    address: str
    reply: ServerReply  # the reply that decides this recipient


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """One outcome per recipient, in the order of ``Transaction.recipients``: MAIL
    refused -> MAIL's reply; RCPT refused -> its reply; accepted -> the reply to DATA
    (if it was refused) or to the end of data."""

    outcomes: tuple[RecipientOutcome, ...]


# Pre-checks that fail a transaction without sending it.
C553_SMTPUTF8_UNSUPPORTED = ServerReply.make(
    553, "5.6.7", "The server does not support SMTPUTF8, which the message needs"
)
C554_8BIT_UNSUPPORTED = ServerReply.make(
    554, "5.6.3", "The server does not support 8BITMIME, which the message needs"
)
C552_TOO_BIG = ServerReply.make(552, "5.3.4", "Message larger than the server accepts")

# Control characters (C0 and DEL): never in an address on the wire.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# RFC 5322 §3.2.3 atom (RFC 3461 §4.2 addr-type).
_ATOM_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _check_address(address: str, what: str) -> None:
    if _CONTROL_RE.search(address) is not None:
        raise ValueError(f"{what} contains a control character: {address!r}")
    if address.startswith("@"):  # RFC 5321 §4.1.1.3, Appendix C: no source routes
        raise ValueError(f"{what} has a source route: {address!r}")
    try:
        parse_mailbox(address)  # RFC 5321 §4.1.2: <address> must be a Path
    except GrammarError:
        raise ValueError(f"{what} is not a valid path: {address!r}") from None


def check_transaction(tx: Transaction) -> None:
    """Raise ValueError for anything that must not reach the wire."""
    if not tx.recipients:
        raise ValueError("a transaction needs at least one recipient")
    if tx.sender:
        _check_address(tx.sender, "sender")
    for rcpt in tx.recipients:
        _check_address(rcpt.address, "recipient")
        if rcpt.notify is not None:
            items = set(rcpt.notify)
            # RFC 3461 §4.1: "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
            if not (items == {"NEVER"} or (items and items <= _NOTIFY)):
                raise ValueError(f"bad NOTIFY: {rcpt.notify!r}")
        if rcpt.orcpt is not None:
            addr_type, semicolon, _ = rcpt.orcpt.partition(";")
            if not semicolon or _ATOM_RE.fullmatch(addr_type) is None:
                raise ValueError(f"bad ORCPT: {rcpt.orcpt!r}")
    if tx.body_type not in (None, "7BIT", "8BITMIME"):
        raise ValueError(f"bad body type: {tx.body_type!r}")
    if tx.ret not in (None, "FULL", "HDRS"):
        raise ValueError(f"bad RET: {tx.ret!r}")


def needs_smtputf8(tx: Transaction) -> bool:
    """RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL."""
    return (
        tx.smtputf8
        or not tx.sender.isascii()
        or not all(r.address.isascii() for r in tx.recipients)
    )


# ---------------------------------------------------------------------------------------------
# The body


def normalize_body(body: bytes) -> bytes:
    """The message as it will be delivered: CRLF line endings (a bare CR or LF becomes
    CRLF) and, unless the body is empty, a final CRLF (RFC 5321 §2.3.8, §4.1.1.4)."""
    data = normalize_newlines(body)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def encode_body(body: bytes) -> bytes:
    """The DATA text for ``body``: normalised (``normalize_body``), dot-stuffed and
    terminated by ``.\\r\\n`` (RFC 5321 §4.5.2, §4.1.1.4). An empty body is ``.\\r\\n``."""
    data = normalize_body(body)
    # RFC 5321 §4.5.2: a line that starts with "." gets one more.
    if data[:1] == b".":
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# ---------------------------------------------------------------------------------------------
# The wire form of a transaction


@dataclass(frozen=True, slots=True)
class PreparedTransaction:
    mail: bytes  # the MAIL command line
    rcpts: tuple[bytes, ...]  # one RCPT command line per recipient
    body: bytes  # the DATA text, terminator included


def prepare_transaction(
    tx: Transaction, extensions: dict[str, str]
) -> PreparedTransaction | ServerReply:
    """The commands and DATA text of ``tx`` for a server offering ``extensions``, or the
    local reply that refuses it without sending (the server cannot take the message).

    Raises ValueError for anything that must not reach the wire (``check_transaction``)."""
    check_transaction(tx)
    smtputf8 = needs_smtputf8(tx)
    message = normalize_body(tx.body)
    if smtputf8 and "SMTPUTF8" not in extensions:
        return C553_SMTPUTF8_UNSUPPORTED  # RFC 6531 §3.2
    if not tx.body.isascii() and "8BITMIME" not in extensions:
        return C554_8BIT_UNSUPPORTED  # RFC 6152 §3: we do not convert to 7 bit
    limit = size_limit(extensions)
    if limit is not None and len(message) > limit:
        return C552_TOO_BIG  # RFC 1870 §6.1
    return PreparedTransaction(
        mail_command(tx, extensions, size=len(message), smtputf8=smtputf8),
        tuple(rcpt_command(r, extensions, smtputf8=smtputf8) for r in tx.recipients),
        encode_body(message),
    )


# ---------------------------------------------------------------------------------------------
# MAIL and RCPT


def mail_command(
    tx: Transaction, extensions: dict[str, str], *, size: int, smtputf8: bool
) -> bytes:
    """``MAIL FROM:<sender>`` with the parameters the server offers (RFC 5321 §4.1.1.2)."""
    params: list[str] = []
    if "SIZE" in extensions:
        params.append(f"SIZE={size}")  # RFC 1870 §6, the size of RFC 1870 §5
    if "8BITMIME" in extensions:  # RFC 6152 §2
        if tx.body_type == "8BITMIME" or not tx.body.isascii():
            params.append("BODY=8BITMIME")
        elif tx.body_type == "7BIT":
            params.append("BODY=7BIT")
    if smtputf8:
        params.append("SMTPUTF8")  # RFC 6531 §3.4
    if "DSN" in extensions:
        if tx.ret is not None:
            params.append(f"RET={tx.ret}")  # RFC 3461 §4.3
        if tx.envid is not None:
            envid = xtext_encode(tx.envid)  # RFC 3461 §4.4: xtext, at most 100 characters
            if len(envid) <= MAX_ENVID:
                params.append(f"ENVID={envid}")
    return _command(f"MAIL FROM:<{tx.sender}>", params)


def rcpt_command(rcpt: OutgoingRecipient, extensions: dict[str, str], *, smtputf8: bool) -> bytes:
    """``RCPT TO:<address>`` with the DSN parameters when offered (RFC 3461 §4.1-§4.2)."""
    params: list[str] = []
    if "DSN" in extensions:
        if rcpt.notify is not None:
            params.append("NOTIFY=" + ",".join(rcpt.notify))
        if rcpt.orcpt is not None:
            orcpt = encode_orcpt(rcpt.orcpt, smtputf8=smtputf8)
            if len(orcpt) <= MAX_ORCPT:
                params.append(f"ORCPT={orcpt}")
    return _command(f"RCPT TO:<{rcpt.address}>", params)


def _command(text: str, params: list[str]) -> bytes:
    line = " ".join([text, *params]) + "\r\n"
    return line.encode("utf-8")


# RFC 6533 §3: QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e
_QCHAR_RE = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
# RFC 6533 §3: EmbeddedUnicodeChar = %x5C.78 "{" HEXPOINT "}"
_EMBEDDED_RE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _unembed(address: str) -> str:
    def char(m: re.Match[str]) -> str:
        point = int(m[1], 16)
        if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
            return m[0]
        return chr(point)

    return _EMBEDDED_RE.sub(char, address)


def encode_orcpt(orcpt: str, *, smtputf8: bool) -> str:
    """The ORCPT parameter value for a decoded ``addr-type;address``.

    RFC 3461 §4.2: ``rfc822;`` + xtext. RFC 6533 §3: a non-ASCII address goes out as
    ``utf-8;`` with \\x{HEX} for what is not QCHAR — raw UTF-8 kept under SMTPUTF8
    (utf-8-addr-unitext), escaped too without it (utf-8-addr-xtext)."""
    addr_type, _, address = orcpt.partition(";")
    utf8_type = addr_type.lower() == "utf-8"
    if utf8_type:
        address = _unembed(address)
    if not utf8_type and (address.isascii() or addr_type.lower() != "rfc822"):
        return f"{addr_type};{xtext_encode(address)}"
    out = []
    for c in address:
        keep = _QCHAR_RE.fullmatch(c) is not None or (smtputf8 and not c.isascii())
        out.append(c if keep else f"\\x{{{ord(c):X}}}")
    return "utf-8;" + "".join(out)


def auth_plain(username: str, password: str) -> bytes:
    """``AUTH PLAIN`` with the initial response (RFC 4954 §4, RFC 4616 §2)."""
    message = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
    return b"AUTH PLAIN " + base64.b64encode(message) + b"\r\n"


def b64_line(text: str) -> bytes:
    """One base64 SASL response line (RFC 4954 §4)."""
    return base64.b64encode(text.encode("utf-8")) + b"\r\n"


# ---------------------------------------------------------------------------------------------
# Events


class NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()


NEED_DATA = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is open (greeting, EHLO, STARTTLS and AUTH done): a transaction may
    start. ``extensions``: the EHLO keywords (upper-case) and their parameters."""

    extensions: dict[str, str]


@dataclass(frozen=True, slots=True)
class StartTls:
    """The server said 220 to STARTTLS: run the TLS handshake on the socket, then call
    ``tls_established()``. Any byte received before that fails the session."""


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """The transaction is over (sent, or refused by a pre-check); the session is idle."""

    result: TransactionResult


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """The session is unusable: close the connection (after writing ``data_to_send()``,
    which may hold a polite QUIT). A transaction under way delivered nothing.

    ``reply``: the server's reply that ended it, if any (a 421, a refused greeting...).
    ``reason``: "protocol error", "connection closed", or what was refused.
    ``stage``: "greeting", "ehlo", "starttls", "auth", "transaction", "quit" or "idle".
    ``detail``: free text for the log."""

    reply: ServerReply | None
    reason: str
    stage: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session ended cleanly (QUIT answered, or the server closed an idle session).
    Returned again by every later ``next_event()``, also after ``SessionFailed``."""


Event = Ready | StartTls | TransactionDone | SessionFailed | Closed
