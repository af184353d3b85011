"""Tests of the sans-IO SMTP client core (postbote.smtp.client), bytes in, bytes out.

The tables give the server's bytes, what the scripted caller does when the session is
idle (start a transaction, quit) and the exact client bytes and events that result.
Every table is re-fed with the server bytes split in every chunk size from 1 to the
stream's length, and must give identical output. Tests that need the caller's hands
in between (lock-step, timeouts, misuse) drive a ClientConnection step by step.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from postbote.auth import Outcome
from postbote.errors import LocalProtocolError
from postbote.smtp.client import (
    NEED_DATA,
    ClientConnection,
    Closed,
    Event,
    NeedData,
    OutgoingRecipient,
    Ready,
    RecipientOutcome,
    ServerReply,
    SessionFailed,
    StartTls,
    Transaction,
    TransactionDone,
    TransactionResult,
    encode_body,
)
from postbote.smtp.client_data import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    ReplyReader,
    encode_orcpt,
    normalize_body,
    parse_ehlo,
)
from postbote.smtp.events import AuthRequested, AuthResponse, MailFrom, RcptTo
from postbote.smtp.protocol import ServerConnection, ServerSettings
from postbote.smtp.replies import C550_MAILBOX_UNAVAILABLE, Reply
from postbote.smtp.server import BodyMemory, SessionInfo, SmtpServer
from tests.integration.conftest import require_tool

HELO = "client.example"
Action = Transaction | str  # a Transaction to start, or "quit"


def lines(*texts: str) -> bytes:
    return "".join(t + "\r\n" for t in texts).encode()


def R(code: int, enhanced: str | None, *texts: str) -> ServerReply:
    return ServerReply.make(code, enhanced, *texts)


def rcpt(address: str, **kw: Any) -> OutgoingRecipient:
    return OutgoingRecipient(address, **kw)


def done(*pairs: tuple[str, ServerReply]) -> TransactionDone:
    return TransactionDone(TransactionResult(tuple(RecipientOutcome(a, r) for a, r in pairs)))


def ab64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- vocabulary --------------------------------------------------------------------------

S_GREET = b"220 mx.example.net ESMTP postbote\r\n"
C_EHLO = b"EHLO client.example\r\n"
C_HELO = b"HELO client.example\r\n"
C_QUIT = b"QUIT\r\n"
C_RSET = b"RSET\r\n"
C_DATA = b"DATA\r\n"
S_EHLO_FULL = lines(
    "250-mx.example.net",
    "250-PIPELINING",
    "250-SIZE 10240000",
    "250-8BITMIME",
    "250-SMTPUTF8",
    "250-ENHANCEDSTATUSCODES",
    "250 DSN",
)
EXT_FULL = {
    "PIPELINING": "",
    "SIZE": "10240000",
    "8BITMIME": "",
    "SMTPUTF8": "",
    "ENHANCEDSTATUSCODES": "",
    "DSN": "",
}
S_EHLO_BASIC = lines("250-mx.example.net", "250 ENHANCEDSTATUSCODES")  # lock-step, 7 bit
EXT_BASIC = {"ENHANCEDSTATUSCODES": ""}
S_EHLO_TLS = lines("250-mx.example.net", "250-PIPELINING", "250 STARTTLS")
S_EHLO_AFTER_TLS = lines("250-mx.example.net", "250-PIPELINING", "250 AUTH PLAIN LOGIN")
EXT_AFTER_TLS = {"PIPELINING": "", "AUTH": "PLAIN LOGIN"}
S_MAIL_OK = b"250 2.1.0 Sender OK\r\n"
S_RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
S_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"
S_QUEUED = b"250 2.0.0 Ok: queued as Q1\r\n"
S_BYE = b"221 2.0.0 Bye\r\n"
S_RESET = b"250 2.0.0 Reset OK\r\n"

BODY = b"Subject: hi\r\n\r\nhello\r\n"
ALICE = "alice@example.org"
BOB = "bob@example.net"
CAROL = "carol@example.net"
DAVE = "dave@example.net"
TX1 = Transaction(ALICE, (rcpt(BOB),), BODY)
TX3 = Transaction(ALICE, (rcpt(BOB), rcpt(CAROL), rcpt(DAVE)), BODY)
C_MAIL_SIZE = b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(BODY)
C_MAIL = b"MAIL FROM:<alice@example.org>\r\n"
C_RCPT_BOB = b"RCPT TO:<bob@example.net>\r\n"
C_RCPT_3 = (
    b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\nRCPT TO:<dave@example.net>\r\n"
)
C_BODY = BODY + b".\r\n"

QUEUED = R(250, "2.0.0", "Ok: queued as Q1")
RCPT_OK = R(250, "2.1.5", "Recipient OK")
R450 = R(450, "4.2.0", "Mailbox busy")
R550 = R(550, "5.1.1", "No such user here")
S_450 = b"450 4.2.0 Mailbox busy\r\n"
S_550 = b"550 5.1.1 No such user here\r\n"
S_554_NO_RCPT = b"554 5.5.1 No valid recipients\r\n"
R554_NO_RCPT = R(554, "5.5.1", "No valid recipients")
CLOSED = Closed()
READY_FULL = Ready(EXT_FULL)
READY_BASIC = Ready(EXT_BASIC)
# A session that is open with the full extension list.
OPEN_FULL = S_GREET + S_EHLO_FULL


def failed(reason: str, stage: str, reply: ServerReply | None = None) -> SessionFailed:
    """SessionFailed compared without its (log-only) detail."""
    return SessionFailed(reply, reason, stage)


def without_detail(events: list[Event]) -> list[Event]:
    return [
        SessionFailed(e.reply, e.reason, e.stage) if isinstance(e, SessionFailed) else e
        for e in events
    ]


# -- the driver -------------------------------------------------------------------------


@dataclass
class Run:
    client: bytes  # everything the client wrote
    events: list[Event]
    conn: ClientConnection


def _chunks(data: bytes, size: int | Sequence[int] | None) -> list[bytes]:
    """``data`` whole (None), in chunks of ``size``, or in the given sizes (cycled)."""
    if size is None or not data:
        return [data]
    sizes = [size] if isinstance(size, int) else list(size)
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i, k = i + n, k + 1
    return out


def drive(
    server: bytes | Sequence[bytes],
    actions: Sequence[Action] = (),
    chunk: int | Sequence[int] | None = None,
    *,
    eof: bool = False,
    **kwargs: Any,
) -> Run:
    """Feed the server's bytes (segments: before/after a TLS handshake, which the driver
    completes at a segment's end after StartTls) in chunks of ``chunk``; on Ready and
    TransactionDone perform the next action. Stops at SessionFailed or Closed.

    The output is taken right after each receive_data() and after each action, like a
    glue that writes before it polls (remote.py): polling alone must then never leave
    output behind, or such a glue would wait for a reply to a command it never wrote."""
    conn = ClientConnection(helo_name=HELO, **kwargs)
    segments = [server] if isinstance(server, bytes) else list(server)
    todo = list(actions)
    out = bytearray()
    events: list[Event] = []
    state = {"tls": False, "over": False}

    def pump() -> None:
        acted = False
        while not state["over"]:
            ev = conn.next_event()
            assert conn.timeout_kind() in TIMEOUT_KINDS
            if ev is NEED_DATA:
                break
            events.append(ev)
            if isinstance(ev, SessionFailed | Closed):
                state["over"] = True
            elif isinstance(ev, StartTls):
                state["tls"] = True
            elif isinstance(ev, Ready | TransactionDone) and todo:
                action = todo.pop(0)
                acted = True
                if action == "quit":
                    conn.quit()
                else:
                    assert isinstance(action, Transaction)
                    conn.start_transaction(action)
        new = conn.data_to_send()
        assert acted or not new, new
        out.extend(new)

    for segment in segments:
        for piece in _chunks(segment, chunk):
            conn.receive_data(piece)
            out.extend(conn.data_to_send())
            pump()
        if state["tls"]:
            state["tls"] = False
            conn.tls_established()  # a no-op if the session failed meanwhile
            out.extend(conn.data_to_send())
            pump()
    if eof:
        conn.receive_eof()
        out.extend(conn.data_to_send())
        pump()
    assert_clean_wire(bytes(out))
    return Run(bytes(out), events, conn)


TIMEOUT_KINDS = (None, "greeting", "command", "data_init", "data_end", "data_block")


def assert_clean_wire(data: bytes) -> None:
    """The client never sends a bare CR or LF."""
    crlf = data.count(b"\r\n")
    assert data.count(b"\r") == crlf and data.count(b"\n") == crlf, data


def drive_all_chunkings(
    server: bytes | Sequence[bytes], actions: Sequence[Action] = (), **kw: Any
) -> Run:
    """Drive once per chunk size 1..len(longest segment) and all at once; all runs must
    produce the same client bytes and events."""
    ref = drive(server, actions, None, **kw)
    segments = [server] if isinstance(server, bytes) else server
    for size in range(1, max(len(s) for s in segments) + 1):
        got = drive(server, actions, size, **kw)
        assert (got.client, got.events) == (ref.client, ref.events), f"chunk size {size}"
    return ref


# -- the byte-level table ---------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    server: bytes | tuple[bytes, ...]
    client: bytes
    events: tuple[Event, ...]
    actions: tuple[Action, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    eof: bool = False


SESSIONS = [
    Case(
        "pipelining-one-message",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_354 + S_QUEUED + S_BYE,
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA + C_BODY + C_QUIT,
        (READY_FULL, done((BOB, QUEUED)), CLOSED),
        (TX1, "quit"),
    ),
    Case(
        "lock-step-one-message",
        S_GREET + S_EHLO_BASIC + S_MAIL_OK + S_RCPT_OK + S_354 + S_QUEUED + S_BYE,
        C_EHLO + C_MAIL + C_RCPT_BOB + C_DATA + C_BODY + C_QUIT,
        (READY_BASIC, done((BOB, QUEUED)), CLOSED),
        (TX1, "quit"),
    ),
    Case(
        "multi-line-greeting-and-bare-lf-replies",
        b"220-mx.example.net ESMTP\n220-no UCE\n220 hello\n"
        + b"250-mx.example.net\n250 ENHANCEDSTATUSCODES\n"
        + b"250 2.1.0 ok\n250 2.1.5 ok\n354 go\n250 2.0.0 done\n221 bye\n",
        C_EHLO + C_MAIL + C_RCPT_BOB + C_DATA + C_BODY + C_QUIT,
        (READY_BASIC, done((BOB, R(250, "2.0.0", "done"))), CLOSED),
        (TX1, "quit"),
    ),
    Case(
        "helo-fallback",
        S_GREET
        + b"500 5.5.1 Command unrecognized\r\n"
        + b"250 mx.example.net\r\n"
        + S_MAIL_OK
        + S_RCPT_OK
        + S_354
        + S_QUEUED,
        C_EHLO + C_HELO + C_MAIL + C_RCPT_BOB + C_DATA + C_BODY,
        (Ready({}), done((BOB, QUEUED))),
        (TX1,),
    ),
    Case(
        "helo-refused-too",
        S_GREET + b"502 5.5.1 no\r\n" + b"550 5.7.1 go away\r\n",
        C_EHLO + C_HELO + C_QUIT,
        (failed("HELO refused", "ehlo", R(550, "5.7.1", "go away")),),
    ),
    Case(
        "ehlo-4xx",
        S_GREET + b"451 4.3.0 try later\r\n",
        C_EHLO + C_QUIT,
        (failed("EHLO refused", "ehlo", R(451, "4.3.0", "try later")),),
    ),
    Case(
        "greeting-554",
        b"554 5.7.1 no service for you\r\n",
        C_QUIT,  # RFC 5321 §3.1: QUIT after a 554 greeting
        (failed("greeting refused", "greeting", R(554, "5.7.1", "no service for you")),),
    ),
    Case(
        "greeting-421",
        b"421 4.3.2 busy\r\n",
        b"",
        (failed("service not available", "greeting", R(421, "4.3.2", "busy")),),
    ),
    Case(
        "multi-line-reply-with-enhanced-codes",
        S_GREET
        + S_EHLO_BASIC
        + b"550-5.7.1 Sender refused\r\n550-5.7.1 see https://example.net/why\r\n"
        + b"550 5.7.1 bye\r\n",
        C_EHLO + C_MAIL,
        (
            READY_BASIC,
            done((BOB, R(550, "5.7.1", "Sender refused", "see https://example.net/why", "bye"))),
        ),
        (TX1,),
    ),
]

STARTTLS = [
    Case(
        "starttls-opportunistic",
        (S_GREET + S_EHLO_TLS + b"220 2.0.0 Ready to start TLS\r\n", S_EHLO_FULL + S_BYE),
        C_EHLO + b"STARTTLS\r\n" + C_EHLO + C_QUIT,
        (StartTls(), READY_FULL, CLOSED),
        ("quit",),
    ),
    Case(
        "starttls-required-offered",
        (S_GREET + S_EHLO_TLS + b"220 go ahead\r\n", S_EHLO_FULL),
        C_EHLO + b"STARTTLS\r\n" + C_EHLO,
        (StartTls(), READY_FULL),
        kwargs={"tls": "required"},
    ),
    Case(
        "starttls-refused-opportunistic-carries-on",
        S_GREET + S_EHLO_TLS + b"454 4.7.0 TLS not available\r\n" + S_BYE,
        C_EHLO + b"STARTTLS\r\n" + C_QUIT,
        (Ready({"PIPELINING": "", "STARTTLS": ""}), CLOSED),
        ("quit",),
    ),
    Case(
        "starttls-refused-required",
        S_GREET + S_EHLO_TLS + b"454 4.7.0 TLS not available\r\n",
        C_EHLO + b"STARTTLS\r\n" + C_QUIT,
        (failed("STARTTLS refused", "starttls", R(454, "4.7.0", "TLS not available")),),
        kwargs={"tls": "required"},
    ),
    Case(
        "starttls-required-not-offered",
        S_GREET + S_EHLO_FULL,
        C_EHLO + C_QUIT,
        (failed("STARTTLS not offered", "starttls"),),
        kwargs={"tls": "required"},
    ),
    Case(
        "starttls-never-with-tls-none",
        S_GREET + S_EHLO_TLS,
        C_EHLO,
        (Ready({"PIPELINING": "", "STARTTLS": ""}),),
        kwargs={"tls": "none"},
    ),
    Case(
        "starttls-never-in-implicit-tls",
        S_GREET + S_EHLO_TLS,
        C_EHLO,
        (Ready({"PIPELINING": "", "STARTTLS": ""}),),
        kwargs={"in_tls": True, "tls": "required"},
    ),
    Case(
        # CVE-2011-0411, client side: a reply injected behind the 220 in plaintext.
        "starttls-response-injection",
        (S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n" + S_EHLO_FULL, S_EHLO_FULL),
        C_EHLO + b"STARTTLS\r\n",
        (StartTls(), failed("protocol error", "starttls")),
    ),
    Case(
        "starttls-eof-after-handshake",
        (S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n", b""),
        C_EHLO + b"STARTTLS\r\n" + C_EHLO,
        (StartTls(), failed("connection closed", "ehlo")),
        eof=True,
    ),
]

PLAIN_IR = ab64("\0relay-user\0s3cret")
CREDS = {"credentials": ("relay-user", "s3cret")}
AUTH = [
    Case(
        "auth-plain-implicit-tls",
        S_GREET + S_EHLO_AFTER_TLS + b"235 2.7.0 Authentication successful\r\n" + S_BYE,
        C_EHLO + f"AUTH PLAIN {PLAIN_IR}\r\n".encode() + C_QUIT,
        (Ready(EXT_AFTER_TLS), CLOSED),
        ("quit",),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        "auth-plain-after-starttls",
        (
            S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n",
            S_EHLO_AFTER_TLS + b"235 2.7.0 ok\r\n",
        ),
        C_EHLO + b"STARTTLS\r\n" + C_EHLO + f"AUTH PLAIN {PLAIN_IR}\r\n".encode(),
        (StartTls(), Ready(EXT_AFTER_TLS)),
        kwargs=CREDS,
    ),
    Case(
        "auth-login",
        S_GREET
        + lines("250-mx.example.net", "250 AUTH LOGIN")
        + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n",
        C_EHLO + b"AUTH LOGIN\r\n" + f"{ab64('relay-user')}\r\n{ab64('s3cret')}\r\n".encode(),
        (Ready({"AUTH": "LOGIN"}),),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        "auth-refused",
        S_GREET + S_EHLO_AFTER_TLS + b"535 5.7.8 Authentication credentials invalid\r\n",
        C_EHLO + f"AUTH PLAIN {PLAIN_IR}\r\n".encode() + C_QUIT,
        (failed("AUTH failed", "auth", R(535, "5.7.8", "Authentication credentials invalid")),),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        "auth-login-refused-at-password",
        S_GREET
        + lines("250-mx.example.net", "250 AUTH LOGIN")
        + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 no\r\n",
        C_EHLO
        + b"AUTH LOGIN\r\n"
        + f"{ab64('relay-user')}\r\n{ab64('s3cret')}\r\n".encode()
        + C_QUIT,
        (failed("AUTH failed", "auth", R(535, "5.7.8", "no")),),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        "auth-not-offered",
        S_GREET + S_EHLO_FULL,
        C_EHLO + C_QUIT,
        (failed("AUTH not offered", "auth"),),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        "auth-no-usable-mechanism",
        S_GREET + lines("250-mx.example.net", "250 AUTH CRAM-MD5 GSSAPI"),
        C_EHLO + C_QUIT,
        (failed("no supported AUTH mechanism", "auth"),),
        kwargs={"in_tls": True, **CREDS},
    ),
    Case(
        # RFC 4954 §4: no password in plaintext, even though AUTH is offered.
        "auth-never-in-plaintext",
        S_GREET + S_EHLO_AFTER_TLS,
        C_EHLO + C_QUIT,
        (failed("AUTH needs TLS", "auth"),),
        kwargs=CREDS,
    ),
    Case(
        "auth-plaintext-after-refused-starttls",
        S_GREET
        + lines("250-mx.example.net", "250-STARTTLS", "250 AUTH PLAIN")
        + b"454 4.7.0 no TLS\r\n",
        C_EHLO + b"STARTTLS\r\n" + C_QUIT,
        (failed("AUTH needs TLS", "auth"),),
        kwargs=CREDS,
    ),
    Case(
        "auth-unexpected-challenge-is-cancelled",
        S_GREET + S_EHLO_AFTER_TLS + b"334 \r\n",
        C_EHLO + f"AUTH PLAIN {PLAIN_IR}\r\n".encode() + b"*\r\n" + C_QUIT,
        (failed("AUTH failed", "auth", R(334, None, "")),),
        kwargs={"in_tls": True, **CREDS},
    ),
]

RCPT_MIXED_REPLIES = S_RCPT_OK + S_450 + S_550
TRANSACTIONS = [
    Case(
        "mixed-recipients-pipelined",
        OPEN_FULL + S_MAIL_OK + RCPT_MIXED_REPLIES + S_354 + S_QUEUED,
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA + C_BODY,
        (READY_FULL, done((BOB, QUEUED), (CAROL, R450), (DAVE, R550))),
        (TX3,),
    ),
    Case(
        "mixed-recipients-lock-step",
        S_GREET + S_EHLO_BASIC + S_MAIL_OK + RCPT_MIXED_REPLIES + S_354 + S_QUEUED,
        C_EHLO + C_MAIL + C_RCPT_3 + C_DATA + C_BODY,
        (READY_BASIC, done((BOB, QUEUED), (CAROL, R450), (DAVE, R550))),
        (TX3,),
    ),
    Case(
        # RFC 2920 §3.1: DATA got 354 although no RCPT succeeded: send an empty message.
        "all-rcpt-refused-pipelined-354",
        OPEN_FULL + S_MAIL_OK + S_550 + S_450 + S_550 + S_354 + b"554 5.5.1 no message\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA + b".\r\n",
        (READY_FULL, done((BOB, R550), (CAROL, R450), (DAVE, R550))),
        (TX3,),
    ),
    Case(
        "all-rcpt-refused-pipelined-554-then-rset",
        OPEN_FULL
        + S_MAIL_OK
        + S_550
        + S_554_NO_RCPT
        + S_RESET
        + S_MAIL_OK
        + S_RCPT_OK
        + S_354
        + S_QUEUED,
        C_EHLO
        + (C_MAIL_SIZE + C_RCPT_BOB + C_DATA)
        + C_RSET
        + C_MAIL_SIZE
        + C_RCPT_BOB
        + C_DATA
        + C_BODY,
        (READY_FULL, done((BOB, R550)), done((BOB, QUEUED))),
        (TX1, TX1),
    ),
    Case(
        "all-rcpt-refused-lock-step-skips-data",
        S_GREET + S_EHLO_BASIC + S_MAIL_OK + S_550 + S_BYE,
        C_EHLO + C_MAIL + C_RCPT_BOB + C_QUIT,
        (READY_BASIC, done((BOB, R550)), CLOSED),
        (TX1, "quit"),
    ),
    Case(
        "mail-refused-pipelined",
        OPEN_FULL
        + b"553 5.7.1 Sender refused\r\n"
        + b"503 5.5.1 Need MAIL\r\n" * 3
        + b"503 5.5.1 Need MAIL\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA,
        (READY_FULL, done(*((a, R(553, "5.7.1", "Sender refused")) for a in (BOB, CAROL, DAVE)))),
        (TX3,),
    ),
    Case(
        "mail-refused-lock-step-sends-no-rcpt",
        S_GREET + S_EHLO_BASIC + b"451 4.3.0 try later\r\n" + S_MAIL_OK + S_RCPT_OK,
        C_EHLO + C_MAIL + C_MAIL + C_RCPT_BOB + C_DATA,  # no RSET: the MAIL was refused
        (READY_BASIC, done((BOB, R(451, "4.3.0", "try later")))),
        (TX1, TX1),
    ),
    Case(
        "data-refused-4xx",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_550 + S_RCPT_OK + b"451 4.3.0 later\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA,
        (
            READY_FULL,
            done((BOB, R(451, "4.3.0", "later")), (CAROL, R550), (DAVE, R(451, "4.3.0", "later"))),
        ),
        (TX3,),
    ),
    Case(
        "data-refused-5xx-lock-step",
        S_GREET + S_EHLO_BASIC + S_MAIL_OK + S_RCPT_OK + b"554 5.3.0 no\r\n",
        C_EHLO + C_MAIL + C_RCPT_BOB + C_DATA,
        (READY_BASIC, done((BOB, R(554, "5.3.0", "no")))),
        (TX1,),
    ),
    Case(
        "end-of-data-4xx",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_450 + S_RCPT_OK + S_354 + b"452 4.3.1 full\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA + C_BODY,
        (
            READY_FULL,
            done((BOB, R(452, "4.3.1", "full")), (CAROL, R450), (DAVE, R(452, "4.3.1", "full"))),
        ),
        (TX3,),
    ),
    Case(
        "end-of-data-5xx",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_354 + b"550 5.7.1 spam\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA + C_BODY,
        (READY_FULL, done((BOB, R(550, "5.7.1", "spam")))),
        (TX1,),
    ),
    Case(
        "reuse-without-rset",
        OPEN_FULL + (S_MAIL_OK + S_RCPT_OK + S_354 + S_QUEUED) * 2 + S_BYE,
        C_EHLO + (C_MAIL_SIZE + C_RCPT_BOB + C_DATA + C_BODY) * 2 + C_QUIT,
        (READY_FULL, done((BOB, QUEUED)), done((BOB, QUEUED)), CLOSED),
        (TX1, TX1, "quit"),
    ),
    Case(
        "reuse-with-rset-after-refused-data-lock-step",
        S_GREET
        + S_EHLO_BASIC
        + S_MAIL_OK
        + S_RCPT_OK
        + b"451 4.3.0 later\r\n"
        + S_RESET
        + S_MAIL_OK
        + S_RCPT_OK
        + S_354
        + S_QUEUED,
        C_EHLO + C_MAIL + C_RCPT_BOB + C_DATA + C_RSET + C_MAIL + C_RCPT_BOB + C_DATA + C_BODY,
        (READY_BASIC, done((BOB, R(451, "4.3.0", "later"))), done((BOB, QUEUED))),
        (TX1, TX1),
    ),
    Case(
        "no-rset-after-an-empty-message",
        OPEN_FULL + S_MAIL_OK + S_550 + S_354 + b"554 5.5.1 nothing\r\n" + S_MAIL_OK,
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA + b".\r\n" + C_MAIL_SIZE + C_RCPT_BOB + C_DATA,
        (READY_FULL, done((BOB, R550))),
        (TX1, TX1),
    ),
]

SMTPUTF8_TX = Transaction("アリス@example.org", (rcpt(BOB),), BODY)
EIGHT_BIT_TX = Transaction(ALICE, (rcpt(BOB),), "Subject: ü\r\n\r\nGrüße\r\n".encode())
BIG_TX = Transaction(ALICE, (rcpt(BOB), rcpt(CAROL)), b"x" * 100 + b"\r\n")
S_EHLO_7BIT_SMALL = lines("250-mx.example.net", "250-PIPELINING", "250 SIZE 100")
R553_UTF8 = R(553, "5.6.7", "The server does not support SMTPUTF8, which the message needs")
R554_8BIT = R(554, "5.6.3", "The server does not support 8BITMIME, which the message needs")
R552_SIZE = R(552, "5.3.4", "Message larger than the server accepts")
PRECHECKS = [
    Case(
        "smtputf8-not-offered-5.6.7",
        S_GREET + S_EHLO_7BIT_SMALL,
        C_EHLO,
        (Ready({"PIPELINING": "", "SIZE": "100"}), done((BOB, R553_UTF8))),
        (SMTPUTF8_TX,),
    ),
    Case(
        "smtputf8-flag-not-offered-5.6.7",
        S_GREET + S_EHLO_7BIT_SMALL,
        C_EHLO,
        (Ready({"PIPELINING": "", "SIZE": "100"}), done((BOB, R553_UTF8))),
        (Transaction(ALICE, (rcpt(BOB),), BODY, smtputf8=True),),
    ),
    Case(
        "eight-bit-not-offered-5.6.3",
        S_GREET + S_EHLO_7BIT_SMALL,
        C_EHLO,
        (Ready({"PIPELINING": "", "SIZE": "100"}), done((BOB, R554_8BIT))),
        (EIGHT_BIT_TX,),
    ),
    Case(
        "too-big-5.3.4",
        S_GREET + S_EHLO_7BIT_SMALL,
        C_EHLO,
        (Ready({"PIPELINING": "", "SIZE": "100"}), done((BOB, R552_SIZE), (CAROL, R552_SIZE))),
        (BIG_TX,),
    ),
    Case(
        "refused-locally-then-next-transaction-and-quit",
        S_GREET + S_EHLO_7BIT_SMALL + S_MAIL_OK + S_RCPT_OK + S_354 + S_QUEUED + S_BYE,
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA + C_BODY + C_QUIT,
        (
            Ready({"PIPELINING": "", "SIZE": "100"}),
            done((BOB, R552_SIZE), (CAROL, R552_SIZE)),
            done((BOB, QUEUED)),
            CLOSED,
        ),
        (BIG_TX, TX1, "quit"),
    ),
    Case(
        "size-zero-means-unlimited",
        S_GREET + lines("250-mx.example.net", "250 SIZE 0") + S_MAIL_OK,
        C_EHLO + b"MAIL FROM:<alice@example.org> SIZE=102\r\n" + C_RCPT_BOB,
        (Ready({"SIZE": "0"}),),
        (BIG_TX,),
    ),
    Case(
        "smtputf8-and-8bitmime-offered",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_354 + S_QUEUED,
        C_EHLO
        + "MAIL FROM:<アリス@example.org> SIZE=22 SMTPUTF8\r\n".encode()
        + C_RCPT_BOB
        + C_DATA
        + C_BODY,
        (READY_FULL, done((BOB, QUEUED))),
        (SMTPUTF8_TX,),
    ),
    Case(
        "eight-bit-body-gets-body-8bitmime",
        OPEN_FULL + S_MAIL_OK,
        C_EHLO
        + b"MAIL FROM:<alice@example.org> SIZE=%d BODY=8BITMIME\r\n" % len(EIGHT_BIT_TX.body)
        + C_RCPT_BOB
        + C_DATA,
        (READY_FULL,),
        (EIGHT_BIT_TX,),
    ),
    Case(
        "declared-7bit",
        OPEN_FULL,
        C_EHLO + b"MAIL FROM:<alice@example.org> SIZE=22 BODY=7BIT\r\n" + C_RCPT_BOB + C_DATA,
        (READY_FULL,),
        (Transaction(ALICE, (rcpt(BOB),), BODY, body_type="7BIT"),),
    ),
]

DSN_TX = Transaction(
    "",
    (
        rcpt(BOB, notify=("SUCCESS", "FAILURE"), orcpt="rfc822;Bob+list=x@example.net"),
        rcpt(CAROL, notify=("NEVER",)),
        rcpt(DAVE, orcpt="utf-8;dävé@example.net"),
    ),
    BODY,
    ret="HDRS",
    envid="id 1+2=3",
)
DSN = [
    Case(
        "dsn-parameters",
        OPEN_FULL,
        C_EHLO
        + b"MAIL FROM:<> SIZE=22 RET=HDRS ENVID=id+201+2B2+3D3\r\n"
        + b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE"
        + b" ORCPT=rfc822;Bob+2Blist+3Dx@example.net\r\n"
        + b"RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n"
        + b"RCPT TO:<dave@example.net> ORCPT=utf-8;d\\x{E4}v\\x{E9}@example.net\r\n"
        + C_DATA,
        (READY_FULL,),
        (DSN_TX,),
    ),
    Case(
        "dsn-parameters-not-offered",
        S_GREET + lines("250-mx.example.net", "250 PIPELINING"),
        C_EHLO + b"MAIL FROM:<>\r\n" + C_RCPT_3 + C_DATA,
        (Ready({"PIPELINING": ""}),),
        (DSN_TX,),
    ),
]

S_RCPT_421 = b"421 4.4.2 mx.example.net closing: timeout\r\n"
R421 = R(421, "4.4.2", "mx.example.net closing: timeout")
ERRORS = [
    Case(
        "421-mid-transaction",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_RCPT_421,
        C_EHLO + C_MAIL_SIZE + C_RCPT_3 + C_DATA,
        (READY_FULL, failed("service not available", "transaction", R421)),
        (TX3,),
    ),
    Case(
        "421-while-idle",
        OPEN_FULL + S_RCPT_421,
        C_EHLO,
        (READY_FULL, failed("service not available", "idle", R421)),
    ),
    Case(
        "421-to-ehlo",
        S_GREET + S_RCPT_421,
        C_EHLO,
        (failed("service not available", "ehlo", R421),),
    ),
    Case(
        "eof-mid-transaction",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK,
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA,
        (READY_FULL, failed("connection closed", "transaction")),
        (TX1,),
        eof=True,
    ),
    Case(
        "eof-after-354-body-is-not-delivered",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + S_354 + b"250 2.0.0 Ok",  # no line end
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA + C_BODY,
        (READY_FULL, failed("connection closed", "transaction")),
        (TX1,),
        eof=True,
    ),
    Case("eof-before-greeting", b"", b"", (failed("connection closed", "greeting"),), eof=True),
    Case("eof-while-idle", OPEN_FULL, C_EHLO, (READY_FULL, CLOSED), eof=True),
    Case(
        "eof-after-quit",
        OPEN_FULL,
        C_EHLO + C_QUIT,
        (READY_FULL, CLOSED),
        ("quit",),
        eof=True,
    ),
    Case(
        "unsolicited-reply-while-idle",
        OPEN_FULL + b"250 2.0.0 surprise\r\n",
        C_EHLO,
        (READY_FULL, failed("protocol error", "idle")),
    ),
    Case(
        "2xx-to-data-is-not-delivery",
        OPEN_FULL + S_MAIL_OK + S_RCPT_OK + b"250 2.0.0 sure\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA,
        (READY_FULL, failed("protocol error", "transaction")),
        (TX1,),
    ),
    Case(
        "3xx-to-rcpt",
        OPEN_FULL + S_MAIL_OK + b"354 what\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA,
        (READY_FULL, failed("protocol error", "transaction")),
        (TX1,),
    ),
]

MALFORMED_REPLIES = [
    ("not-a-reply", b"hello there\r\n"),
    ("code-too-short", b"22 hi\r\n"),
    ("code-out-of-range", b"600 hi\r\n"),
    ("code-1xx", b"120 wait\r\n"),
    ("second-digit", b"270 hi\r\n"),
    ("glued-text", b"220hi\r\n"),
    ("code-changes-in-multiline", b"220-hi\r\n250 there\r\n"),
    ("nul-in-text", b"220 hi\x00there\r\n"),
    ("bare-cr-in-text", b"220 hi\rthere\r\n"),
    ("escape-in-text", b"220 hi\x1b[31m\r\n"),
    ("line-too-long", b"220 " + b"x" * MAX_REPLY_LINE + b"\r\n"),
    ("line-too-long-no-end", b"220-" + b"x" * (MAX_REPLY_LINE + 10)),
    ("too-many-lines", b"220-x\r\n" * MAX_REPLY_LINES + b"220 x\r\n"),
]
for name, data in MALFORMED_REPLIES:
    ERRORS.append(Case(f"malformed-{name}", data, b"", (failed("protocol error", "greeting"),)))
ERRORS.append(
    Case(
        "malformed-mid-transaction",
        OPEN_FULL + S_MAIL_OK + b"2.1.5 ok\r\n",
        C_EHLO + C_MAIL_SIZE + C_RCPT_BOB + C_DATA,
        (READY_FULL, failed("protocol error", "transaction")),
        (TX1,),
    )
)

ALL_CASES = SESSIONS + STARTTLS + AUTH + TRANSACTIONS + PRECHECKS + DSN + ERRORS


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_table(case: Case) -> None:
    run = drive_all_chunkings(case.server, case.actions, eof=case.eof, **case.kwargs)
    assert run.client == case.client
    assert without_detail(run.events) == list(case.events)


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES)


# -- step by step ------------------------------------------------------------------------


def open_session(ehlo: bytes = S_EHLO_FULL, **kwargs: Any) -> ClientConnection:
    """A ClientConnection that has just emitted Ready (its output drained)."""
    conn = ClientConnection(helo_name=HELO, **kwargs)
    conn.receive_data(S_GREET + ehlo)
    assert isinstance(conn.next_event(), Ready)
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == C_EHLO
    return conn


def feed(conn: ClientConnection, data: bytes) -> tuple[bytes, list[Event]]:
    """Feed server bytes; return the client's new bytes and the new events."""
    conn.receive_data(data)
    events: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        assert not isinstance(ev, NeedData)
        events.append(ev)
        if isinstance(ev, SessionFailed | Closed):
            break
    return conn.data_to_send(), events


