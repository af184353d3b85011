"""Events the SMTP server core emits: nouns for what the peer did (h11 style).

The asyncio glue loops on ``conn.next_event()``. Events marked *decision* leave the
core PAUSED until the glue answers with ``conn.accept(...)`` or ``conn.reject(reply)``
(or the event-specific call named in the docstring). All others are informational.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postbote.smtp.grammar import Address, MailParams, RcptParams


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # a decision is pending: answer it first


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class Hello:
    """*Decision.* HELO or EHLO with a syntactically valid argument.

    ``accept()`` makes the core send the greeting reply (EHLO: the extension list)."""

    verb: str  # "HELO" or "EHLO"
    name: str  # the domain or address literal the client gave


@dataclass(frozen=True, slots=True)
class MailFrom:
    """*Decision.* MAIL FROM with a valid reverse-path; ``sender`` None is ``<>``."""

    sender: Address | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """*Decision.* RCPT TO with a valid forward-path."""

    recipient: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """*Decision.* End of data (DATA's CRLF.CRLF or BDAT LAST) of an acceptable message.

    ``body`` is the message as received: dot-unstuffed, CRLF line endings (bare
    newlines normalised if so configured). ``accept(reply)`` answers with the given
    250 reply (it should name the queue id); ``reject(reply)`` refuses it. Either way
    the transaction is reset (RFC 5321 §4.1.1.4)."""

    body: bytes


@dataclass(frozen=True, slots=True)
class StartTlsRequested:
    """*Decision.* STARTTLS in plaintext with TLS available.

    ``accept()`` queues ``220 2.0.0 Ready to start TLS`` and discards every byte
    buffered after the STARTTLS line (CVE-2011-0411). The glue must then send the
    pending output, run the TLS handshake and call ``tls_established()``; input fed
    before that is discarded."""


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """*Decision.* AUTH <mechanism> [initial-response] (RFC 4954 §4).

    ``initial_response`` is None when absent, b"" for ``=``. The glue answers with
    ``auth_challenge(data)`` (sends ``334 base64``), ``auth_success(identity)`` or
    ``reject(reply)``. Client responses arrive as ``AuthResponse`` events."""

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """*Decision.* One base64-decoded client line during a SASL exchange.

    A client line ``*`` cancels: the core answers 501 5.0.0 itself and emits nothing."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TransactionReset:
    """RSET, a new HELO/EHLO or the end of a message reset the mail transaction."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The core has queued its last reply (QUIT's 221, or a 421) and wants the
    connection closed once the output is written. ``reason`` is for the log."""

    reason: str


Event = (
    Hello
    | MailFrom
    | RcptTo
    | MessageComplete
    | StartTlsRequested
    | AuthRequested
    | AuthResponse
    | TransactionReset
    | ConnectionClosed
)
