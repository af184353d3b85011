"""DMARC (postbote/policy/dmarc.py): Organizational Domains, alignment, records, policy
discovery over real DNS on loopback, the From domain, and the verdict with pct sampling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.dns import DnsNotFound, DnsResolver, DnsTemporaryError, Resolver
from postbote.policy.dmarc import (
    DmarcRecord,
    DmarcResult,
    FromUnusable,
    PolicyLookup,
    aligned,
    evaluate,
    from_domain,
    lookup,
    normal_domain,
    organizational_domain,
    parse_record,
)
from tests import dnsserver
from tests.dnsserver import TestDnsServer

dns_server = dnsserver.dns_server  # the fixture, as conftest.py will register it


def run(awaitable: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


def resolver_for(server: TestDnsServer) -> DnsResolver:
    return DnsResolver([(server.host, server.port)], timeout=0.3)


class FakeResolver:
    """TXT records by name; a name mapped to an exception raises it; others NXDOMAIN."""

    def __init__(self, txt: dict[str, list[str] | Exception]) -> None:
        self.records = txt
        self.asked: list[str] = []

    async def txt(self, name: str) -> list[bytes]:
        self.asked.append(name)
        found = self.records.get(name)
        if found is None:
            raise DnsNotFound(name)
        if isinstance(found, Exception):
            raise found
        return [text.encode() for text in found]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        raise AssertionError("DMARC asks only for TXT")

    async def a(self, name: str) -> list[str]:
        raise AssertionError("DMARC asks only for TXT")

    async def aaaa(self, name: str) -> list[str]:
        raise AssertionError("DMARC asks only for TXT")

    async def ptr(self, address: str) -> list[str]:
        raise AssertionError("DMARC asks only for TXT")


def never() -> float:
    raise AssertionError("the rng must not be drawn here")


def verdict(
    from_dom: str,
    records: dict[str, list[str] | Exception],
    *,
    spf: tuple[str, str] = ("none", ""),
    dkim: list[tuple[str, str]] | None = None,
    rng: Callable[[], float] = never,
) -> DmarcResult:
    resolver: Resolver = FakeResolver(records)
    result: DmarcResult = run(
        evaluate(
            from_dom,
            spf_result=spf[0],
            spf_domain=spf[1],
            dkim=dkim or [],
            resolver=resolver,
            rng=rng,
        )
    )
    return result


# --- Organizational Domain (RFC 7489 §3.2) --------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.org", "example.org"),
        ("a.b.example.org", "example.org"),
        ("Mail.Example.ORG.", "example.org"),
        ("mail.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("co.uk", "co.uk"),  # a public suffix stays itself
        ("a.b.c.kawasaki.jp", "b.c.kawasaki.jp"),  # wildcard rule *.kawasaki.jp
        ("x.city.kawasaki.jp", "city.kawasaki.jp"),  # exception rule !city.kawasaki.jp
        ("mail.example.test", "example.test"),  # unknown TLD: one label
        ("a.bücher.de", "xn--bcher-kva.de"),
        ("a.xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("post.例え.jp", "xn--r8jz45g.jp"),
        ("foo.bar.github.io", "bar.github.io"),  # the list's private section
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


# --- alignment (RFC 7489 §3.1) --------------------------------------------------------------

# (From domain, authenticated domain, aligned when strict, aligned when relaxed)
ALIGNMENT = [
    ("example.org", "example.org", True, True),
    ("Example.ORG", "example.org.", True, True),
    ("example.org", "mail.example.org", False, True),  # authenticated is a subdomain
    ("news.example.org", "example.org", False, True),  # From is a subdomain
    ("news.example.org", "bounce.example.org", False, True),  # siblings
    ("example.org", "example.net", False, False),
    ("example.org", "evilexample.org", False, False),
    ("example.org", "example.org.evil.test", False, False),
    ("shop.example.co.uk", "mail.example.co.uk", False, True),
    ("example.co.uk", "other.co.uk", False, False),  # co.uk is a public suffix
    ("a.github.io", "b.github.io", False, False),
    ("bücher.example", "XN--BCHER-KVA.example", True, True),
    ("mail.bücher.example", "xn--bcher-kva.example", False, True),
    ("example.org", "", False, False),
]


@pytest.mark.parametrize(("from_dom", "auth", "strict", "relaxed"), ALIGNMENT)
def test_aligned(from_dom: str, auth: str, strict: bool, relaxed: bool) -> None:
    assert aligned(auth, from_dom, "s") is strict
    assert aligned(auth, from_dom, "r") is relaxed
    assert aligned(from_dom, auth, "r") is relaxed  # symmetric


@pytest.mark.parametrize(("from_dom", "auth", "strict", "relaxed"), ALIGNMENT)
@pytest.mark.parametrize("mode", ["s", "r"])
@pytest.mark.parametrize("method", ["spf", "dkim"])
def test_pass_needs_an_aligned_pass(
    from_dom: str, auth: str, strict: bool, relaxed: bool, mode: str, method: str
) -> None:
    org = organizational_domain(from_dom)
    records: dict[str, list[str] | Exception] = {
        f"_dmarc.{org}": [f"v=DMARC1; p=reject; adkim={mode}; aspf={mode}"]
    }
    if method == "spf":
        result = verdict(from_dom, records, spf=("pass", auth), dkim=[("fail", from_dom)])
    else:
        result = verdict(
            from_dom, records, spf=("fail", from_dom), dkim=[("fail", from_dom), ("pass", auth)]
        )
    expected = strict if mode == "s" else relaxed
    assert result.result == ("pass" if expected else "fail")
    assert result.disposition == ("none" if expected else "reject")
    assert result.policy == "reject"
    assert result.domain == normal_domain(from_dom)


def test_spf_mode_and_dkim_mode_are_independent() -> None:
    records: dict[str, list[str] | Exception] = {
        "_dmarc.example.org": ["v=DMARC1; p=reject; aspf=s; adkim=r"]
    }
    spf_sub = verdict("example.org", records, spf=("pass", "bounce.example.org"))
    dkim_sub = verdict("example.org", records, dkim=[("pass", "mail.example.org")])
    assert (spf_sub.result, dkim_sub.result) == ("fail", "pass")


def test_non_pass_results_never_align_to_a_pass() -> None:
    records: dict[str, list[str] | Exception] = {"_dmarc.example.org": ["v=DMARC1; p=reject"]}
    for result in ("softfail", "neutral", "none", "permerror", "policy", "fail"):
        got = verdict(
            "example.org", records, spf=(result, "example.org"), dkim=[(result, "example.org")]
        )
        assert got.result == "fail", result


# --- records (RFC 7489 §6.3, §6.4) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "record"),
    [
        ("v=DMARC1; p=none", DmarcRecord("none")),
        ("v=DMARC1;p=reject;", DmarcRecord("reject")),
        ("v = DMARC1 ;\tp = Quarantine ; ", DmarcRecord("quarantine")),
        (
            "v=DMARC1; p=reject; sp=none; pct=25; adkim=s; aspf=S; ri=3600; fo=1:d; rf=afrf; "
            "rua=mailto:agg@example.org!10m, mailto:agg@report.test; ruf=mailto:f@example.org",
            DmarcRecord(
                "reject",
                sp="none",
                pct=25,
                adkim="s",
                aspf="s",
                ri=3600,
                fo=("1", "d"),
                rua=("mailto:agg@example.org!10m", "mailto:agg@report.test"),
                ruf=("mailto:f@example.org",),
            ),
        ),
        (
            "v=DMARC1; rua=mailto:a@example.org; p=reject",
            DmarcRecord("reject", rua=("mailto:a@example.org",)),
        ),
        # unknown tags and stray text after v are ignored (§6.3)
        ("v=DMARC1; p=reject; np=none; psd=y; x-future=1; junk", DmarcRecord("reject")),
        # a repeated tag: the first counts
        ("v=DMARC1; p=reject; p=none", DmarcRecord("reject")),
        # invalid optional values keep their defaults (§6.3)
        ("v=DMARC1; p=reject; pct=101", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=-1", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=abc", DmarcRecord("reject")),
        ("v=DMARC1; p=reject; pct=0", DmarcRecord("reject", pct=0)),
        ("v=DMARC1; p=reject; pct=100", DmarcRecord("reject", pct=100)),
        ("v=DMARC1; p=reject; adkim=x; aspf=; fo=2; ri=soon", DmarcRecord("reject")),
        (
            "v=DMARC1; p=reject; rua=not a uri, mailto:ok@example.org",
            DmarcRecord("reject", rua=("mailto:ok@example.org",)),
        ),
        # §6.6.3 step 6: bad or missing p (or bad sp) with a valid rua acts as p=none
        (
            "v=DMARC1; p=block; rua=mailto:a@example.org",
            DmarcRecord("none", rua=("mailto:a@example.org",)),
        ),
        ("v=DMARC1; rua=mailto:a@example.org", DmarcRecord("none", rua=("mailto:a@example.org",))),
        (
            "v=DMARC1; p=reject; sp=all; rua=mailto:a@example.org",
            DmarcRecord("none", rua=("mailto:a@example.org",)),
        ),
        # ... and without one, the record is unusable
        ("v=DMARC1; p=block", None),
        ("v=DMARC1; p=block; rua=example.org", None),
        ("v=DMARC1", None),
        ("v=DMARC1; sp=reject", None),
        ("v=DMARC1; p=reject; sp=all", None),
        # v=DMARC1 exactly, and first (§6.4)
        ("p=reject; v=DMARC1", None),
        ("v=dmarc1; p=reject", None),
        ("v=DMARC2; p=reject", None),
        ("v=DMARC1 p=reject", None),
        ("junk; v=DMARC1; p=reject", None),
        ("v=spf1 -all", None),
        ("", None),
    ],
)
def test_parse_record(text: str, record: DmarcRecord | None) -> None:
    assert parse_record(text) == record


# --- policy discovery over real DNS (RFC 7489 §6.6.3) ---------------------------------------


def test_lookup_exact_record(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.example.org", "TXT", "some other text")
    found = run(lookup("Example.Org", resolver_for(dns_server)))
    assert found == PolicyLookup(DmarcRecord("reject"), "exact")


def test_lookup_falls_back_to_the_organizational_domain_and_uses_sp(
    dns_server: TestDnsServer,
) -> None:
    dns_server.add("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    dns_server.add("_dmarc.mail.example.co.uk", "TXT", "v=spf1 -all")  # not DMARC: discarded
    resolver = resolver_for(dns_server)
    found = run(lookup("mail.example.co.uk", resolver))
    assert found == PolicyLookup(DmarcRecord("reject", sp="quarantine"), "org")
    result = run(
        evaluate(
            "mail.example.co.uk",
            spf_result="pass",
            spf_domain="elsewhere.test",
            dkim=[],
            resolver=resolver,
            rng=never,
        )
    )
    assert (result.result, result.policy, result.disposition) == (
        "fail",
        "quarantine",
        "quarantine",
    )
    assert ("_dmarc.mail.example.co.uk", "TXT") in dns_server.queries
    assert ("_dmarc.example.co.uk", "TXT") in dns_server.queries


def test_sp_is_ignored_in_a_record_on_the_subdomain(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.news.example.org", "TXT", "v=DMARC1; p=none; sp=reject")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    result = run(
        evaluate(
            "news.example.org",
            spf_result="fail",
            spf_domain="news.example.org",
            dkim=[],
            resolver=resolver_for(dns_server),
        )
    )
    assert (result.result, result.policy, result.disposition) == ("fail", "none", "none")


def test_org_domain_record_without_sp_applies_p_to_subdomains(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    result = run(
        evaluate(
            "a.b.example.org",
            spf_result="none",
            spf_domain="",
            dkim=[],
            resolver=resolver_for(dns_server),
            rng=never,
        )
    )
    assert (result.result, result.policy, result.disposition) == ("fail", "reject", "reject")


def test_multiple_records_end_discovery_without_fallback(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.mail.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.mail.example.org", "TXT", "v=DMARC1; p=none")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    found = run(lookup("mail.example.org", resolver_for(dns_server)))
    assert (found.record, found.error) == (None, "permerror")
    assert ("_dmarc.example.org", "TXT") not in dns_server.queries


def test_multiple_records_at_the_organizational_domain(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject; pct=50")
    result = run(
        evaluate(
            "mail.example.org",
            spf_result="fail",
            spf_domain="x.test",
            dkim=[],
            resolver=resolver_for(dns_server),
        )
    )
    assert (result.result, result.policy, result.disposition) == ("permerror", "none", "none")


def test_no_record_is_none(dns_server: TestDnsServer) -> None:
    dns_server.add("example.org", "TXT", "v=spf1 -all")
    found = run(lookup("mail.example.org", resolver_for(dns_server)))
    assert (found.record, found.error) == (None, None)
    result = run(
        evaluate(
            "mail.example.org",
            spf_result="fail",
            spf_domain="x.test",
            dkim=[],
            resolver=resolver_for(dns_server),
        )
    )
    assert (result.result, result.policy, result.disposition) == ("none", "none", "none")


def test_unusable_record_is_permerror(dns_server: TestDnsServer) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=block")
    found = run(lookup("example.org", resolver_for(dns_server)))
    assert (found.record, found.where, found.error) == (None, "exact", "permerror")


@pytest.mark.parametrize("failing", ["_dmarc.example.org", "_dmarc.mail.example.org"])
def test_dns_failure_is_temperror_never_a_reject(dns_server: TestDnsServer, failing: str) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    dns_server.fail(failing, "TXT", "servfail")
    resolver = resolver_for(dns_server)
    found = run(lookup("mail.example.org", resolver))
    assert (found.record, found.error) == (None, "temperror")
    result = run(
        evaluate(
            "mail.example.org",
            spf_result="fail",
            spf_domain="x.test",
            dkim=[],
            resolver=resolver,
            rng=never,
        )
    )
    assert (result.result, result.disposition) == ("temperror", "none")


# --- the From domain (RFC 7489 §6.6.1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"From: user@example.org\r\n", "example.org"),
        (b"From: Joe User <Joe@Mail.Example.ORG>\r\n", "mail.example.org"),
        (b'From: "Doe, Joe" <joe@example.org> (work)\r\n', "example.org"),
        (b"FROM:joe@example.org\r\n", "example.org"),
        (b"From : joe@example.org\r\n", "example.org"),  # RFC 5322 §4.5 obsolete WSP
        (b"From: Joe\r\n\t<joe@example.org>\r\n", "example.org"),  # folded
        (b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\n", "example.org"),
        (b"From: =?utf-8?q?boss=40bank.test?= <x@evil.test>\r\n", "evil.test"),
        (b'From: "boss@bank.test" <x@evil.test>\r\n', "evil.test"),
        (b"From: x@evil.test (boss@bank.test)\r\n", "evil.test"),
        (b"From: J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbccher.example>\r\n", "xn--bcher-kva.example"),
        (b"From: friends: joe@example.org;\r\n", "example.org"),  # RFC 6854 group
        (b"From: <@relay.test:joe@example.org>\r\n", "example.org"),  # obs-route
        (b"From: J. Q. Public <jqp@example.org>\r\n", "example.org"),  # obs-phrase
        (b"Subject: x\r\n", FromUnusable.NO_FIELD),
        (b"From: a@example.org\r\nFrom: b@example.org\r\n", FromUnusable.MULTIPLE_FIELDS),
        (b"From: a@example.org\r\nfrom: a@example.org\r\n", FromUnusable.MULTIPLE_FIELDS),
        (b"From: a@example.org, b@example.net\r\n", FromUnusable.MULTIPLE_ADDRESSES),
        (b"From: team: a@example.org, b@example.org;\r\n", FromUnusable.MULTIPLE_ADDRESSES),
        (b"From: undisclosed-recipients:;\r\n", FromUnusable.NO_ADDRESS),
        (b"From: \r\n", FromUnusable.NO_ADDRESS),
        (b"From: joe\r\n", FromUnusable.INVALID),
        (b"From: Joe <joe>\r\n", FromUnusable.INVALID),
        (b"From: joe@[192.0.2.1]\r\n", FromUnusable.INVALID),
        (b"From: joe@=?utf-8?q?bank.test?=\r\n", FromUnusable.INVALID),
        (b"From: <a@evil.test> <b@bank.test>\r\n", FromUnusable.INVALID),
        (b"From: a@evil.test b@bank.test\r\n", FromUnusable.INVALID),
        (b"From: Joe <joe@example.org\r\n", FromUnusable.INVALID),
        (b"From: joe@example.org.\r\n", FromUnusable.INVALID),
        (b"From: @example.org\r\n", FromUnusable.INVALID),
        (b"From: .joe@example.org\r\n", FromUnusable.INVALID),
        (b"From: joe@-bad-.example\r\n", FromUnusable.INVALID),
        (b"From: joe@ex_ample.org\r\n", FromUnusable.INVALID),
        (b"From: joe@example.org (unclosed\r\n", FromUnusable.INVALID),
        (b"From: outer: inner: a@example.org;;\r\n", FromUnusable.INVALID),
    ],
)
def test_from_domain(header: bytes, expected: str | FromUnusable) -> None:
    assert from_domain(b"Received: x\r\n" + header + b"To: y@example.net\r\n\r\nbody") == expected


def test_from_in_the_body_does_not_count() -> None:
    message = b"From: a@example.org\r\n\r\nFrom: b@example.net\r\n"
    assert from_domain(message) == "example.org"
    assert from_domain(b"Subject: s\r\n\r\nFrom: b@example.net\r\n") is FromUnusable.NO_FIELD


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_from_domain_never_raises(value: bytes) -> None:
    got = from_domain(b"From: " + value.replace(b"\n", b"\n ") + b"\r\n\r\n")
    if isinstance(got, str):
        assert got == got.lower() and got.isascii() and "@" not in got
    else:
        assert isinstance(got, FromUnusable)


LABEL = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    local=st.from_regex(r"[A-Za-z0-9._%+-]{0,20}[A-Za-z0-9]", fullmatch=True).filter(
        lambda s: ".." not in s and not s.startswith(".")
    ),
    labels=st.lists(LABEL, min_size=1, max_size=4),
    name=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)
def test_from_domain_of_a_formatted_address(local: str, labels: list[str], name: str) -> None:
    """Whatever the display name, the address's domain is found (email.utils quoting)."""
    from email.utils import formataddr

    domain = ".".join(labels)
    header = "From: " + formataddr((name, f"{local}@{domain}")) + "\r\n"
    assert from_domain(header.encode() + b"\r\n") == domain