def test_lock_step_sends_one_command_per_reply() -> None:
    conn = open_session(S_EHLO_BASIC)
    conn.start_transaction(TX3)
    assert conn.data_to_send() == C_MAIL
    assert feed(conn, S_MAIL_OK) == (b"RCPT TO:<bob@example.net>\r\n", [])
    assert feed(conn, S_RCPT_OK) == (b"RCPT TO:<carol@example.net>\r\n", [])
    assert feed(conn, S_550) == (b"RCPT TO:<dave@example.net>\r\n", [])
    assert feed(conn, S_450) == (C_DATA, [])
    assert feed(conn, S_354) == (C_BODY, [])
    assert feed(conn, S_QUEUED) == (b"", [done((BOB, QUEUED), (CAROL, R550), (DAVE, R450))])


def test_pipelining_sends_the_group_then_reads_replies_in_order() -> None:
    conn = open_session()
    conn.start_transaction(TX3)
    # RFC 2920 §3.1: MAIL, every RCPT and DATA (last) in one write.
    assert conn.data_to_send() == C_MAIL_SIZE + C_RCPT_3 + C_DATA
    for reply in (S_MAIL_OK, S_RCPT_OK, S_450, S_RCPT_OK):
        assert feed(conn, reply) == (b"", [])
    assert feed(conn, S_354) == (C_BODY, [])
    assert feed(conn, S_QUEUED) == (b"", [done((BOB, QUEUED), (CAROL, R450), (DAVE, QUEUED))])


