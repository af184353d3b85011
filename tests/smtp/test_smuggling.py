"""Security regressions: SMTP smuggling and STARTTLS command injection, one named test each.

SMTP smuggling (CVE-2023-51764, CVE-2023-51765, CVE-2023-51766): an outbound server
passes a "near-miss" end-of-data sequence (``<LF>.<LF>``, ``<CR>.<CR>`` ...) inside a
message; a receiver that takes it for the end of DATA then runs the rest of the
message as commands from the trusted relay. Only CRLF "." CRLF ends DATA (RFC 5321
§4.1.1.4); so after every near-miss below, the pipelined ``MAIL FROM:<evil@x>``
transaction must stay inside the one message, which is then refused
(``bare_newlines="reject"``: 550 5.6.11) or kept whole (``"normalize"``).

STARTTLS injection (CVE-2011-0411): plaintext pipelined after STARTTLS must never be
executed as if it had arrived over TLS (RFC 3207 §4.2), and the session restarts from
scratch once TLS is up.

Every stream is re-fed in every chunking (``run_all_chunkings``).
"""

from __future__ import annotations

import re

import pytest

from postbote.smtp.events import (
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageComplete,
    RcptTo,
    StartTlsRequested,
)
from postbote.smtp.grammar import Address
from postbote.smtp.protocol import Mode, Phase
from postbote.smtp.replies import Reply
from tests.smtp.helpers import (
    CHUNK_SIZES,
    Result,
    Session,
    b64,
    reply_code,
    run_all_chunkings,
    settings,
    split_replies,
)

EHLO = b"EHLO relay.example\r\n"
HEADER = b"EHLO relay.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
TEXT = b"Subject: hi\r\n\r\nhello"  # the near miss follows "hello" directly
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n.\r\n"
EVIL = Address("evil", "x")
VICTIM = Address("victim", "y")

REJECT = settings(bare_newlines="reject")
NORMALIZE = settings(bare_newlines="normalize")


def smuggling_stream(near_miss: bytes) -> bytes:
    return HEADER + b"DATA\r\n" + TEXT + near_miss + SMUGGLED + b"QUIT\r\n"


