"""Authentication-Results (postbote/policy/authresults.py): the field we write parses back
under RFC 8601 §2.2, no input can inject a header, and remove_ours (RFC 8601 §5) removes
exactly the fields that claim our authserv-id."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.policy.authresults import (
    IprevResult,
    authentication_results,
    remove_ours,
    split_header,
)
from postbote.policy.dmarc import DmarcResult


@dataclass(frozen=True, slots=True)
class Spf:  # the fields of spf.SpfResult
    result: str
    domain: str
    scope: str = "mailfrom"
    explanation: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Dkim:  # the fields of dkim.DkimResult
    result: str
    domain: str
    selector: str = "sel"
    algorithm: str = "rsa-sha256"
    identity: str = ""
    header_b: str = "abcd1234"
    reason: str | None = None


# --- a small RFC 8601 §2.2 parser, independent of the module --------------------------------

TOKEN_CHARS = set("!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~")


class ArParser:
    """authres-header-field = "Authentication-Results:" authserv-id [CFWS authres-version]
    ( no-result / 1*resinfo ) [CFWS] CRLF; comments are collected, not interpreted."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.comments: list[str] = []

    def at(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def cfws(self) -> None:
        while self.at() in (" ", "\t", "("):
            if self.at() == "(":
                self.comment()
            else:
                self.i += 1

    def comment(self) -> None:
        depth, start = 0, self.i
        while True:
            c = self.at()
            assert c, "unterminated comment"
            if c == "\\":
                self.i += 2
                continue
            depth += (c == "(") - (c == ")")
            self.i += 1
            if depth == 0:
                self.comments.append(self.s[start + 1 : self.i - 1])
                return

    def expect(self, char: str) -> None:
        assert self.at() == char, f"expected {char!r} at {self.i}: {self.s!r}"
        self.i += 1

    def token(self) -> str:
        start = self.i
        while self.at() and self.at() in TOKEN_CHARS:
            self.i += 1
        assert self.i > start, f"expected a token at {self.i}: {self.s!r}"
        return self.s[start : self.i]

    def quoted(self) -> str:
        self.expect('"')
        out = []
        while self.at() != '"':
            assert self.at(), "unterminated quoted-string"
            if self.at() == "\\":
                self.i += 1
            out.append(self.at())
            self.i += 1
        self.i += 1
        return "".join(out)

    def value(self) -> str:
        return self.quoted() if self.at() == '"' else self.token()

    def pvalue(self) -> str:
        """value / [[local-part] "@"] domain-name (local-part a dot-atom here)."""
        if self.at() == '"':
            return self.quoted()
        start = self.i
        while self.at() and self.at() not in ' \t;()"':
            self.i += 1
        text = self.s[start : self.i]
        assert re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+", text), text
        if "@" not in text:
            assert set(text) <= TOKEN_CHARS, text
        return text

    def parse(self) -> tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]:
        self.cfws()
        authserv_id = self.value()
        results: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.cfws()
        while self.at():
            self.expect(";")
            self.cfws()
            method = self.token()
            self.cfws()
            if method == "none" and not results and not self.at():
                return authserv_id, []  # no-result
            self.expect("=")
            self.cfws()
            result = self.token()
            props: list[tuple[str, str]] = []
            self.cfws()
            while self.at() and self.at() != ";":
                name = self.token()
                assert re.fullmatch(r"[a-z]+\.[a-z]+", name), name
                self.cfws()
                self.expect("=")
                self.cfws()
                props.append((name, self.pvalue()))
                self.cfws()
            results.append((method, result, props))
        return authserv_id, results


def parse_field(field: bytes) -> tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]:
    text = field.decode("ascii")
    assert text.endswith("\r\n")
    body = text[:-2]
    assert all(line[:1] in (" ", "\t") for line in body.split("\r\n")[1:]), "bad folding"
    unfolded = body.replace("\r\n", "")  # RFC 5322 §2.2.3
    assert "\r" not in unfolded and "\n" not in unfolded
    name, colon, value = unfolded.partition(":")
    assert colon and name == "Authentication-Results"
    return ArParser(value).parse()


# --- building -----------------------------------------------------------------------------