def test_pipelined_reset_goes_in_the_same_group() -> None:
    conn = open_session()
    conn.start_transaction(TX1)
    conn.data_to_send()
    feed(conn, S_MAIL_OK + S_RCPT_OK + b"451 4.3.0 later\r\n")
    conn.start_transaction(TX1)
    assert conn.data_to_send() == C_RSET + C_MAIL_SIZE + C_RCPT_BOB + C_DATA


def test_refused_rset_fails_the_session() -> None:
    conn = open_session(S_EHLO_BASIC)
    conn.start_transaction(TX1)
    feed(conn, S_MAIL_OK + S_RCPT_OK + b"451 4.3.0 later\r\n")
    conn.start_transaction(TX1)
    assert conn.data_to_send() == C_RSET
    out, events = feed(conn, b"502 5.5.1 no RSET here\r\n")
    assert (out, without_detail(events)) == (
        C_QUIT,
        [failed("RSET refused", "transaction", R(502, "5.5.1", "no RSET here"))],
    )


def test_timeout_kinds_follow_rfc5321_4_5_3_2() -> None:
    conn = ClientConnection(helo_name=HELO)
    assert conn.timeout_kind() == "greeting"
    conn.receive_data(S_GREET)
    assert conn.next_event() is NEED_DATA
    assert conn.timeout_kind() == "command"  # EHLO
    conn.receive_data(S_EHLO_FULL)
    assert isinstance(conn.next_event(), Ready)
    assert conn.timeout_kind() is None  # idle: the caller's turn
    conn.data_to_send()
    conn.start_transaction(TX1)
    assert conn.timeout_kind() == "command"  # MAIL
    conn.data_to_send()
    feed(conn, S_MAIL_OK + S_RCPT_OK)
    assert conn.timeout_kind() == "data_init"
    conn.receive_data(S_354)
    assert conn.next_event() is NEED_DATA  # the body is queued, not taken yet
    assert conn.timeout_kind() == "data_block"
    assert conn.data_to_send(5) == C_BODY[:5]
    assert conn.timeout_kind() == "data_block"
    assert conn.data_to_send(1000) == C_BODY[5:]
    assert conn.timeout_kind() == "data_end"
    feed(conn, S_QUEUED)
    assert conn.timeout_kind() is None
    conn.quit()
    assert conn.timeout_kind() == "command"
    feed(conn, S_BYE)
    assert conn.timeout_kind() is None


