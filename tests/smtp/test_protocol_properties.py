"""Property tests of the SMTP server core (hypothesis).

* Any byte stream, and any mix of valid and invalid command lines with random bytes,
  is answered without an exception, with well-formed replies only, and with the
  input the core holds back bounded by one line (the driver in helpers.py checks the
  replies and the bound on every step).
* Chunking invariance: the same stream cut two random ways gives the same events,
  replies and final state.
* A state machine models the phase table of RFC 5321 §4.1.4 independently: every
  (phase, command) pair either makes the legal move with a positive reply or is
  answered 4xx/5xx and leaves the phase alone.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from postbote.smtp.events import MessageComplete
from postbote.smtp.protocol import Mode, Phase, ServerSettings
from tests.smtp.helpers import (
    Policy,
    Session,
    b64,
    drive,
    reply_code,
    split_replies,
)
from tests.smtp.helpers import settings as server_settings

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIGS = [
    server_settings(max_errors=100),
    server_settings(max_errors=100, bare_newlines="normalize"),
    server_settings(max_message_size=300, max_recipients=2, max_errors=5),
    server_settings(tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_required=True),
    server_settings(
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_requires_tls=False,
        bare_newlines="normalize",
        max_errors=100,
    ),
]
POLICIES = [
    Policy(),
    Policy(reject_rcpts=frozenset({"nobody@example.net"}), reject_senders=frozenset({"<>"})),
]

# -- strategies ---------------------------------------------------------------------

COMMANDS = [
    b"EHLO client.example\r\n",
    b"HELO client.example\r\n",
    b"EHLO\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=999999999\r\n",
    "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode(),
    b"MAIL FROM:alice\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"RCPT TO:<nobody@example.net>\r\n",
    b"RCPT TO:<carol@example.net> NOTIFY=NEVER\r\n",
    b"RCPT TO:<>\r\n",
    b"DATA\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY bob\r\n",
    b"EXPN list\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN =\r\n",
    b64(b"\0alice\0s3cret") + b"\r\n",
    b64(b"alice") + b"\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b"FROB\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"hello\r\n",
    b"line with bare lf\n",
    b"line with bare cr\r",
    b"x" * 1200 + b"\r\n",
    b"NOOP " + b"y" * 2100 + b"\r\n",
]

MAIL_OK = b"MAIL FROM:<alice@example.org>\r\n"
DATA_LINES = [
    b"hello\r\n",
    b"\r\n",
    b"..dot\r\n",
    b".x\r\n",
    b"x" * 998 + b"\r\n",
    b"x" * 1200 + b"\r\n",
    b"z" * 3000,
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r\r\n.\r\n",
    b"bare lf\n",
    b"bare cr\r",
    b"MAIL FROM:<evil@x>\r\n",
]

data_block = st.lists(
    st.one_of(st.sampled_from(DATA_LINES), st.binary(max_size=40)), max_size=10
).map(lambda ts: b"DATA\r\n" + b"".join(ts) + b"\r\n.\r\n")
bdat_block = st.lists(st.binary(max_size=30), min_size=1, max_size=3).map(
    lambda chunks: (
        b"".join(b"BDAT %d\r\n" % len(c) + c for c in chunks[:-1])
        + b"BDAT %d LAST\r\n" % len(chunks[-1])
        + chunks[-1]
    )
)
transaction = st.tuples(
    st.sampled_from([c for c in COMMANDS if c.startswith(b"MAIL")] + [MAIL_OK] * 3),
    st.lists(st.sampled_from([c for c in COMMANDS if c.startswith(b"RCPT")]), max_size=3).map(
        lambda rcpts: [b"RCPT TO:<bob@example.net>\r\n", *rcpts]
    ),
    st.one_of(data_block, bdat_block),
).map(lambda t: t[0] + b"".join(t[1]) + t[2])
garbage_line = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n"),
    st.text(max_size=20).map(lambda t: t.encode("utf-8") + b"\r\n"),
)
# Mostly whole command lines and transactions, so that sessions get somewhere;
# raw bytes (which corrupt the line they precede) now and then.
token = st.one_of(
    st.sampled_from(COMMANDS),
    st.sampled_from(COMMANDS).map(lambda c: c.lower()),
    transaction,
    transaction,
    transaction,
    garbage_line,
    st.binary(max_size=40),
)
sessions = st.tuples(
    st.sampled_from([b"", b"HELO client.example\r\n"] + [b"EHLO client.example\r\n"] * 4),
    st.lists(token, max_size=12),
).map(lambda t: t[0] + b"".join(t[1]))
configs = st.sampled_from(CONFIGS)
policies = st.sampled_from(POLICIES)
chunkings = st.one_of(
    st.none(),
    st.integers(1, 600),
    st.lists(st.integers(1, 80), min_size=1, max_size=12),
)


# -- no crash, well-formed replies, bounded buffering -------------------------------------


@PROPERTY
@given(stream=st.binary(max_size=3000), config=configs, chunking=chunkings)
def test_random_bytes_are_answered(
    stream: bytes, config: ServerSettings, chunking: int | list[int] | None
) -> None:
    r = drive(stream, chunk_size=chunking, config=config)
    codes = [int(reply[:3]) for reply in r.reply_list]
    assert codes[0] == 220
    assert all(200 <= c < 600 for c in codes)


@PROPERTY
@given(stream=sessions, config=configs, policy=policies, chunking=chunkings)
def test_random_sessions_are_answered(
    stream: bytes, config: ServerSettings, policy: Policy, chunking: int | list[int] | None
) -> None:
    r = drive([stream], policy, chunking, config, eof=True)
    assert r.conn.closed  # the EOF at the end closes everything
    for ev in r.events:
        if isinstance(ev, MessageComplete):
            assert len(ev.body) <= config.max_message_size
            if config.bare_newlines == "normalize":
                body = ev.body
                assert body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r")


# -- chunking invariance --------------------------------------------------------------


@PROPERTY
@given(
    stream=sessions,
    config=configs,
    policy=policies,
    first=chunkings,
    second=st.lists(st.integers(1, 50), min_size=1, max_size=8),
)
def test_chunking_invariance(
    stream: bytes,
    config: ServerSettings,
    policy: Policy,
    first: int | list[int] | None,
    second: list[int],
) -> None:
    a = drive(stream, policy, first, config)
    b = drive(stream, policy, second, config)
    assert a.snapshot() == b.snapshot()


@PROPERTY
@given(
    lines=st.lists(
        st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), min_size=0, max_size=8
    ),
    chunking=chunkings,
)
def test_data_transparency_roundtrip(lines: list[bytes], chunking: int | list[int] | None) -> None:
    # RFC 5321 §4.5.2: the client doubles every leading dot; the core must give back
    # exactly the text (CRLF lines), whatever the segmentation. Bare CRs are kept out.
    text = b"".join(line.replace(b"\r", b"") + b"\r\n" for line in lines)
    stuffed = re.sub(rb"(?m)^\.", b"..", text)
    stream = (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        + b"DATA\r\n"
        + stuffed
        + b".\r\n"
    )
    r = drive(stream, chunk_size=chunking)
    assert r.messages == [text]


# -- the phase table as a state machine -----------------------------------------------------

BOB = b"RCPT TO:<bob@example.net>\r\n"
NOBODY = b"RCPT TO:<nobody@example.net>\r\n"
MAX_RCPTS = 3


class PhaseMachine(RuleBasedStateMachine):
    """An independent model of which command is legal in which phase."""

    def __init__(self) -> None:
        super().__init__()
        config = server_settings(max_errors=10_000, max_recipients=MAX_RCPTS)
        self.session = Session(config, Policy(reject_rcpts=frozenset({"nobody@example.net"})))
        self.session.output()
        self.phase = Phase.GREETED
        self.rcpts = 0
        self.closed = False

    def send(self, data: bytes) -> list[str]:
        return [reply_code(r) for r in split_replies(self.session.feed(data))]

    def refused(self, codes: list[str], expected: str) -> None:
        assert codes == [expected]

    @precondition(lambda self: not self.closed)
    @rule(verb=st.sampled_from([b"HELO", b"EHLO", b"ehlo"]))
    def hello(self, verb: bytes) -> None:
        assert self.send(verb + b" client.example\r\n") == ["250"]
        self.phase, self.rcpts = Phase.HELLO, 0

    @precondition(lambda self: not self.closed)
    @rule()
    def mail(self) -> None:
        codes = self.send(b"MAIL FROM:<alice@example.org>\r\n")
        if self.phase is Phase.HELLO:
            assert codes == ["250 2.1.0"]
            self.phase = Phase.MAIL
        else:
            self.refused(codes, "503 5.5.1")

    @precondition(lambda self: not self.closed)
    @rule(known=st.booleans())
    def rcpt(self, known: bool) -> None:
        codes = self.send(BOB if known else NOBODY)
        if self.phase not in (Phase.MAIL, Phase.RCPT):
            self.refused(codes, "503 5.5.1")
        elif self.rcpts >= MAX_RCPTS:
            self.refused(codes, "452 4.5.3")
        elif known:
            assert codes == ["250 2.1.5"]
            self.phase, self.rcpts = Phase.RCPT, self.rcpts + 1
        else:
            self.refused(codes, "550 5.1.1")

    @precondition(lambda self: not self.closed)
    @rule(lines=st.lists(st.sampled_from([b"", b".", b"..", b"hello", b".x", b" ."]), max_size=4))
    def data(self, lines: list[bytes]) -> None:
        codes = self.send(b"DATA\r\n")
        if self.phase is not Phase.RCPT:
            expected = "554 5.5.1" if self.phase is Phase.MAIL else "503 5.5.1"
            self.refused(codes, expected)
            return
        assert codes == ["354"]
        assert self.session.conn.mode is Mode.DATA
        text = b"".join(line + b"\r\n" for line in lines)
        stuffed = re.sub(rb"(?m)^\.", b"..", text)
        assert self.send(stuffed + b".\r\n") == ["250 2.0.0"]
        assert self.session.events[-1] == MessageComplete(text)
        self.phase, self.rcpts = Phase.HELLO, 0

    @precondition(lambda self: not self.closed)
    @rule(size=st.integers(0, 12), last=st.booleans())
    def bdat(self, size: int, last: bool) -> None:
        codes = self.send(b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + b"z" * size)
        if self.phase in (Phase.GREETED, Phase.HELLO):
            self.refused(codes, "503 5.5.1")
        elif self.phase is Phase.MAIL:
            self.refused(codes, "554 5.5.1")
        else:
            assert codes == ["250 2.0.0"]
            self.phase = Phase.HELLO if last else Phase.BDAT
            if last:
                self.rcpts = 0

    @precondition(lambda self: not self.closed)
    @rule()
    def rset(self) -> None:
        assert self.send(b"RSET\r\n") == ["250 2.0.0"]
        if self.phase is not Phase.GREETED:
            self.phase = Phase.HELLO
        self.rcpts = 0

    @precondition(lambda self: not self.closed)
    @rule(line=st.sampled_from([b"NOOP", b"NOOP x", b"HELP", b"VRFY bob"]))
    def harmless(self, line: bytes) -> None:
        (code,) = self.send(line + b"\r\n")
        assert code[0] == "2"

    @precondition(lambda self: not self.closed)
    @rule(line=st.sampled_from([b"EXPN list", b"FROB", b"", b"MAIL", b"VRFY"]))
    def refused_anywhere(self, line: bytes) -> None:
        (code,) = self.send(line + b"\r\n")
        assert code[0] == "5"

    @precondition(lambda self: not self.closed)
    @rule()
    def starttls(self) -> None:
        # TLS is not available on this listener: 454 outside a transaction, else 503.
        codes = self.send(b"STARTTLS\r\n")
        outside = self.phase in (Phase.GREETED, Phase.HELLO)
        self.refused(codes, "454 4.7.0" if outside else "503 5.5.1")

    @precondition(lambda self: not self.closed)
    @rule()
    def auth(self) -> None:
        codes = self.send(b"AUTH PLAIN\r\n")
        self.refused(codes, "502 5.5.1" if self.phase is Phase.HELLO else "503 5.5.1")

    @precondition(lambda self: not self.closed)
    @rule()
    def quit(self) -> None:
        assert self.send(b"QUIT\r\n") == ["221 2.0.0"]
        self.closed = True

    @precondition(lambda self: self.closed)
    @rule(line=st.sampled_from([b"NOOP", b"EHLO client.example", b"QUIT"]))
    def after_close(self, line: bytes) -> None:
        assert self.send(line + b"\r\n") == []

    @invariant()
    def core_agrees_with_model(self) -> None:
        conn = self.session.conn
        assert conn.closed is self.closed
        if not self.closed:
            assert conn.phase is self.phase
            assert conn.mode is Mode.COMMAND
            assert len(conn.recipients) == self.rcpts
            assert conn.buffered == 0


PhaseMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestPhaseMachine = PhaseMachine.TestCase
