"""Events the POP3 server core emits: nouns for what the client did (h11 style).

The asyncio glue loops on ``conn.next_event()`` until it gets ``NEED_DATA`` or
``PAUSED``. Events marked *decision* leave the core PAUSED until the glue answers with
the call named in the docstring; commands pipelined meanwhile wait in the input
buffer (RFC 2449 §6.6). All other events are informational.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # the glue owes an answer (or a TLS handshake): give it first


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """*Decision.* USER then PASS (RFC 1939 §7), allowed on this connection.

    Answer with ``login_ok(messages, now)`` or ``login_failed(code, text)``. The
    password is everything after ``PASS `` (it may contain spaces, RFC 1939 §7)."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """*Decision.* ``AUTH mechanism [initial-response]`` (RFC 5034 §4).

    ``initial`` is None when absent, b"" for ``=``. Answer with
    ``auth_challenge(data, now)`` (sends ``+ base64``), ``login_ok(messages, now)`` or
    ``login_failed("AUTH", text)``. Client lines arrive as ``AuthResponse``."""

    mechanism: str
    initial: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """*Decision.* One base64-decoded client line during a SASL exchange; answered
    like ``AuthRequested``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthAborted:
    """The SASL exchange ended without a decision: the client sent ``*`` (RFC 5034 §4),
    an undecodable or over-long line. The core has already replied ``-ERR``; the glue
    drops its exchange state."""


@dataclass(frozen=True, slots=True)
class StlsRequested:
    """STLS accepted (RFC 2595 §4): the core has queued ``+OK`` and discarded every
    byte pipelined after the STLS line (CVE-2011-0411). The glue sends the pending
    output, runs the TLS handshake and calls ``tls_established()``; input fed before
    that is discarded, and the core stays PAUSED."""


@dataclass(frozen=True, slots=True)
class RetrieveRequested:
    """*Decision.* ``RETR n`` (``top`` None) or ``TOP n lines`` (RFC 1939 §7) for an
    existing, undeleted message; ``index`` is 1-based into the login snapshot.

    Answer with ``send_message(data, top, now)`` or ``message_unavailable(text, now)``."""

    index: int
    top: int | None


@dataclass(frozen=True, slots=True)
class UpdateRequested:
    """*Decision.* QUIT in the TRANSACTION state: the UPDATE state (RFC 1939 §6).

    ``deleted`` are the 1-based numbers marked by DELE; ``retrieved`` those sent by
    RETR and not deleted (for the seen flag). Both sorted. The glue applies them, then
    calls ``update_done(ok, now)``; the session closes after the reply."""

    deleted: tuple[int, ...]
    retrieved: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The core has queued its last reply (if any) and wants the connection closed
    once the output is written. ``reason`` is for the log. Emitted exactly once."""

    reason: str


Event = (
    LoginRequested
    | AuthRequested
    | AuthResponse
    | AuthAborted
    | StlsRequested
    | RetrieveRequested
    | UpdateRequested
    | ConnectionClosed
)
