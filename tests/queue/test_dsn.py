"""Delivery status notifications (queue/dsn.py): every report is parsed back with the stdlib
email package and its RFC 3464 fields are checked."""

from __future__ import annotations

import email
import email.message
import email.policy
import email.utils
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.envelope import Envelope, Recipient
from postbote.queue.dsn import ACTIONS, DsnRecipient, build_dsn, status_of, wants_report

T0 = 1_700_000_000.0
ORIGINAL = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
)
HEADERS = ORIGINAL[: ORIGINAL.index(b"\r\n\r\n") + 2]


def envelope(**kw: Any) -> Envelope:
    values = {
        "id": "Q1",
        "sender": "alice@example.org",
        "recipients": (Recipient("bob@example.net"),),
        "received_at": T0,
    }
    values.update(kw)
    return Envelope(**values)  # type: ignore[arg-type]


def failed(address: str = "bob@example.net", **kw: Any) -> DsnRecipient:
    values = {
        "recipient": address,
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": "550 5.1.1 no such user",
        "remote_mta": "mx.example.net",
        "last_attempt": T0 + 60,
    }
    values.update(kw)
    return DsnRecipient(**values)  # type: ignore[arg-type]


def delayed(address: str = "carol@example.net", **kw: Any) -> DsnRecipient:
    values = {
        "recipient": address,
        "action": "delayed",
        "status": "4.4.1",
        "diagnostic": "4.4.1 connection refused",
        "remote_mta": "192.0.2.7",
        "last_attempt": T0 + 600,
        "will_retry_until": T0 + 5 * 86400,
    }
    values.update(kw)
    return DsnRecipient(**values)  # type: ignore[arg-type]


def delivered(address: str = "dave@example.net", **kw: Any) -> DsnRecipient:
    values = {"recipient": address, "action": "delivered", "status": "2.0.0"}
    values.update(kw)
    return DsnRecipient(**values)  # type: ignore[arg-type]


def build(
    env: Envelope | None = None,
    recipients: list[DsnRecipient] | None = None,
    original: bytes = ORIGINAL,
    **kw: Any,
) -> bytes:
    return build_dsn(
        envelope=env or envelope(),
        original=original,
        recipients=recipients if recipients is not None else [failed()],
        reporting_mta=kw.pop("reporting_mta", "mail.example.org"),
        now=kw.pop("now", T0 + 120),
        message_id=kw.pop("message_id", "dsn.Q1"),
        **kw,
    )


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert not msg.defects
    return msg


def parts(raw: bytes) -> list[email.message.EmailMessage]:
    found = list(parse(raw).iter_parts())
    assert all(isinstance(p, email.message.EmailMessage) for p in found)
    return found  # type: ignore[return-value]


def sub_messages(part: email.message.EmailMessage) -> list[email.message.EmailMessage]:
    payload = part.get_payload()
    assert isinstance(payload, list)
    assert all(isinstance(m, email.message.EmailMessage) for m in payload)
    return payload  # type: ignore[return-value]


def blocks(raw: bytes) -> list[dict[str, str]]:
    """The delivery-status fields, block by block, as the stdlib reads them (it gives the
    blocks of message/delivery-status as sub-messages)."""
    status = parts(raw)[1]
    assert status.get_content_type() == "message/delivery-status"
    out = []
    for block in sub_messages(status):
        assert block.get_payload() == ""  # every line was read as a field
        out.append({name: str(value) for name, value in block.items()})
    return out


def raw_part(raw: bytes, index: int) -> tuple[bytes, bytes]:
    """The header section and the content of part ``index``, as bytes on the wire."""
    boundary = parse(raw).get_boundary()
    assert boundary is not None
    delimiter = b"\r\n--" + boundary.encode()
    body = raw[raw.index(b"\r\n\r\n") + 2 :]
    pieces = body.split(delimiter)
    assert pieces[-1] == b"--\r\n"
    part = pieces[index + 1][2:]  # after the CRLF ending the delimiter line
    head, _, content = part.partition(b"\r\n\r\n")
    return head + b"\r\n", content


