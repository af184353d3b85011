"""Tests of the sans-IO POP3 server core (postbote.pop3.protocol), bytes in, bytes out.

The tables (h11 test_io style) give client bytes and the exact server bytes after the
greeting, and the exact events; every table stream is re-fed in every chunking by
``run_all_chunkings``. Tests that need the glue's hands (timers, shutdown, decisions
answered late) drive a ``Session`` step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from postbote.errors import LocalProtocolError
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
    StlsRequested,
    UpdateRequested,
)
from postbote.pop3.protocol import (
    MAX_AUTH_LINE,
    MessageEntry,
    Mode,
    Pop3Connection,
    Pop3Settings,
    State,
)
from tests.pop3.helpers import (
    DEFAULT,
    NOW,
    SCRAM_CLIENT_FINAL,
    SCRAM_CLIENT_FIRST,
    SCRAM_SERVER_FINAL,
    SCRAM_SERVER_FIRST,
    TLS,
    Policy,
    Result,
    Session,
    b64,
    crlf,
    entries,
    run_all_chunkings,
    settings,
)

# -- vocabulary ---------------------------------------------------------------------

GREETING = b"+OK pop.example.net POP3 server ready\r\n"
LOGIN = b"USER alice\r\nPASS s3cret\r\n"

R_OK = b"+OK\r\n"
R_USER = b"+OK send PASS\r\n"
R_LOGIN = b"+OK maildrop has 3 messages (116 octets)\r\n"
R_SIGNOFF = b"+OK pop.example.net POP3 server signing off\r\n"
R_BEGIN_TLS = b"+OK begin TLS negotiation\r\n"
R_CHALLENGE_EMPTY = b"+ \r\n"
R_NEED_TLS = b"-ERR [AUTH] plaintext authentication requires TLS\r\n"
R_BAD_LOGIN = b"-ERR [AUTH] invalid credentials\r\n"
R_IN_USE = b"-ERR [IN-USE] mailbox in use by another session\r\n"
R_UNKNOWN = b"-ERR unknown command\r\n"
R_BAD_STATE = b"-ERR command not valid in this state\r\n"
R_TOO_LONG = b"-ERR line too long\r\n"
R_BARE_CR = b"-ERR bare CR in command line\r\n"
R_BAD_UTF8 = b"-ERR invalid UTF-8 in command\r\n"
R_SYNTAX = b"-ERR syntax error\r\n"
R_NO_ARGS = b"-ERR syntax error: no arguments allowed\r\n"
R_BAD_NUMBER = b"-ERR invalid message number\r\n"
R_BAD_LINES = b"-ERR invalid number of lines\r\n"
R_NO_SUCH = b"-ERR no such message\r\n"
R_USER_FIRST = b"-ERR send USER first\r\n"
R_APOP = b"-ERR APOP not supported\r\n"
R_NO_MECH = b"-ERR unsupported authentication mechanism\r\n"
R_BAD_BASE64 = b"-ERR invalid base64 data\r\n"
R_CANCELLED = b"-ERR authentication cancelled\r\n"
R_TLS_ACTIVE = b"-ERR TLS already active\r\n"
R_NO_STLS = b"-ERR STLS not available\r\n"
R_TOO_MANY = b"-ERR [SYS/PERM] too many errors, closing connection\r\n"
R_SHUTDOWN = b"-ERR [SYS/TEMP] server shutting down, closing connection\r\n"
R_AUTOLOGOUT = b"-ERR autologout: idle for too long\r\n"
R_UPDATE_FAILED = b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"
R_GONE = b"-ERR [SYS/TEMP] message file has gone\r\n"
R_STAT = b"+OK 3 116\r\n"
R_LIST = b"+OK 3 messages (116 octets)\r\n1 23\r\n2 33\r\n3 60\r\n.\r\n"
R_UIDL = b"+OK unique-id listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
R_TOP_FOLLOWS = b"+OK top of message follows\r\n"
R_RETR1 = b"+OK 23 octets\r\nSubject: one\r\n\r\nHello\r\n.\r\n"
# Message 2 is stored with bare LFs, lines ".x", "." and "..", and no final newline.
R_RETR2 = b"+OK 33 octets\r\nSubject: dots\r\n\r\n..x\r\n..\r\n...\r\nend\r\n.\r\n"
M3_HEAD = b"Subject: three\r\nFrom: a@example.org\r\n\r\n"
R_RETR3 = b"+OK 60 octets\r\n" + M3_HEAD + b"line1\r\nline2\r\nline3\r\n.\r\n"


def capa(*caps: str) -> bytes:
    lines = ["+OK capability list follows", *caps, "."]
    return "".join(f"{line}\r\n" for line in lines).encode()


BASE_CAPS = ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING")
R_CAPA_PLAIN = capa(*BASE_CAPS, "IMPLEMENTATION postbote")
R_CAPA_PLAIN_STLS = capa(*BASE_CAPS, "STLS", "IMPLEMENTATION postbote")
R_CAPA_AUTH = capa(*BASE_CAPS, "USER", "SASL PLAIN SCRAM-SHA-256", "IMPLEMENTATION postbote")
R_CAPA_AUTH_STLS = capa(
    *BASE_CAPS, "USER", "SASL PLAIN SCRAM-SHA-256", "STLS", "IMPLEMENTATION postbote"
)

E_LOGIN = LoginRequested("alice", "s3cret")
PLAIN_OK = b64(b"\0alice\0s3cret")
PLAIN_BAD = b64(b"\0alice\0wrong")
E_PLAIN_OK = AuthRequested("PLAIN", b"\0alice\0s3cret")
CLOSED = ConnectionClosed("")  # compared without its (log-only) reason
STLS_PLAIN = settings(stls_available=True)


def retr(n: int, top: int | None = None) -> RetrieveRequested:
    return RetrieveRequested(n, top)


def without_reasons(events: list[Event]) -> list[Event]:
    return [CLOSED if isinstance(e, ConnectionClosed) else e for e in events]


# -- the byte-level table -------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Client bytes (or TLS segments) -> exact server bytes after the greeting, and the
    exact events (ConnectionClosed compared without its reason)."""

    id: str
    client: bytes | tuple[bytes, ...]
    server: bytes
    events: tuple[Event, ...] = ()
    config: Pop3Settings = TLS
    policy: Policy = DEFAULT
    eof: bool = False