def test_tls_handshake_resets_extensions() -> None:
    conn = ClientConnection(helo_name=HELO)
    conn.receive_data(S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n")
    assert conn.next_event() == StartTls()
    assert conn.extensions == {"PIPELINING": "", "STARTTLS": ""}
    assert conn.timeout_kind() is None and not conn.in_tls
    assert conn.next_event() is NEED_DATA
    conn.tls_established()
    assert conn.in_tls and conn.extensions == {}  # RFC 3207 §4.2
    assert conn.data_to_send() == C_EHLO + b"STARTTLS\r\n" + C_EHLO
    assert feed(conn, S_EHLO_FULL) == (b"", [READY_FULL])
    assert conn.extensions == EXT_FULL


def test_bytes_buffered_behind_220_starttls_fail_the_handshake() -> None:
    # CVE-2011-0411: the glue may call tls_established() without polling in between.
    conn = ClientConnection(helo_name=HELO)
    conn.receive_data(S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n250 injected\r\n")
    assert conn.next_event() == StartTls()
    conn.data_to_send()
    conn.tls_established()
    assert conn.data_to_send() == b""  # no EHLO into the TLS session
    ev = conn.next_event()
    assert isinstance(ev, SessionFailed) and (ev.reason, ev.stage) == ("protocol error", "starttls")
    assert conn.next_event() == CLOSED


def test_eof_during_the_tls_handshake() -> None:
    conn = ClientConnection(helo_name=HELO)
    conn.receive_data(S_GREET + S_EHLO_TLS + b"220 2.0.0 go\r\n")
    assert conn.next_event() == StartTls()
    conn.receive_eof()
    ev = conn.next_event()
    assert isinstance(ev, SessionFailed)
    assert (ev.reply, ev.reason, ev.stage) == (None, "connection closed", "starttls")


def test_after_the_end_every_call_returns_closed() -> None:
    conn = open_session()
    conn.receive_data(b"garbage\r\n")
    assert isinstance(conn.next_event(), SessionFailed)
    for _ in range(3):
        assert conn.next_event() == CLOSED
    conn.receive_data(S_RCPT_OK)
    conn.receive_eof()
    assert conn.next_event() == CLOSED
    assert conn.closed and conn.timeout_kind() is None
    conn.quit()  # a no-op once closed
    conn.tls_established()  # likewise
    assert conn.data_to_send() == b""


def test_quit_reply_other_than_221_still_closes() -> None:
    conn = open_session()
    conn.quit()
    assert feed(conn, b"500 5.5.1 what\r\n") == (C_QUIT, [CLOSED])


BAD_ADDRESSES = [
    "bob@example.net\r\nRSET",
    "bob@example.net\nDATA",
    "bob@example.net\r",
    "bob\x00@example.net",
    "bob@exa\tmple.net",
    "bob@example.net\x7f",
    "bob@example.net> NOTIFY=NEVER",
    "bob@example.net>\r\nRCPT TO:<eve@example.net",
    "<bob@example.net>",
    "bob example@net",
    "bob",
    "@relay.example:bob@example.net",
    "bob@[300.1.2.3]",
    "bob@-example.net",
    "b" * 65 + "@example.net",
    "bob@\udcff.example",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
@pytest.mark.parametrize("role", ["sender", "recipient"])
def test_bad_addresses_never_reach_the_wire(address: str, role: str) -> None:
    conn = open_session()
    if role == "sender":
        tx = Transaction(address, (rcpt(BOB),), BODY)
    else:
        tx = Transaction(ALICE, (rcpt(BOB), rcpt(address)), BODY)
    with pytest.raises(ValueError):
        conn.start_transaction(tx)
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA
    conn.start_transaction(TX1)  # the session is still idle and usable
    assert conn.data_to_send() == C_MAIL_SIZE + C_RCPT_BOB + C_DATA


@pytest.mark.parametrize(
    "tx",
    [
        Transaction(ALICE, (), BODY),
        Transaction(ALICE, (rcpt(BOB, notify=("SOMETIMES",)),), BODY),
        Transaction(ALICE, (rcpt(BOB, notify=()),), BODY),
        Transaction(ALICE, (rcpt(BOB, notify=("NEVER", "DELAY")),), BODY),
        Transaction(ALICE, (rcpt(BOB, notify=("SUCCESS\r\nRSET",)),), BODY),
        Transaction(ALICE, (rcpt(BOB, orcpt="bob@example.net"),), BODY),
        Transaction(ALICE, (rcpt(BOB, orcpt="rfc 822;bob@example.net"),), BODY),
        Transaction(ALICE, (rcpt(BOB),), BODY, body_type="BINARYMIME"),
        Transaction(ALICE, (rcpt(BOB),), BODY, ret="ALL\r\nRSET"),
    ],
)
def test_bad_parameters_are_refused(tx: Transaction) -> None:
    conn = open_session()
    with pytest.raises(ValueError):
        conn.start_transaction(tx)
    assert conn.data_to_send() == b""


def test_parameters_cannot_inject_commands() -> None:
    # ENVID and ORCPT are xtext-encoded (RFC 3461 §4): CR, LF and space never go out raw.
    tx = Transaction(
        "",
        (rcpt(BOB, orcpt="rfc822;bob@example.net\r\nRSET"),),
        BODY,
        envid="x\r\nDATA",
    )
    conn = open_session()
    conn.start_transaction(tx)
    assert conn.data_to_send() == (
        b"MAIL FROM:<> SIZE=22 ENVID=x+0D+0ADATA\r\n"
        b"RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net+0D+0ARSET\r\n"
        b"DATA\r\n"
    )


def test_over_long_envid_and_orcpt_are_left_out() -> None:
    tx = Transaction(ALICE, (rcpt(BOB, orcpt="rfc822;" + "+" * 200),), BODY, envid="=" * 40)
    conn = open_session()
    conn.start_transaction(tx)
    assert conn.data_to_send() == C_MAIL_SIZE + C_RCPT_BOB + C_DATA


def test_misuse_raises() -> None:
    conn = ClientConnection(helo_name=HELO)
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(TX1)  # before Ready
    with pytest.raises(LocalProtocolError):
        conn.quit()
    with pytest.raises(LocalProtocolError):
        conn.tls_established()  # no STARTTLS pending
    conn = open_session()
    conn.start_transaction(TX1)
    with pytest.raises(LocalProtocolError):
        conn.start_transaction(TX1)  # one at a time
    with pytest.raises(LocalProtocolError):
        conn.quit()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"helo_name": "two words"},
        {"helo_name": "client.example\r\nMAIL FROM:<x@y>"},
        {"helo_name": ""},
        {"helo_name": HELO, "tls": "sometimes"},
        {"helo_name": HELO, "credentials": ("user\0", "pw")},
    ],
)
def test_constructor_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ClientConnection(**kwargs)