# --- pct sampling (RFC 7489 §6.3 pct, §6.6.4) -----------------------------------------------


@pytest.mark.parametrize(
    ("record", "draw", "disposition"),
    [
        ("v=DMARC1; p=reject; pct=30", 0.29, "reject"),
        ("v=DMARC1; p=reject; pct=30", 0.30, "quarantine"),
        ("v=DMARC1; p=reject; pct=30", 0.99, "quarantine"),
        ("v=DMARC1; p=quarantine; pct=50", 0.0, "quarantine"),
        ("v=DMARC1; p=quarantine; pct=50", 0.5, "none"),
        ("v=DMARC1; p=reject; pct=0", 0.0, "quarantine"),
        ("v=DMARC1; p=reject; pct=99", 0.985, "reject"),
    ],
)
def test_pct_sampling(record: str, draw: float, disposition: str) -> None:
    draws: list[float] = []

    def rng() -> float:
        draws.append(draw)
        return draw

    result = verdict("example.org", {"_dmarc.example.org": [record]}, rng=rng)
    assert (result.result, result.disposition) == ("fail", disposition)
    assert result.policy == parse_record(record).p  # type: ignore[union-attr]
    assert len(draws) == 1


@pytest.mark.parametrize(
    "record", ["v=DMARC1; p=reject", "v=DMARC1; p=reject; pct=100", "v=DMARC1; p=none; pct=10"]
)
def test_no_draw_when_sampling_cannot_matter(record: str) -> None:
    result = verdict("example.org", {"_dmarc.example.org": [record]}, rng=never)
    assert result.disposition == parse_record(record).p  # type: ignore[union-attr]