def check_case(case: Case) -> Result:
    r = run_all_chunkings(case.client, case.policy, case.config, eof=case.eof)
    assert r.replies.startswith(GREETING)
    assert r.replies[len(GREETING) :] == case.server
    assert without_reasons(r.events) == list(case.events)
    return r


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


AUTHORIZATION = [
    Case("nothing", b"", b"", config=settings()),
    Case("capa-plain", b"CAPA\r\n", R_CAPA_PLAIN, config=settings()),
    Case("capa-plain-stls", b"CAPA\r\n", R_CAPA_PLAIN_STLS, config=STLS_PLAIN),
    Case("capa-tls", b"CAPA\r\n", R_CAPA_AUTH),
    Case(
        "capa-login-delay",  # RFC 2449 §6.5
        b"CAPA\r\n",
        capa(
            *BASE_CAPS,
            "USER",
            "SASL PLAIN SCRAM-SHA-256",
            "LOGIN-DELAY 60",
            "IMPLEMENTATION postbote",
        ),
        config=settings(in_tls=True, login_delay=60),
    ),
    # RFC 2595 §4: STLS is not offered once TLS is active.
    Case(
        "capa-tls-no-stls",
        b"CAPA\r\n",
        R_CAPA_AUTH,
        config=settings(in_tls=True, stls_available=True),
    ),
    Case(
        "capa-plaintext-auth-allowed",
        b"CAPA\r\n",
        R_CAPA_AUTH_STLS,
        config=settings(plaintext_auth=True, stls_available=True),
    ),
    Case(
        "capa-no-sasl-mechanisms",
        b"CAPA\r\n",
        capa(*BASE_CAPS, "USER", "IMPLEMENTATION postbote"),
        config=settings(in_tls=True, sasl_mechanisms=()),
    ),
    Case(
        "capa-implementation-configurable",
        b"capa\r\n",
        capa(*BASE_CAPS, "IMPLEMENTATION mailer 2.0"),
        config=settings(implementation="mailer 2.0"),
    ),
    Case("capa-with-argument", b"CAPA x\r\n", R_NO_ARGS),
    Case("login", LOGIN, R_USER + R_LOGIN, (E_LOGIN,)),
    Case("login-lowercase", b"user alice\r\npass s3cret\r\n", R_USER + R_LOGIN, (E_LOGIN,)),
    Case("login-bare-lf", b"USER alice\nPASS s3cret\n", R_USER + R_LOGIN, (E_LOGIN,)),
    Case(
        "login-bad-password",
        b"USER alice\r\nPASS wrong\r\n" + LOGIN,
        R_USER + R_BAD_LOGIN + R_USER + R_LOGIN,
        (LoginRequested("alice", "wrong"), E_LOGIN),
    ),
    # RFC 1939 §7: the password is the rest of the line, spaces included.
    Case(
        "password-with-spaces",
        b"USER bob\r\nPASS  two words \r\n",
        R_USER + R_LOGIN,
        (LoginRequested("bob", " two words "),),
        policy=Policy(credentials={"bob": " two words "}),
    ),
    Case(
        "utf8-user",
        "USER jörg\r\nPASS pässword\r\n".encode(),
        R_USER + R_LOGIN,
        (LoginRequested("jörg", "pässword"),),
        policy=Policy(credentials={"jörg": "pässword"}),
    ),
    Case(
        "in-use",
        LOGIN + b"STAT\r\n",
        R_USER + R_IN_USE + R_BAD_STATE,
        (E_LOGIN,),
        policy=Policy(in_use=True),
    ),
    Case(
        "lockout-closes",
        b"USER alice\r\nPASS wrong\r\n" + LOGIN,
        R_USER + R_BAD_LOGIN,
        (LoginRequested("alice", "wrong"), CLOSED),
        policy=Policy(lockout=True),
    ),
    Case("pass-without-user", b"PASS s3cret\r\n", R_USER_FIRST),
    Case(
        "pass-must-follow-user",
        b"USER alice\r\nCAPA\r\nPASS s3cret\r\n",
        R_USER + R_CAPA_AUTH + R_USER_FIRST,
    ),
    Case("user-without-name", b"USER\r\nUSER \r\n", b"-ERR user name required\r\n" * 2),
    Case(
        "pass-without-password", b"USER alice\r\nPASS\r\n", R_USER + b"-ERR password required\r\n"
    ),
    Case("user-refused-without-tls", LOGIN, R_NEED_TLS * 2, config=STLS_PLAIN),
    Case(
        "user-allowed-plaintext-configured",
        LOGIN,
        R_USER + R_LOGIN,
        (E_LOGIN,),
        config=settings(plaintext_auth=True),
    ),
    Case("apop-not-supported", b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n", R_APOP),
    Case(
        "transaction-commands-refused",
        b"STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nNOOP\r\nRSET\r\nTOP 1 1\r\nUIDL\r\n",
        R_BAD_STATE * 8,
        config=settings(max_errors=100),
    ),
    Case("quit", b"QUIT\r\nCAPA\r\n", R_SIGNOFF, (CLOSED,)),
    Case("quit-with-argument", b"QUIT now\r\n", R_NO_ARGS),
    Case("unknown-command", b"FROB\r\nLAST\r\n\r\n", R_UNKNOWN * 3),
    Case("verb-needs-single-space", b"CAPA\tx\r\n", R_UNKNOWN),
    Case("bare-cr-in-line", b"CA\rPA\r\nCAPA\r\n", R_BARE_CR + R_CAPA_AUTH),
    Case("invalid-utf8", b"USER \xff\xfe\r\n", R_BAD_UTF8),
    # RFC 2449 §4: 255 octets including CRLF is the limit.
    Case("line-255-accepted", b"USER " + b"a" * 248 + b"\r\n", R_USER),
    Case("line-256-refused", b"USER " + b"a" * 249 + b"\r\nCAPA\r\n", R_TOO_LONG + R_CAPA_AUTH),
    Case("bare-lf-line-255-accepted", b"USER " + b"a" * 249 + b"\n", R_USER),
    Case("line-huge-refused", b"NOOP " + b"x" * 5000 + b"\r\nCAPA\r\n", R_TOO_LONG + R_CAPA_AUTH),
    Case("line-huge-cr-split", b"x" * 300 + b"\r\r\n", R_TOO_LONG),
]


AUTH = [
    Case(
        "auth-list-mechanisms",
        b"AUTH\r\n",
        b"+OK supported mechanisms follow\r\nPLAIN\r\nSCRAM-SHA-256\r\n.\r\n",
    ),
    Case(
        "auth-refused-without-tls",
        b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH\r\n",
        R_NEED_TLS * 2,
        config=STLS_PLAIN,
    ),
    Case(
        "auth-plain-initial-response", b"AUTH PLAIN " + PLAIN_OK + b"\r\n", R_LOGIN, (E_PLAIN_OK,)
    ),
    Case("auth-plain-lowercase", b"auth plain " + PLAIN_OK + b"\r\n", R_LOGIN, (E_PLAIN_OK,)),
    Case(
        "auth-plain-challenge",
        b"AUTH PLAIN\r\n" + PLAIN_OK + b"\r\n",
        R_CHALLENGE_EMPTY + R_LOGIN,
        (AuthRequested("PLAIN", None), AuthResponse(b"\0alice\0s3cret")),
    ),
    Case(
        "auth-plain-bad",
        b"AUTH PLAIN " + PLAIN_BAD + b"\r\nSTAT\r\n",
        R_BAD_LOGIN + R_BAD_STATE,
        (AuthRequested("PLAIN", b"\0alice\0wrong"),),
    ),
    # RFC 5034 §4: "=" is an empty initial response, unlike no initial response.
    Case(
        "auth-plain-empty-initial", b"AUTH PLAIN =\r\n", R_BAD_LOGIN, (AuthRequested("PLAIN", b""),)
    ),
    Case(
        "auth-empty-response-line",
        b"AUTH PLAIN\r\n\r\n",
        R_CHALLENGE_EMPTY + R_BAD_LOGIN,
        (AuthRequested("PLAIN", None), AuthResponse(b"")),
    ),
    Case(
        "auth-abort",
        b"AUTH PLAIN\r\n*\r\nCAPA\r\n",
        R_CHALLENGE_EMPTY + R_CANCELLED + R_CAPA_AUTH,
        (AuthRequested("PLAIN", None), AuthAborted()),
    ),
    Case(
        "auth-bad-base64-response",
        b"AUTH PLAIN\r\nnot base64!\r\nCAPA\r\n",
        R_CHALLENGE_EMPTY + R_BAD_BASE64 + R_CAPA_AUTH,
        (AuthRequested("PLAIN", None), AuthAborted()),
    ),
    Case("auth-bad-base64-initial", b"AUTH PLAIN ab$=\r\n", R_BAD_BASE64),
    Case("auth-unknown-mechanism", b"AUTH CRAM-MD5\r\nAUTH LOGIN\r\n", R_NO_MECH * 2),
    Case("auth-too-many-arguments", b"AUTH PLAIN = x\r\nAUTH PLAIN  =\r\n", R_SYNTAX * 2),
    Case(
        "auth-scram-multi-step",
        b"AUTH SCRAM-SHA-256 "
        + b64(SCRAM_CLIENT_FIRST)
        + b"\r\n"
        + b64(SCRAM_CLIENT_FINAL)
        + b"\r\n\r\nSTAT\r\n",
        b"+ "
        + b64(SCRAM_SERVER_FIRST)
        + b"\r\n+ "
        + b64(SCRAM_SERVER_FINAL)
        + b"\r\n"
        + R_LOGIN
        + R_STAT,
        (
            AuthRequested("SCRAM-SHA-256", SCRAM_CLIENT_FIRST),
            AuthResponse(SCRAM_CLIENT_FINAL),
            AuthResponse(b""),
        ),
    ),
    # RFC 5034 §4: response lines are not bound by 255 octets; ours by 8 KiB.
    Case(
        "auth-long-response-line",
        b"AUTH PLAIN\r\n" + b64(b"\0alice\0" + b"p" * 3000) + b"\r\n",
        R_CHALLENGE_EMPTY + R_BAD_LOGIN,
        (AuthRequested("PLAIN", None), AuthResponse(b"\0alice\0" + b"p" * 3000)),
    ),
    Case(
        "auth-over-long-response-line",
        b"AUTH PLAIN\r\n" + b"A" * (MAX_AUTH_LINE + 10) + b"\r\nCAPA\r\n",
        R_CHALLENGE_EMPTY + R_TOO_LONG + R_CAPA_AUTH,
        (AuthRequested("PLAIN", None), AuthAborted()),
    ),
    Case(
        "auth-in-transaction",
        LOGIN + b"AUTH PLAIN =\r\n",
        R_USER + R_LOGIN + R_BAD_STATE,
        (E_LOGIN,),
    ),
]


STLS = [
    # RFC 2595 §4, CVE-2011-0411: plaintext pipelined after STLS is discarded.
    Case(
        "stls-injection-discarded",
        (b"STLS\r\nUSER evil\r\nPASS evil\r\n", b"CAPA\r\n" + LOGIN),
        R_BEGIN_TLS + R_CAPA_AUTH + R_USER + R_LOGIN,
        (StlsRequested(), E_LOGIN),
        config=STLS_PLAIN,
    ),
    Case(
        "stls-forgets-user",
        (b"USER alice\r\nSTLS\r\n", b"PASS s3cret\r\n"),
        R_NEED_TLS + R_BEGIN_TLS + R_USER_FIRST,
        (StlsRequested(),),
        config=STLS_PLAIN,
    ),
    Case(
        "stls-twice",
        (b"STLS\r\n", b"STLS\r\n"),
        R_BEGIN_TLS + R_TLS_ACTIVE,
        (StlsRequested(),),
        config=STLS_PLAIN,
    ),
    Case("stls-unavailable", b"STLS\r\n", R_NO_STLS, config=settings()),
    Case(
        "stls-in-tls", b"STLS\r\n", R_TLS_ACTIVE, config=settings(in_tls=True, stls_available=True)
    ),
    Case("stls-with-argument", b"STLS x\r\n", R_NO_ARGS, config=STLS_PLAIN),
    Case(
        "stls-in-transaction",
        LOGIN + b"STLS\r\n",
        R_USER + R_LOGIN + R_BAD_STATE,
        (E_LOGIN,),
        config=settings(plaintext_auth=True, stls_available=True),
    ),
    Case(
        "stls-capa-in-transaction-same-as-before",
        LOGIN + b"CAPA\r\n",
        R_USER + R_LOGIN + R_CAPA_AUTH_STLS,
        (E_LOGIN,),
        config=settings(plaintext_auth=True, stls_available=True),
    ),
]


TRANSACTION = [
    Case("stat", LOGIN + b"STAT\r\n", R_USER + R_LOGIN + R_STAT, (E_LOGIN,)),
    Case("stat-with-argument", LOGIN + b"STAT 1\r\n", R_USER + R_LOGIN + R_NO_ARGS, (E_LOGIN,)),
    # RFC 2449 §5: CAPA in TRANSACTION announces what AUTHORIZATION offered.
    Case("capa", LOGIN + b"CAPA\r\n", R_USER + R_LOGIN + R_CAPA_AUTH, (E_LOGIN,)),
    Case("list", LOGIN + b"LIST\r\n", R_USER + R_LOGIN + R_LIST, (E_LOGIN,)),
    Case("list-one", LOGIN + b"LIST 2\r\n", R_USER + R_LOGIN + b"+OK 2 33\r\n", (E_LOGIN,)),
    Case(
        "list-bad-numbers",
        LOGIN + b"LIST 0\r\nLIST 4\r\nLIST x\r\nLIST -1\r\nLIST 1 2\r\nLIST 99999999999\r\n",
        R_USER + R_LOGIN + R_NO_SUCH * 2 + R_BAD_NUMBER * 2 + R_SYNTAX + R_BAD_NUMBER,
        (E_LOGIN,),
    ),
    Case("uidl", LOGIN + b"UIDL\r\n", R_USER + R_LOGIN + R_UIDL, (E_LOGIN,)),
    Case("uidl-one", LOGIN + b"uidl 3\r\n", R_USER + R_LOGIN + b"+OK 3 uid-3\r\n", (E_LOGIN,)),
    Case("noop", LOGIN + b"NOOP\r\n", R_USER + R_LOGIN + R_OK, (E_LOGIN,)),
    Case("retr-plain", LOGIN + b"RETR 1\r\n", R_USER + R_LOGIN + R_RETR1, (E_LOGIN, retr(1))),
    # RFC 1939 §3: dot-stuffing; bare LF -> CRLF; a final CRLF is added.
    Case(
        "retr-dots-bare-lf", LOGIN + b"RETR 2\r\n", R_USER + R_LOGIN + R_RETR2, (E_LOGIN, retr(2))
    ),
    Case("retr-three", LOGIN + b"RETR 3\r\n", R_USER + R_LOGIN + R_RETR3, (E_LOGIN, retr(3))),
    Case(
        "retr-bad-arguments",
        LOGIN + b"RETR\r\nRETR 1 2\r\nRETR x\r\nRETR 9\r\n",
        R_USER + R_LOGIN + R_SYNTAX * 2 + R_BAD_NUMBER + R_NO_SUCH,
        (E_LOGIN,),
    ),
    Case(
        "retr-file-gone",
        LOGIN + b"RETR 2\r\nRETR 1\r\n",
        R_USER + R_LOGIN + R_GONE + R_RETR1,
        (E_LOGIN, retr(2), retr(1)),
        policy=Policy(missing=frozenset({2})),
    ),
    Case(
        "top-zero",
        LOGIN + b"TOP 3 0\r\n",
        R_USER + R_LOGIN + R_TOP_FOLLOWS + M3_HEAD + b".\r\n",
        (E_LOGIN, retr(3, 0)),
    ),
    Case(
        "top-two",
        LOGIN + b"TOP 3 2\r\n",
        R_USER + R_LOGIN + R_TOP_FOLLOWS + M3_HEAD + b"line1\r\nline2\r\n.\r\n",
        (E_LOGIN, retr(3, 2)),
    ),
    Case(
        "top-more-than-exist",
        LOGIN + b"TOP 3 100\r\n",
        R_USER + R_LOGIN + R_TOP_FOLLOWS + R_RETR3.split(b"\r\n", 1)[1],
        (E_LOGIN, retr(3, 100)),
    ),
    Case(
        "top-dots-bare-lf",
        LOGIN + b"TOP 2 2\r\n",
        R_USER + R_LOGIN + R_TOP_FOLLOWS + b"Subject: dots\r\n\r\n..x\r\n..\r\n.\r\n",
        (E_LOGIN, retr(2, 2)),
    ),
    Case(
        "top-bad-arguments",
        LOGIN + b"TOP 1\r\nTOP 1 x\r\nTOP 1 -1\r\nTOP x 1\r\nTOP 7 1\r\nTOP 1 1 1\r\n",
        R_USER + R_LOGIN + R_SYNTAX + R_BAD_LINES * 2 + R_BAD_NUMBER + R_NO_SUCH + R_SYNTAX,
        (E_LOGIN,),
    ),
    Case(
        "dele-then-deleted-is-gone",
        LOGIN
        + b"DELE 2\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nUIDL 2\r\nRETR 2\r\nTOP 2 0\r\nDELE 2\r\n",
        R_USER
        + R_LOGIN
        + b"+OK message 2 deleted\r\n"
        + b"+OK 2 83\r\n"
        + b"+OK 2 messages (83 octets)\r\n1 23\r\n3 60\r\n.\r\n"
        + b"+OK unique-id listing follows\r\n1 uid-1\r\n3 uid-3\r\n.\r\n"
        + R_NO_SUCH * 5,
        (E_LOGIN,),
    ),
    Case(
        "rset-undeletes",
        LOGIN + b"DELE 1\r\nDELE 3\r\nRSET\r\nSTAT\r\nRETR 1\r\n",
        R_USER
        + R_LOGIN
        + b"+OK message 1 deleted\r\n+OK message 3 deleted\r\n"
        + R_LOGIN
        + R_STAT
        + R_RETR1,
        (E_LOGIN, retr(1)),
    ),
    Case(
        "quit-updates",
        LOGIN + b"RETR 1\r\nTOP 2 0\r\nRETR 3\r\nDELE 3\r\nQUIT\r\nNOOP\r\n",
        R_USER
        + R_LOGIN
        + R_RETR1
        + R_TOP_FOLLOWS
        + b"Subject: dots\r\n\r\n.\r\n"
        + R_RETR3
        + b"+OK message 3 deleted\r\n"
        + R_SIGNOFF,
        # retrieved: RETR'd and not deleted; TOP does not count.
        (E_LOGIN, retr(1), retr(2, 0), retr(3), UpdateRequested((3,), (1,)), CLOSED),
    ),
    Case(
        "quit-update-failed",
        LOGIN + b"DELE 1\r\nQUIT\r\n",
        R_USER + R_LOGIN + b"+OK message 1 deleted\r\n" + R_UPDATE_FAILED,
        (E_LOGIN, UpdateRequested((1,), ()), CLOSED),
        policy=Policy(update_ok=False),
    ),
    Case(
        "authorization-commands-refused",
        LOGIN + b"USER alice\r\nPASS s3cret\r\nAPOP a b\r\n",
        R_USER + R_LOGIN + R_BAD_STATE * 3,
        (E_LOGIN,),
    ),
    Case(
        "empty-maildrop",
        LOGIN + b"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\n",
        R_USER
        + b"+OK maildrop has 0 messages (0 octets)\r\n+OK 0 0\r\n"
        + b"+OK 0 messages (0 octets)\r\n.\r\n+OK unique-id listing follows\r\n.\r\n"
        + R_NO_SUCH,
        (E_LOGIN,),
        policy=Policy(messages=()),
    ),
    # RFC 1939 §6: without QUIT there is no UPDATE; a dropped connection deletes nothing.
    Case(
        "eof-without-quit",
        LOGIN + b"DELE 1\r\nRETR 2\r\n",
        R_USER + R_LOGIN + b"+OK message 1 deleted\r\n" + R_RETR2,
        (E_LOGIN, retr(2), CLOSED),
        eof=True,
    ),
    Case(
        "eof-after-pipelined-quit",
        LOGIN + b"DELE 1\r\nQUIT\r\n",
        R_USER + R_LOGIN + b"+OK message 1 deleted\r\n" + R_SIGNOFF,
        (E_LOGIN, UpdateRequested((1,), ()), CLOSED),
        eof=True,
    ),
    Case(
        "eof-partial-quit-ignored",
        LOGIN + b"DELE 1\r\nQUIT",
        R_USER + R_LOGIN + b"+OK message 1 deleted\r\n",
        (E_LOGIN, CLOSED),
        eof=True,
    ),
    Case("eof-in-authorization", b"USER alice\r\n", R_USER, (CLOSED,), eof=True),
    Case(
        "eof-in-sasl-exchange",
        b"AUTH PLAIN\r\n",
        R_CHALLENGE_EMPTY,
        (AuthRequested("PLAIN", None), CLOSED),
        eof=True,
    ),
]


PIPELINING_AND_ERRORS = [
    # RFC 2449 §6.6: everything in one packet, replies strictly in order.
    Case(
        "pipelined-session",
        b"CAPA\r\n" + LOGIN + b"STAT\r\nRETR 2\r\nFROB\r\nLIST 3\r\nDELE 2\r\nRETR 1\r\nQUIT\r\n",
        R_CAPA_AUTH
        + R_USER
        + R_LOGIN
        + R_STAT
        + R_RETR2
        + R_UNKNOWN
        + b"+OK 3 60\r\n"
        + b"+OK message 2 deleted\r\n"
        + R_RETR1
        + R_SIGNOFF,
        (E_LOGIN, retr(2), retr(1), UpdateRequested((2,), (1,)), CLOSED),
    ),
    # The last bad command allowed gets the closing reply instead of its own.
    Case(
        "too-many-errors",
        b"FROB\r\nSTAT\r\nFROB\r\nCAPA\r\n",
        R_UNKNOWN + R_BAD_STATE + R_TOO_MANY,
        (CLOSED,),
        config=settings(in_tls=True, max_errors=3),
    ),
    Case(
        "failed-logins-count-as-errors",
        b"USER alice\r\nPASS x\r\nUSER alice\r\nPASS y\r\nCAPA\r\n",
        R_USER + R_BAD_LOGIN + R_USER + R_TOO_MANY,
        (LoginRequested("alice", "x"), LoginRequested("alice", "y"), CLOSED),
        config=settings(in_tls=True, max_errors=2),
    ),
    Case(
        "no-such-message-is-not-an-error",
        LOGIN + b"RETR 9\r\nLIST 9\r\nDELE 9\r\nSTAT\r\n",
        R_USER + R_LOGIN + R_NO_SUCH * 3 + R_STAT,
        (E_LOGIN,),
        config=settings(in_tls=True, max_errors=1),
    ),
    Case(
        "over-long-lines-count",
        b"x" * 300 + b"\r\n" + b"y" * 300 + b"\nCAPA\r\n",
        R_TOO_LONG + R_TOO_MANY,
        (CLOSED,),
        config=settings(in_tls=True, max_errors=2),
    ),
]


@pytest.mark.parametrize("case", AUTHORIZATION, ids=ids(AUTHORIZATION))
def test_authorization(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("case", AUTH, ids=ids(AUTH))
def test_auth(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("case", STLS, ids=ids(STLS))
def test_stls(case: Case) -> None:
    r = check_case(case)
    if isinstance(case.client, tuple) and len(case.client) > 1:
        assert r.conn.in_tls


@pytest.mark.parametrize("case", TRANSACTION, ids=ids(TRANSACTION))
def test_transaction(case: Case) -> None:
    check_case(case)


@pytest.mark.parametrize("case", PIPELINING_AND_ERRORS, ids=ids(PIPELINING_AND_ERRORS))
def test_pipelining_and_errors(case: Case) -> None:
    check_case(case)


def test_greeting_has_no_apop_timestamp() -> None:
    s = Session()
    assert s.replies == GREETING
    assert b"<" not in GREETING  # RFC 1939 §7: APOP needs a <timestamp>; we offer none


def state_of(s: Session) -> State:
    return s.conn.state  # a call, so that type narrowing does not outlive the next feed


def test_states_follow_rfc1939() -> None:
    s = Session(TLS)
    assert state_of(s) is State.AUTHORIZATION
    s.feed(LOGIN)
    assert state_of(s) is State.TRANSACTION
    s.auto = False
    s.feed(b"QUIT\r\n")
    assert state_of(s) is State.UPDATE and s.paused
    s.conn.update_done(True, NOW)
    s.pump()
    assert s.conn.closed and s.output() == R_SIGNOFF


# -- decisions answered late (PAUSED) ---------------------------------------------------


def test_pipelined_commands_wait_while_paused() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN + b"RETR 1\r\nSTAT\r\nNOOP\r\n")
    assert s.events == [E_LOGIN] and s.paused
    assert s.conn.next_event() is PAUSED
    s.conn.login_ok(entries(DEFAULT.messages), NOW)
    assert s.pump() == [retr(1)] and s.paused
    assert s.output() == R_LOGIN  # STAT waits behind RETR
    assert s.conn.buffered == len(b"STAT\r\nNOOP\r\n")
    s.conn.send_message(b"Subject: one\n\nHello\n", None, NOW)
    s.pump()
    assert s.output() == R_RETR1 + R_STAT + R_OK
    assert s.conn.next_event() is NEED_DATA


def test_send_message_bytes_are_the_glues() -> None:
    """The core transforms what it is given, whatever the snapshot said."""
    s = Session(TLS, auto=False)
    s.feed(LOGIN)
    s.conn.login_ok([MessageEntry(5, "u1")], NOW)
    s.pump()
    s.feed(b"RETR 1\r\n")
    s.conn.send_message(b"a\r\rb\r\n.", None, NOW)
    assert s.output() == b"+OK 5 octets\r\na\r\n\r\nb\r\n..\r\n.\r\n"


@pytest.mark.parametrize(
    ("message", "top", "sent"),
    [
        (b"", None, b""),
        (b"", 0, b""),
        (b"no header end", 3, b"no header end\r\n"),
        (b"H: 1\r\n", 3, b"H: 1\r\n"),
        (b"\r\nbody1\r\nbody2\r\n", 1, b"\r\nbody1\r\n"),
        (b"\nbody\n", 0, b"\r\n"),
        (b"H: 1\n\n.\n", 5, b"H: 1\r\n\r\n..\r\n"),
        (b".H: odd\r\n\r\n.\r\n", None, b"..H: odd\r\n\r\n..\r\n"),
        (b"H: 1\r\n\r\n\r\n\r\nx", 2, b"H: 1\r\n\r\n\r\n\r\n"),
        (b"H: 1\r\r\n\rb\r", None, b"H: 1\r\n\r\n\r\nb\r\n"),
    ],
)
def test_message_transparency(message: bytes, top: int | None, sent: bytes) -> None:
    s = Session(TLS, Policy(messages=(message,)))
    s.feed(LOGIN)
    command = b"RETR 1\r\n" if top is None else b"TOP 1 %d\r\n" % top
    out = s.feed(command)
    first = b"+OK %d octets\r\n" % len(crlf(message)) if top is None else R_TOP_FOLLOWS
    assert out == first + sent + b".\r\n"


def test_decision_answers_are_checked() -> None:
    s = Session(TLS, auto=False)
    with pytest.raises(LocalProtocolError):
        s.conn.login_ok([], NOW)  # nothing pending
    s.feed(LOGIN)
    with pytest.raises(LocalProtocolError):
        s.conn.send_message(b"", None, NOW)  # pending is a login
    with pytest.raises(LocalProtocolError):
        s.conn.update_done(True, NOW)
    with pytest.raises(LocalProtocolError):
        s.conn.login_failed("AUTH", "bad\r\ntext")
    with pytest.raises(LocalProtocolError):
        s.conn.login_failed("auth ]", "bad code")
    with pytest.raises(LocalProtocolError):
        s.conn.tls_established()  # no STLS
    s.conn.login_ok(entries(DEFAULT.messages), NOW)
    s.pump()
    s.feed(b"TOP 1 2\r\n")
    with pytest.raises(LocalProtocolError):
        s.conn.send_message(b"x", None, NOW)  # TOP 1 2 asked for two lines
    with pytest.raises(LocalProtocolError):
        s.conn.auth_challenge(b"", NOW)
    with pytest.raises(LocalProtocolError):
        s.conn.message_unavailable("line\nbreak", NOW)
    s.conn.message_unavailable("gone", NOW)  # still pending after the refusals
    assert s.output() == b"-ERR [SYS/TEMP] gone\r\n"


def test_login_delay_code() -> None:
    """RFC 2449 §8: LOGIN-DELAY (and any other code) passes through."""
    s = Session(TLS, auto=False)
    s.feed(LOGIN)
    s.conn.login_failed("LOGIN-DELAY", "wait a minute", now=NOW)
    s.pump()
    assert s.output() == b"-ERR [LOGIN-DELAY] wait a minute\r\n"
    assert s.conn.state is State.AUTHORIZATION and not s.conn.closed


def test_stls_handshake_pending() -> None:
    s = Session(STLS_PLAIN)
    out = s.feed(b"STLS\r\nCAPA\r\n")
    assert out == R_BEGIN_TLS and s.events == [StlsRequested()] and s.paused
    assert s.conn.mode is Mode.TLS_PENDING and s.conn.get_timer() is None
    s.feed(b"USER injected\r\n")  # before the handshake completes: dropped
    assert s.conn.buffered == 0
    assert s.establish_tls() == b""  # RFC 2595 §4: no new greeting
    assert s.feed(b"CAPA\r\n") == R_CAPA_AUTH


def test_eof_during_tls_handshake() -> None:
    s = Session(STLS_PLAIN)
    s.feed(b"STLS\r\n")
    s.eof()
    assert s.conn.closed and without_reasons(s.events) == [StlsRequested(), CLOSED]
    s.conn.tls_established()  # a late handshake completion is ignored
    assert s.conn.closed


def test_eof_while_paused_waits_for_the_answer() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN + b"RETR 1\r\nQUIT\r\n")
    s.conn.login_ok(entries(DEFAULT.messages), NOW)
    s.pump()
    s.eof()
    assert not s.conn.closed and s.paused
    s.conn.send_message(DEFAULT.messages[0], None, NOW)
    s.pump()
    assert s.events[-1] == UpdateRequested((), (1,))
    s.conn.update_done(True, NOW)
    s.pump()
    assert s.conn.closed and s.output().endswith(R_SIGNOFF)
    assert without_reasons(s.events)[-1] == CLOSED


# -- time ---------------------------------------------------------------------------------


def test_autologout_in_transaction_deletes_nothing() -> None:
    s = Session(settings(in_tls=True, autologout=600.0))
    s.feed(LOGIN)
    s.feed(b"DELE 1\r\n", now=10.0)
    assert s.conn.get_timer() == 610.0
    s.conn.handle_timer(609.9)
    assert not s.conn.closed
    s.conn.handle_timer(610.0)
    s.pump()
    assert s.output() == R_AUTOLOGOUT
    assert without_reasons(s.events) == [E_LOGIN, CLOSED]
    assert s.events[-1] == ConnectionClosed("autologout")
    assert s.conn.get_timer() is None


def test_activity_restarts_the_timer() -> None:
    s = Session(TLS)
    s.feed(b"CAPA\r\n", now=100.0)
    assert s.conn.get_timer() == 700.0
    s.feed(b"CA", now=200.0)  # any bytes count as activity
    assert s.conn.get_timer() == 800.0


def test_no_timer_while_the_glue_decides() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN, now=5.0)
    assert s.conn.get_timer() is None
    s.conn.handle_timer(10_000.0)  # due long ago, but a decision is pending
    assert not s.conn.closed
    s.conn.login_ok([], now=50.0)
    assert s.conn.get_timer() == 650.0