def test_full_field_parses_back() -> None:
    field = authentication_results(
        "mx.example.org",
        iprev=IprevResult("pass", "192.0.2.1", "mail.example.net"),
        spf=Spf("pass", "example.net"),
        dkim=[
            Dkim("pass", "example.org", identity="@example.org"),
            Dkim("fail", "Example.COM", "s2", "ed25519-sha256", "u@example.com", "ab/+=cd"),
        ],
        dmarc=DmarcResult("pass", "example.org", "reject", "none"),
    )
    assert parse_field(field) == (
        "mx.example.org",
        [
            ("iprev", "pass", [("policy.iprev", "192.0.2.1")]),
            ("spf", "pass", [("smtp.mailfrom", "example.net")]),
            (
                "dkim",
                "pass",
                [
                    ("header.d", "example.org"),
                    ("header.i", "@example.org"),
                    ("header.s", "sel"),
                    ("header.a", "rsa-sha256"),
                    ("header.b", "abcd1234"),
                ],
            ),
            (
                "dkim",
                "fail",
                [
                    ("header.d", "Example.COM"),
                    ("header.i", "u@example.com"),
                    ("header.s", "s2"),
                    ("header.a", "ed25519-sha256"),
                    ("header.b", "ab/+=cd"),  # quoted: "/" and "=" are tspecials
                ],
            ),
            ("dmarc", "pass", [("header.from", "example.org")]),
        ],
    )
    assert b'header.b="ab/+=cd"' in field
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert field.startswith(b"Authentication-Results: mx.example.org;\r\n\t")


def test_authres_package_reads_it_too() -> None:
    authres = pytest.importorskip("authres")
    field = authentication_results(
        "mx.example.org",
        spf=Spf("softfail", "example.net", problem="not (quite) authorised"),
        dkim=[Dkim("pass", "example.org", header_b="ab/+=cd")],
        dmarc=DmarcResult("fail", "example.org", "quarantine", "none", "pct"),
    )
    parsed = authres.AuthenticationResultsHeader.parse(field.decode().rstrip("\r\n"))
    assert parsed.authserv_id == "mx.example.org"
    got = [
        (r.method, r.result, [(p.type, p.name, p.value) for p in r.properties])
        for r in parsed.results
    ]
    assert got[0] == ("spf", "softfail", [("smtp", "mailfrom", "example.net")])
    assert got[1][:2] == ("dkim", "pass")
    assert ("header", "b", "ab/+=cd") in got[1][2]
    assert got[2] == ("dmarc", "fail", [("header", "from", "example.org")])


def test_nothing_checked_is_no_result() -> None:
    field = authentication_results("mx.example.org")
    assert field == b"Authentication-Results: mx.example.org; none\r\n"
    assert parse_field(field) == ("mx.example.org", [])


def test_dkim_empty_list_is_none_and_none_is_omitted() -> None:
    unsigned = authentication_results("mx", dkim=[])
    assert parse_field(unsigned)[1] == [("dkim", "none", [])]
    skipped = authentication_results("mx", spf=Spf("none", "example.net"), dkim=None)
    assert [m for m, _, _ in parse_field(skipped)[1]] == ["spf"]


def test_helo_scope_uses_smtp_helo() -> None:
    field = authentication_results("mx", spf=Spf("pass", "mail.example.net", "helo"))
    assert parse_field(field)[1] == [("spf", "pass", [("smtp.helo", "mail.example.net")])]


def test_reasons_become_comments() -> None:
    parser_input = authentication_results(
        "mx",
        spf=Spf("temperror", "example.net", problem="DNS time-out (twice)"),
        dmarc=DmarcResult("fail", "example.org", "reject", "quarantine", "not sampled"),
    )
    text = parser_input.decode().replace("\r\n", "")
    parser = ArParser(text.partition(":")[2])
    parser.parse()
    assert parser.comments == [
        "DNS time-out \\(twice\\)",
        "p=reject dis=quarantine",
        "not sampled",
    ]


def test_idn_domains_become_a_labels() -> None:
    field = authentication_results(
        "mx.bücher.example", dmarc=DmarcResult("none", "bücher.example", "none", "none")
    )
    assert parse_field(field) == (
        "mx.xn--bcher-kva.example",
        [("dmarc", "none", [("header.from", "xn--bcher-kva.example")])],
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spf": Spf("PASS!", "example.net")},
        {"dkim": [Dkim("softfail", "example.org")]},  # softfail is SPF's, not DKIM's
        {"dmarc": DmarcResult("quarantine", "example.org", "none", "none")},
    ],
)
def test_result_outside_rfc_8601_is_a_bug(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        authentication_results("mx", **kwargs)  # type: ignore[arg-type]


def test_long_reason_is_folded_and_bounded() -> None:
    field = authentication_results("mx", dkim=[Dkim("fail", "example.org", reason="word " * 500)])
    lines = field.split(b"\r\n")
    assert all(len(line) <= 78 for line in lines)
    assert len(field) < 600  # MAX_COMMENT bounds it
    assert parse_field(field)[1][0][:2] == ("dkim", "fail")


def test_header_injection_attempt_is_neutralised() -> None:
    field = authentication_results(
        "mx\r\nX-Evil: 1",
        spf=Spf("fail", "evil.example\r\nX-Spam-Flag: NO", problem="x)\r\n\r\nbody("),
    )
    assert field.count(b"\r\n") == field.count(b"\r\n\t") + 1
    fields, end = split_header(field + b"\r\nbody")
    assert len(fields) == 1 and end == len(field)
    authserv_id, results = parse_field(field)
    assert authserv_id == "mx  X-Evil: 1"
    assert results == [("spf", "fail", [("smtp.mailfrom", "evil.example  X-Spam-Flag: NO")])]


# Everything an attacker controls, as arbitrary text (surrogates excluded: not in str
# values that came from decoding bytes with "replace").
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=200)
RESULTS = st.sampled_from(["pass", "fail", "neutral", "temperror", "permerror"])


