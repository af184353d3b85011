"""Property tests of the POP3 server core (hypothesis).

* Random command sequences, fed one line at a time, never crash, and each line gets
  exactly one response: a status line starting with "+OK", "-ERR" or "+ ", followed
  (for CAPA, LIST, UIDL, RETR, TOP and AUTH listings) by dot-stuffed lines and ".CRLF".
  A model of the maildrop (RFC 1939 §5-6) predicts STAT, LIST, UIDL and the UPDATE marks.
* Any byte stream, in any configuration, is answered without an exception, with no bare
  CR or LF ever sent and the input held back bounded (the driver checks both).
* Chunking invariance: the same stream cut two random ways gives the same result.
* RETR of any message, un-stuffed, is that message CRLF-normalised; TOP is its header
  and the first lines of its body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postbote.pop3.events import UpdateRequested
from postbote.pop3.protocol import Mode, Pop3Settings
from tests.pop3.helpers import (
    MESSAGES,
    Policy,
    Session,
    b64,
    crlf,
    drive,
    unstuff,
)
from tests.pop3.helpers import settings as pop3_settings

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIGS = [
    pop3_settings(in_tls=True, max_errors=1000),
    pop3_settings(stls_available=True, max_errors=1000),
    pop3_settings(plaintext_auth=True, stls_available=True, max_errors=5),
    pop3_settings(in_tls=True, sasl_mechanisms=(), max_errors=3),
]
POLICIES = [
    Policy(),
    Policy(missing=frozenset({2}), update_ok=False),
    Policy(in_use=True),
    Policy(lockout=True, messages=(b"", b".\n.\n", b"H: x\r\n\r\nbody")),
]

# -- strategies ---------------------------------------------------------------------

COMMANDS = [
    b"CAPA",
    b"USER alice",
    b"USER bob",
    b"PASS s3cret",
    b"PASS wrong",
    b"APOP alice 0123",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH PLAIN " + b64(b"\0alice\0s3cret"),
    b"AUTH PLAIN =",
    b"AUTH SCRAM-SHA-256",
    b"AUTH X-UNKNOWN",
    b64(b"\0alice\0s3cret"),
    b"*",
    b"STLS",
    b"STAT",
    b"LIST",
    b"UIDL",
    b"NOOP",
    b"RSET",
    b"QUIT",
    b"FROB",
    b"",
    b".",
    b"list x",
    b"TOP 1",
    b"RETR 1 2",
    b"x" * 300,
    b"NOOP \xff",
]
NUMBERED = ["LIST", "UIDL", "RETR", "DELE"]

plain_command = st.sampled_from(COMMANDS)
numbered_command = st.builds(
    lambda verb, n: f"{verb} {n}".encode(),
    st.sampled_from(NUMBERED),
    st.one_of(st.integers(min_value=1, max_value=3), st.integers(min_value=0, max_value=5)),
)
top_command = st.builds(
    lambda n, lines: f"TOP {n} {lines}".encode(),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=6),
)
command = st.one_of(plain_command, numbered_command, numbered_command, top_command)
line_end = st.sampled_from([b"\r\n", b"\n"])
LOGIN_OK = b"USER alice\r\nPASS s3cret\r\n"
login = st.sampled_from(
    [
        LOGIN_OK,
        LOGIN_OK,
        b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n",
        b"AUTH PLAIN =\r\n",
        b"",
    ]
)


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """A login (or not), random command lines with their line ends, often a QUIT."""
    first = draw(login)
    lines = [first] if first else []
    for cmd in draw(st.lists(command, max_size=25)):
        lines.append(cmd + draw(line_end))
    if draw(st.booleans()):
        lines.append(b"QUIT\r\n")
    return lines


# -- one line, one response ----------------------------------------------------------------

MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
MULTILINE_WITHOUT_ARGUMENT = {"LIST", "UIDL", "AUTH"}
STATUS = re.compile(rb"\A(\+OK|-ERR|\+ )[^\r\n]*\r\n")


def expects_multiline(line: bytes, mode: Mode) -> bool:
    if mode is not Mode.COMMAND:
        return False
    verb, _, arg = line.rstrip(b"\r\n").partition(b" ")
    name = verb.decode("ascii", "replace").upper()
    if name in MULTILINE_ALWAYS:
        return True
    return name in MULTILINE_WITHOUT_ARGUMENT and not arg.strip(b" ")


def split_response(out: bytes, multiline: bool) -> tuple[bytes, bytes | None]:
    """(status line, multi-line body un-stuffed or None); asserts the framing."""
    m = STATUS.match(out)
    assert m, out
    status = m[0]
    if not (multiline and status.startswith(b"+OK")):
        assert out == status, out
        return status, None
    rest = out[len(status) :]
    assert rest.endswith(b".\r\n"), out
    body = rest[:-3]
    for body_line in body.split(b"\r\n")[:-1]:
        assert body_line != b"." and not re.match(rb"\A\.[^.]", body_line), out
    return status, unstuff(body)


@dataclass
class Model:
    """The maildrop as RFC 1939 §5-6 describe it."""

    messages: tuple[bytes, ...]
    deleted: set[int] = field(default_factory=set)
    retrieved: set[int] = field(default_factory=set)

    def live(self) -> list[int]:
        return [n for n in range(1, len(self.messages) + 1) if n not in self.deleted]

    def stat(self) -> bytes:
        live = self.live()
        return b"+OK %d %d\r\n" % (len(live), sum(len(crlf(self.messages[n - 1])) for n in live))


def check_line(model: Model | None, line: bytes, status: bytes, body: bytes | None) -> None:
    """What the model says about a response in TRANSACTION."""
    if model is None:
        return
    verb, _, arg = line.rstrip(b"\r\n").partition(b" ")
    name = verb.upper()
    args = arg.split()
    n = int(args[0]) if args and args[0].isdigit() else None
    if name == b"STAT" and not args:
        assert status == model.stat()
    elif name == b"LIST" and not args:
        assert body == b"".join(
            b"%d %d\r\n" % (k, len(crlf(model.messages[k - 1]))) for k in model.live()
        )
    elif name == b"UIDL" and not args:
        assert body == b"".join(b"%d uid-%d\r\n" % (k, k) for k in model.live())
    elif name == b"RSET":
        model.deleted.clear()
    elif name in (b"DELE", b"RETR") and len(args) == 1 and n is not None:
        live = n in model.live()
        assert status.startswith(b"+OK") == live or (
            name == b"RETR" and status.startswith(b"-ERR [SYS/TEMP]")
        )
        if live and name == b"DELE":
            model.deleted.add(n)
        if status.startswith(b"+OK") and name == b"RETR":
            model.retrieved.add(n)
            assert body == crlf(model.messages[n - 1])


@PROPERTY
@given(
    lines=sessions(),
    config=st.sampled_from([CONFIGS[0], CONFIGS[0], *CONFIGS]),  # mostly logged in
    policy=st.sampled_from([POLICIES[0], POLICIES[1], *POLICIES]),
)
def test_one_response_per_line(lines: list[bytes], config: Pop3Settings, policy: Policy) -> None:
    s = Session(config, policy)
    model: Model | None = None
    for raw in lines:
        for line in raw.splitlines(keepends=True):
            mode, closed, in_transaction = s.conn.mode, s.conn.closed, s.conn.state.name
            out = s.feed(line)
            if s.conn.mode is Mode.TLS_PENDING:
                out += s.establish_tls()
            if closed:
                assert out == b""
                continue
            status, body = split_response(out, expects_multiline(line, mode))
            if in_transaction == "TRANSACTION" and mode is Mode.COMMAND:
                check_line(model, line, status, body)
            if model is None and s.conn.state.name == "TRANSACTION":
                model = Model(policy.messages)
    updates = [e for e in s.events if isinstance(e, UpdateRequested)]
    if updates:
        assert model is not None and len(updates) == 1
        deleted = tuple(sorted(model.deleted))
        assert updates[0] == UpdateRequested(
            deleted, tuple(sorted(model.retrieved - model.deleted))
        )


# -- arbitrary bytes -------------------------------------------------------------------------

SEPARATORS = [b"\r\n", b"\n", b"\r", b" ", b"\r\r\n", b"\0"]
fragment = st.one_of(
    st.sampled_from(COMMANDS),
    st.sampled_from(SEPARATORS),
    st.binary(max_size=40),
    st.just(b"y" * 9000),
)
stream = st.lists(fragment, max_size=40).map(b"".join)


@PROPERTY
@given(data=stream, config=st.sampled_from(CONFIGS), policy=st.sampled_from(POLICIES))
def test_any_bytes_answered(data: bytes, config: Pop3Settings, policy: Policy) -> None:
    r = drive(data, policy, None, config, eof=True)
    replies = r.replies.splitlines(keepends=True)
    for reply in replies:
        assert reply.endswith(b"\r\n")
    assert r.conn.closed


@PROPERTY
@given(
    data=stream,
    config=st.sampled_from(CONFIGS),
    cuts_a=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8),
    cuts_b=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=8),
)
def test_chunking_invariance(
    data: bytes, config: Pop3Settings, cuts_a: list[int], cuts_b: list[int]
) -> None:
    login = b"USER alice\r\nPASS s3cret\r\n"
    a = drive(login + data, Policy(), cuts_a, config)
    b = drive(login + data, Policy(), cuts_b, config)
    assert a.snapshot() == b.snapshot()


# -- message transparency -----------------------------------------------------------------

message_line = st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"Subject: s", b" ", b"\r", b"a\rb"]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
)
message = st.builds(
    lambda lines, ends, last: b"".join(x + e for x, e in zip(lines, ends, strict=False)) + last,
    st.lists(message_line, max_size=12),
    st.lists(st.sampled_from([b"\r\n", b"\n", b"\r"]), min_size=12, max_size=12),
    st.binary(max_size=10),
)


def retrieve(msg: bytes, command: bytes) -> tuple[bytes, bytes | None]:
    s = Session(pop3_settings(in_tls=True), Policy(messages=(msg,)))
    s.feed(b"USER alice\r\nPASS s3cret\r\n")
    return split_response(s.feed(command), True)


@PROPERTY
@given(msg=st.one_of(message, st.binary(max_size=200)))
def test_retr_unstuffed_is_normalised_message(msg: bytes) -> None:
    status, body = retrieve(msg, b"RETR 1\r\n")
    assert status == b"+OK %d octets\r\n" % len(crlf(msg))
    assert body == crlf(msg)


@PROPERTY
@given(msg=message, lines=st.integers(min_value=0, max_value=15))
def test_top_is_header_and_body_lines(msg: bytes, lines: int) -> None:
    status, body = retrieve(msg, b"TOP 1 %d\r\n" % lines)
    assert status == b"+OK top of message follows\r\n"
    full = crlf(msg)
    assert body is not None and full.startswith(body)
    if full.startswith(b"\r\n"):
        header_end = 2
    elif b"\r\n\r\n" in full:
        header_end = full.index(b"\r\n\r\n") + 4
    else:
        assert body == full  # no blank line: all header
        return
    body_lines = full[header_end:].split(b"\r\n")[:-1]
    assert body == full[:header_end] + b"".join(line + b"\r\n" for line in body_lines[:lines])


def test_default_messages_are_varied() -> None:
    """The default mailbox exercises bare LF, dot lines and a missing final newline."""
    assert any(b"\n." in m for m in MESSAGES)
    assert any(not m.endswith(b"\n") for m in MESSAGES)
