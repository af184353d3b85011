"""Tests of the sans-IO SMTP server core (postbote.smtp.protocol), bytes in, bytes out.

The tables (h11 test_io style) give client bytes and the exact replies and events;
every table stream is re-fed in every chunking by ``run_all_chunkings``. Tests that
need the glue's hands (timers, shutdown, decisions answered late) drive a ``Session``.
"""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from postbote.errors import LocalProtocolError
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
    StartTlsRequested,
    TransactionReset,
)
from postbote.smtp.grammar import Address, MailParams, RcptParams
from postbote.smtp.protocol import Mode, Phase, ServerConnection, ServerSettings
from postbote.smtp.replies import Reply
from tests.smtp.helpers import (
    ACCEPT_ALL,
    HOST,
    Policy,
    Result,
    Session,
    b64,
    drive,
    reply_code,
    run_all_chunkings,
    settings,
    split_replies,
)

# -- vocabulary ---------------------------------------------------------------------

GREETING = b"220 mx.example.net ESMTP postbote\r\n"
EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<alice@example.org>\r\n"
RCPT = b"RCPT TO:<bob@example.net>\r\n"
TXN = EHLO + MAIL + RCPT

R_HELO = b"250 mx.example.net\r\n"
R_MAIL = b"250 2.1.0 Sender OK\r\n"
R_RCPT = b"250 2.1.5 Recipient OK\r\n"
R_354 = b"354 End data with <CR><LF>.<CR><LF>\r\n"
R_OK = b"250 2.0.0 OK\r\n"
R_RSET = b"250 2.0.0 Reset OK\r\n"
R_QUIT = b"221 2.0.0 Bye\r\n"
R_CHUNK = b"250 2.0.0 chunk received\r\n"
R_500_UNKNOWN = b"500 5.5.1 Command unrecognized\r\n"
R_500_TOO_LONG = b"500 5.5.2 Line too long\r\n"
R_500_BARE = b"500 5.5.2 Bare CR or LF in command not allowed\r\n"
R_503 = b"503 5.5.1 Bad sequence of commands\r\n"
R_503_HELLO = b"503 5.5.1 Send HELO/EHLO first\r\n"
R_503_NESTED = b"503 5.5.1 Sender already specified\r\n"
R_503_NEED_MAIL = b"503 5.5.1 Need MAIL command\r\n"
R_503_AFTER_BDAT = b"503 5.5.1 DATA not allowed after BDAT\r\n"
R_503_AUTH_TXN = b"503 5.5.1 AUTH not permitted during a transaction\r\n"
R_554_NO_RCPT = b"554 5.5.1 No valid recipients\r\n"
R_552_TOO_BIG = b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
R_552_LINE = b"552 5.3.4 Message text line too long\r\n"
R_552_DECLARED = b"552 5.3.4 Declared message size exceeds fixed maximum\r\n"
R_550_BARE = b"550 5.6.11 Bare CR or LF in message not allowed\r\n"
R_421_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
R_421_SHUTDOWN = b"421 4.3.2 Service shutting down, closing connection\r\n"
R_421_TIMEOUT = b"421 4.4.2 Timeout, closing connection\r\n"
R_452_RCPTS = b"452 4.5.3 Too many recipients\r\n"
R_235 = b"235 2.7.0 Authentication successful\r\n"
R_334_EMPTY = b"334 \r\n"


def queued(n: int) -> bytes:
    return b"250 2.0.0 Ok: queued as Q%d\r\n" % n


ALICE = Address("alice", "example.org")
BOB = Address("bob", "example.net")
E_EHLO = Hello("EHLO", "client.example")
E_MAIL = MailFrom(ALICE, MailParams())
E_RCPT = RcptTo(BOB, RcptParams())
E_RSET = TransactionReset()
CLOSED = ConnectionClosed("")  # compared without its (log-only) reason

