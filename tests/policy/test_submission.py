"""Submission header checks: the From: author (RFC 5322 §3.6.2), added Date/Message-ID."""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postbote.policy.submission import (
    C550_BAD_FROM,
    C550_FROM_NOT_ALLOWED,
    MAX_FROM_LENGTH,
    add_missing_headers,
    check_from,
    from_addresses,
)

BODY = b"Hello,\r\n\r\nFrom: boss@victim.test\r\nDate: never\r\n.\r\n"


def message(*header_lines: bytes, body: bytes = BODY) -> bytes:
    head = b"".join(line + b"\r\n" for line in header_lines)
    return head + b"\r\n" + body


def checked(msg: bytes, answer: bool = True) -> tuple[object, list[str]]:
    """check_from's reply and the addresses ``allowed`` was asked about."""
    asked: list[str] = []

    def allowed(addr: str) -> bool:
        asked.append(addr)
        return answer

    return check_from(msg, allowed), asked


# --- From: variants ------------------------------------------------------------------------

# (header lines, the one addr-spec check_from passes to allowed())
GOOD_FROM = {
    "plain": ([b"From: alice@example.org"], "alice@example.org"),
    "angle": ([b"From: <alice@example.org>"], "alice@example.org"),
    "display-name": ([b"From: Alice Liddell <alice@example.org>"], "alice@example.org"),
    "quoted-display-name": (
        [b'From: "Liddell, Alice" <alice@example.org>'],
        "alice@example.org",
    ),
    "obsolete-period-in-name": (
        [b"From: Alice Q. Liddell <alice@example.org>"],
        "alice@example.org",
    ),
    "encoded-word": (
        [b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>"],
        "joerg@example.org",
    ),
    "encoded-word-holding-an-address": (
        [b"From: =?utf-8?b?Ym9zc0B2aWN0aW0udGVzdA==?= <alice@example.org>"],
        "alice@example.org",
    ),
    "quoted-local-part": ([b'From: "alice smith"@example.org'], '"alice smith"@example.org'),
    "needlessly-quoted-local-part": ([b'From: <"alice"@example.org>'], "alice@example.org"),
    "comment": ([b"From: alice@example.org (Alice)"], "alice@example.org"),
    "comment-holding-an-address": (
        [b"From: (boss@victim.test) alice@example.org"],
        "alice@example.org",
    ),
    "folded": ([b"From: Alice", b" <alice@example.org>"], "alice@example.org"),
    "folded-tab-and-comment": (
        [b"From: Alice", b"\t<alice@example.org>", b"  (work)"],
        "alice@example.org",
    ),
    "upper-case-name": ([b"FROM: alice@example.org"], "alice@example.org"),
    "space-before-colon": ([b"from : alice@example.org"], "alice@example.org"),
    "utf8-address": (["From: Jörg <jörg@bücher.example>".encode()], "jörg@bücher.example"),
    "utf8-display-name": (["From: Jörg Müller <joerg@example.org>".encode()], "joerg@example.org"),
    "among-other-fields": (
        [
            b"Received: from x",
            b"\tby y; Mon, 1 Jan 2024 00:00:00 +0000",
            b"Subject: from:",
            b"From: alice@example.org",
            b"To: bob@example.org",
        ],
        "alice@example.org",
    ),
    "non-utf8-elsewhere": ([b"Subject: caf\xe9", b"From: alice@example.org"], "alice@example.org"),
    "trailing-comma": ([b"From: alice@example.org,"], "alice@example.org"),
    "address-literal": ([b"From: alice@[192.0.2.1]"], "alice@[192.0.2.1]"),
}

BAD_FROM = {
    "two-from-fields": [b"From: alice@example.org", b"From: alice@example.org"],
    "two-from-fields-other-case": [b"From: alice@example.org", b"fROM : boss@victim.test"],
    "group": [b"From: Team: alice@example.org;"],
    "empty-group": [b"From: undisclosed-recipients:;"],
    "two-mailboxes": [b"From: alice@example.org, bob@example.org"],
    "two-mailboxes-folded": [b"From: alice@example.org,", b" bob@example.org"],
    "no-from": [b"Subject: hello", b"To: bob@example.org"],
    "empty-from": [b"From:"],
    "blank-from": [b"From:    "],
    "no-header-section": [],
    "no-domain": [b"From: alice"],
    "null-address": [b"From: <>"],
    "address-then-angle": [b"From: alice@example.org <boss@victim.test>"],
    "two-angles": [b"From: <alice@example.org> <boss@victim.test>"],
    "missing-comma": [b"From: alice@example.org boss@victim.test"],
    "encoded-word-as-local-part": [b"From: =?utf-8?q?boss?=@victim.test"],
    "encoded-word-as-address": [b"From: =?utf-8?q?boss=40victim.test?="],
    "unterminated-angle": [b"From: Alice <alice@example.org"],
    "unterminated-quote": [b'From: "alice@example.org'],
    "unterminated-comment": [b"From: alice@example.org (Alice"],
    "nul-byte": [b"From: alice@example.org\x00boss@victim.test"],
    "trailing-dot": [b"From: alice@example.org."],
    "not-utf8": [b"From: J\xf6rg <joerg@example.org>"],
    "garbage": [b"\xff\xfe\x00garbage\x80"],
    "first-line-folded": [b" From: alice@example.org"],
    "line-that-is-no-field": [b"X-Junk", b"From: alice@example.org"],
    "bare-lf-hides-a-second-from": [
        b"Subject: hi\nFrom: boss@victim.test",
        b"From: alice@example.org",
    ],
    "bare-cr": [b"From: alice@example.org\rFrom: boss@victim.test"],
    "nested-comments": [b"From: alice@example.org " + b"(" * 1000 + b")" * 1000],
    "too-long": [b"From: " + b"(a)" * 700 + b" alice@example.org"],
}


@pytest.mark.parametrize("case", sorted(GOOD_FROM))
def test_good_from(case: str) -> None:
    lines, addr = GOOD_FROM[case]
    msg = message(*lines)
    assert checked(msg) == (None, [addr])
    assert checked(msg, answer=False) == (C550_FROM_NOT_ALLOWED, [addr])
    assert from_addresses(msg) == [[addr]]


@pytest.mark.parametrize("case", sorted(BAD_FROM))
def test_bad_from(case: str) -> None:
    msg = message(*BAD_FROM[case])
    assert checked(msg) == (C550_BAD_FROM, [])


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"Subject: x"], []),
        ([b"From: a@example.org", b"from: b@example.org"], [["a@example.org"], ["b@example.org"]]),
        ([b"From: a@example.org, B <b@example.org>"], [["a@example.org", "b@example.org"]]),
        ([b"From: Team: a@example.org, b@example.org;"], [["a@example.org", "b@example.org"]]),
        ([b"From: undisclosed-recipients:;"], [[]]),
        ([b"From:"], [[]]),
        ([b"From: alice@example.org <boss@victim.test>"], None),
        ([b"X-Junk", b"From: a@example.org"], None),
        ([b"From: J\xf6rg <joerg@example.org>"], None),
    ],
)
def test_from_addresses(lines: list[bytes], expected: list[list[str]] | None) -> None:
    assert from_addresses(message(*lines)) == expected