def global_blocks(raw: bytes) -> list[dict[str, str]]:
    """The fields of a message/global-delivery-status part (UTF-8, RFC 6533 §6.2): the
    stdlib has no special reading for it, so each block is parsed as a header section."""
    head, content = raw_part(raw, 1)
    assert b"Content-Type: message/global-delivery-status\r\n" in head
    assert content.endswith(b"\r\n")
    out = []
    for text in content[:-2].decode("utf-8").split("\r\n\r\n"):
        block = email.message_from_string(text + "\r\n\r\n", policy=email.policy.default)
        assert block.get_payload() == ""
        out.append({name: str(value) for name, value in block.items()})
    return out


def timestamp(value: str) -> float:
    return email.utils.parsedate_to_datetime(value).timestamp()


def assert_wire_clean(raw: bytes) -> None:
    """CRLF only, and RFC 5322 §2.1.1 line lengths."""
    lines = raw.split(b"\r\n")
    assert lines[-1] == b""
    for line in lines:
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998


# --- the report as a whole --------------------------------------------------------------------


def test_failed_report_with_ret_full() -> None:
    raw = build(envelope(ret="FULL"), [failed(orcpt="rfc822;bob@example.net")])
    assert_wire_clean(raw)
    msg = parse(raw)
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == "<dsn.Q1@mail.example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert timestamp(msg["Date"]) == T0 + 120
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Content-Transfer-Encoding"] is None  # all 7bit

    text, status, returned = parts(raw)
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "<bob@example.net>" in body and "550 5.1.1 no such user" in body
    assert status.get_content_type() == "message/delivery-status"
    assert returned.get_content_type() == "message/rfc822"
    assert raw_part(raw, 2)[1] == ORIGINAL
    (inner,) = sub_messages(returned)
    assert inner["Subject"] == "lunch"
    assert inner.get_content().rstrip("\r\n") == "Shall we meet at noon?"

    per_message, rcpt = blocks(raw)
    assert per_message["Reporting-MTA"] == "dns; mail.example.org"
    assert "Original-Envelope-Id" not in per_message
    assert timestamp(per_message["Arrival-Date"]) == T0
    assert rcpt["Original-Recipient"] == "rfc822;bob@example.net"
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.example.net"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert timestamp(rcpt["Last-Attempt-Date"]) == T0 + 60
    assert "Will-Retry-Until" not in rcpt


def test_recipient_block_field_order_follows_rfc_3464() -> None:
    raw = build(recipients=[delayed(orcpt="rfc822;c@example.net")])
    assert list(blocks(raw)[1]) == [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
        "Will-Retry-Until",
    ]


def test_failed_report_with_ret_hdrs_returns_the_header_section() -> None:
    raw = build(envelope(ret="HDRS"))
    text, _, returned = parts(raw)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert raw_part(raw, 2)[1] == HEADERS
    assert b"Shall we meet" not in raw
    assert "header section" in text.get_content()


@pytest.mark.parametrize(
    ("ret", "recipients", "expected"),
    [
        # RFC 3461 §4.3: no RET -> the whole message for a failure, headers otherwise
        (None, [failed()], "message/rfc822"),
        (None, [delayed()], "text/rfc822-headers"),
        (None, [delivered()], "text/rfc822-headers"),
        (None, [delivered(action="relayed")], "text/rfc822-headers"),
        (None, [delivered(action="expanded")], "text/rfc822-headers"),
        (None, [delayed(), failed()], "message/rfc822"),
        ("FULL", [failed()], "message/rfc822"),
        ("FULL", [delayed()], "message/rfc822"),
        ("FULL", [delivered()], "message/rfc822"),
        ("HDRS", [failed()], "text/rfc822-headers"),
        ("HDRS", [delivered()], "text/rfc822-headers"),
    ],
)
def test_what_is_returned_follows_ret(
    ret: str | None, recipients: list[DsnRecipient], expected: str
) -> None:
    raw = build(envelope(ret=ret), recipients)
    assert parts(raw)[2].get_content_type() == expected
    returned = raw_part(raw, 2)[1]
    assert returned == (ORIGINAL if expected == "message/rfc822" else HEADERS)