@settings(max_examples=300, deadline=None)
@given(
    authserv_id=ANY_TEXT,
    spf_domain=ANY_TEXT,
    problem=st.none() | ANY_TEXT,
    dkim=st.lists(
        st.tuples(RESULTS, ANY_TEXT, ANY_TEXT, ANY_TEXT, st.none() | ANY_TEXT), max_size=3
    ),
    from_domain=ANY_TEXT,
    reason=st.none() | ANY_TEXT,
)
def test_no_input_can_inject_a_header(
    authserv_id: str,
    spf_domain: str,
    problem: str | None,
    dkim: list[tuple[str, str, str, str, str | None]],
    from_domain: str,
    reason: str | None,
) -> None:
    field = authentication_results(
        authserv_id,
        spf=Spf("fail", spf_domain, problem=problem),
        dkim=[Dkim(r, d, s, identity=i, reason=why) for r, d, s, i, why in dkim],
        dmarc=DmarcResult("fail", from_domain, "reject", "reject", reason),
    )
    assert field.isascii()
    lines = field[:-2].split(b"\r\n")
    assert field.endswith(b"\r\n") and b"\r" not in b"".join(lines) and b"\n" not in b"".join(lines)
    assert all(line[:1] == b"\t" for line in lines[1:])
    assert all(len(line) <= 998 for line in lines)  # RFC 5322 §2.1.1
    message = b"Subject: x\r\n" + field + b"To: y\r\n\r\nbody\r\n"
    fields, end = split_header(message)
    assert [f[:8] for f in fields] == [b"Subject:", b"Authenti", b"To: y\r\n"]
    assert message[end:] == b"\r\nbody\r\n"
    methods = [m for m, _, _ in parse_field(field)[1]]
    assert methods == ["spf"] + ["dkim"] * max(1, len(dkim)) + ["dmarc"]


@settings(max_examples=200, deadline=None)
@given(domain=PRINTABLE, selector=PRINTABLE)
def test_printable_values_round_trip(domain: str, selector: str) -> None:
    field = authentication_results("mx", dkim=[Dkim("pass", domain, selector, header_b="")])
    ((_, _, props),) = parse_field(field)[1]
    assert ("header.s", selector) in props
    assert ("header.d", domain) in props


# --- split_header -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fields", "rest"),
    [
        (b"A: 1\r\nB: 2\r\n 3\r\n\r\nbody", [b"A: 1\r\n", b"B: 2\r\n 3\r\n"], b"\r\nbody"),
        (b"A: 1\nB: 2\n\t3\n\nbody\n", [b"A: 1\n", b"B: 2\n\t3\n"], b"\nbody\n"),
        (b"A: 1\r\nno colon\r\n", [b"A: 1\r\n", b"no colon\r\n"], b""),
        (b"\r\nbody", [], b"\r\nbody"),
        (b"A: no newline", [b"A: no newline"], b""),
        (b" leading: wsp\r\nA: 1\r\n\r\n", [b" leading: wsp\r\n", b"A: 1\r\n"], b"\r\n"),
    ],
)
def test_split_header(message: bytes, fields: list[bytes], rest: bytes) -> None:
    got, end = split_header(message)
    assert got == fields
    assert message[end:] == rest
    assert b"".join(got) == message[:end]


# --- remove_ours --------------------------------------------------------------------------