def test_autologout_in_authorization() -> None:
    s = Session(settings(autologout=30.0))
    s.conn.handle_timer(NOW + 30.0)
    s.pump()
    assert s.conn.closed and s.output() == R_AUTOLOGOUT


# -- shutdown -----------------------------------------------------------------------------


def test_shutdown_closes_idle_session() -> None:
    s = Session(TLS)
    s.feed(LOGIN + b"DELE 1\r\n")
    s.conn.start_shutdown()
    s.pump()
    assert s.output() == R_SHUTDOWN
    assert without_reasons(s.events) == [E_LOGIN, CLOSED]  # no UpdateRequested


def test_shutdown_waits_for_the_pending_answer() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN + b"STAT\r\n")
    s.conn.start_shutdown()
    assert not s.conn.closed
    s.conn.login_ok(entries(DEFAULT.messages), NOW)
    s.pump()
    assert s.output() == R_LOGIN + R_SHUTDOWN  # the pipelined STAT is not run
    assert s.conn.closed


def test_shutdown_during_update_lets_it_finish() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN)
    s.conn.login_ok(entries(DEFAULT.messages), NOW)
    s.feed(b"DELE 1\r\nQUIT\r\n")
    s.conn.start_shutdown()
    s.conn.update_done(True, NOW)
    s.pump()
    assert s.output().endswith(R_SIGNOFF) and s.conn.closed