def test_size_is_the_message_size_not_the_wire_size() -> None:
    # RFC 1870 §5: CRLFs counted, dot-stuffing and the terminator not.
    body = b".\n..\nend"
    conn = open_session()
    conn.start_transaction(Transaction(ALICE, (rcpt(BOB),), body))
    message = b".\r\n..\r\nend\r\n"
    assert conn.data_to_send() == b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(message) + (
        C_RCPT_BOB + C_DATA
    )
    assert feed(conn, S_MAIL_OK + S_RCPT_OK + S_354)[0] == b"..\r\n...\r\nend\r\n.\r\n"


# -- replies, EHLO keywords, encodings --------------------------------------------------


def read_reply(data: bytes) -> ServerReply:
    buf = bytearray(data)
    reply = ReplyReader().read(buf)
    assert reply is not None and not buf
    return reply


def test_server_reply_parts() -> None:
    reply = read_reply(b"550-5.1.1 No such\r\n550-5.1.1\r\n550 5.1.1 user\r\n")
    assert reply == R(550, "5.1.1", "No such", "", "user")
    assert str(reply) == "550 5.1.1 No such user"
    assert reply.text == "No such user"
    assert reply.is_permanent and not reply.is_transient and not reply.is_positive
    assert read_reply(b"250\r\n") == R(250, None, "")
    assert str(read_reply(b"250\r\n")) == "250"
    assert str(read_reply(b"250 2.0.0\r\n")) == "250 2.0.0"
    assert read_reply(b"451 4.3.0 later\r\n").is_transient
    assert read_reply(b"354 go\r\n").is_positive