def test_from_length_limit() -> None:
    # The email package's address parser takes more than linear time on some input; the
    # limit keeps one message's check within milliseconds.
    assert 998 <= MAX_FROM_LENGTH <= 4096
    addr = b" <alice@example.org>"
    longest = b"x" * (MAX_FROM_LENGTH - len(addr)) + addr
    assert checked(message(b"From: " + longest)) == (None, ["alice@example.org"])
    assert checked(message(b"From: x" + longest)) == (C550_BAD_FROM, [])
    # the CRLF of a fold does not count (RFC 5322 §2.2.3), nor white space around the value
    folded = b"From: \t" + longest[: -len(addr)] + b"\r\n" + addr + b"  "
    assert checked(message(folded)) == (None, ["alice@example.org"])


def test_only_the_header_section_is_read() -> None:
    body = b"From: boss@victim.test\r\n" + b"\xff" * 100_000 + b"\r\nX-Junk\r\n"
    msg = message(b"From: alice@example.org", body=body)
    assert from_addresses(msg) == [["alice@example.org"]]
    assert checked(msg) == (None, ["alice@example.org"])
    # The header section ends at the first empty line, even with no body after it.
    assert from_addresses(b"From: alice@example.org\r\n\r\n") == [["alice@example.org"]]
    # No empty line at all: everything is header section (RFC 5322 §2.1).
    assert from_addresses(b"From: alice@example.org\r\n") == [["alice@example.org"]]
    assert from_addresses(b"From: alice@example.org") == [["alice@example.org"]]
    assert from_addresses(b"From: a@example.org\r\nFrom: b@example.org") == [
        ["a@example.org"],
        ["b@example.org"],
    ]
    assert from_addresses(b"\r\nFrom: alice@example.org\r\n") == []
    assert from_addresses(b"") == []


def test_allowed_errors_propagate() -> None:
    def broken(addr: str) -> bool:
        raise RuntimeError(addr)

    with pytest.raises(RuntimeError, match=r"^alice@example\.org$"):
        check_from(message(b"From: alice@example.org"), broken)


@given(st.binary(max_size=300))
def test_any_bytes_give_an_answer(data: bytes) -> None:
    assert checked(data)[0] in (None, C550_BAD_FROM)
    result = from_addresses(data)
    assert result is None or all(isinstance(a, str) for field in result for a in field)