def test_pct_sampling_rate_over_many_messages() -> None:
    import random

    draw = random.Random(7).random
    records: dict[str, list[str] | Exception] = {
        "_dmarc.example.org": ["v=DMARC1; p=reject; pct=20"]
    }
    dispositions = [verdict("example.org", records, rng=draw).disposition for _ in range(500)]
    assert set(dispositions) == {"reject", "quarantine"}
    assert 60 <= dispositions.count("reject") <= 140


# --- temporary failures of the inputs -------------------------------------------------------


def test_aligned_temperror_without_a_pass_is_temperror_with_the_policy() -> None:
    records: dict[str, list[str] | Exception] = {"_dmarc.example.org": ["v=DMARC1; p=reject"]}
    spf = verdict(
        "example.org", records, spf=("temperror", "example.org"), dkim=[("fail", "example.org")]
    )
    assert (spf.result, spf.policy, spf.disposition) == ("temperror", "reject", "none")
    dkim = verdict("example.org", records, dkim=[("temperror", "mail.example.org")])
    assert (dkim.result, dkim.policy, dkim.disposition) == ("temperror", "reject", "none")


def test_unaligned_temperror_is_a_fail_and_a_pass_wins() -> None:
    records: dict[str, list[str] | Exception] = {"_dmarc.example.org": ["v=DMARC1; p=reject"]}
    unaligned = verdict("example.org", records, spf=("temperror", "other.test"), rng=never)
    assert (unaligned.result, unaligned.disposition) == ("fail", "reject")
    passed = verdict(
        "example.org", records, spf=("temperror", "example.org"), dkim=[("pass", "example.org")]
    )
    assert passed.result == "pass"


def test_dns_temperror_from_the_resolver_protocol() -> None:
    records: dict[str, list[str] | Exception] = {
        "_dmarc.example.org": DnsTemporaryError("SERVFAIL")
    }
    result = verdict("example.org", records, spf=("fail", "example.org"))
    assert result == DmarcResult("temperror", "example.org", "none", "none", "SERVFAIL")


def test_result_carries_the_record_and_normalised_domain() -> None:
    records: dict[str, list[str] | Exception] = {
        "_dmarc.xn--bcher-kva.example": ["v=DMARC1; p=quarantine"]
    }
    result = verdict("Bücher.Example", records, dkim=[("pass", "xn--bcher-kva.example")])
    assert result == DmarcResult(
        "pass", "xn--bcher-kva.example", "quarantine", "none", None, DmarcRecord("quarantine")
    )