def test_delayed_report_has_will_retry_until() -> None:
    raw = build(recipients=[delayed()])
    msg = parse(raw)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    rcpt = blocks(raw)[1]
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.4.1"
    assert rcpt["Remote-MTA"] == "dns; [192.0.2.7]"
    assert rcpt["Diagnostic-Code"] == "X-Postbote; 4.4.1 connection refused"  # not a reply
    assert timestamp(rcpt["Will-Retry-Until"]) == T0 + 5 * 86400
    assert timestamp(rcpt["Last-Attempt-Date"]) == T0 + 600
    text = parts(raw)[0].get_content()
    assert "retried until " + email.utils.formatdate(T0 + 5 * 86400, localtime=True) in text


def test_will_retry_until_only_for_delayed() -> None:
    raw = build(recipients=[failed(will_retry_until=T0 + 100)])
    assert "Will-Retry-Until" not in blocks(raw)[1]


def test_success_report() -> None:
    raw = build(recipients=[delivered()])
    assert parse(raw)["Subject"] == "Successful Mail Delivery Report"
    rcpt = blocks(raw)[1]
    assert rcpt == {
        "Final-Recipient": "rfc822; dave@example.net",
        "Action": "delivered",
        "Status": "2.0.0",
    }
    assert "delivered to these recipients" in parts(raw)[0].get_content()


def test_several_recipients_with_mixed_actions() -> None:
    rcpts = [delivered(), failed(), delayed(), failed("erin@example.net", status="5.2.2")]
    raw = build(recipients=rcpts)
    assert parse(raw)["Subject"] == "Undelivered Mail Returned to Sender"
    got = blocks(raw)[1:]
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in got] == [
        ("rfc822; dave@example.net", "delivered", "2.0.0"),
        ("rfc822; bob@example.net", "failed", "5.1.1"),
        ("rfc822; carol@example.net", "delayed", "4.4.1"),
        ("rfc822; erin@example.net", "failed", "5.2.2"),
    ]
    text = parts(raw)[0].get_content()
    for address in ("dave", "bob", "carol", "erin"):
        assert f"<{address}@example.net>" in text


@pytest.mark.parametrize(
    ("recipients", "subject"),
    [
        ([delayed(), delivered()], "Delayed Mail (still being retried)"),
        (
            [delivered(), delivered("x@example.net", action="relayed")],
            "Successful Mail Delivery Report",
        ),
        ([delayed(), failed()], "Undelivered Mail Returned to Sender"),
    ],
)
def test_subject_by_kind(recipients: list[DsnRecipient], subject: str) -> None:
    assert parse(build(recipients=recipients))["Subject"] == subject


@pytest.mark.parametrize("envid", [None, "", "QQ314159"])
def test_original_envelope_id(envid: str | None) -> None:
    per_message = blocks(build(envelope(envid=envid)))[0]
    if envid:
        assert per_message["Original-Envelope-Id"] == envid
    else:
        assert "Original-Envelope-Id" not in per_message
    assert next(iter(per_message)) == "Reporting-MTA"


@pytest.mark.parametrize("orcpt", [None, "rfc822;Bob+lists@Example.NET", "x400;c=us;a=x;p=y"])
def test_original_recipient(orcpt: str | None) -> None:
    rcpt = blocks(build(recipients=[failed(orcpt=orcpt)]))[1]
    if orcpt is None:
        assert "Original-Recipient" not in rcpt
    else:
        assert rcpt["Original-Recipient"] == orcpt  # the type and the address as given


def test_huge_original_returns_headers_only() -> None:
    big = ORIGINAL + b"x" * 900 + b"\r\n"
    raw = build(envelope(ret="FULL"), original=big, max_original=len(big) - 1)
    assert parts(raw)[2].get_content_type() == "text/rfc822-headers"
    assert raw_part(raw, 2)[1] == HEADERS
    raw = build(envelope(ret="FULL"), original=big, max_original=len(big))
    assert parts(raw)[2].get_content_type() == "message/rfc822"