@given(st.text(max_size=80))
def test_any_from_value_gives_an_answer(value: str) -> None:
    msg = message(b"From: " + value.encode("utf-8", "surrogatepass"))
    reply, asked = checked(msg)
    assert reply in (None, C550_BAD_FROM)
    assert len(asked) == (reply is None)


# --- Date and Message-ID -------------------------------------------------------------------

NOW = 1_700_000_000.75
HOST = "mx.example.org"
UNIQUE = "0123abcd.XYZ-9=="


@pytest.fixture
def berlin() -> Iterator[None]:
    """The local time zone is Europe/Berlin (UTC+1 at NOW)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def added(original: bytes) -> bytes:
    """What add_missing_headers put in front of ``original`` (and check it is in front)."""
    out = add_missing_headers(original, now=NOW, hostname=HOST, unique=UNIQUE)
    assert out.endswith(original)
    return out[: len(out) - len(original)]


def test_date_and_message_id_added(berlin: None) -> None:
    original = message(b"From: alice@example.org", b"Subject: hi")
    assert added(original) == (
        b"Date: Tue, 14 Nov 2023 23:13:20 +0100\r\n"
        b"Message-ID: <0123abcd.XYZ-9==@mx.example.org>\r\n"
    )


def test_date_is_now_in_the_local_time_zone() -> None:
    head = added(message(b"From: alice@example.org", b"Message-ID: <x@y>"))
    assert head.startswith(b"Date: ") and head.endswith(b"\r\n") and head.count(b"\r\n") == 1
    date = email.utils.parsedate_to_datetime(head[6:-2].decode())
    assert date.timestamp() == int(NOW)
    assert date.utcoffset() == datetime.fromtimestamp(NOW).astimezone().utcoffset()


@pytest.mark.parametrize(
    ("lines", "date_added", "message_id_added"),
    [
        ([b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b"Message-ID: <a@b>"], False, False),
        ([b"date: whenever", b"MESSAGE-ID: <a@b>"], False, False),
        ([b"DATE : x", b"message-id :<a@b>"], False, False),
        ([b"Date: x"], False, True),
        ([b"Subject: x", b"Message-Id:", b" <folded@example.org>"], True, False),
        ([b"Subject: x", b"Resent-Date: x", b"Resent-Message-ID: <a@b>"], True, True),
        ([b"Subject: x", b" Date: folded into the subject"], True, True),
        ([b"X-Date: x", b"Message-IDs: x", b"Dates: y"], True, True),
    ],
)
def test_added_exactly_when_missing(
    lines: list[bytes], date_added: bool, message_id_added: bool
) -> None:
    head = added(message(*lines))
    assert head.startswith(b"Date: ") == date_added
    assert head.endswith(b"Message-ID: <0123abcd.XYZ-9==@mx.example.org>\r\n") == message_id_added
    assert head.count(b"\r\n") == date_added + message_id_added


def test_fields_in_the_body_do_not_count() -> None:
    original = message(b"From: alice@example.org", body=b"Date: x\r\nMessage-ID: <a@b>\r\n")
    head = added(original)
    assert head.startswith(b"Date: ") and b"\r\nMessage-ID: <" in head


def test_no_header_section() -> None:
    original = b"\r\njust a body\r\nDate: x\r\n"
    head = added(original)
    assert head.startswith(b"Date: ") and head.endswith(b"@mx.example.org>\r\n")
    assert from_addresses(head + original) == []  # the empty line still ends the headers


def test_complete_message_is_returned_unchanged() -> None:
    original = message(b"Message-ID: <a@b>", b"Date: x", body=b"\xff" * 1000)
    assert add_missing_headers(original, now=NOW, hostname=HOST, unique=UNIQUE) is original


@pytest.mark.parametrize(
    ("hostname", "unique"),
    [
        ("mx.example.org", ""),
        ("", "abc"),
        ("mx example.org", "abc"),
        ("mx.example.org", "a>b"),
        ("mx.example.org", "a@b"),
        ("mx.example.org\r\nBcc: x", "abc"),
        ("mx.exämple.org", "abc"),
    ],
)
def test_bad_message_id_parts(hostname: str, unique: str) -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        add_missing_headers(message(b"Date: x"), now=NOW, hostname=hostname, unique=unique)
    # not needed, not checked
    original = message(b"Date: x", b"Message-ID: <a@b>")
    assert add_missing_headers(original, now=NOW, hostname=hostname, unique=unique) == original


@given(st.binary(max_size=200))
def test_rest_is_byte_identical(data: bytes) -> None:
    out = add_missing_headers(data, now=NOW, hostname=HOST, unique=UNIQUE)
    assert out.endswith(data)
    assert out[: len(out) - len(data)].count(b"\r\n") in (0, 1, 2)