def test_shutdown_after_tls_handshake() -> None:
    s = Session(STLS_PLAIN)
    s.feed(b"STLS\r\n")
    s.conn.start_shutdown()
    assert not s.conn.closed
    assert s.establish_tls() == R_SHUTDOWN
    assert s.conn.closed


def test_answers_after_close_are_ignored() -> None:
    s = Session(TLS, auto=False)
    s.feed(LOGIN)
    s.conn.login_failed("AUTH", "no", close=True, now=NOW)
    s.pump()
    assert s.conn.closed
    s.conn.receive_data(b"CAPA\r\n", NOW)
    s.conn.start_shutdown()
    s.conn.handle_timer(1e9)
    s.eof()
    assert s.conn.next_event() is NEED_DATA
    assert s.output() == b""
    assert sum(isinstance(e, ConnectionClosed) for e in s.events) == 1


# -- bounds -------------------------------------------------------------------------------


def test_memory_bounded_without_newline() -> None:
    s = Session(TLS)
    for _ in range(1000):
        s.feed(b"x" * 1024)  # Session.pump asserts the bound at every NEED_DATA
    assert s.conn.buffered <= 255
    assert s.feed(b"\r\nCAPA\r\n") == R_TOO_LONG + R_CAPA_AUTH


def test_auth_line_memory_bounded() -> None:
    s = Session(TLS)
    s.feed(b"AUTH PLAIN\r\n")
    for _ in range(100):
        s.feed(b"A" * 1024)
    assert s.conn.buffered <= MAX_AUTH_LINE
    assert s.feed(b"\r\n") == R_TOO_LONG
    assert s.conn.mode is Mode.COMMAND


