"""Tests for the SMTP path/parameter grammar (RFC 5321 §4.1, RFC 6531, RFC 3461, RFC 1870)."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postbote.smtp import grammar
from postbote.smtp.grammar import (
    Address,
    GrammarError,
    MailParams,
    RcptParams,
    address_literal_ip,
    normalize_domain,
    parse_helo_name,
    parse_mail_from,
    parse_mailbox,
    parse_rcpt_to,
    xtext_decode,
    xtext_encode,
)
from postbote.smtp.replies import C501_BAD_ADDRESS

A = Address
MP = MailParams
RP = RcptParams

# --- MAIL FROM: accepted ---------------------------------------------------------------------

MAIL_OK = [
    ("FROM:<a@b.c>", A("a", "b.c"), MP()),
    ("from:<a@b.c>", A("a", "b.c"), MP()),
    ("FrOm:<a@b.c>", A("a", "b.c"), MP()),
    ("FROM: <a@b.c>", A("a", "b.c"), MP()),  # lenient space after the colon
    ("FROM:  <a@b.c>  ", A("a", "b.c"), MP()),
    (" FROM:<a@b.c>", A("a", "b.c"), MP()),
    ("FROM:<>", None, MP()),
    ("FROM: <>", None, MP()),
    ("FROM:<> SIZE=0", None, MP(size=0)),
    ("FROM:<First.Last@Example.COM>", A("First.Last", "Example.COM"), MP()),
    ("FROM:<a@localhost>", A("a", "localhost"), MP()),
    ("FROM:<a@b-c.d1>", A("a", "b-c.d1"), MP()),
    ("FROM:<!#$%&'*+/=?^_`{|}~-@x.y>", A("!#$%&'*+/=?^_`{|}~-", "x.y"), MP()),
    ("FROM:<a@b.c.>", A("a", "b.c"), MP()),  # one trailing dot stripped
    ('FROM:<"a b"@c.d>', A("a b", "c.d"), MP()),
    ('FROM:<"a\\"b\\\\c"@d>', A('a"b\\c', "d"), MP()),
    ('FROM:<"\\a"@d>', A("a", "d"), MP()),  # quoted-pair of an ordinary char
    ('FROM:<""@d>', A("", "d"), MP()),  # empty Quoted-string is valid ABNF
    ('FROM:<"a>b"@d> SIZE=1', A("a>b", "d"), MP(size=1)),
    ("FROM:<@a,@b:user@c>", A("user", "c"), MP()),  # source route ignored (Appendix C)
    ("FROM:<@a.:user@c>", A("user", "c"), MP()),
    ("FROM:<u@[192.0.2.1]>", A("u", "[192.0.2.1]"), MP()),
    ("FROM:<u@[IPv6:2001:db8::1]>", A("u", "[IPv6:2001:db8::1]"), MP()),
    ("FROM:<u@[ipv6:::ffff:192.0.2.1]>", A("u", "[ipv6:::ffff:192.0.2.1]"), MP()),
    ("FROM:<u@[x-tag:any:thing]>", A("u", "[x-tag:any:thing]"), MP()),
    ("FROM:<a@b> SIZE=12345", A("a", "b"), MP(size=12345)),
    ("FROM:<a@b> size=" + "9" * 20, A("a", "b"), MP(size=int("9" * 20))),
    ("FROM:<a@b> BODY=8BITMIME", A("a", "b"), MP(body="8BITMIME")),
    ("FROM:<a@b> body=7bit", A("a", "b"), MP(body="7BIT")),
    ("FROM:<a@b> SMTPUTF8", A("a", "b"), MP(smtputf8=True)),
    ("FROM:<a@b> RET=FULL", A("a", "b"), MP(ret="FULL")),
    ("FROM:<a@b> ret=hdrs", A("a", "b"), MP(ret="HDRS")),
    ("FROM:<a@b> ENVID=QQ314159", A("a", "b"), MP(envid="QQ314159")),
    ("FROM:<a@b> ENVID=a+2Bb+3Dc", A("a", "b"), MP(envid="a+b=c")),
    ("FROM:<a@b> ENVID=" + "x" * 100, A("a", "b"), MP(envid="x" * 100)),
    ("FROM:<a@b> AUTH=<>", A("a", "b"), MP(auth="<>")),
    ("FROM:<a@b> AUTH=e+3Dmc2@example.com", A("a", "b"), MP(auth="e=mc2@example.com")),
    (
        "FROM:<a@b>  SIZE=10   BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x AUTH=<> ",
        A("a", "b"),
        MP(size=10, body="8BITMIME", smtputf8=True, ret="HDRS", envid="x", auth="<>"),
    ),
    # RFC 6531: UTF-8 with SMTPUTF8 on the same line
    ("FROM:<jöran@bücher.de> SMTPUTF8", A("jöran", "bücher.de"), MP(smtputf8=True)),
    ('FROM:<"jö ran"@b.de> SMTPUTF8', A("jö ran", "b.de"), MP(smtputf8=True)),
    ("FROM:<用户@例子.广告> smtputf8", A("用户", "例子.广告"), MP(smtputf8=True)),
]


@pytest.mark.parametrize(("arg", "address", "params"), MAIL_OK)
def test_mail_from_accepts(arg, address, params):
    assert parse_mail_from(arg, esmtp=True) == (address, params)


# --- RCPT TO: accepted -----------------------------------------------------------------------

RCPT_OK = [
    ("TO:<u@d>", False, A("u", "d"), RP()),
    ("to: <u@d.example>", False, A("u", "d.example"), RP()),
    ("TO:<Postmaster>", False, A("Postmaster", ""), RP()),
    ("TO:<postMASTER>", False, A("Postmaster", ""), RP()),
    ("TO:<postmaster> NOTIFY=NEVER", False, A("Postmaster", ""), RP(notify=("NEVER",))),
    ("TO:<postmaster@d>", False, A("postmaster", "d"), RP()),
    ("TO:<u@d> NOTIFY=NEVER", False, A("u", "d"), RP(notify=("NEVER",))),
    ("TO:<u@d> notify=never", False, A("u", "d"), RP(notify=("NEVER",))),
    ("TO:<u@d> NOTIFY=SUCCESS", False, A("u", "d"), RP(notify=("SUCCESS",))),
    (
        "TO:<u@d> NOTIFY=DELAY,FAILURE,SUCCESS",
        False,
        A("u", "d"),
        RP(notify=("SUCCESS", "FAILURE", "DELAY")),
    ),
    ("TO:<u@d> NOTIFY=delay,delay", False, A("u", "d"), RP(notify=("DELAY",))),
    ("TO:<u@d> ORCPT=rfc822;u@d", False, A("u", "d"), RP(orcpt="rfc822;u@d")),
    ("TO:<u@d> ORCPT=RFC822;a+2Bb@d", False, A("u", "d"), RP(orcpt="RFC822;a+b@d")),
    ("TO:<u@d> ORCPT=rfc822;a+20b+3Bc@d", False, A("u", "d"), RP(orcpt="rfc822;a b;c@d")),
    ("TO:<u@d> ORCPT=utf-8;j\\x{00F6}@d", False, A("u", "d"), RP(orcpt="utf-8;j\\x{00F6}@d")),
    ("TO:<u@d> ORCPT=utf-8;jö@d", True, A("u", "d"), RP(orcpt="utf-8;jö@d")),
    (
        "TO:<u@d> NOTIFY=FAILURE ORCPT=rfc822;u@d",
        False,
        A("u", "d"),
        RP(notify=("FAILURE",), orcpt="rfc822;u@d"),
    ),
    ("TO:<jö@bücher.de>", True, A("jö", "bücher.de"), RP()),
    ("TO:<@x.y:u@d>", False, A("u", "d"), RP()),
]


@pytest.mark.parametrize(("arg", "utf8", "address", "params"), RCPT_OK)
def test_rcpt_to_accepts(arg, utf8, address, params):
    assert parse_rcpt_to(arg, esmtp=True, smtputf8=utf8) == (address, params)


# --- Relay tricks keep their meaning ---------------------------------------------------------

RELAY_TRICKS = [
    ("TO:<user%other@local>", A("user%other", "local")),
    ('TO:<"user@other"@local>', A("user@other", "local")),
    ("TO:<other!user@local>", A("other!user", "local")),
    ("TO:<@local:user@other>", A("user", "other")),
    ("TO:<@local,@local2:user@other>", A("user", "other")),
    ("TO:<user@[192.0.2.1]>", A("user", "[192.0.2.1]")),
    ("TO:<USER@LOCAL.TEST.>", A("USER", "LOCAL.TEST")),
]


@pytest.mark.parametrize(("arg", "address"), RELAY_TRICKS)
def test_relay_tricks_survive(arg, address):
    got, _ = parse_rcpt_to(arg, esmtp=True, smtputf8=False)
    assert got == address


def test_trailing_dot_key():
    got, _ = parse_rcpt_to("TO:<USER@LOCAL.TEST.>", esmtp=True, smtputf8=False)
    assert got.key() == "user@local.test"


# --- Refusals: (function, arg, esmtp, smtputf8) -> code, enhanced ----------------------------

SYNTAX = (501, "5.5.4")
BAD_SENDER = (501, "5.1.7")
BAD_RCPT = (501, "5.1.3")
UNSUPPORTED = (555, "5.5.4")
NO_UTF8 = (553, "5.6.7")

MAIL_ERRORS = [
    # missing or wrong verb
    ("", True, SYNTAX),
    ("<a@b>", True, SYNTAX),
    ("FROM <a@b>", True, SYNTAX),
    ("FROM;<a@b>", True, SYNTAX),
    ("TO:<a@b>", True, SYNTAX),
    # path syntax
    ("FROM:", True, BAD_SENDER),
    ("FROM:a@b", True, BAD_SENDER),  # no angle brackets
    ("FROM:<a@b", True, BAD_SENDER),
    ("FROM:<a@b>x", True, BAD_SENDER),
    ("FROM:<>x", True, BAD_SENDER),
    ("FROM:<a>", True, BAD_SENDER),
    ("FROM:<Postmaster>", True, BAD_SENDER),  # bare postmaster is for RCPT only
    ("FROM:<@b>", True, BAD_SENDER),
    ("FROM:<a@>", True, BAD_SENDER),
    ("FROM:<a@@b>", True, BAD_SENDER),
    ("FROM:<.a@b>", True, BAD_SENDER),
    ("FROM:<a.@b>", True, BAD_SENDER),
    ("FROM:<a..b@c>", True, BAD_SENDER),
    ("FROM:<a b@c>", True, BAD_SENDER),
    ("FROM:<a(b)@c>", True, BAD_SENDER),
    ("FROM:<a@b..c>", True, BAD_SENDER),
    ("FROM:<a@.b>", True, BAD_SENDER),
    ("FROM:<a@b.c..>", True, BAD_SENDER),  # only ONE trailing dot
    ("FROM:<a@-b.c>", True, BAD_SENDER),
    ("FROM:<a@b-.c>", True, BAD_SENDER),
    ("FROM:<a@b_c.d>", True, BAD_SENDER),
    ('FROM:<"a@b>', True, BAD_SENDER),
    ('FROM:<"a"b@c>', True, BAD_SENDER),
    ('FROM:<"a\tb"@c>', True, BAD_SENDER),  # HT is not qtextSMTP
    ('FROM:<"a\\\x01"@c>', True, BAD_SENDER),  # quoted-pairSMTP is %d92 %d32-126
    ("FROM:<a@b\x00>", True, BAD_SENDER),
    ("FROM:<a\udcff@b> SMTPUTF8", True, BAD_SENDER),  # invalid UTF-8 (surrogateescape)
    ("FROM:<a@[192.0.2.256]>", True, BAD_SENDER),
    ("FROM:<a@[192.0.2]>", True, BAD_SENDER),
    ("FROM:<a@[1.2.3.4.5]>", True, BAD_SENDER),
    ("FROM:<a@[IPv6:2001:db8::g]>", True, BAD_SENDER),
    ("FROM:<a@[IPv6:fe80::1%eth0]>", True, BAD_SENDER),
    ("FROM:<a@[IPv6:192.0.2.1]>", True, BAD_SENDER),
    ("FROM:<a@[tag-:x]>", True, BAD_SENDER),  # Ldh-str ends in Let-dig
    ("FROM:<a@[tag:]>", True, BAD_SENDER),
    ("FROM:<a@[]>", True, BAD_SENDER),
    ("FROM:<a@[a[b]>", True, BAD_SENDER),
    ("FROM:<a@[192.0.2.1].>", True, BAD_SENDER),
    ("FROM:<@a:@b:u@c>", True, BAD_SENDER),
    ("FROM:<a,b:u@c>", True, BAD_SENDER),
    # UTF-8 without SMTPUTF8 (RFC 6531 §3.4)
    ("FROM:<jö@b.de>", True, NO_UTF8),
    ("FROM:<j@bücher.de>", True, NO_UTF8),
    ('FROM:<"jö"@b.de>', True, NO_UTF8),
    ("FROM:<jö@b.de> SIZE=1", True, NO_UTF8),
    ("FROM:<jö@b.de>", False, NO_UTF8),
    # parameters
    ("FROM:<a@b> SIZE=1", False, UNSUPPORTED),  # after HELO no parameters at all
    ("FROM:<> BODY=8BITMIME", False, UNSUPPORTED),
    ("FROM:<a@b> X-FOO=bar", True, UNSUPPORTED),
    ("FROM:<a@b> NOTIFY=NEVER", True, UNSUPPORTED),  # RCPT parameter on MAIL
    ("FROM:<a@b> SIZE=1 SIZE=2", True, SYNTAX),
    ("FROM:<a@b> size=1 SIZE=1", True, SYNTAX),
    ("FROM:<a@b> SMTPUTF8 smtputf8", True, SYNTAX),
    ("FROM:<a@b> SIZE", True, SYNTAX),
    ("FROM:<a@b> SIZE=", True, SYNTAX),
    ("FROM:<a@b> SIZE=-1", True, SYNTAX),
    ("FROM:<a@b> SIZE=1k", True, SYNTAX),
    ("FROM:<a@b> SIZE=" + "9" * 21, True, SYNTAX),
    ("FROM:<a@b> SIZE=١٢", True, SYNTAX),  # non-ASCII digits
    ("FROM:<a@b> SIZE=1=2", True, SYNTAX),
    ("FROM:<a@b> =1", True, SYNTAX),
    ("FROM:<a@b> -X=1", True, SYNTAX),
    ("FROM:<a@b> SIZE=1\tBODY=7BIT", True, SYNTAX),
    ("FROM:<a@b> BODY=9BIT", True, SYNTAX),
    ("FROM:<a@b> BODY", True, SYNTAX),
    ("FROM:<a@b> BODY=8bitmıme", True, SYNTAX),  # dotless i upper-cases to I
    ("FROM:<a@b> BODY=BINARYMIME", True, (504, "5.5.4")),
    ("FROM:<a@b> SMTPUTF8=yes", True, SYNTAX),
    ("FROM:<a@b> RET=ALL", True, SYNTAX),
    ("FROM:<a@b> RET", True, SYNTAX),
    ("FROM:<a@b> ENVID=" + "x" * 101, True, SYNTAX),
    ("FROM:<a@b> ENVID=a+2b", True, SYNTAX),  # lower-case hex
    ("FROM:<a@b> ENVID=a+2", True, SYNTAX),
    ("FROM:<a@b> ENVID=a+0D+0Ab", True, SYNTAX),  # CR LF would reach DSN headers
    ("FROM:<a@b> ENVID=ö SMTPUTF8", True, SYNTAX),
    ("FROM:<a@b> ENVID", True, SYNTAX),
    ("FROM:<a@b> AUTH", True, SYNTAX),
    ("FROM:<a@b> AUTH=a+FF", True, SYNTAX),  # not UTF-8 once decoded
    ("FROM:<a@b> AUTH=a+00", True, SYNTAX),
]


@pytest.mark.parametrize(("arg", "esmtp", "expected"), MAIL_ERRORS)
def test_mail_from_refuses(arg, esmtp, expected):
    with pytest.raises(GrammarError) as info:
        parse_mail_from(arg, esmtp=esmtp)
    assert (info.value.reply.code, info.value.reply.enhanced) == expected


RCPT_ERRORS = [
    ("", True, False, SYNTAX),
    ("<u@d>", True, False, SYNTAX),
    ("FROM:<u@d>", True, False, SYNTAX),
    ("TO<u@d>", True, False, SYNTAX),
    ("TO:<>", True, False, BAD_RCPT),
    ("TO:<> NOTIFY=NEVER", True, False, BAD_RCPT),
    ("TO:u@d", True, False, BAD_RCPT),
    ("TO:<u>", True, False, BAD_RCPT),
    ("TO:<postmaster>x", True, False, BAD_RCPT),
    ("TO:<Postmaster@>", True, False, BAD_RCPT),
    ("TO:<u..v@d>", True, False, BAD_RCPT),
    ("TO:<u@d..e>", True, False, BAD_RCPT),
    ("TO:<u@[999.0.0.1]>", True, False, BAD_RCPT),
    ("TO:<jö@d>", True, False, NO_UTF8),
    ("TO:<j@bücher.de>", True, False, NO_UTF8),
    ("TO:<jö@d> SMTPUTF8", True, False, UNSUPPORTED),  # SMTPUTF8 is a MAIL parameter
    ("TO:<u@d> NOTIFY=NEVER", False, False, UNSUPPORTED),
    ("TO:<u@d> SIZE=1", True, False, UNSUPPORTED),
    ("TO:<u@d> X-FOO", True, False, UNSUPPORTED),
    ("TO:<u@d> NOTIFY=NEVER NOTIFY=NEVER", True, False, SYNTAX),
    ("TO:<u@d> NOTIFY", True, False, SYNTAX),
    ("TO:<u@d> NOTIFY=NEVER,SUCCESS", True, False, SYNTAX),
    ("TO:<u@d> NOTIFY=SUCCESS,,DELAY", True, False, SYNTAX),
    ("TO:<u@d> NOTIFY=SUCCESS,", True, False, SYNTAX),
    ("TO:<u@d> NOTIFY=ALWAYS", True, False, SYNTAX),
    ("TO:<u@d> ORCPT", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=rfc822", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=rfc822;", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=;u@d", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=rf(c;u@d", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=rfc822;u+4@d", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=rfc822;u+0A@d", True, False, SYNTAX),
    ("TO:<u@d> ORCPT=utf-8;jö@d", True, False, SYNTAX),  # raw UTF-8 only under SMTPUTF8
]


@pytest.mark.parametrize(("arg", "esmtp", "utf8", "expected"), RCPT_ERRORS)
def test_rcpt_to_refuses(arg, esmtp, utf8, expected):
    with pytest.raises(GrammarError) as info:
        parse_rcpt_to(arg, esmtp=esmtp, smtputf8=utf8)
    assert (info.value.reply.code, info.value.reply.enhanced) == expected


def test_error_carries_reply_and_is_value_error():
    with pytest.raises(ValueError, match=r"555 5\.5\.4") as info:
        parse_mail_from("FROM:<a@b> FOO", esmtp=True)
    assert isinstance(info.value, GrammarError)
    assert info.value.reply == grammar.C555_UNSUPPORTED_PARAM


# --- Length limits (RFC 5321 §4.5.3.1) -------------------------------------------------------


def _mail(path: str) -> tuple[Address | None, MailParams]:
    return parse_mail_from(f"FROM:<{path}> SMTPUTF8", esmtp=True)


def _rcpt(path: str) -> tuple[Address, RcptParams]:
    return parse_rcpt_to(f"TO:<{path}>", esmtp=True, smtputf8=True)


LABEL63 = "d" * 63

LIMITS_OK = [
    "l" * 64 + "@d",
    "ö" * 32 + "@d",  # 64 octets
    '"' + "q" * 62 + '"@d',  # quoted form is 64 octets
    "u@" + LABEL63 + ".x",
    "u@" + "ü" * 30 + ".x",  # A-label "xn--tdaaa…" fits in 63
    # path of exactly 256 octets: "<" + 64 + "@" + 189 + ">"
    "l" * 64 + "@" + ".".join([LABEL63, LABEL63, "e" * 61]),
]
LIMITS_BAD = [
    "l" * 65 + "@d",
    "ö" * 32 + "x@d",  # 65 octets
    '"' + "q" * 63 + '"@d',
    "u@" + "d" * 64 + ".x",
    "u@" + "ü" * 60 + ".x",  # A-label longer than 63
    "l" * 64 + "@" + ".".join([LABEL63, LABEL63, "e" * 62]),  # path 257
    "l" * 64 + "@" + ".".join([LABEL63, LABEL63, "e" * 59, "ü"]),  # 256 chars, 257 octets
    "u@" + ".".join([LABEL63] * 4),  # domain 255, path over
    "@a.b:" + "l" * 64 + "@" + ".".join([LABEL63, LABEL63, "e" * 57]),  # route counts
]


@pytest.mark.parametrize("path", LIMITS_OK)
def test_length_limits_ok(path):
    assert _mail(path)[0] is not None
    assert _rcpt(path)[0].domain


@pytest.mark.parametrize("path", LIMITS_BAD)
def test_length_limits_exceeded(path):
    with pytest.raises(GrammarError) as mail:
        _mail(path)
    assert (mail.value.reply.code, mail.value.reply.enhanced) == BAD_SENDER
    with pytest.raises(GrammarError) as rcpt:
        _rcpt(path)
    assert (rcpt.value.reply.code, rcpt.value.reply.enhanced) == BAD_RCPT


def test_path_limit_boundary_is_exact():
    path = LIMITS_OK[-1]
    assert len(f"<{path}>") == 256
    assert len(f"<{LIMITS_BAD[5]}>") == 257


# --- Address ---------------------------------------------------------------------------------

ADDRESS_STR = [
    (A("a.b", "c.d"), "a.b@c.d"),
    (A("a b", "c"), '"a b"@c'),
    (A("a..b", "c"), '"a..b"@c'),
    (A(".a", "c"), '".a"@c'),
    (A("", "c"), '""@c'),
    (A('a"b\\c', "d"), '"a\\"b\\\\c"@d'),
    (A("user@other", "local"), '"user@other"@local'),
    (A("jö", "bücher.de"), "jö@bücher.de"),
    (A("Postmaster", ""), "Postmaster"),
    (A("u", "[IPv6:::1]"), "u@[IPv6:::1]"),
]


@pytest.mark.parametrize(("address", "text"), ADDRESS_STR)
def test_address_str(address, text):
    assert str(address) == text


def test_address_properties():
    assert A("jö", "d").is_utf8
    assert A("j", "bü.de").is_utf8
    assert not A("j", "b.de").is_utf8
    assert A("u", "[192.0.2.1]").is_address_literal
    assert not A("u", "d").is_address_literal
    assert A("User.Name", "Example.ORG").key() == "user.name@example.org"
    assert A("Postmaster", "").key() == "postmaster@"


def test_parse_mailbox():
    assert parse_mailbox('"a b"@c.d.') == A("a b", "c.d")
    assert parse_mailbox("jö@bü.de") == A("jö", "bü.de")
    for bad in ("a", "a@b> x", "<a@b>", ""):
        with pytest.raises(GrammarError):
            parse_mailbox(bad)


LITERAL_IPS = [
    ("[192.0.2.1]", IPv4Address("192.0.2.1")),
    ("[192.000.002.001]", IPv4Address("192.0.2.1")),
    ("[IPv6:2001:DB8::1]", IPv6Address("2001:db8::1")),
    ("[ipv6:::1]", IPv6Address("::1")),
    ("[x-tag:abc]", None),
    ("[300.0.0.1]", None),
    ("example.org", None),
    ("[]", None),
    ("", None),
]


@pytest.mark.parametrize(("domain", "ip"), LITERAL_IPS)
def test_address_literal_ip(domain, ip):
    assert address_literal_ip(domain) == ip


# --- EHLO / HELO -----------------------------------------------------------------------------

HELO_OK = [
    ("mail.example.org", "mail.example.org"),
    ("  mail.example.org  ", "mail.example.org"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("[IPv6:::1]", "[IPv6:::1]"),
    ("my_host", "my_host"),  # not a Domain, accepted like Postfix
    ("bücher.de", "bücher.de"),
    ("localhost.", "localhost."),
]
HELO_BAD = ["", "   ", "a b", "a\tb", "a\x00", "a\x7f", "a\udcff"]


@pytest.mark.parametrize(("arg", "name"), HELO_OK)
def test_helo_name_ok(arg, name):
    assert parse_helo_name(arg) == name


@pytest.mark.parametrize("arg", HELO_BAD)
def test_helo_name_bad(arg):
    with pytest.raises(GrammarError) as info:
        parse_helo_name(arg)
    assert (info.value.reply.code, info.value.reply.enhanced) == SYNTAX


# --- xtext and domains -----------------------------------------------------------------------

XTEXT = [
    ("", ""),
    ("abc", "abc"),
    ("a+2Bb", "a+b"),
    ("a+3D", "a="),
    ("+20", " "),
    ("+C3+B6", "ö"),
    ("+E2+82+AC", "€"),
]


@pytest.mark.parametrize(("encoded", "decoded"), XTEXT)
def test_xtext(encoded, decoded):
    assert xtext_decode(encoded) == decoded
    assert xtext_encode(decoded) == encoded


@pytest.mark.parametrize("bad", ["+", "+2", "+2b", "+GG", "a=b", "a b", "ö", "+C3", "\x01"])
def test_xtext_decode_rejects(bad):
    with pytest.raises(GrammarError) as info:
        xtext_decode(bad)
    assert (info.value.reply.code, info.value.reply.enhanced) == SYNTAX


NORMALIZE = [
    ("Example.ORG", "example.org"),
    ("example.org.", "example.org"),
    ("example.org..", "example.org."),  # only ONE dot
    ("Bücher.DE", "xn--bcher-kva.de"),
    ("bücher.de.", "xn--bcher-kva.de"),
    ("[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]"),
    ("[192.0.2.1]", "[192.0.2.1]"),
    ("ü" * 70 + ".de", "ü" * 70 + ".de"),  # idna refuses: lower-case UTF-8 fallback
    ("", ""),
]


@pytest.mark.parametrize(("domain", "normal"), NORMALIZE)
def test_normalize_domain(domain, normal):
    assert normalize_domain(domain) == normal


# --- Fast path -------------------------------------------------------------------------------


def test_common_forms_take_the_fast_path(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("full parser used")

    monkeypatch.setattr(grammar, "_parse_path", boom)
    assert parse_mail_from("FROM:<a.b+c@d.example> SIZE=9 BODY=8BITMIME", esmtp=True)[0]
    assert parse_mail_from("from: <a@d.example.>", esmtp=True)[0] == A("a", "d.example")
    assert parse_rcpt_to("TO:<u@d> NOTIFY=NEVER", esmtp=True, smtputf8=False)[0]


# --- Properties ------------------------------------------------------------------------------

ATEXT = "abcxyzABCXYZ0189!#$%&'*+/=?^_`{|}~-"
_atom = st.text(alphabet=ATEXT, min_size=1, max_size=8)
_utf8_char = st.characters(min_codepoint=0x80, codec="utf-8")  # no surrogates
_dot_local = st.lists(_atom | st.text(_utf8_char, min_size=1, max_size=3), min_size=1, max_size=4)
_qtext = st.characters(min_codepoint=0x20, max_codepoint=0x7E) | _utf8_char
_label = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)
_literal = st.sampled_from(["[192.0.2.1]", "[IPv6:2001:db8::1]", "[x-foo:bar]"])
addresses = st.builds(
    Address,
    _dot_local.map(".".join) | st.text(_qtext, max_size=12),
    _domain | _literal,
)


@given(addresses)
def test_str_round_trips(address):
    text = str(address)
    assert parse_rcpt_to(f"TO:<{text}>", esmtp=True, smtputf8=True)[0] == address
    assert parse_mail_from(f"FROM:<{text}> SMTPUTF8", esmtp=True)[0] == address
    assert parse_mailbox(text) == address


@given(st.lists(_atom, min_size=1, max_size=4).map(".".join), _domain, st.booleans())
def test_fast_path_agrees_with_full_parser(local, domain, dot):
    path = f"<{local}@{domain}{'.' if dot else ''}>"
    full, rest = grammar._parse_path(path, C501_BAD_ADDRESS, grammar.C501_ADDRESS_TOO_LONG)
    assert rest == ""
    assert parse_rcpt_to(f"TO:{path}", esmtp=True, smtputf8=False)[0] == full
    assert parse_mail_from(f"FROM:{path}", esmtp=True)[0] == full


@given(st.text())
def test_xtext_round_trips(text):
    encoded = xtext_encode(text)
    assert encoded.isascii()
    assert " " not in encoded and "=" not in encoded
    assert xtext_decode(encoded) == text


_noise = st.text(alphabet=st.sampled_from('<>@."\\:,[]; =+aZ09-\tö\x00\udcff'), max_size=40)


@given(st.text() | _noise, st.booleans(), st.booleans())
def test_random_text_raises_only_grammar_error(text, esmtp, utf8):
    for call in (
        lambda: parse_mail_from(text, esmtp=esmtp),
        lambda: parse_mail_from("FROM:" + text, esmtp=esmtp),
        lambda: parse_mail_from("FROM:<a@b> " + text, esmtp=esmtp),
        lambda: parse_rcpt_to(text, esmtp=esmtp, smtputf8=utf8),
        lambda: parse_rcpt_to("TO:" + text, esmtp=esmtp, smtputf8=utf8),
        lambda: parse_rcpt_to("TO:<a@b> " + text, esmtp=esmtp, smtputf8=utf8),
        lambda: parse_helo_name(text),
        lambda: xtext_decode(text),
        lambda: parse_mailbox(text),
    ):
        with contextlib.suppress(GrammarError):
            call()
    assert isinstance(normalize_domain(text), str)
    assert isinstance(xtext_encode(text), str)