@pytest.mark.parametrize(
    ("data", "enhanced", "lines_"),
    [
        # RFC 3463 §2: the class must match the reply; otherwise it is plain text.
        (b"250 5.1.1 odd\r\n", None, ("5.1.1 odd",)),
        (b"250 2.1.5x ok\r\n", None, ("2.1.5x ok",)),
        (b"250 2.1.5555 ok\r\n", None, ("2.1.5555 ok",)),
        (b"550-5.7.1 a\r\n550 b\r\n", "5.7.1", ("a", "b")),
        (b"421 4.4.2 Timeout\r\n", "4.4.2", ("Timeout",)),
        (b"250 2.0.0 caf\xc3\xa9 \xff\r\n", "2.0.0", ("café \ufffd",)),
    ],
)
def test_enhanced_status_codes(data: bytes, enhanced: str | None, lines_: tuple[str, ...]) -> None:
    reply = read_reply(data)
    assert (reply.enhanced, reply.lines) == (enhanced, lines_)


@pytest.mark.parametrize(
    ("code", "lines_"), [(199, ("x",)), (600, ("x",)), (250, ("a\r\nb",)), (250, ())]
)
def test_server_reply_validates(code: int, lines_: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        ServerReply(code, None, lines_)


def test_ehlo_keywords_are_case_insensitive() -> None:
    reply = read_reply(
        b"250-mx.example.net greets you\r\n250-pipelining\r\n250-Size  1000\r\n"
        b"250-AUTH=LOGIN PLAIN\r\n250-auth login plain\r\n250- \r\n250 8bitmime\r\n"
    )
    assert parse_ehlo(reply) == {
        "PIPELINING": "",
        "SIZE": "1000",
        "AUTH": "login plain",
        "8BITMIME": "",
    }


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\n.b\r..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        # SMTP smuggling (CVE-2023-51764) shapes: never a terminator inside the message.
        (b"x\n.\nMAIL FROM:<e@v.il>\n", b"x\r\n..\r\nMAIL FROM:<e@v.il>\r\n.\r\n"),
        (b"x\r\n.\rRSET\r\n", b"x\r\n..\r\nRSET\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
    ],
)
def test_encode_body(body: bytes, wire: bytes) -> None:
    assert encode_body(body) == wire