KEYWORDS = ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8"]
KEYWORDS += ["ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]

AUTH_TLS = settings(auth_mechanisms=("PLAIN", "LOGIN"), in_tls=True)
PLAIN_OK = b64(b"\0alice\0s3cret")
PLAIN_BAD = b64(b"\0alice\0wrong")


def without_reasons(events: list[Event]) -> list[Event]:
    return [CLOSED if isinstance(e, ConnectionClosed) else e for e in events]


def ehlo_keywords(reply: bytes) -> list[str]:
    lines = reply.decode().splitlines()
    assert lines[0] == f"250-{HOST}" or lines == [f"250 {HOST}"]
    return [line[4:] for line in lines[1:]]


# -- the byte-level table -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Client bytes -> replies after the greeting (bytes: exact; str: "code x.y.z")
    and, if given, the exact event list."""

    id: str
    client: bytes
    replies: tuple[bytes | str, ...]
    events: tuple[Event, ...] | None = None
    config: ServerSettings = field(default_factory=settings)
    policy: Policy = ACCEPT_ALL


def check_case(case: Case) -> Result:
    r = run_all_chunkings(case.client, case.policy, case.config)
    got = r.reply_list
    assert got[0] == GREETING
    assert len(got) - 1 == len(case.replies), got
    for actual, expected in zip(got[1:], case.replies, strict=True):
        if isinstance(expected, bytes):
            assert actual == expected
        else:
            assert reply_code(actual) == expected, actual
    if case.events is not None:
        assert without_reasons(r.events) == list(case.events)
    return r


BASIC = [
    Case("helo", b"HELO client.example\r\n", (R_HELO,), (Hello("HELO", "client.example"),)),
    Case("ehlo-lowercase-verb", b"ehlo client.example\r\n", ("250",), (E_EHLO,)),
    # RFC 2034 §3: no enhanced status code in replies to HELO/EHLO, errors included.
    Case("ehlo-without-name", b"EHLO\r\n", (b"501 Syntax: EHLO hostname\r\n",), ()),
    Case(
        "happy-path",
        TXN + b"DATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1), R_QUIT),
        (
            E_EHLO,
            E_MAIL,
            E_RCPT,
            MessageComplete(b"Subject: hi\r\n\r\nhello\r\n"),
            CLOSED,
        ),
    ),
    Case(
        "dot-unstuffing",
        TXN + b"DATA\r\n..x\r\n..\r\n...\r\n.y\r\na.b\r\n .\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b".x\r\n.\r\n..\r\ny\r\na.b\r\n .\r\n")),
    ),
    Case(
        "empty-message",
        TXN + b"DATA\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"")),
    ),
    Case(
        "two-messages-one-session",
        TXN + b"DATA\r\none\r\n.\r\n" + MAIL + RCPT + b"DATA\r\ntwo\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1), R_MAIL, R_RCPT, R_354, queued(2)),
        (
            E_EHLO,
            E_MAIL,
            E_RCPT,
            MessageComplete(b"one\r\n"),
            E_MAIL,
            E_RCPT,
            MessageComplete(b"two\r\n"),
        ),
    ),
    Case(
        "data-right-after-354-in-one-packet",
        TXN + b"DATA\r\n.\r\nNOOP\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1), R_OK),
    ),
    Case(
        "rset-mid-transaction",
        TXN + b"RSET\r\nRCPT TO:<bob@example.net>\r\n" + MAIL,
        ("250", R_MAIL, R_RCPT, R_RSET, R_503_NEED_MAIL, R_MAIL),
        (E_EHLO, E_MAIL, E_RCPT, E_RSET, E_MAIL),
    ),
    Case("rset-before-helo", b"RSET\r\nMAIL FROM:<a@b.c>\r\n", (R_RSET, R_503_HELLO), (E_RSET,)),
    Case("rset-with-argument", EHLO + b"RSET x\r\n", ("250", "501 5.5.4")),
    Case("noop", b"NOOP\r\nNOOP whatever it says\r\n", (R_OK, R_OK), ()),
    Case(
        "vrfy",
        b"VRFY bob\r\n",
        (b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",),
    ),
    Case("vrfy-without-argument", b"VRFY\r\n", ("501 5.5.4",)),
    Case("expn", b"EXPN staff\r\n", (b"502 5.5.1 EXPN not available\r\n",)),
    Case("help", b"HELP\r\nHELP MAIL\r\n", ("214 2.0.0", "214 2.0.0")),
    Case("quit", EHLO + b"QUIT\r\n", ("250", R_QUIT), (E_EHLO, CLOSED)),
    Case("nothing-after-quit", b"QUIT\r\nNOOP\r\nEHLO x\r\n", (R_QUIT,), (CLOSED,)),
    Case("quit-with-argument", b"QUIT now\r\n", ("501 5.5.4",), ()),
    Case("unknown-command", b"FROB x\r\n", (R_500_UNKNOWN,)),
    Case("empty-line", b"\r\n", (R_500_UNKNOWN,)),
    Case("verb-glued-to-tab", b"NOOP\tx\r\n", (R_500_UNKNOWN,)),
    Case(
        "case-insensitive-verbs",
        b"eHlO client.example\r\nmail FROM:<alice@example.org>\r\n"
        b"rcpt TO:<bob@example.net>\r\ndata\r\nx\r\n.\r\nnoop\r\nQuIt\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1), R_OK, R_QUIT),
    ),
    Case(
        "helo-mid-transaction-resets",
        EHLO + MAIL + EHLO + RCPT,
        ("250", R_MAIL, "250", R_503_NEED_MAIL),
    ),
    Case(
        "helo-then-esmtp-params-refused",
        b"HELO client.example\r\nMAIL FROM:<alice@example.org> SIZE=10\r\n",
        (R_HELO, "555 5.5.4"),
    ),
    Case(
        "size-declared-over-limit",
        EHLO + b"MAIL FROM:<alice@example.org> SIZE=26214401\r\n",
        ("250", R_552_DECLARED),
        (E_EHLO,),
    ),
    Case(
        "size-declared-at-limit",
        EHLO + b"MAIL FROM:<alice@example.org> SIZE=26214400\r\n",
        ("250", R_MAIL),
        (E_EHLO, MailFrom(ALICE, MailParams(size=26214400))),
    ),
    Case(
        "8bitmime",
        EHLO + b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n",
        ("250", R_MAIL),
        (E_EHLO, MailFrom(ALICE, MailParams(body="8BITMIME"))),
    ),
    Case(
        "null-reverse-path",
        EHLO + b"MAIL FROM:<>\r\n" + RCPT + b"DATA\r\nbounce\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
        (E_EHLO, MailFrom(None, MailParams()), E_RCPT, MessageComplete(b"bounce\r\n")),
    ),
    Case(
        "dsn-parameters-pass-through",
        EHLO
        + b"MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159\r\n"
        + b"RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n"
        + b"RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n",
        ("250", R_MAIL, R_RCPT, R_RCPT),
        (
            E_EHLO,
            MailFrom(ALICE, MailParams(ret="HDRS", envid="QQ314159")),
            RcptTo(BOB, RcptParams(("SUCCESS", "FAILURE"), "rfc822;bob@example.net")),
            RcptTo(Address("carol", "example.net"), RcptParams(("NEVER",))),
        ),
    ),
    Case(
        "smtputf8-addresses",
        EHLO
        + "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()
        + "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>\r\n".encode(),
        ("250", R_MAIL, R_RCPT),
        (
            E_EHLO,
            MailFrom(Address("jörg", "bücher.example"), MailParams(smtputf8=True)),
            RcptTo(Address("δοκιμή", "παράδειγμα.δοκιμή"), RcptParams()),
        ),
    ),
    Case(
        "utf8-sender-without-smtputf8",
        EHLO + "MAIL FROM:<jörg@bücher.example>\r\n".encode(),
        ("250", "553 5.6.7"),
        (E_EHLO,),
    ),
    Case(
        "utf8-recipient-without-smtputf8",
        EHLO + MAIL + "RCPT TO:<δοκιμή@example.net>\r\n".encode(),
        ("250", R_MAIL, "553 5.6.7"),
        (E_EHLO, E_MAIL),
    ),
    Case("non-utf8-argument", b"NOOP\r\nVRFY \xff\xfe\r\n", (R_OK, "500 5.5.2")),
    Case(
        "rejected-recipient-then-data",
        EHLO + MAIL + b"RCPT TO:<nobody@example.net>\r\nDATA\r\n",
        ("250", R_MAIL, b"550 5.1.1 No such user here\r\n", R_554_NO_RCPT),
        policy=Policy(reject_rcpts=frozenset({"nobody@example.net"})),
    ),
    Case(
        "one-rejected-one-accepted-recipient",
        EHLO + MAIL + b"RCPT TO:<nobody@example.net>\r\n" + RCPT + b"DATA\r\nx\r\n.\r\n",
        ("250", R_MAIL, "550 5.1.1", R_RCPT, R_354, queued(1)),
        policy=Policy(reject_rcpts=frozenset({"nobody@example.net"})),
    ),
    Case(
        "rejected-sender-leaves-no-transaction",
        EHLO + MAIL + RCPT,
        ("250", "550 5.7.1", R_503_NEED_MAIL),
        policy=Policy(reject_senders=frozenset({"alice@example.org"})),
    ),
    Case(
        "rejected-hello-stays-greeted",
        EHLO + MAIL,
        ("554 5.7.1", R_503_HELLO),
        policy=Policy(reject_hello=Reply.make(554, "5.7.1", "Go away")),
    ),
    Case(
        "rejected-message-ends-transaction",
        TXN + b"DATA\r\nspam\r\n.\r\n" + RCPT,
        ("250", R_MAIL, R_RCPT, R_354, "554 5.7.1", R_503_NEED_MAIL),
        policy=Policy(reject_message=Reply.make(554, "5.7.1", "Spam")),
    ),
    Case(
        "data-with-argument",
        TXN + b"DATA now\r\n",
        ("250", R_MAIL, R_RCPT, "501 5.5.4"),
    ),
]

LIMITS = [
    Case(
        "too-many-errors",
        b"FROB\r\nFROB\r\nFROB\r\nNOOP\r\n",
        (R_500_UNKNOWN, R_500_UNKNOWN, R_500_UNKNOWN, R_421_ERRORS),
        (CLOSED,),
        config=settings(max_errors=3),
    ),
    Case(
        "command-line-at-limit",
        b"NOOP " + b"x" * (2048 - 7) + b"\r\n",
        (R_OK,),
    ),
    Case(
        "command-line-too-long-then-session-works",
        b"NOOP " + b"x" * (2048 - 6) + b"\r\n" + EHLO + b"NOOP " + b"y" * 5000 + b"\r\nNOOP\r\n",
        (R_500_TOO_LONG, "250", R_500_TOO_LONG, R_OK),
    ),
    Case(
        "data-line-at-limit",
        TXN + b"DATA\r\n" + b"x" * 998 + b"\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
    ),
    Case(
        "data-line-too-long-answered-at-end",
        TXN + b"DATA\r\n" + b"x" * 999 + b"\r\nmore\r\n.\r\nNOOP\r\n" + RCPT,
        ("250", R_MAIL, R_RCPT, R_354, R_552_LINE, R_OK, R_503_NEED_MAIL),
        (E_EHLO, E_MAIL, E_RCPT),
    ),
    Case(
        "data-line-very-long",
        TXN + b"DATA\r\n" + b"y" * 5000 + b"\r\n.\r\nNOOP\r\n",
        ("250", R_MAIL, R_RCPT, R_354, R_552_LINE, R_OK),
        (E_EHLO, E_MAIL, E_RCPT),
    ),
    Case(
        "message-at-max-size",
        TXN + b"DATA\r\n" + b"x" * 98 + b"\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
        config=settings(max_message_size=100),
    ),
    Case(
        "message-over-max-size",
        TXN + b"DATA\r\n" + (b"x" * 98 + b"\r\n") * 3 + b".\r\n" + MAIL,
        ("250", R_MAIL, R_RCPT, R_354, R_552_TOO_BIG, R_MAIL),
        (E_EHLO, E_MAIL, E_RCPT, E_MAIL),
        config=settings(max_message_size=100),
    ),
    Case(
        "message-size-counted-after-unstuffing",
        TXN + b"DATA\r\n.." + b"x" * 97 + b"\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_354, queued(1)),
        config=settings(max_message_size=100),
    ),
    Case(
        "too-many-recipients",
        EHLO + MAIL + RCPT + b"RCPT TO:<carol@example.net>\r\nRCPT TO:<dave@example.net>\r\n"
        b"DATA\r\nx\r\n.\r\n",
        ("250", R_MAIL, R_RCPT, R_RCPT, R_452_RCPTS, R_354, queued(1)),
        (
            E_EHLO,
            E_MAIL,
            E_RCPT,
            RcptTo(Address("carol", "example.net"), RcptParams()),
            MessageComplete(b"x\r\n"),
        ),
        config=settings(max_recipients=2),
    ),
]

BDAT = [
    Case(
        "bdat-chunks",
        TXN + b"BDAT 7\r\nhello, BDAT 7 LAST\r\nworld\r\n",
        ("250", R_MAIL, R_RCPT, R_CHUNK, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"hello, world\r\n")),
    ),
    Case(
        "bdat-zero-last-ends-message",
        TXN + b"BDAT 4\r\nab\r\nBDAT 0 LAST\r\n",
        ("250", R_MAIL, R_RCPT, R_CHUNK, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"ab\r\n")),
    ),
    Case(
        "bdat-bare-lf-refused",
        TXN + b"BDAT 3\r\nab\nBDAT 2 LAST\r\ncd",
        ("250", R_MAIL, R_RCPT, R_CHUNK, R_550_BARE),
        (E_EHLO, E_MAIL, E_RCPT),
    ),
    Case(
        "bdat-0-last-alone-is-empty-message",
        TXN + b"BDAT 0 LAST\r\n",
        ("250", R_MAIL, R_RCPT, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"")),
    ),
    Case(
        "bdat-last-lowercase",
        TXN + b"bdat 2 last\r\nok",
        ("250", R_MAIL, R_RCPT, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"ok")),
    ),
    Case(
        "bdat-pipelined-with-next-transaction",
        TXN + b"BDAT 4\r\nabcdBDAT 3 LAST\r\nxyz" + MAIL + RCPT + b"BDAT 1 LAST\r\nzQUIT\r\n",
        ("250", R_MAIL, R_RCPT, R_CHUNK, queued(1), R_MAIL, R_RCPT, queued(2), R_QUIT),
        (
            E_EHLO,
            E_MAIL,
            E_RCPT,
            MessageComplete(b"abcdxyz"),
            E_MAIL,
            E_RCPT,
            MessageComplete(b"z"),
            CLOSED,
        ),
    ),
    Case(
        "bdat-content-is-not-dot-unstuffed-nor-terminated",
        TXN + b"BDAT 12 LAST\r\n..x\r\n.\r\nab\r\n",
        ("250", R_MAIL, R_RCPT, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"..x\r\n.\r\nab\r\n")),
    ),
    Case(
        "bdat-without-mail-consumes-chunk",
        EHLO + b"BDAT 6\r\nNOOP\r\nNOOP\r\n",
        ("250", R_503_NEED_MAIL, R_OK),
        (E_EHLO,),
    ),
    Case(
        "bdat-before-helo-consumes-chunk",
        b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
        (R_503_HELLO, R_OK),
        (),
    ),
    Case(
        "bdat-without-rcpt-consumes-chunk",
        EHLO + MAIL + b"BDAT 6 LAST\r\nRSET\r\nNOOP\r\n",
        ("250", R_MAIL, R_554_NO_RCPT, R_OK),
        (E_EHLO, E_MAIL),
    ),
    Case(
        "data-after-bdat",
        TXN + b"BDAT 1\r\nxDATA\r\n",
        ("250", R_MAIL, R_RCPT, R_CHUNK, R_503_AFTER_BDAT),
    ),
    Case(
        "bdat-over-size-refused-and-next-chunk-consumed",
        TXN + b"BDAT 11\r\n0123456789\nBDAT 3 LAST\r\nabcNOOP\r\n",
        ("250", R_MAIL, R_RCPT, R_552_TOO_BIG, R_503_NEED_MAIL, R_OK),
        (E_EHLO, E_MAIL, E_RCPT),
        config=settings(max_message_size=10),
    ),
    Case(
        "bdat-bare-lf-normalised",
        TXN + b"BDAT 5 LAST\r\na\nb\rc",
        ("250", R_MAIL, R_RCPT, queued(1)),
        (E_EHLO, E_MAIL, E_RCPT, MessageComplete(b"a\r\nb\r\nc")),
        config=settings(bare_newlines="normalize"),
    ),
    Case("bdat-no-size", TXN + b"BDAT\r\n", ("250", R_MAIL, R_RCPT, "501 5.5.4")),
    Case("bdat-bad-size", TXN + b"BDAT x1\r\n", ("250", R_MAIL, R_RCPT, "501 5.5.4")),
    Case("bdat-negative-size", TXN + b"BDAT -1\r\n", ("250", R_MAIL, R_RCPT, "501 5.5.4")),
    Case("bdat-bad-last", TXN + b"BDAT 1 FIRST\r\n", ("250", R_MAIL, R_RCPT, "501 5.5.4")),
    Case("bdat-three-args", TXN + b"BDAT 1 LAST x\r\n", ("250", R_MAIL, R_RCPT, "501 5.5.4")),
    Case(
        "bdat-size-too-many-digits",
        TXN + b"BDAT 123456789012345678901\r\n",
        ("250", R_MAIL, R_RCPT, "501 5.5.4"),
    ),
]

AUTH = [
    Case(
        "auth-without-mechanisms",
        EHLO + b"AUTH PLAIN\r\n",
        ("250", b"502 5.5.1 Command not implemented\r\n"),
        (E_EHLO,),
    ),
    Case(
        "auth-before-tls",
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", b"538 5.7.11 Encryption required for requested authentication mechanism\r\n"),
        (E_EHLO,),
        config=settings(auth_mechanisms=("PLAIN",)),
    ),
    Case(
        "auth-unknown-mechanism",
        EHLO + b"AUTH CRAM-MD5\r\n",
        ("250", b"504 5.5.4 Unrecognized authentication mechanism\r\n"),
        (E_EHLO,),
        config=AUTH_TLS,
    ),
    Case(
        "auth-plain-initial-response",
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", R_235),
        (E_EHLO, AuthRequested("PLAIN", b"\0alice\0s3cret")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-mechanism-case-insensitive",
        EHLO + b"auth plain " + PLAIN_OK + b"\r\n",
        ("250", R_235),
        (E_EHLO, AuthRequested("PLAIN", b"\0alice\0s3cret")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-empty-initial-response",
        EHLO + b"AUTH PLAIN =\r\n",
        ("250", "535 5.7.8"),
        (E_EHLO, AuthRequested("PLAIN", b"")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-plain-challenge",
        EHLO + b"AUTH PLAIN\r\n" + PLAIN_OK + b"\r\n",
        ("250", R_334_EMPTY, R_235),
        (E_EHLO, AuthRequested("PLAIN", None), AuthResponse(b"\0alice\0s3cret")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-login-challenges-are-base64",
        EHLO + b"AUTH LOGIN\r\n" + b64(b"alice") + b"\r\n" + b64(b"s3cret") + b"\r\n",
        ("250", b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", R_235),
        (
            E_EHLO,
            AuthRequested("LOGIN", None),
            AuthResponse(b"alice"),
            AuthResponse(b"s3cret"),
        ),
        config=AUTH_TLS,
    ),
    Case(
        "auth-login-initial-response",
        EHLO + b"AUTH LOGIN " + b64(b"alice") + b"\r\n" + b64(b"s3cret") + b"\r\n",
        ("250", b"334 UGFzc3dvcmQ6\r\n", R_235),
        (E_EHLO, AuthRequested("LOGIN", b"alice"), AuthResponse(b"s3cret")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-empty-response-line",
        EHLO + b"AUTH PLAIN\r\n\r\n",
        ("250", R_334_EMPTY, "535 5.7.8"),
        (E_EHLO, AuthRequested("PLAIN", None), AuthResponse(b"")),
        config=AUTH_TLS,
    ),
    Case(
        "auth-cancelled-by-star",
        EHLO + b"AUTH PLAIN\r\n*\r\nNOOP\r\n",
        ("250", R_334_EMPTY, b"501 5.0.0 Authentication cancelled\r\n", R_OK),
        (E_EHLO, AuthRequested("PLAIN", None)),
        config=AUTH_TLS,
    ),
    Case(
        "auth-bad-base64-initial",
        EHLO + b"AUTH PLAIN AB$=\r\n",
        ("250", b"501 5.5.2 Invalid base64 data\r\n"),
        (E_EHLO,),
        config=AUTH_TLS,
    ),
    Case(
        "auth-bad-base64-response",
        EHLO + b"AUTH PLAIN\r\nnot base64!\r\nNOOP\r\n",
        ("250", R_334_EMPTY, b"501 5.5.2 Invalid base64 data\r\n", R_OK),
        (E_EHLO, AuthRequested("PLAIN", None)),
        config=AUTH_TLS,
    ),
    Case(
        "auth-failure-then-retry",
        EHLO + b"AUTH PLAIN " + PLAIN_BAD + b"\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", "535 5.7.8", R_235),
        config=AUTH_TLS,
    ),
    Case(
        "auth-twice",
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", R_235, b"503 5.5.1 Already authenticated\r\n"),
        config=AUTH_TLS,
    ),
    Case(
        "auth-in-transaction",
        EHLO + MAIL + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", R_MAIL, R_503_AUTH_TXN),
        (E_EHLO, E_MAIL),
        config=AUTH_TLS,
    ),
    Case(
        "auth-required-mail-refused",
        EHLO + MAIL,
        ("250", b"530 5.7.0 Authentication required\r\n"),
        (E_EHLO,),
        config=settings(auth_mechanisms=("PLAIN",), in_tls=True, auth_required=True),
    ),
    Case(
        "auth-required-mail-after-auth",
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n" + MAIL,
        ("250", R_235, R_MAIL),
        config=settings(auth_mechanisms=("PLAIN",), in_tls=True, auth_required=True),
    ),
    Case(
        "auth-plaintext-allowed-when-configured",
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
        ("250", R_235),
        config=settings(auth_mechanisms=("PLAIN",), auth_requires_tls=False),
    ),
    Case(
        "auth-response-line-at-limit",
        EHLO + b"AUTH PLAIN\r\n" + b"A" * 12284 + b"\r\n",
        ("250", R_334_EMPTY, "535 5.7.8"),
        (E_EHLO, AuthRequested("PLAIN", None), AuthResponse(b"\0" * 9213)),
        config=AUTH_TLS,
    ),
    Case(
        "auth-response-line-too-long",
        EHLO + b"AUTH PLAIN\r\n" + b"A" * 12288 + b"\r\nNOOP\r\n",
        ("250", R_334_EMPTY, R_500_TOO_LONG, R_OK),
        (E_EHLO, AuthRequested("PLAIN", None)),
        config=AUTH_TLS,
    ),
]

TLS_CONFIG = settings(tls_available=True)

STARTTLS = [
    Case("starttls-unavailable", EHLO + b"STARTTLS\r\n", ("250", "454 4.7.0"), (E_EHLO,)),
    Case(
        "starttls-with-argument",
        EHLO + b"STARTTLS now\r\n",
        ("250", "501 5.5.4"),
        config=TLS_CONFIG,
    ),
    Case(
        "starttls-in-tls",
        EHLO + b"STARTTLS\r\n",
        ("250", "503 5.5.1"),
        config=settings(tls_available=True, in_tls=True),
    ),
    Case(
        "starttls-refused-by-glue-keeps-plaintext-session",
        EHLO + b"STARTTLS\r\n" + MAIL,
        ("250", "454 4.7.0", R_MAIL),
        (E_EHLO, StartTlsRequested(), E_MAIL),
        config=TLS_CONFIG,
        policy=Policy(accept_tls=False),
    ),
]


@pytest.mark.parametrize("case", BASIC + LIMITS + BDAT + AUTH + STARTTLS, ids=lambda c: c.id)
def test_io_table(case: Case) -> None:
    check_case(case)


# -- session transcripts (tests/data/smtp/*.txt) ---------------------------------------

TRANSCRIPTS = sorted((Path(__file__).parent.parent / "data" / "smtp").glob("*.txt"))


def _header_value(key: str, value: str) -> object:
    if key in ("auth_mechanisms",):
        return tuple(value.split(","))
    if key in ("reject_rcpts", "reject_senders"):
        return frozenset(value.split(","))
    if value in ("true", "false"):
        return value == "true"
    return int(value) if value.isdigit() else value


def load_transcript(path: Path) -> tuple[list[bytes], bytes, ServerSettings, Policy]:
    """Client segments, expected server bytes, settings and policy of a transcript."""
    segments, server = [b""], b""
    config: dict[str, object] = {}
    policy: dict[str, object] = {}
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("#! "):
            target, *pairs = line[3:].split()
            for key, _, value in (pair.partition("=") for pair in pairs):
                (config if target == "settings" else policy)[key] = _header_value(key, value)
        elif line.startswith("C:"):
            segments[-1] += line[2:].removeprefix(" ").encode() + b"\r\n"
        elif line.startswith("C~ "):
            segments[-1] += line[3:].encode().decode("unicode_escape").encode("latin-1")
        elif line.startswith("S: "):
            server += line[3:].encode() + b"\r\n"
        elif line == "-- TLS --":
            segments.append(b"")
        else:
            assert not line or line.startswith("#"), line
    return segments, server, settings(**config), Policy(**policy)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path) -> None:
    segments, server, config, policy = load_transcript(path)
    r = run_all_chunkings(segments, policy, config)
    assert r.replies == server


def test_transcripts_exist() -> None:
    assert len(TRANSCRIPTS) >= 4


# -- out-of-sequence commands: (phase reached, command) -> reply; phase unchanged ----------

SEQ_CONFIG = settings(tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False)
PROLOGUE = {
    Phase.GREETED: b"",
    Phase.HELLO: EHLO,
    Phase.MAIL: EHLO + MAIL,
    Phase.RCPT: TXN,
    Phase.BDAT: TXN + b"BDAT 3\r\nabc",
}
OUT_OF_SEQUENCE = [
    (Phase.GREETED, b"MAIL FROM:<alice@example.org>\r\n", R_503_HELLO),
    (Phase.GREETED, b"RCPT TO:<bob@example.net>\r\n", R_503_HELLO),
    (Phase.GREETED, b"DATA\r\n", R_503_HELLO),
    (Phase.GREETED, b"AUTH PLAIN\r\n", R_503_HELLO),
    (Phase.GREETED, b"BDAT 3\r\nabc", R_503_HELLO),
    (Phase.HELLO, b"RCPT TO:<bob@example.net>\r\n", R_503_NEED_MAIL),
    (Phase.HELLO, b"DATA\r\n", R_503_NEED_MAIL),
    (Phase.HELLO, b"BDAT 3 LAST\r\nabc", R_503_NEED_MAIL),
    (Phase.MAIL, b"MAIL FROM:<alice@example.org>\r\n", R_503_NESTED),
    (Phase.MAIL, b"DATA\r\n", R_554_NO_RCPT),
    (Phase.MAIL, b"BDAT 3 LAST\r\nabc", R_554_NO_RCPT),
    (Phase.MAIL, b"STARTTLS\r\n", R_503),
    (Phase.MAIL, b"AUTH PLAIN\r\n", R_503_AUTH_TXN),
    (Phase.RCPT, b"MAIL FROM:<alice@example.org>\r\n", R_503_NESTED),
    (Phase.RCPT, b"STARTTLS\r\n", R_503),
    (Phase.RCPT, b"AUTH PLAIN\r\n", R_503_AUTH_TXN),
    (Phase.BDAT, b"DATA\r\n", R_503_AFTER_BDAT),
    (Phase.BDAT, b"MAIL FROM:<alice@example.org>\r\n", R_503_NESTED),
    (Phase.BDAT, b"RCPT TO:<bob@example.net>\r\n", "503 5.5.1"),
    (Phase.BDAT, b"STARTTLS\r\n", R_503),
    (Phase.BDAT, b"AUTH PLAIN\r\n", R_503_AUTH_TXN),
]


@pytest.mark.parametrize(
    ("phase", "command", "expected"),
    OUT_OF_SEQUENCE,
    ids=[f"{p.value}-{c.split()[0].decode()}" for p, c, _ in OUT_OF_SEQUENCE],
)
def test_out_of_sequence(phase: Phase, command: bytes, expected: bytes | str) -> None:
    before = drive(PROLOGUE[phase], config=SEQ_CONFIG)
    assert before.conn.phase is phase
    r = run_all_chunkings(PROLOGUE[phase] + command + b"NOOP\r\n", config=SEQ_CONFIG)
    new = r.reply_list[len(before.reply_list) :]
    assert len(new) == 2
    if isinstance(expected, bytes):
        assert new[0] == expected
    else:
        assert reply_code(new[0]) == expected
    assert new[1] == R_OK
    assert r.events == before.events  # nothing emitted for the refused command
    assert r.conn.phase is phase
    assert r.conn.errors == 1


# -- greeting and EHLO ----------------------------------------------------------------


def test_greeting_has_no_enhanced_code() -> None:
    s = Session()
    assert s.output() == GREETING


def test_refuse_connection() -> None:
    s = Session(greet=False)
    s.conn.refuse(Reply.make(554, "5.7.1", "No SMTP service here"))
    assert without_reasons(s.pump()) == [CLOSED]
    assert s.output() == b"554 5.7.1 No SMTP service here\r\n"
    assert s.conn.closed
    assert s.feed(b"EHLO x\r\n") == b""


def test_ehlo_default_keywords() -> None:
    r = run_all_chunkings(EHLO)
    assert ehlo_keywords(r.reply_list[1]) == KEYWORDS


def test_ehlo_size_follows_settings() -> None:
    r = drive(EHLO, config=settings(max_message_size=12345))
    assert "SIZE 12345" in ehlo_keywords(r.reply_list[1])


@pytest.mark.parametrize(
    ("config", "starttls", "auth"),
    [
        (settings(), False, None),
        (settings(tls_available=True), True, None),
        (settings(tls_available=True, in_tls=True), False, None),
        (settings(tls_available=True, auth_mechanisms=("PLAIN",)), True, None),
        (settings(auth_mechanisms=("PLAIN", "LOGIN"), in_tls=True), False, "AUTH PLAIN LOGIN"),
        (settings(auth_mechanisms=("PLAIN",), auth_requires_tls=False), False, "AUTH PLAIN"),
        (settings(in_tls=True), False, None),
    ],
    ids=[
        "plain",
        "tls-available",
        "implicit-tls",
        "auth-but-no-tls-yet",
        "auth-in-tls",
        "auth-plaintext-allowed",
        "tls-no-mechanisms",
    ],
)
def test_ehlo_starttls_and_auth_keywords(
    config: ServerSettings, starttls: bool, auth: str | None
) -> None:
    keywords = ehlo_keywords(drive(EHLO, config=config).reply_list[1])
    assert ("STARTTLS" in keywords) is starttls
    assert [k for k in keywords if k.startswith("AUTH")] == ([auth] if auth else [])
    assert keywords[: len(KEYWORDS)] == KEYWORDS


def test_ehlo_after_starttls_offers_auth_not_starttls() -> None:
    config = settings(tls_available=True, auth_mechanisms=("PLAIN",))
    r = run_all_chunkings([EHLO + b"STARTTLS\r\n", EHLO], config=config)
    assert r.reply_list[2] == b"220 2.0.0 Ready to start TLS\r\n"
    before, after = ehlo_keywords(r.reply_list[1]), ehlo_keywords(r.reply_list[3])
    assert "STARTTLS" in before and "AUTH PLAIN" not in before
    assert "STARTTLS" not in after and "AUTH PLAIN" in after


def test_helo_custom_accept_reply() -> None:
    s = Session(auto=False)
    s.feed(EHLO)
    s.conn.accept(Reply.make(250, None, "mx greets you", "SIZE 10"))
    s.pump()
    assert s.output() == b"250-mx greets you\r\n250 SIZE 10\r\n"
    assert s.conn.phase is Phase.HELLO and s.conn.esmtp


# -- the session state the glue reads ------------------------------------------------


def test_state_attributes_follow_the_transaction() -> None:
    s = Session()
    s.feed(EHLO + b"MAIL FROM:<alice@example.org> SIZE=5\r\n" + RCPT)
    c = s.conn
    assert c.helo_name == "client.example" and c.esmtp
    assert c.sender == ALICE and c.mail_params.size == 5
    assert c.recipients == [(BOB, RcptParams())]
    assert c.in_transaction
    s.feed(b"DATA\r\n")
    assert s.state()[:2] == (Phase.RCPT, Mode.DATA)
    s.feed(b"x\r\n.\r\n")
    assert s.state() == (Phase.HELLO, Mode.COMMAND, None, [], False, False, None)


def test_sender_and_recipients_visible_while_message_pending() -> None:
    s = Session(auto=False)
    s.feed(TXN)
    for _ in range(3):
        s.conn.accept()
        s.pump()
    s.feed(b"DATA\r\nhi\r\n.\r\n")
    assert isinstance(s.events[-1], MessageComplete)
    assert s.conn.sender == ALICE and [r for r, _ in s.conn.recipients] == [BOB]
    s.conn.accept(Reply.make(250, "2.0.0", "Ok: queued as X"))
    s.pump()
    assert s.output().endswith(b"250 2.0.0 Ok: queued as X\r\n")
    assert s.conn.sender is None and s.conn.recipients == []


def test_helo_name_and_esmtp_after_helo() -> None:
    s = Session()
    s.feed(b"HELO old.example\r\n")
    assert (s.conn.helo_name, s.conn.esmtp) == ("old.example", False)
    s.feed(EHLO)
    assert (s.conn.helo_name, s.conn.esmtp) == ("client.example", True)


# -- pausing and the decision API -------------------------------------------------------


def test_decision_event_is_emitted_before_pausing() -> None:
    # events.py: a decision event is returned by next_event(); only then is the core
    # PAUSED until the glue answers (the glue in server.py stops on PAUSED).
    conn = ServerConnection(settings())
    conn.receive_data(EHLO + b"NOOP\r\n", 1.0)
    assert conn.next_event() == E_EHLO
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    conn.accept()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b"250 DSN\r\n" + R_OK)


def test_pipelined_commands_wait_for_the_decision() -> None:
    s = Session(auto=False)
    assert s.feed(TXN + b"NOOP\r\n") == GREETING
    assert s.events == [E_EHLO]
    assert s.conn.next_event() is PAUSED
    assert s.conn.buffered == len(MAIL + RCPT + b"NOOP\r\n")
    assert s.conn.get_timer() is None
    s.conn.accept()
    assert s.pump() == [E_MAIL]
    s.conn.accept()
    assert s.pump() == [E_RCPT]
    s.conn.reject(Reply.make(450, "4.2.0", "Mailbox busy"))
    assert s.pump() == []
    out = s.output()
    assert split_replies(out)[1:] == [R_MAIL, b"450 4.2.0 Mailbox busy\r\n", R_OK]
    assert s.conn.phase is Phase.MAIL


def test_input_buffered_without_limit_while_paused() -> None:
    # The glue is told how much waits (``buffered``) so that it can stop reading.
    s = Session(auto=False)
    s.feed(EHLO)
    s.feed(b"x" * 100_000)
    assert s.conn.buffered == 100_000
    assert s.conn.next_event() is PAUSED


def test_accept_without_pending_decision() -> None:
    conn = ServerConnection(settings())
    with pytest.raises(LocalProtocolError):
        conn.accept()
    with pytest.raises(LocalProtocolError):
        conn.reject(Reply.make(550, "5.0.0", "no"))


def test_accept_needs_a_positive_reply() -> None:
    s = Session(auto=False)
    s.feed(EHLO)
    s.conn.accept()
    s.pump()
    s.feed(MAIL)
    with pytest.raises(LocalProtocolError):
        s.conn.accept(Reply.make(550, "5.7.1", "Sender refused"))


def test_reject_needs_an_error_reply() -> None:
    s = Session(auto=False)
    s.feed(EHLO)
    with pytest.raises(LocalProtocolError):
        s.conn.reject(Reply.make(250, "2.0.0", "fine"))
    assert s.conn.next_event() is PAUSED  # the decision is still pending
    s.conn.accept()
    assert s.conn.next_event() is NEED_DATA


@pytest.mark.parametrize("call", ["accept", "auth_challenge", "auth_success"])
def test_wrong_answer_keeps_decision_pending(call: str) -> None:
    s = Session(AUTH_TLS, auto=False)
    s.feed(EHLO)
    s.conn.accept()
    s.pump()
    s.feed(b"AUTH PLAIN\r\n" if call == "accept" else MAIL)
    expected = AuthRequested if call == "accept" else MailFrom
    assert isinstance(s.events[-1], expected)
    with pytest.raises(LocalProtocolError):
        if call == "accept":
            s.conn.accept()
        elif call == "auth_challenge":
            s.conn.auth_challenge(b"")
        else:
            s.conn.auth_success("alice")
    assert s.conn.next_event() is PAUSED
    assert s.conn.authenticated is None


def test_rejections_count_towards_the_error_budget() -> None:
    policy = Policy(reject_rcpts=frozenset({"bob@example.net"}))
    r = run_all_chunkings(EHLO + MAIL + RCPT * 3, policy, settings(max_errors=3))
    assert r.codes[-4:] == ["550 5.1.1", "550 5.1.1", "550 5.1.1", "421 4.7.0"]
    assert r.conn.closed


def test_transient_refusals_do_not_count_towards_the_error_budget() -> None:
    """A 452 4.3.1 (disk full) is the server's trouble, not the client's: no 421."""
    full = Reply.make(452, "4.3.1", "Insufficient system storage")
    policy = Policy(reject_rcpts=frozenset({"bob@example.net"}), rcpt_reply=full)
    r = run_all_chunkings(EHLO + MAIL + RCPT * 4 + b"NOOP\r\n", policy, settings(max_errors=3))
    assert r.codes[-5:] == ["452 4.3.1"] * 4 + ["250 2.0.0"]
    assert not r.conn.closed


def test_error_budget_counts_every_kind_of_error() -> None:
    stream = b"FROB\r\nMAIL FROM:<a@b.c>\r\nEXPN x\r\nEHLO\r\n" + b"NOOP " + b"x" * 3000 + b"\r\n"
    r = run_all_chunkings(stream + b"NOOP\r\n", config=settings(max_errors=5))
    errors = ["500 5.5.1", "503 5.5.1", "502 5.5.1", "501", "500 5.5.2"]  # EHLO: no enhanced
    assert r.codes[1:] == [*errors, "421 4.7.0"]


# -- STARTTLS (the injection tests are in test_smuggling.py) ----------------------------


def test_starttls_accepted_then_tls_established() -> None:
    s = Session(TLS_CONFIG)
    s.feed(EHLO + b"STARTTLS\r\n")
    assert s.events[-1] == StartTlsRequested()
    assert s.conn.mode is Mode.TLS_PENDING
    assert s.conn.get_timer() is None
    assert s.conn.next_event() is NEED_DATA
    assert split_replies(s.replies)[-1] == b"220 2.0.0 Ready to start TLS\r\n"
    s.establish_tls()
    assert s.state() == (Phase.GREETED, Mode.COMMAND, None, [], False, True, None)
    assert s.feed(b"STARTTLS\r\n") == b"503 5.5.1 TLS already active\r\n"


def test_tls_established_without_starttls() -> None:
    conn = ServerConnection(TLS_CONFIG)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


def test_starttls_before_ehlo() -> None:
    r = run_all_chunkings([b"STARTTLS\r\n", EHLO], config=TLS_CONFIG)
    assert r.codes[1:] == ["220 2.0.0", "250"]
    assert r.conn.in_tls


# -- timers -------------------------------------------------------------------------------


def test_command_timeout() -> None:
    s = Session(now=100.0)
    s.output()
    assert s.conn.get_timer() == 400.0
    s.conn.handle_timer(399.9)
    assert not s.conn.closed and s.output() == b""
    s.conn.handle_timer(400.0)
    assert s.output() == R_421_TIMEOUT
    assert without_reasons(s.pump()) == [CLOSED]
    assert s.conn.closed and s.conn.get_timer() is None
    s.conn.handle_timer(10_000.0)
    assert s.output() == b""


def test_activity_restarts_the_timer() -> None:
    s = Session(now=0.0)
    s.feed(b"NOOP\r\n", now=250.0)
    assert s.conn.get_timer() == 550.0
    s.feed(b"NO", now=500.0)  # a partial line is activity too
    s.conn.handle_timer(549.0)
    assert not s.conn.closed


def test_data_timeout_applies_in_data_and_chunk_modes() -> None:
    s = Session(now=0.0)
    s.feed(TXN + b"DATA\r\npart", now=10.0)
    assert s.conn.get_timer() == 190.0
    s.feed(b"ial\r\n.\r\n", now=20.0)
    assert s.conn.get_timer() == 320.0
    s.feed(MAIL + RCPT + b"BDAT 10\r\nabc", now=30.0)
    assert s.conn.mode is Mode.CHUNK and s.conn.get_timer() == 210.0
    s.conn.handle_timer(210.0)
    assert s.output().endswith(R_421_TIMEOUT)
    assert s.conn.closed


def test_no_timer_while_a_decision_is_pending() -> None:
    s = Session(auto=False, now=0.0)
    s.feed(EHLO, now=0.0)
    assert s.conn.get_timer() is None
    s.conn.handle_timer(1e9)
    assert not s.conn.closed and s.output() == b""
    s.conn.accept()
    s.pump()
    assert s.conn.get_timer() is not None


def test_no_timer_while_tls_handshake_pending() -> None:
    s = Session(TLS_CONFIG, now=0.0)
    s.feed(EHLO + b"STARTTLS\r\n", now=0.0)
    assert s.conn.mode is Mode.TLS_PENDING and s.conn.get_timer() is None
    s.conn.handle_timer(1e9)
    assert not s.conn.closed


# -- shutdown -------------------------------------------------------------------------------


def test_shutdown_idle_closes_immediately() -> None:
    s = Session()
    s.feed(EHLO)
    s.conn.start_shutdown()
    assert s.output() == R_421_SHUTDOWN
    assert without_reasons(s.pump()) == [CLOSED] and s.conn.closed
    assert s.feed(b"NOOP\r\n") == b""


def test_shutdown_before_helo_closes_immediately() -> None:
    s = Session()
    s.output()
    s.conn.start_shutdown()
    assert s.output() == R_421_SHUTDOWN and s.conn.closed


def test_shutdown_mid_transaction_waits_for_the_message() -> None:
    s = Session()
    s.feed(EHLO + MAIL)
    s.conn.start_shutdown()
    assert s.output() == b"" and not s.conn.closed
    assert s.feed(RCPT + b"NOOP\r\nDATA\r\nhi\r\n") == R_RCPT + R_OK + R_354
    assert not s.conn.closed
    assert s.feed(b".\r\nNOOP\r\n") == queued(1) + R_421_SHUTDOWN
    assert s.conn.closed and isinstance(s.events[-1], ConnectionClosed)
    assert s.events[-2] == MessageComplete(b"hi\r\n")


def test_shutdown_while_message_decision_pending() -> None:
    s = Session(auto=False)
    s.feed(TXN)
    for _ in range(3):
        s.conn.accept()
        s.pump()
    s.feed(b"DATA\r\nhi\r\n.\r\n")
    s.output()
    s.conn.start_shutdown()
    assert s.output() == b"" and not s.conn.closed
    s.conn.reject(Reply.make(451, "4.3.0", "Try later"))
    assert s.output() == b"451 4.3.0 Try later\r\n" + R_421_SHUTDOWN
    assert s.conn.closed


def test_shutdown_mid_transaction_then_rset() -> None:
    s = Session()
    s.feed(TXN)
    s.conn.start_shutdown()
    assert s.feed(b"RSET\r\n") == R_RSET + R_421_SHUTDOWN
    assert s.conn.closed


def test_shutdown_mid_transaction_then_quit() -> None:
    s = Session()
    s.feed(TXN)
    s.conn.start_shutdown()
    assert s.feed(b"QUIT\r\n") == R_QUIT
    assert s.conn.closed


def test_shutdown_mid_transaction_refused_message() -> None:
    s = Session(settings(max_message_size=5))
    s.feed(TXN + b"DATA\r\n")
    s.conn.start_shutdown()
    assert s.feed(b"too big for it\r\n.\r\n") == R_552_TOO_BIG + R_421_SHUTDOWN


def test_shutdown_while_hello_pending_closes_after_answer() -> None:
    s = Session(auto=False)
    s.feed(EHLO)
    s.output()
    s.conn.start_shutdown()
    s.conn.accept()
    s.pump()
    assert s.conn.closed
    assert s.output().endswith(R_421_SHUTDOWN)


# -- peer EOF -------------------------------------------------------------------------------


def test_receive_eof() -> None:
    s = Session()
    s.feed(TXN + b"DATA\r\npartial")
    s.conn.receive_eof()
    assert without_reasons(s.pump()) == [CLOSED]
    assert s.output() == b"" and s.conn.closed and s.conn.buffered == 0
    assert s.feed(b"\r\n.\r\n") == b""
    s.conn.receive_eof()
    assert s.pump() == []  # only one ConnectionClosed


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("accept-starttls"),
        pytest.param("auth-challenge"),
        pytest.param("auth-success"),
        pytest.param("reject-auth"),
        "accept-hello",
        "reject-message",
    ],
)
def test_decision_answered_after_eof_keeps_connection_closed(answer: str) -> None:
    # The glue may learn of the EOF while a decision is out (an async policy check).
    config = settings(tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    answered, pending = {
        "accept-starttls": (b"", b"STARTTLS\r\n"),
        "auth-challenge": (EHLO, b"AUTH PLAIN\r\n"),
        "auth-success": (EHLO, b"AUTH PLAIN\r\n"),
        "reject-auth": (EHLO, b"AUTH PLAIN\r\n"),
        "accept-hello": (b"", EHLO),
        "reject-message": (TXN, b"DATA\r\nx\r\n.\r\n"),
    }[answer]
    s = Session(config)
    s.feed(answered)
    s.auto = False
    s.feed(pending)
    assert s.conn.next_event() is PAUSED
    s.conn.receive_eof()
    assert isinstance(s.conn.next_event(), ConnectionClosed)
    if answer in ("accept-starttls", "accept-hello"):
        s.conn.accept()
    elif answer == "auth-challenge":
        s.conn.auth_challenge(b"")
    elif answer == "auth-success":
        s.conn.auth_success("alice")
    else:
        s.conn.reject(Reply.make(554, "5.7.1", "no"))
    assert s.conn.closed
    s.conn.receive_data(b"NOOP\r\n", 2.0)
    assert s.conn.buffered == 0


# -- memory bounds ------------------------------------------------------------------------


def _peak_while_feeding(stream_parts: list[bytes], config: ServerSettings) -> tuple[int, Session]:
    s = Session(config)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for part in stream_parts:
            s.feed(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, s


def test_oversized_data_message_is_not_accumulated() -> None:
    line = b"x" * 78 + b"\r\n"
    block = line * 800  # 64 000 octets
    parts = [TXN + b"DATA\r\n"] + [block] * 80 + [b".\r\nNOOP\r\n"]  # 5.1 MB of text
    peak, s = _peak_while_feeding(parts, settings(max_message_size=100_000))
    assert peak < 1_000_000, peak
    assert split_replies(s.replies)[-2:] == [R_552_TOO_BIG, R_OK]
    assert not any(isinstance(e, MessageComplete) for e in s.events)


def test_oversized_bdat_message_is_not_accumulated() -> None:
    block = b"y" * 64_000
    parts = [TXN + b"BDAT %d LAST\r\n" % (len(block) * 80)] + [block] * 80 + [b"NOOP\r\n"]
    peak, s = _peak_while_feeding(parts, settings(max_message_size=100_000))
    assert peak < 1_000_000, peak
    assert split_replies(s.replies)[-2:] == [R_552_TOO_BIG, R_OK]


def test_long_command_line_is_not_accumulated() -> None:
    parts = [b"NOOP "] + [b"z" * 64_000] * 50 + [b"\r\nNOOP\r\n"]
    peak, s = _peak_while_feeding(parts, settings())
    assert peak < 500_000, peak
    assert split_replies(s.replies)[-2:] == [R_500_TOO_LONG, R_OK]
    assert s.conn.buffered == 0


# -- known bugs and RFC deviations --------------------------------------------------------


def test_bdat_superscript_digit_is_a_syntax_error() -> None:
    r = drive(TXN + "BDAT ²\r\n".encode())
    assert r.codes[-1] == "501 5.5.4"


def test_bdat_non_ascii_digits_are_a_syntax_error() -> None:
    r = drive(TXN + "BDAT ٣ LAST\r\nabc".encode())
    assert r.codes[-1] == "501 5.5.4"


def test_data_line_limit_excludes_the_stuffing_dot() -> None:
    r = run_all_chunkings(TXN + b"DATA\r\n.." + b"x" * 997 + b"\r\n.\r\n")
    assert r.reply_list[-1] == queued(1)
    assert r.messages == [b"." + b"x" * 997 + b"\r\n"]


def test_excess_recipients_do_not_cut_the_transaction() -> None:
    rcpts = b"".join(b"RCPT TO:<u%d@example.net>\r\n" % i for i in range(6))
    r = run_all_chunkings(
        EHLO + MAIL + rcpts + b"DATA\r\nx\r\n.\r\n", config=settings(max_recipients=3, max_errors=3)
    )
    assert r.codes[-3:] == ["452 4.5.3", "354", "250 2.0.0"]
    assert len(r.messages) == 1


def test_ehlo_mid_transaction_emits_transaction_reset() -> None:
    r = run_all_chunkings(EHLO + MAIL + EHLO)
    assert E_RSET in r.events[2:]


def test_first_data_error_does_not_depend_on_chunking() -> None:
    run_all_chunkings(TXN + b"DATA\r\na\nb" + b"c" * 1001 + b"\r\n.\r\n")


def test_auth_without_mechanism_is_a_syntax_error() -> None:
    r = run_all_chunkings(EHLO + b"AUTH\r\n", config=AUTH_TLS)
    assert r.codes[-1] == "501 5.5.4"


# -- memory for message bodies (the glue's budget: drop_message) ------------------------


def test_dropped_data_message_is_read_to_its_end_and_refused_452() -> None:
    s = Session()
    s.feed(TXN + b"DATA\r\n" + b"line one\r\n" * 50)
    assert s.conn.body_size == 500
    s.conn.drop_message()
    assert s.conn.body_size == 0
    out = s.feed(b"line two\r\n" * 50 + b".\r\n")
    assert [reply_code(r) for r in split_replies(out)] == ["452 4.3.1"]
    assert s.conn.body_size == 0
    assert not [e for e in s.events if isinstance(e, MessageComplete)]
    # The session goes on, and the next message is kept.
    out = s.feed(MAIL + RCPT + b"DATA\r\nkept\r\n.\r\n")
    assert [reply_code(r) for r in split_replies(out)][-1] == "250 2.0.0"
    assert [e.body for e in s.events if isinstance(e, MessageComplete)] == [b"kept\r\n"]
    assert s.conn.errors == 0  # the client did nothing wrong


def test_a_permanent_error_wins_over_a_dropped_body() -> None:
    s = Session(settings(max_message_size=100))
    s.feed(TXN + b"DATA\r\n" + b"x" * 80 + b"\r\n")
    s.conn.drop_message()
    out = s.feed(b"y" * 80 + b"\r\n.\r\n")
    assert [reply_code(r) for r in split_replies(out)] == ["552 5.3.4"]


def test_dropped_bdat_message_ends_at_its_next_chunk() -> None:
    s = Session()
    out = s.feed(TXN + b"BDAT 10\r\n0123456789")
    assert reply_code(split_replies(out)[-1]) == "250 2.0.0"
    assert s.conn.body_size == 10
    s.conn.drop_message()
    out = s.feed(b"BDAT 5\r\nabcde")  # read and discarded; the transaction is over
    assert [reply_code(r) for r in split_replies(out)] == ["452 4.3.1"]
    out = s.feed(b"BDAT 3 LAST\r\nxyz")
    assert [reply_code(r) for r in split_replies(out)] == ["503 5.5.1"]
    assert not [e for e in s.events if isinstance(e, MessageComplete)]


@pytest.mark.parametrize("split", [1, 7, 4096])
def test_bdat_dropped_inside_a_chunk_refuses_it_at_its_end(split: int) -> None:
    s = Session()
    s.feed(TXN + b"BDAT 20 LAST\r\n" + b"z" * 9)
    s.conn.drop_message()
    out = s.feed(b"z" * 11 + b"NOOP\r\n", chunk_size=split)
    assert [reply_code(r) for r in split_replies(out)] == ["452 4.3.1", "250 2.0.0"]
    assert not [e for e in s.events if isinstance(e, MessageComplete)]


def test_drop_outside_a_message_changes_nothing() -> None:
    s = Session()
    s.feed(TXN)
    s.conn.drop_message()
    out = s.feed(b"DATA\r\nfine\r\n.\r\n")
    assert [reply_code(r) for r in split_replies(out)][-1] == "250 2.0.0"