def reference_body(raw: bytes) -> bytes:
    """What "normalize" must store for DATA text ``raw`` (up to the CRLF before the
    terminating dot): every CR, LF or CRLF becomes CRLF, then one leading dot is
    removed from every line (RFC 5321 §4.5.2)."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    return b"\r\n".join(line[1:] if line[:1] == b"." else line for line in text.split(b"\r\n"))


def senders(r: Result) -> list[Address | None]:
    return [e.sender for e in r.events if isinstance(e, MailFrom)]


def recipients(r: Result) -> list[Address]:
    return [e.recipient for e in r.events if isinstance(e, RcptTo)]


def assert_contained(r: Result) -> None:
    """The near miss did not end DATA: one transaction, one end-of-data outcome."""
    assert EVIL not in senders(r)
    assert VICTIM not in recipients(r)
    assert senders(r) == [Address("alice", "example.org")]
    end_of_data = [c for c in r.codes if c.startswith(("250 2.0.0", "550", "552", "554"))]
    assert len(end_of_data) == 1, r.codes
    assert r.codes[-1] == "221 2.0.0"


def check_near_miss_reject(near_miss: bytes) -> None:
    r = run_all_chunkings(smuggling_stream(near_miss), config=REJECT)
    assert_contained(r)
    assert r.messages == []
    assert r.codes[1:] == ["250", "250 2.1.0", "250 2.1.5", "354", "550 5.6.11", "221 2.0.0"]


def check_near_miss_normalize(near_miss: bytes) -> None:
    r = run_all_chunkings(smuggling_stream(near_miss), config=NORMALIZE)
    assert_contained(r)
    assert r.codes[1:] == ["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    (body,) = r.messages
    assert b"MAIL FROM:<evil@x>\r\n" in body and body.endswith(b"smuggled\r\n")
    assert body == reference_body(TEXT + near_miss + SMUGGLED[: -len(b".\r\n")])
    assert body.count(b"\n") == body.count(b"\r\n") == body.count(b"\r")


# -- near misses: never an end of data ------------------------------------------------


def test_smuggling_lf_dot_crlf_reject() -> None:
    check_near_miss_reject(b"\n.\r\n")


def test_smuggling_lf_dot_crlf_normalize() -> None:
    check_near_miss_normalize(b"\n.\r\n")


def test_smuggling_crlf_dot_lf_reject() -> None:
    check_near_miss_reject(b"\r\n.\n")


def test_smuggling_crlf_dot_lf_normalize() -> None:
    check_near_miss_normalize(b"\r\n.\n")


def test_smuggling_lf_dot_lf_reject() -> None:
    check_near_miss_reject(b"\n.\n")


def test_smuggling_lf_dot_lf_normalize() -> None:
    check_near_miss_normalize(b"\n.\n")


def test_smuggling_cr_dot_cr_reject() -> None:
    check_near_miss_reject(b"\r.\r")


def test_smuggling_cr_dot_cr_normalize() -> None:
    check_near_miss_normalize(b"\r.\r")


def test_smuggling_crlf_dot_cr_reject() -> None:
    check_near_miss_reject(b"\r\n.\r")


def test_smuggling_crlf_dot_cr_normalize() -> None:
    check_near_miss_normalize(b"\r\n.\r")


def test_smuggling_cr_dot_crlf_reject() -> None:
    check_near_miss_reject(b"\r.\r\n")


def test_smuggling_cr_dot_crlf_normalize() -> None:
    check_near_miss_normalize(b"\r.\r\n")


def test_smuggling_lf_dot_cr_reject() -> None:
    check_near_miss_reject(b"\n.\r")


def test_smuggling_lf_dot_cr_normalize() -> None:
    check_near_miss_normalize(b"\n.\r")


def test_smuggling_crlf_dot_cr_crlf_reject() -> None:
    check_near_miss_reject(b"\r\n.\r\r\n")


def test_smuggling_crlf_dot_cr_crlf_normalize() -> None:
    check_near_miss_normalize(b"\r\n.\r\r\n")


def test_smuggling_dot_text_line_then_crlf_dot_lf_reject() -> None:
    check_near_miss_reject(b"\r\n.x\r\n.\n")


# -- CR CR LF "." CR LF: the line before ends in CRLF, so this IS the end of data --------


def test_smuggling_cr_crlf_dot_crlf_is_a_real_terminator_reject() -> None:
    # "hello<CR><CR><LF>.<CR><LF>" holds CRLF.CRLF: the message ends there (and is
    # refused for its bare CR); what follows are the client's own next commands.
    r = run_all_chunkings(smuggling_stream(b"\r\r\n.\r\n"), config=REJECT)
    first = ["250", "250 2.1.0", "250 2.1.5", "354", "550 5.6.11"]
    second = ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]
    assert r.codes[1:] == first + second
    assert senders(r) == [Address("alice", "example.org"), EVIL]
    assert r.messages == [b"smuggled\r\n"]


def test_smuggling_cr_crlf_dot_crlf_is_a_real_terminator_normalize() -> None:
    r = run_all_chunkings(smuggling_stream(b"\r\r\n.\r\n"), config=NORMALIZE)
    assert r.messages == [b"Subject: hi\r\n\r\nhello\r\n\r\n", b"smuggled\r\n"]
    assert senders(r) == [Address("alice", "example.org"), EVIL]
    assert r.codes.count("250 2.0.0") == 2


# -- the controls: what a real end of data and transparency look like -----------------------


def test_crlf_dot_crlf_ends_data() -> None:
    r = run_all_chunkings(smuggling_stream(b"\r\n.\r\n"), config=REJECT)
    assert r.messages == [b"Subject: hi\r\n\r\nhello\r\n", b"smuggled\r\n"]
    assert senders(r) == [Address("alice", "example.org"), EVIL]


def test_stuffed_dot_line_is_not_a_terminator() -> None:
    r = run_all_chunkings(smuggling_stream(b"\r\n..\r\n"), config=REJECT)
    assert_contained(r)
    (body,) = r.messages
    assert body == b"Subject: hi\r\n\r\nhello\r\n.\r\n" + SMUGGLED[: -len(b".\r\n")]


def test_dot_space_line_is_not_a_terminator() -> None:
    r = run_all_chunkings(smuggling_stream(b"\r\n. \r\n"), config=REJECT)
    assert_contained(r)
    assert r.messages[0].startswith(b"Subject: hi\r\n\r\nhello\r\n \r\nMAIL FROM:<evil@x>")


def test_smuggling_through_bdat_is_data() -> None:
    chunk = b"hello\r\n.\r\n" + SMUGGLED
    stream = HEADER + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n"
    r = run_all_chunkings(stream, config=REJECT)
    assert r.messages == [chunk]
    assert EVIL not in senders(r)
    assert r.codes[-2:] == ["250 2.0.0", "221 2.0.0"]


# -- bare CR / LF in command lines ------------------------------------------------------------


def test_bare_lf_in_command_line() -> None:
    r = run_all_chunkings(b"EHLO relay.example\nNOOP\r\n", config=REJECT)
    assert r.codes[1:] == ["500 5.5.2", "250 2.0.0"]
    assert r.events == []


def test_bare_cr_in_command_line() -> None:
    stream = EHLO + b"MAIL FROM:<alice@example.org>\rRCPT TO:<evil@x>\r\nNOOP\r\n"
    for config in (REJECT, NORMALIZE):
        r = run_all_chunkings(stream, config=config)
        assert r.codes[1:] == ["250", "500 5.5.2", "250 2.0.0"]
        assert senders(r) == [] and recipients(r) == []


def test_cr_cr_lf_command_line() -> None:
    r = run_all_chunkings(b"NOOP\r\r\nNOOP\r\n", config=REJECT)
    assert r.codes[1:] == ["500 5.5.2", "250 2.0.0"]


def test_bare_lf_command_line_accepted_when_normalizing() -> None:
    r = run_all_chunkings(b"EHLO relay.example\nNOOP\n", config=NORMALIZE)
    assert r.codes[1:] == ["250", "250 2.0.0"]
    assert r.events == [Hello("EHLO", "relay.example")]


# -- STARTTLS command injection (CVE-2011-0411) --------------------------------------------

TLS = settings(tls_available=True)
TLS_AUTH = settings(tls_available=True, auth_mechanisms=("PLAIN",), auth_requires_tls=False)


def test_starttls_injection_pipelined_mail_discarded() -> None:
    r = run_all_chunkings(
        [EHLO, b"STARTTLS\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n", b"NOOP\r\n"],
        config=TLS,
    )
    assert r.codes[1:] == ["250", "220 2.0.0", "250 2.0.0"]
    assert r.events == [Hello("EHLO", "relay.example"), StartTlsRequested()]
    assert r.conn.in_tls


def test_starttls_injection_session_reset_after_tls() -> None:
    stream = EHLO + b"AUTH PLAIN " + b64(b"\0alice\0s3cret") + b"\r\nSTARTTLS\r\n"
    r = run_all_chunkings([stream, b"MAIL FROM:<alice@example.org>\r\n"], config=TLS_AUTH)
    assert r.codes[1:] == ["250", "235 2.7.0", "220 2.0.0", "503 5.5.1"]
    c = r.conn
    assert (c.phase, c.authenticated, c.helo_name, c.esmtp) == (Phase.GREETED, None, None, False)
    assert c.in_tls


def test_starttls_injection_mid_transaction_state_forgotten() -> None:
    # STARTTLS is refused in a transaction; after RSET it is accepted and nothing of
    # the plaintext transaction survives: RCPT after TLS needs HELO and MAIL again.
    stream = HEADER + b"STARTTLS\r\nRSET\r\nSTARTTLS\r\n"
    r = run_all_chunkings([stream, EHLO + b"RCPT TO:<bob@example.net>\r\n"], config=TLS)
    plaintext = ["250", "250 2.1.0", "250 2.1.5", "503 5.5.1", "250 2.0.0", "220 2.0.0"]
    assert r.codes[1:] == [*plaintext, "250", "503 5.5.1"]
    assert r.conn.sender is None and r.conn.recipients == []


def test_starttls_injection_ehlo_after_starttls_in_same_packet() -> None:
    r = run_all_chunkings([EHLO + b"STARTTLS\r\nEHLO evil.example\r\n"], config=TLS)
    assert r.events == [Hello("EHLO", "relay.example"), StartTlsRequested()]
    assert r.conn.phase is Phase.GREETED and r.conn.helo_name is None


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_starttls_injection_data_between_accept_and_established_discarded(
    chunk_size: int | None,
) -> None:
    s = Session(TLS)
    s.feed(EHLO + b"STARTTLS\r\n")
    assert s.conn.mode is Mode.TLS_PENDING
    assert s.feed(b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n", chunk_size=chunk_size) == b""
    assert s.conn.buffered == 0
    s.establish_tls()
    out = s.feed(b"EHLO relay.example\r\nMAIL FROM:<alice@example.org>\r\n")
    assert [reply_code(r) for r in split_replies(out)] == ["250", "250 2.1.0"]
    assert EVIL not in [e.sender for e in s.events if isinstance(e, MailFrom)]
    assert [type(e) for e in s.events] == [Hello, StartTlsRequested, Hello, MailFrom]


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_starttls_injection_plaintext_buffered_while_pending_discarded(
    chunk_size: int | None,
) -> None:
    # An asynchronous glue may receive more plaintext while it decides on STARTTLS.
    s = Session(TLS, auto=False)
    s.feed(EHLO)
    s.conn.accept()
    s.pump()
    s.feed(b"STARTTLS\r\n")
    assert s.events[-1] == StartTlsRequested()
    s.feed(b"MAIL FROM:<evil@x>\r\n", chunk_size=chunk_size)
    assert s.conn.buffered > 0  # held while the decision is out
    s.conn.accept()
    assert s.conn.buffered == 0
    s.establish_tls()
    assert s.events[-1] == StartTlsRequested()
    assert s.feed(b"RCPT TO:<victim@y>\r\n") == b"503 5.5.1 Send HELO/EHLO first\r\n"


def test_starttls_refused_pipelined_commands_still_run_in_plaintext() -> None:
    # Not an injection: without TLS the commands stay plaintext commands.
    s = Session(TLS, auto=False)
    s.feed(EHLO)
    s.conn.accept()
    s.pump()
    s.feed(b"STARTTLS\r\nNOOP\r\n")
    s.conn.reject(Reply.make(454, "4.7.0", "TLS not available due to local problem"))
    s.pump()
    assert s.output().endswith(
        b"454 4.7.0 TLS not available due to local problem\r\n" + b"250 2.0.0 OK\r\n"
    )
    assert not s.conn.in_tls and s.conn.phase is Phase.HELLO


def test_no_message_after_connection_closed() -> None:
    stream = HEADER + b"DATA\r\nhello\r\n.\r\n"
    s = Session()
    s.feed(HEADER + b"DATA\r\nhel")
    s.conn.receive_eof()
    s.pump()
    assert s.feed(stream) == b""
    assert not any(isinstance(e, MessageComplete) for e in s.events)
    assert isinstance(s.events[-1], ConnectionClosed)