def test_huge_header_section_is_cut_after_a_whole_field() -> None:
    folded = b"X-Long: " + b"word " * 20 + b"\r\n " + b"more " * 20 + b"\r\n"
    original = b"Subject: a\r\n" + folded + b"X-Last: 1\r\n\r\nbody\r\n"
    # the limit falls inside the folded field: it goes as a whole
    raw = build(original=original, max_original=len(b"Subject: a\r\n") + 150)
    assert raw_part(raw, 2)[1] == b"Subject: a\r\n"
    raw = build(original=original, max_original=len(original) - 8)
    assert raw_part(raw, 2)[1] == b"Subject: a\r\n" + folded + b"X-Last: 1\r\n"


def test_header_section_that_cannot_be_cut_is_left_out() -> None:
    original = b"Subject: " + b"a" * 200 + b"\r\n\r\nbody\r\n"
    raw = build(original=original, max_original=100)
    assert len(parts(raw)) == 2
    assert "attached" not in parts(raw)[0].get_content()


def test_empty_original_is_not_returned() -> None:
    assert len(parts(build(original=b""))) == 2
    assert len(parts(build(envelope(ret="HDRS"), original=b"\r\nbody only\r\n"))) == 2


def test_original_that_is_not_8bit_data_returns_headers_only() -> None:
    # RFC 2045 §2.8: a NUL or a line over 998 octets is binary, which 8bit cannot carry
    for body in (b"nul \0 here\r\n", b"y" * 999 + b"\r\n"):
        raw = build(original=HEADERS + b"\r\n" + body)
        assert_wire_clean(raw)
        assert parts(raw)[2].get_content_type() == "text/rfc822-headers"


def test_bare_line_endings_in_the_original_become_crlf() -> None:
    raw = build(original=b"Subject: x\nX-A: 1\r\n\r\nline\rline\nend")
    assert_wire_clean(raw)
    assert raw_part(raw, 2)[1] == b"Subject: x\r\nX-A: 1\r\n\r\nline\r\nline\r\nend"


def test_smtputf8_report_uses_global_types() -> None:
    env = envelope(sender="jürgen@example.org", smtputf8=True, ret="FULL")
    original = "From: jürgen@example.org\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    raw = build(
        env, [failed("用户@example.net", diagnostic="550 5.1.1 Benutzer unbekannt ü")], original
    )
    assert_wire_clean(raw)
    msg = parse(raw)
    assert msg.get_param("report-type") == "global-delivery-status"  # RFC 6522 §3
    # RFC 6532 §3.2: UTF-8 in the header (the stdlib reads it surrogate-escaped)
    assert "To: <jürgen@example.org>\r\n".encode() in raw
    assert msg["Content-Transfer-Encoding"] == "8bit"
    text, status, returned = parts(raw)
    assert text.get_content_charset() == "utf-8"
    assert "<用户@example.net>" in text.get_content()
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert raw_part(raw, 2)[1] == original
    rcpt = global_blocks(raw)[1]
    assert rcpt["Final-Recipient"] == "utf-8; 用户@example.net"  # RFC 6533 §3
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 Benutzer unbekannt ü"


def test_smtputf8_headers_only_is_message_global_headers() -> None:
    raw = build(envelope(smtputf8=True), [delayed()])
    assert parts(raw)[2].get_content_type() == "message/global-headers"
    assert raw_part(raw, 2)[1] == HEADERS
    assert global_blocks(raw)[1]["Final-Recipient"] == "utf-8; carol@example.net"


def test_non_ascii_address_without_smtputf8_makes_a_global_report() -> None:
    raw = build(recipients=[failed("josé@example.net")])
    assert parts(raw)[1].get_content_type() == "message/global-delivery-status"
    assert global_blocks(raw)[1]["Final-Recipient"] == "utf-8; josé@example.net"
    raw = build(recipients=[failed(orcpt="utf-8;josé@example.net")])
    assert global_blocks(raw)[1]["Original-Recipient"] == "utf-8;josé@example.net"