OURS = "mx.example.org"
FORGED = [
    b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=example.net\r\n",
    b"authentication-results: MX.Example.ORG; dkim=pass header.d=example.net\r\n",
    b"AUTHENTICATION-RESULTS:mx.example.org;spf=pass\r\n",
    b"Authentication-Results  :   mx.example.org   ;  spf=pass\r\n",
    b"Authentication-Results: (forged (nested) \\) comment) mx.example.org; spf=pass\r\n",
    b"Authentication-Results:\r\n\tmx.example.org;\r\n\tspf=pass smtp.mailfrom=example.net\r\n",
    b"Authentication-Results:\r\n (comment\r\n  folded) \r\n mx.example.org\r\n ; none\r\n",
    b'Authentication-Results: "mx.example.org"; spf=pass\r\n',
    b'Authentication-Results: "mx.exa\\mple.org"; spf=pass\r\n',
    b"Authentication-Results: mx.example.org 1; spf=pass\r\n",
    b"Authentication-Results: mx.example.org.; spf=pass\r\n",
    b"Authentication-Results: mx.example.org(comment); spf=pass\r\n",
    b"Authentication-Results: mx.example.org\r\n",
    b"Authentication-Results: (unclosed comment mx.example.org; spf=pass\r\n",
    b"Authentication-Results: \t\r\n\t (a) (b) MX.EXAMPLE.ORG\t;dmarc=pass header.from=x\r\n",
]
KEPT = [
    b"Authentication-Results: other.example.org; spf=pass smtp.mailfrom=example.net\r\n",
    b"Authentication-Results: mx.example.org.evil; spf=pass\r\n",
    b"Authentication-Results: evil-mx.example.org; spf=pass\r\n",
    b"Authentication-Results: example.org; spf=pass\r\n",
    b"Authentication-Results: other.example; dkim=pass header.d=mx.example.org\r\n",
    b"Authentication-Results: (mx.example.org) other.example; spf=pass\r\n",
    b"X-Authentication-Results: mx.example.org; spf=pass\r\n",
    b"Authentication-Results-Original: mx.example.org; spf=pass\r\n",
    b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n",
    b"Subject: Authentication-Results: mx.example.org; spf=pass\r\n",
]


@pytest.mark.parametrize("forged", FORGED)
@pytest.mark.parametrize("position", ["top", "middle", "bottom"])
def test_remove_ours_removes_forged(forged: bytes, position: str) -> None:
    before = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    after = b"From: a@example.net\r\nSubject: hi\r\n"
    body = b"\r\nAuthentication-Results: mx.example.org; spf=pass\r\n\r\nbody\r\n"
    head = {"top": forged + before + after, "middle": before + forged + after}.get(
        position, before + after + forged
    )
    assert remove_ours(head + body, OURS) == before + after + body


@pytest.mark.parametrize("kept", KEPT)
def test_remove_ours_keeps_other_fields_byte_for_byte(kept: bytes) -> None:
    message = b"From: a@example.net\r\n" + kept + b"\r\nbody"
    assert remove_ours(message, OURS) is message


def test_remove_ours_all_forged_and_kept_together() -> None:
    header = b"".join(FORGED[:5]) + b"".join(KEPT) + b"".join(FORGED[5:])
    body = b"\r\n" + b"".join(FORGED)  # fields in the body are text, never touched
    expected = b"".join(KEPT) + body
    assert remove_ours(header + body, "MX.example.org.") == expected


def test_remove_ours_with_bare_lf_and_idn_id() -> None:
    message = (
        b"Authentication-Results: mx.xn--bcher-kva.example; spf=pass\n"
        b"Authentication-Results: mx.b\xc3\xbccher.example; spf=pass\n"
        b"Subject: x\n\nAuthentication-Results: mx.xn--bcher-kva.example; x\n"
    )
    assert remove_ours(message, "mx.bücher.example") == (
        b"Subject: x\n\nAuthentication-Results: mx.xn--bcher-kva.example; x\n"
    )


def test_remove_ours_then_our_field_is_the_only_one() -> None:
    message = FORGED[0] + FORGED[5] + b"Subject: s\r\n\r\nbody"
    cleaned = authentication_results(OURS, spf=Spf("fail", "example.net")) + remove_ours(
        message, OURS
    )
    fields = split_header(cleaned)[0]
    ours = [f for f in fields if f.lower().startswith(b"authentication-results")]
    assert len(ours) == 1 and parse_field(ours[0])[1] == [
        ("spf", "fail", [("smtp.mailfrom", "example.net")])
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=12),
    st.binary(max_size=60),
)
def test_remove_ours_is_a_filter(picks: list[tuple[bool, int]], body: bytes) -> None:
    """Any mix of forged and other fields: exactly the forged ones go, in order."""
    chosen = [
        (forged, (FORGED if forged else KEPT)[i % len(FORGED if forged else KEPT)])
        for forged, i in picks
    ]
    header = b"".join(field for _, field in chosen)
    message = header + b"\r\n" + body
    expected = b"".join(field for forged, field in chosen if not forged) + b"\r\n" + body
    assert remove_ours(message, OURS) == expected