# -- settings and snapshot validation ----------------------------------------------------


@pytest.mark.parametrize(
    ("size", "uidl"),
    [(-1, "u"), (1, ""), (1, "a" * 71), (1, "has space"), (1, "tab\t"), (1, "ü")],
)
def test_message_entry_rejects(size: int, uidl: str) -> None:
    with pytest.raises(ValueError):
        MessageEntry(size, uidl)


def test_message_entry_accepts_rfc_range() -> None:
    assert MessageEntry(0, "!" + "~" * 69).uidl.endswith("~")


@pytest.mark.parametrize(
    "overrides",
    [
        {"hostname": ""},
        {"hostname": "a b"},
        {"hostname": "x\r\n"},
        {"implementation": "x\r\ny"},
        {"sasl_mechanisms": ("plain",)},
        {"sasl_mechanisms": ("",)},
        {"autologout": 0.0},
        {"max_errors": 0},
    ],
)
def test_settings_rejects(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Pop3Settings(**{"hostname": "pop.example.net", **overrides})  # type: ignore[arg-type]


def test_connection_starts_in_authorization() -> None:
    conn = Pop3Connection(settings(in_tls=True), 0.0)
    assert conn.state is State.AUTHORIZATION and conn.in_tls and conn.mode is Mode.COMMAND
    assert conn.next_event() is NEED_DATA and conn.data_to_send() == b""


# Keep the table ids unique: a duplicate would hide a case.
ALL_CASES = AUTHORIZATION + AUTH + STLS + TRANSACTION + PIPELINING_AND_ERRORS


def test_case_ids_unique() -> None:
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES)