def test_ascii_report_stays_ascii() -> None:
    raw = build(recipients=[failed(diagnostic="550 5.1.1 Benutzer unbekannt ü\u200b")])
    assert raw.isascii()
    assert blocks(raw)[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 Benutzer unbekannt ??"


def test_8bit_original_gets_8bit_transfer_encoding() -> None:
    original = b"Subject: caf\xc3\xa9\r\n\r\nna\xefve latin-1 body\r\n"
    raw = build(original=original)
    assert_wire_clean(raw)
    msg = parse(raw)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    returned = parts(raw)[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert raw_part(raw, 2)[1] == original  # byte for byte
    assert parts(raw)[0]["Content-Transfer-Encoding"] == "7bit"
    raw = build(envelope(ret="HDRS"), original=original)
    head, content = raw_part(raw, 2)
    assert head == (
        b"Content-Type: text/rfc822-headers\r\n"
        b"Content-Description: Header section of the message\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
    )
    assert content == b"Subject: caf\xc3\xa9\r\n"


# --- hostile input ----------------------------------------------------------------------------

INJECTIONS = [
    "550 5.1.1 no\r\nX-Injected: yes",
    "550 5.1.1 no\nX-Injected: yes",
    "550 5.1.1 no\rX-Injected: yes",
    "550 5.1.1 no\r\n\r\nX-Injected: yes",
    "550 5.1.1 no\r\n X-Injected: yes",
    "550 5.1.1 no\x85X-Injected: yes",
    "550 5.1.1 no\u2028X-Injected: yes",
    "550 5.1.1 no\x0bX-Injected:\x0cyes",
    "550-5.1.1 first\r\n550 5.1.1 X-Injected: yes",
]


@pytest.mark.parametrize("diagnostic", INJECTIONS)
def test_diagnostic_cannot_inject_a_field(diagnostic: str) -> None:
    raw = build(recipients=[failed(diagnostic=diagnostic)])
    assert_wire_clean(raw)
    assert b"\r\nX-Injected" not in raw
    per_message, rcpt = blocks(raw)
    assert "X-Injected" not in rcpt and "X-Injected" not in per_message
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550")
    assert rcpt["Diagnostic-Code"].endswith("X-Injected: yes")
    assert len(blocks(raw)) == 2


@pytest.mark.parametrize(
    "hostile",
    [
        {"recipient": "bob@example.net\r\nX-Injected: yes"},
        {"remote_mta": "mx.example.net\r\nX-Injected: yes"},
        {"orcpt": "rfc822;bob@example.net\r\nX-Injected: yes"},
    ],
)
def test_addresses_and_hosts_cannot_inject_a_field(hostile: dict[str, str]) -> None:
    raw = build(recipients=[failed(**hostile)])
    assert_wire_clean(raw)
    assert b"\r\nX-Injected" not in raw
    assert all("X-Injected" not in block for block in blocks(raw))


def test_envelope_values_cannot_inject_a_field() -> None:
    env = envelope(sender="alice@example.org>\r\nBcc: <x@example.com", envid="E1\r\nX-Injected: 1")
    raw = build(env)
    assert_wire_clean(raw)
    assert parse(raw)["Bcc"] is None
    assert "X-Injected" not in blocks(raw)[0]


def test_long_diagnostic_is_folded() -> None:
    diagnostic = "550 5.7.1 " + " ".join(f"word{i}" for i in range(100))
    raw = build(recipients=[failed(diagnostic=diagnostic)])
    _, content = raw_part(raw, 1)
    assert max(len(line) for line in content.split(b"\r\n")) <= 78
    assert blocks(raw)[1]["Diagnostic-Code"] == "smtp; " + diagnostic


def test_unbreakable_diagnostic_is_cut() -> None:
    raw = build(recipients=[failed(diagnostic="550 " + "x" * 5000)])
    assert_wire_clean(raw)
    assert blocks(raw)[1]["Diagnostic-Code"].startswith("smtp; 550 xxx")


def test_remote_mta_names() -> None:
    def remote(name: str) -> str:
        return blocks(build(recipients=[failed(remote_mta=name)]))[1]["Remote-MTA"]

    assert remote("mx.bücher.example") == "dns; mx.xn--bcher-kva.example"  # IDNA
    assert remote("2001:db8::1") == "dns; [IPv6:2001:db8::1]"
    assert remote("[192.0.2.1]") == "dns; [192.0.2.1]"
    assert remote("mx.example.net.") == "dns; mx.example.net"


def test_boundary_never_occurs_in_a_part() -> None:
    first = parse(build()).get_boundary()
    assert first is not None
    original = ORIGINAL + b"--" + first.encode() + b"\r\n"
    raw = build(original=original)
    second = parse(raw).get_boundary()
    assert second is not None and second != first
    assert raw_part(raw, 2)[1] == original
    assert len(parts(raw)) == 3


def test_same_input_same_bytes() -> None:
    assert build() == build()
    assert build(message_id="a") != build(message_id="b")


def test_refusals() -> None:
    with pytest.raises(ValueError, match="null reverse-path"):
        build(envelope(sender=""))  # RFC 5321 §4.5.5: never report on a report
    with pytest.raises(ValueError):
        build(recipients=[])
    with pytest.raises(ValueError):
        build(message_id="a b")
    with pytest.raises(ValueError):
        build(message_id="a>\r\nBcc: x")
    with pytest.raises(ValueError):
        build(reporting_mta="mail.example.org>\r\nBcc: x")
    with pytest.raises(ValueError):
        DsnRecipient("a@b", "bounced", "5.0.0")
    with pytest.raises(ValueError):
        DsnRecipient("a@b", "failed", "550")
    with pytest.raises(ValueError):
        DsnRecipient("a@b", "failed", "3.0.0")


def test_idn_reporting_mta_is_written_in_ascii() -> None:
    raw = build(reporting_mta="mail.bücher.example")
    assert parse(raw)["Message-ID"] == "<dsn.Q1@mail.xn--bcher-kva.example>"
    assert blocks(raw)[0]["Reporting-MTA"] == "dns; mail.xn--bcher-kva.example"


# --- wants_report and status_of ---------------------------------------------------------------

KEYWORD = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}
SUBSETS = [
    combo
    for n in range(1, 4)
    for combo in itertools.combinations(("SUCCESS", "FAILURE", "DELAY"), n)
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("notify", SUBSETS)
def test_wants_report_for_each_notify_subset(notify: tuple[str, ...], action: str) -> None:
    assert wants_report(notify, action) == (KEYWORD[action] in notify)
    assert wants_report(tuple(k.lower() for k in notify), action) == (KEYWORD[action] in notify)


@pytest.mark.parametrize(
    ("notify", "action", "expected"),
    [
        # RFC 3461 §4.1: NEVER means no report at all
        (("NEVER",), "failed", False),
        (("NEVER",), "delayed", False),
        (("NEVER",), "delivered", False),
        (("NEVER",), "relayed", False),
        (("NEVER",), "expanded", False),
        # NEVER must stand alone (RFC 3461 §4.1); where it does not, it still wins
        (("NEVER", "FAILURE"), "failed", False),
        (("SUCCESS", "never"), "delivered", False),
        # no NOTIFY: as if FAILURE,DELAY
        (None, "failed", True),
        (None, "delayed", True),
        (None, "delivered", False),
        (None, "relayed", False),
        (None, "expanded", False),
        (("SUCCESS",), "relayed", True),
        (("SUCCESS",), "expanded", True),
        (("SUCCESS",), "failed", False),
        (("FAILURE",), "delayed", False),
        (("DELAY",), "delayed", True),
        (("SUCCESS", "FAILURE", "DELAY"), "delivered", True),
    ],
)
def test_wants_report_table(notify: tuple[str, ...] | None, action: str, expected: bool) -> None:
    assert wants_report(notify, action) is expected


def test_wants_report_unknown_action() -> None:
    with pytest.raises(ValueError):
        wants_report(None, "bounced")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("550 5.1.1 no", "5.1.1"),
        ("550 no such user", "5.0.0"),
        ("451 x", "4.0.0"),
        ("451", "4.0.0"),
        ("250 2.0.0 Ok: queued", "2.0.0"),
        ("250 ok", "2.0.0"),
        ("4.4.1 conn refused", "4.4.1"),
        ("5.4.4 no MX for example.net", "5.4.4"),
        ("552-5.2.2 mailbox full\r\n552 5.2.2 try later", "5.2.2"),
        ("421 4.7.0 try again later", "4.7.0"),
        ("554 5.7.1", "5.7.1"),
        ("550 5.123.456 odd but valid", "5.123.456"),
        ("  550 5.1.1 leading space", "5.1.1"),
        # RFC 3463 §2: the class must agree with the reply code
        ("550 4.1.1 disagrees", "5.0.0"),
        ("450 5.1.1 disagrees", "4.0.0"),
        ("250 5.0.0 disagrees", "2.0.0"),
        # not an enhanced code
        ("550 5.1 short", "5.0.0"),
        ("550 5.1.1x glued", "5.0.0"),
        ("550 5.1234.1 too long", "5.0.0"),
        ("550 3.1.1 no such class", "5.0.0"),
    ],
)
def test_status_of(reply: str, expected: str) -> None:
    assert status_of(reply) == expected