@pytest.mark.parametrize(
    ("orcpt", "smtputf8", "wire"),
    [
        ("rfc822;bob@example.net", False, "rfc822;bob@example.net"),
        ("rfc822;a+b=c@example.net", False, "rfc822;a+2Bb+3Dc@example.net"),
        ("rfc822;dävé@example.net", False, "utf-8;d\\x{E4}v\\x{E9}@example.net"),
        ("rfc822;dävé@example.net", True, "utf-8;dävé@example.net"),
        ("utf-8;d\\x{E4}ve+x@example.net", True, "utf-8;däve\\x{2B}x@example.net"),
        ("utf-8;bob@example.net", False, "utf-8;bob@example.net"),
        ("x400;c=de; a=x", False, "x400;c+3Dde;+20a+3Dx"),
    ],
)
def test_encode_orcpt(orcpt: str, smtputf8: bool, wire: str) -> None:
    assert encode_orcpt(orcpt, smtputf8=smtputf8) == wire


def test_normalize_body() -> None:
    assert normalize_body(b"a\rb\nc\r\n") == b"a\r\nb\r\nc\r\n"
    assert normalize_body(b"") == b""


# -- over a real socket, against postbote's own server ------------------------------------


class _Backend:
    """Accepts every sender and recipient but nobody@; AUTH for relay-user:s3cret."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, list[str], bytes, bool, str | None]] = []
        self.mechanism = ""
        self.login: list[str] = []

    def check_mail(self, info: SessionInfo, event: MailFrom) -> Reply | None:
        return None

    def check_rcpt(self, info: SessionInfo, event: RcptTo) -> Reply | None:
        return C550_MAILBOX_UNAVAILABLE if event.recipient.local == "nobody" else None

    async def auth(self, info: SessionInfo, event: AuthRequested | AuthResponse) -> Outcome:
        if isinstance(event, AuthRequested):
            self.mechanism = event.mechanism
            if event.mechanism == "LOGIN":
                return Outcome(challenge=b"Username:")
            if event.initial_response is None:
                return Outcome(challenge=b"")
            response = event.initial_response
        elif self.mechanism == "LOGIN":
            self.login.append(event.data.decode())
            if len(self.login) == 1:
                return Outcome(challenge=b"Password:")
            response = ("\0" + "\0".join(self.login)).encode()
        else:
            response = event.data
        if response == b"\0relay-user\0s3cret":  # RFC 4616 §2
            return Outcome(identity="relay-user")
        return Outcome(reply=Reply.make(535, "5.7.8", "Authentication credentials invalid"))

    async def deliver(self, info: SessionInfo, conn: ServerConnection, body: bytes) -> Reply:
        sender = None if conn.sender is None else str(conn.sender)
        rcpts = [str(a) for a, _ in conn.recipients]
        self.messages.append((sender, rcpts, body, info.tls, info.authenticated))
        return Reply.make(250, "2.0.0", f"Ok: queued as Q{len(self.messages)}")


async def _loopback_session(
    actions: list[Transaction], *, mechanisms: tuple[str, ...], implicit_tls: bool, **kwargs: Any
) -> tuple[list[Event], _Backend]:
    """Run one ClientConnection over a real socket against postbote's SmtpServer on
    127.0.0.1:0 (implicit TLS with a trustme certificate, or plaintext); start the
    transactions in turn, then QUIT."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    settings = ServerSettings(
        hostname="mx.example.test", in_tls=implicit_tls, auth_mechanisms=mechanisms
    )
    backend = _Backend()
    server = SmtpServer(
        "smtp",
        settings,
        backend,
        ssl_context=server_ctx,
        implicit_tls=implicit_tls,
        max_connections=10,
        max_connections_per_ip=10,
        body_memory=BodyMemory(2**20),
    )
    tls = server_ctx if implicit_tls else None
    listener = await asyncio.get_running_loop().create_server(
        server.protocol_factory, "127.0.0.1", 0, ssl=tls
    )
    port = listener.sockets[0].getsockname()[1]
    conn = ClientConnection(helo_name=HELO, in_tls=implicit_tls, **kwargs)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=client_ctx if implicit_tls else None,
        server_hostname="mx.example.test" if implicit_tls else None,
    )
    events: list[Event] = []
    todo = list(actions)
    try:
        while True:
            # The order of the remote.py glue: write, poll, read.
            out = conn.data_to_send()
            if out:
                writer.write(out)
                await writer.drain()
            ev = conn.next_event()
            if ev is NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 10)
                conn.receive_data(data) if data else conn.receive_eof()
                continue
            assert not isinstance(ev, NeedData)
            events.append(ev)
            if isinstance(ev, Ready | TransactionDone):
                conn.start_transaction(todo.pop(0)) if todo else conn.quit()
            else:
                break
    finally:
        writer.close()
        await writer.wait_closed()
        listener.close()
        await listener.wait_closed()
    return events, backend


LOOPBACK_BODY = b"Subject: loop\n\n.leading dot\r\n..two\rGr\xc3\xbc\xc3\x9fe\n."
NOBODY = "nobody@example.net"


@pytest.mark.parametrize(
    ("mechanisms", "implicit_tls"),
    [(("PLAIN", "LOGIN"), True), (("LOGIN",), True), ((), False)],
    ids=["implicit-tls-auth-plain", "implicit-tls-auth-login", "plaintext"],
)
def test_loopback_against_postbote_server(mechanisms: tuple[str, ...], implicit_tls: bool) -> None:
    tx1 = Transaction(
        ALICE,
        (rcpt(BOB), rcpt(NOBODY), rcpt(CAROL, notify=("NEVER",))),
        LOOPBACK_BODY,
        ret="FULL",
        envid="e1",
    )
    tx2 = Transaction("", (rcpt(NOBODY),), b"second\n")
    tx3 = Transaction("", (rcpt("dävé@example.net"),), b"third\n")
    credentials = ("relay-user", "s3cret") if mechanisms else None
    events, backend = asyncio.run(
        asyncio.wait_for(
            _loopback_session(
                [tx1, tx2, tx3],
                mechanisms=mechanisms,
                implicit_tls=implicit_tls,
                credentials=credentials,
            ),
            30,
        )
    )
    assert isinstance(events[0], Ready) and "DSN" in events[0].extensions
    results = [e.result.outcomes for e in events[1:4] if isinstance(e, TransactionDone)]
    assert len(results) == 3
    first, second, third = results
    assert [(o.address, o.reply.code) for o in first] == [(BOB, 250), (NOBODY, 550), (CAROL, 250)]
    assert [o.reply for o in second] == [R(550, "5.1.1", "No such user here")]
    assert str(third[0].reply) == "250 2.0.0 Ok: queued as Q2"
    assert events[4:] == [CLOSED]
    identity = "relay-user" if mechanisms else None
    assert backend.messages == [
        (ALICE, [BOB, CAROL], normalize_body(LOOPBACK_BODY), implicit_tls, identity),
        (None, ["dävé@example.net"], b"third\r\n", implicit_tls, identity),
    ]


# -- over a real socket, against Postfix's smtp-sink --------------------------------------


async def _drive_socket(
    conn: ClientConnection, port: int, actions: list[Transaction]
) -> list[Event]:
    """Connect to 127.0.0.1:port (retrying while the peer starts), run the transactions,
    then QUIT."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            break
        except ConnectionRefusedError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.02)  # the peer is still starting: no event to await
    events: list[Event] = []
    todo = list(actions)
    try:
        while True:
            ev = conn.next_event()
            out = conn.data_to_send()  # the order of an h11-style glue: poll, write, read
            if out:
                writer.write(out)
                await writer.drain()
            if ev is NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), 10)
                conn.receive_data(data) if data else conn.receive_eof()
                continue
            assert not isinstance(ev, NeedData)
            events.append(ev)
            if isinstance(ev, Ready | TransactionDone):
                conn.start_transaction(todo.pop(0)) if todo else conn.quit()
            else:
                break
    finally:
        writer.close()
        await writer.wait_closed()
    return events


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_loopback_against_postfix_smtp_sink() -> None:
    sink = require_tool("smtp-sink", "/usr/sbin/smtp-sink")
    as_root = os.geteuid() == 0
    # smtp-sink drops to -u nobody as root: the dump directory must be reachable by it,
    # which pytest's private tmp_path is not.
    with tempfile.TemporaryDirectory(prefix="postbote-sink-") as tmp:
        dump = Path(tmp)
        dump.chmod(0o777 if as_root else 0o700)
        _smtp_sink_session(sink, dump, ["-u", "nobody"] if as_root else [])


def _smtp_sink_session(sink: str, dump: Path, user: list[str]) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sink, *user, "-d", f"{dump}/m.", f"127.0.0.1:{port}", "10"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    body1 = b"Subject: one\n\n.dot line\r\nGr\xc3\xbc\xc3\x9fe\rlast"
    tx1 = Transaction(
        ALICE,
        (rcpt(BOB, notify=("FAILURE",), orcpt="rfc822;bob@example.net"), rcpt(CAROL)),
        body1,
        ret="HDRS",
        envid="env-1",
    )
    tx2 = Transaction("", (rcpt(DAVE),), b"Subject: two\r\n\r\n..\r\nend")
    try:
        events = asyncio.run(_drive_socket(ClientConnection(helo_name=HELO), port, [tx1, tx2]))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert b"fatal" not in err, err
    ok = R(250, "2.0.0", "Ok")
    assert isinstance(events[0], Ready)
    assert {"PIPELINING", "8BITMIME", "DSN"} <= set(events[0].extensions)
    assert events[1:] == [done((BOB, ok), (CAROL, ok)), done((DAVE, ok)), CLOSED]
    dumps = sorted((p.read_bytes() for p in dump.iterdir()), key=lambda d: b"RET=HDRS" not in d)
    assert len(dumps) == 2
    for data, tx, args in zip(
        dumps,
        (tx1, tx2),
        (
            [
                b"X-Mail-Args: <alice@example.org> BODY=8BITMIME RET=HDRS ENVID=env-1",
                b"X-Rcpt-Args: <bob@example.net> NOTIFY=FAILURE ORCPT=rfc822;bob@example.net",
                b"X-Rcpt-Args: <carol@example.net>",
            ],
            [b"X-Mail-Args: <>", b"X-Rcpt-Args: <dave@example.net>"],
        ),
        strict=True,
    ):
        head, _, rest = data.partition(b"\nReceived: ")
        assert head.split(b"\n")[3:] == args
        # The Received: header's continuation lines start with a tab; then the message,
        # which smtp-sink writes un-stuffed with LF line ends.
        message = rest.split(b"\n", 1)[1]
        while message.startswith(b"\t"):
            message = message.split(b"\n", 1)[1]
        assert message.rstrip(b"\n") == normalize_body(tx.body).replace(b"\r\n", b"\n").rstrip(
            b"\n"
        )