@pytest.mark.parametrize(
    "reply", ["", "   ", "connection reset", "354 go ahead", "650 5.1.1 x", "5.1 no", "55 x"]
)
def test_status_of_without_a_code(reply: str) -> None:
    with pytest.raises(ValueError):
        status_of(reply)


# --- properties -------------------------------------------------------------------------------

local_parts = st.text(min_size=1, max_size=40).filter(lambda s: "@" not in s)
domains = st.text(min_size=1, max_size=40)
addresses = st.builds(lambda lp, d: f"{lp}@{d}", local_parts, domains)
texts = st.text(max_size=300)
recipient_st = st.builds(
    DsnRecipient,
    recipient=addresses,
    action=st.sampled_from(ACTIONS),
    status=st.sampled_from(["2.0.0", "4.4.1", "5.1.1", "5.7.26"]),
    diagnostic=st.none() | texts,
    remote_mta=st.none() | st.text(max_size=60),
    orcpt=st.none() | texts.map(lambda s: "rfc822;" + s),
    last_attempt=st.none() | st.floats(0, 4e9),
    will_retry_until=st.none() | st.floats(0, 4e9),
)


@settings(max_examples=150, deadline=None)
@given(
    sender=addresses,
    rcpts=st.lists(recipient_st, min_size=1, max_size=4),
    envid=st.none() | texts,
    smtputf8=st.booleans(),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    original=st.binary(max_size=400),
)
def test_any_report_parses_and_has_no_bare_line_breaks(
    sender: str,
    rcpts: list[DsnRecipient],
    envid: str | None,
    smtputf8: bool,
    ret: str | None,
    original: bytes,
) -> None:
    env = envelope(sender=sender, envid=envid, smtputf8=smtputf8, ret=ret)
    raw = build(env, rcpts, original, max_original=300)
    assert_wire_clean(raw)
    msg = parse(raw)
    found = parts(raw)
    assert len(found) in (2, 3)
    status = found[1].get_content_type()
    if status == "message/delivery-status":
        got = blocks(raw)
        assert raw.isascii() or found[2]["Content-Transfer-Encoding"] == "8bit"
    else:
        assert status == "message/global-delivery-status"
        got = global_blocks(raw)
        assert msg.get_param("report-type") == "global-delivery-status"
    assert len(got) == 1 + len(rcpts)
    assert set(got[0]) <= {"Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"}
    allowed = {
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
        "Last-Attempt-Date",
        "Will-Retry-Until",
    }
    for block, rcpt in zip(got[1:], rcpts, strict=True):
        assert set(block) <= allowed
        assert block["Action"] == rcpt.action
        assert block["Status"] == rcpt.status
        for value in block.values():
            assert "\r" not in value and "\n" not in value
