"""Named tests for postbote.policy.spf (RFC 7208): the important rules one by one over an
in-memory zone, the grammar and macro helpers, and a few checks over real UDP against
tests/dnsserver.TestDnsServer with DnsResolver. The full RFC 7208 suite is in
test_spf_suite.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postbote.dns import DnsResolver
from postbote.policy.spf import SpfResult, check_host, check_sender
from postbote.policy.spf_macro import expand, query_name
from postbote.policy.spf_parse import (
    Macro,
    SpfSyntaxError,
    parse_domain_spec,
    parse_macro_string,
    parse_record,
    select_record,
)
from tests import dnsserver
from tests.dnsserver import TestDnsServer
from tests.policy.test_spf_suite import ZoneResolver

dns_server = dnsserver.dns_server  # the fixture


def spf(
    zone: dict[str, list[Any]],
    ip: str = "192.0.2.1",
    mail_from: str = "alice@example.com",
    helo: str = "mail.example.net",
    **kwargs: Any,
) -> SpfResult:
    resolver = ZoneResolver(zone)
    return asyncio.run(check_sender(ip, mail_from, helo, resolver=resolver, **kwargs))


def record(text: str, **others: list[Any]) -> dict[str, list[Any]]:
    """A zone where example.com publishes ``text``, plus other names."""
    return {"example.com": [{"TXT": text}], **others}


# -- results and record selection -----------------------------------------------------


@pytest.mark.parametrize(
    ("qualifier", "result"),
    [("", "pass"), ("+", "pass"), ("-", "fail"), ("~", "softfail"), ("?", "neutral")],
)
def test_qualifier_gives_the_result(qualifier: str, result: str) -> None:
    # RFC 7208 §4.6.2
    got = spf(record(f"v=spf1 {qualifier}ip4:192.0.2.0/24 -all"))
    assert (got.result, got.domain, got.scope) == (result, "example.com", "mailfrom")


def test_no_match_and_no_redirect_is_neutral() -> None:
    assert spf(record("v=spf1 ip4:198.51.100.1")).result == "neutral"  # RFC 7208 §4.7


def test_no_spf_record_is_none() -> None:
    zone = {"example.com": [{"TXT": "google-site-verification=x"}, {"TXT": "v=spf10 +all"}]}
    assert spf(zone).result == "none"  # RFC 7208 §4.5
    assert spf({}).result == "none"  # NXDOMAIN, RFC 7208 §4.3


@pytest.mark.parametrize("helo", ["localhost", "[192.0.2.1]", "a..example.com", "x." + "y" * 64])
def test_malformed_domain_is_none_without_a_query(helo: str) -> None:
    resolver = ZoneResolver({})
    got = asyncio.run(check_sender("192.0.2.1", "", helo, resolver=resolver))
    assert (got.result, got.scope, got.domain) == ("none", "helo", helo)  # RFC 7208 §4.3
    assert resolver.queries == []


def test_two_spf_records_are_a_permerror() -> None:
    zone = {"example.com": [{"TXT": "v=spf1 -all"}, {"TXT": "V=SPF1 +all"}]}
    got = spf(zone)
    assert got.result == "permerror"  # RFC 7208 §4.5
    assert got.problem is not None and "2 SPF records" in got.problem


def test_syntax_error_after_a_match_is_still_a_permerror() -> None:
    # RFC 7208 §4.6: the whole record is checked before evaluation.
    assert spf(record("v=spf1 +all ip4:192.0.2.300")).result == "permerror"


def test_unknown_modifiers_are_ignored() -> None:
    assert spf(record("v=spf1 moo.cow=x:y/z -all")).result == "fail"  # RFC 7208 §6


def test_txt_timeout_is_temperror() -> None:
    got = spf({"example.com": ["TIMEOUT"]})
    assert got.result == "temperror"  # RFC 7208 §4.4
    assert got.problem is not None and "timeout" in got.problem


def test_null_sender_checks_the_helo_identity_as_postmaster() -> None:
    # RFC 7208 §2.4: MAIL FROM:<> -> "postmaster@<helo>", scope helo.
    zone = {"mail.example.net": [{"TXT": "v=spf1 exists:%{l}.%{o}.check.example.org -all"}]}
    zone["postmaster.mail.example.net.check.example.org"] = [{"A": "127.0.0.2"}]
    got = spf(zone, mail_from="")
    assert (got.result, got.domain, got.scope) == ("pass", "mail.example.net", "helo")


def test_sender_without_local_part_is_postmaster() -> None:
    zone = record("v=spf1 exists:%{l}.x.example.org -all")
    zone["postmaster.x.example.org"] = [{"A": "127.0.0.2"}]
    assert spf(zone, mail_from="@example.com").result == "pass"  # RFC 7208 §4.3


def test_check_host_takes_domain_and_sender_apart() -> None:
    # RFC 7208 §4.1: %{d} is <domain>, %{s}/%{o} come from <sender>.
    zone = {"example.org": [{"TXT": "v=spf1 exists:%{o}.%{d}.x.example.net -all"}]}
    zone["example.com.example.org.x.example.net"] = [{"A": "127.0.0.2"}]
    got = asyncio.run(
        check_host(
            "192.0.2.1",
            "example.org",
            "bob@example.com",
            helo="h.example.net",
            resolver=ZoneResolver(zone),
        )
    )
    assert (got.result, got.domain, got.scope) == ("pass", "example.org", "mailfrom")


def test_check_host_rejects_a_non_address() -> None:
    with pytest.raises(ValueError):
        asyncio.run(check_host("mail", "example.org", "a@b.c", helo="h", resolver=ZoneResolver({})))


# -- mechanisms -----------------------------------------------------------------------


def test_a_and_mx_with_dual_cidr() -> None:
    zone = record("v=spf1 a/24//64 mx:mxs.example.com/30 -all")
    zone["example.com"] += [{"A": "192.0.2.200"}, {"AAAA": "2001:db8:1:2::1"}]
    zone["mxs.example.com"] = [{"MX": [10, "mx1.example.com"]}]
    zone["mx1.example.com"] = [{"A": "198.51.100.5"}]
    assert spf(zone, ip="192.0.2.7").result == "pass"  # a/24
    assert spf(zone, ip="2001:db8:1:2::ffff").result == "pass"  # a//64
    assert spf(zone, ip="198.51.100.6").result == "pass"  # mx/30
    assert spf(zone, ip="198.51.100.9").result == "fail"
    assert spf(zone, ip="2001:db8:1:3::1").result == "fail"


def test_ipv4_mapped_client_is_ipv4() -> None:
    # RFC 7208 §5: an IPv4-mapped IPv6 address only matches ip4 (and A records).
    zone = record("v=spf1 ip6:::ffff:0:0/96 ip4:192.0.2.1 -all")
    got = spf(zone, ip="::ffff:192.0.2.1")
    assert got.result == "pass"
    assert spf(record("v=spf1 ip6:::ffff:0:0/96 -all"), ip="::ffff:192.0.2.1").result == "fail"


def test_ip6_does_not_match_ipv4_and_ip4_not_ipv6() -> None:
    zone = record("v=spf1 ip6:::/0 ?ip4:0.0.0.0/0 -all")
    assert spf(zone, ip="2001:db8::1").result == "pass"
    assert spf(zone, ip="192.0.2.1").result == "neutral"


@pytest.mark.parametrize(
    ("inner", "outer"),
    [
        ("v=spf1 +all", "pass"),  # RFC 7208 §5.2: pass -> match
        ("v=spf1 -all", "fail"),  # fail -> no match, then -all
        ("v=spf1 ~all", "fail"),
        ("v=spf1 ?all", "fail"),
        ("v=spf1 ip4:1.2.3.4/33", "permerror"),  # permerror -> permerror
        ("not spf", "permerror"),  # none -> permerror
        ("TIMEOUT", "temperror"),  # temperror -> temperror
    ],
)
def test_include_result_mapping(inner: str, outer: str) -> None:
    entry: Any = "TIMEOUT" if inner == "TIMEOUT" else {"TXT": inner}
    zone = record("v=spf1 include:inc.example.org -all", **{"inc.example.org": [entry]})
    assert spf(zone).result == outer


def test_include_changes_d_but_not_o() -> None:
    zone = record(
        "v=spf1 include:inc.example.org -all",
        **{"inc.example.org": [{"TXT": "v=spf1 exists:%{d}.%{o}.x.example.net -all"}]},
    )
    zone["inc.example.org.example.com.x.example.net"] = [{"A": "127.0.0.2"}]
    assert spf(zone).result == "pass"


def test_redirect_applies_only_when_nothing_matched() -> None:
    target = {"other.example.org": [{"TXT": "v=spf1 ip4:192.0.2.1 -all"}]}
    assert spf(record("v=spf1 redirect=other.example.org", **target)).result == "pass"
    assert spf(record("v=spf1 ?all redirect=other.example.org", **target)).result == "neutral"
    # RFC 7208 §6.1: a redirect target without a record is a permerror, not none.
    assert spf(record("v=spf1 redirect=nothing.example.org")).result == "permerror"


def test_ptr_needs_a_validated_name() -> None:
    zone = record(
        "v=spf1 ptr:example.com -all",
        **{
            "1.2.0.192.in-addr.arpa": [{"PTR": "liar.example.com"}, {"PTR": "MX.Example.COM."}],
            "liar.example.com": [{"A": "192.0.2.99"}],
            "mx.example.com": [{"A": "192.0.2.1"}],
        },
    )
    assert spf(zone, ip="192.0.2.1").result == "pass"
    zone["mx.example.com"] = [{"A": "192.0.2.98"}]
    assert spf(zone, ip="192.0.2.1").result == "fail"  # RFC 7208 §5.5: not validated


def test_ptr_lookup_failure_is_no_match_not_temperror() -> None:
    zone = record("v=spf1 ptr ?all", **{"1.2.0.192.in-addr.arpa": ["TIMEOUT"]})
    assert spf(zone).result == "neutral"  # RFC 7208 §5.5


def test_exists_queries_a_even_for_ipv6() -> None:
    zone = record("v=spf1 exists:%{ir}.%{v}.x.example.org -all")
    zone["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.x.example.org"] = [
        {"A": "127.0.0.2"}
    ]
    assert spf(zone, ip="2001:db8::1").result == "pass"  # RFC 7208 §5.7


def test_mechanism_dns_error_is_temperror_never_fail() -> None:
    zone = record("v=spf1 a:slow.example.org -all", **{"slow.example.org": ["TIMEOUT"]})
    assert spf(zone).result == "temperror"  # RFC 7208 §5


# -- processing limits (RFC 7208 §4.6.4) ------------------------------------------------


def _chain(count: int) -> dict[str, list[Any]]:
    """example.com includes i1, i1 includes i2, ...: ``count`` include terms in all."""
    zone: dict[str, list[Any]] = {"example.com": [{"TXT": "v=spf1 include:i1.example.org -all"}]}
    for n in range(1, count):
        zone[f"i{n}.example.org"] = [{"TXT": f"v=spf1 include:i{n + 1}.example.org"}]
    zone[f"i{count}.example.org"] = [{"TXT": "v=spf1 +all"}]
    return zone


def test_ten_dns_terms_are_allowed_eleven_are_a_permerror() -> None:
    assert spf(_chain(10)).result == "pass"
    got = spf(_chain(11))
    assert got.result == "permerror"
    assert got.problem is not None and "10 DNS-querying terms" in got.problem


def test_ip4_and_all_do_not_count() -> None:
    terms = " ".join(["ip4:198.51.100.1"] * 20 + ["a:a.example.org"] * 9)
    zone = record(f"v=spf1 {terms} include:i.example.org -all")
    zone["a.example.org"] = [{"A": "198.51.100.9"}]
    zone["i.example.org"] = [{"TXT": "v=spf1 +all"}]
    assert spf(zone).result == "pass"


def test_third_void_lookup_is_a_permerror() -> None:
    two = record("v=spf1 a:n1.example.org mx:n2.example.org ?all")
    three = record("v=spf1 a:n1.example.org mx:n2.example.org exists:n3.example.org ?all")
    assert spf(two).result == "neutral"
    got = spf(three)
    assert got.result == "permerror"
    assert got.problem is not None and "void" in got.problem


def test_more_than_ten_mx_names_is_a_permerror() -> None:
    mxs: list[Any] = [{"MX": [n, f"mx{n}.example.com"]} for n in range(11)]
    zone = {"example.com": [{"TXT": "v=spf1 mx -all"}, *mxs]}
    zone["mx0.example.com"] = [{"A": "192.0.2.1"}]
    assert spf(zone).result == "permerror"
    zone["example.com"] = zone["example.com"][:11]  # ten MX names
    assert spf(zone).result == "pass"


def test_only_the_first_ten_ptr_names_are_checked() -> None:
    ptrs: list[Any] = [{"PTR": f"h{n}.example.org"} for n in range(11)]
    zone = record("v=spf1 ptr:h10.example.org -all", **{"1.2.0.192.in-addr.arpa": ptrs})
    zone["h10.example.org"] = [{"A": "192.0.2.1"}]
    assert spf(zone).result == "fail"


def test_overall_timeout_is_temperror() -> None:
    class Hanging(ZoneResolver):
        async def txt(self, name: str) -> list[bytes]:
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    got = asyncio.run(
        check_sender(
            "192.0.2.1", "a@example.com", "h.example.net", resolver=Hanging({}), timeout=0.05
        )
    )
    assert got.result == "temperror"  # RFC 7208 §4.6.4
    assert got.problem is not None and "longer than" in got.problem


# -- explanation (RFC 7208 §6.2) --------------------------------------------------------


def test_explanation_is_expanded_for_fail() -> None:
    zone = record(
        "v=spf1 -all exp=why.%{d}",
        **{"why.example.com": [{"TXT": "%{i} may not send as %{s} (%{r}, %{t}, %{c})"}]},
    )
    got = spf(zone, receiver="mx.example.net", clock=lambda: 1234.9)
    expected = "192.0.2.1 may not send as alice@example.com (mx.example.net, 1234, 192.0.2.1)"
    assert (got.result, got.explanation) == ("fail", expected)


def test_no_explanation_for_other_results_or_broken_exp() -> None:
    why = {"why.example.com": [{"TXT": "go away"}]}
    assert spf(record("v=spf1 ~all exp=why.example.com", **why)).explanation is None
    two = {"why.example.com": [{"TXT": "one"}, {"TXT": "two"}]}
    assert spf(record("v=spf1 -all exp=why.example.com", **two)).explanation is None
    bad = {"why.example.com": [{"TXT": "bad %x macro"}]}
    assert spf(record("v=spf1 -all exp=why.example.com", **bad)).explanation is None
    gone = spf(record("v=spf1 -all exp=why.example.com"))
    assert (gone.result, gone.explanation) == ("fail", None)


def test_explanation_is_printable_ascii() -> None:
    zone = record("v=spf1 -all exp=why.example.com", **{"why.example.com": [{"TXT": "%{l}!"}]})
    got = spf(zone, mail_from="jörg\x07@example.com")
    assert got.explanation == "j?rg?!"


def test_included_records_exp_is_not_used_nor_looked_up() -> None:
    # RFC 7208 §6.2: the exp= of an included record is never used, so not fetched.
    zone = record(
        "v=spf1 include:inc.example.org -all",
        **{
            "inc.example.org": [{"TXT": "v=spf1 -all exp=why.example.org"}],
            "why.example.org": [{"TXT": "theirs"}],
        },
    )
    resolver = ZoneResolver(zone)
    got = asyncio.run(check_sender("192.0.2.1", "a@example.com", "h.test", resolver=resolver))
    assert (got.result, got.explanation) == ("fail", None)
    assert ("why.example.org", "TXT") not in resolver.queries


# -- grammar and macros -----------------------------------------------------------------


def test_select_record() -> None:
    assert select_record([b"v=spf1", b"other"]) == "v=spf1"
    assert select_record([b"v=spf1x -all", b"spf1 -all"]) is None
    with pytest.raises(SpfSyntaxError):
        select_record([b"v=spf1 a:\xc3\xa9.example.com"])  # RFC 7208 §3.1: ASCII only


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 ip4:1.2.3.04",  # leading zero
        "v=spf1 ip4:1.2.3.4/08",
        "v=spf1 ip6:2001:db8::1%eth0",  # no zone index
        "v=spf1 a/33",
        "v=spf1 mx//129",
        "v=spf1 a:example.com:25",
        "v=spf1 exists:%{c}.example.com",  # c only in exp text
        "v=spf1 a:%{d0}.example.com",  # RFC 7208 §7.3: nonzero
        "v=spf1 a:%{d}.",  # domain-end: "." toplabel or macro-expand
        "v=spf1 exp=a.example.com exp=b.example.com",
        "v=spf1 ptr/24",
        "v=spf1 -all\t",
    ],
)
def test_syntax_errors(text: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record(text)


def test_parse_record_terms() -> None:
    parsed = parse_record("v=spf1  ~A:%{d}/24//48 -ip6:2001:DB8::/32 exp=x.%{d} Redirect=r.test ")
    a, ip6 = parsed.mechanisms
    assert (a.kind, a.result, a.cidr4, a.cidr6) == ("a", "softfail", 24, 48)
    assert ip6.network is not None and str(ip6.network) == "2001:db8::/32"
    assert parsed.redirect == ("r.test",)
    assert parsed.explanation == ("x.", Macro("d", None, False, "", False))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # RFC 7208 §7.4 examples, <sender> strong-bad@email.example.com, <ip> 192.0.2.3
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
        ("%%%_%-", "% %20"),
        ("%{L}", "strong-bad"),
        ("%{S}", "strong-bad%40email.example.com"),
    ],
)
def test_macro_expansion_rfc_examples(spec: str, expected: str) -> None:
    values = {
        "s": "strong-bad@email.example.com",
        "l": "strong-bad",
        "o": "email.example.com",
        "d": "email.example.com",
        "i": "192.0.2.3",
        "v": "in-addr",
    }
    assert expand(parse_macro_string(spec, explain=False), values) == expected


def test_ipv6_i_macro_rfc_example() -> None:
    # RFC 7208 §7.4: 2001:db8::cb01 -> 1.0.b.c.0.0.0...8.b.d.0.1.0.0.2.ip6._spf.example.com
    zone = record("v=spf1 exists:%{ir}.%{v}._spf.%{d2} -all")
    name = "1.0.b.c." + "0." * 20 + "8.b.d.0.1.0.0.2.ip6._spf.example.com"
    zone[name] = [{"A": "127.0.0.2"}]
    assert spf(zone, ip="2001:db8::cb01").result == "pass"


def test_query_name_truncates_on_the_left_and_rejects_bad_labels() -> None:
    # RFC 7208 §7.3: 30 labels of 9 + "example.com" is 311 characters; 6 labels go.
    long = "abcdefghi." * 30 + "example.com."
    assert query_name(long) == "abcdefghi." * 24 + "example.com"
    assert query_name("mail.example.com.") == "mail.example.com"
    assert query_name("a..example.com") is None
    assert query_name("x" * 64 + ".example.com") is None


def test_domain_spec_needs_a_toplabel_or_macro_at_the_end() -> None:
    assert parse_domain_spec("foo.xn--zckzah")  # RFC 7208 §7.1: dashes in a toplabel
    assert parse_domain_spec("%{d}")
    for bad in ("museum", "museum.", "example.123", "example.-com", ""):
        with pytest.raises(SpfSyntaxError):
            parse_domain_spec(bad)


def test_spf_result_is_validated() -> None:
    with pytest.raises(ValueError):
        SpfResult("hardfail", "example.com", "mailfrom")
    with pytest.raises(ValueError):
        SpfResult("pass", "example.com", "pra")


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=80))
def test_parse_record_accepts_or_raises_syntax_error(terms: str) -> None:
    try:
        parsed = parse_record("v=spf1 " + terms)
    except SpfSyntaxError:
        return
    assert all(
        m.kind in {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
        for m in parsed.mechanisms
    )


@given(st.lists(st.text(alphabet="abc-", min_size=0, max_size=70), min_size=1, max_size=12))
def test_query_name_is_always_a_valid_name(labels: list[str]) -> None:
    name = query_name(".".join(labels))
    if name is not None:
        assert len(name) <= 253
        assert all(0 < len(label) <= 63 for label in name.split("."))


# -- over real UDP: TestDnsServer + DnsResolver -------------------------------------------


def udp(server: TestDnsServer, ip: str, mail_from: str, **kwargs: Any) -> SpfResult:
    resolver = DnsResolver([(server.host, server.port)], timeout=0.3, attempts=1)
    return asyncio.run(check_sender(ip, mail_from, "mail.example.net", resolver=resolver, **kwargs))


def test_udp_pass_fail_softfail(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 a:mail.example.test ~ip4:127.0.0.9 -all")
    dns_server.add("mail.example.test", "A", "127.0.0.2")
    assert udp(dns_server, "127.0.0.2", "a@example.test").result == "pass"
    assert udp(dns_server, "127.0.0.9", "a@example.test").result == "softfail"
    assert udp(dns_server, "127.0.0.3", "a@example.test").result == "fail"


def test_udp_include_and_redirect(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 include:_spf.provider.test redirect=r.test")
    dns_server.add("_spf.provider.test", "TXT", "v=spf1 mx:provider.test -all")
    dns_server.add("provider.test", "MX", "10 out.provider.test.")
    dns_server.add("out.provider.test", "A", "127.0.0.5")
    dns_server.add("r.test", "TXT", "v=spf1 ip4:127.0.0.6 -all exp=why.r.test")
    dns_server.add("why.r.test", "TXT", "one reason")
    dns_server.add("why.r.test", "TXT", "another reason")  # RFC 7208 §6.2: two -> ignored
    assert udp(dns_server, "127.0.0.5", "a@example.test").result == "pass"
    assert udp(dns_server, "127.0.0.6", "a@example.test").result == "pass"
    got = udp(dns_server, "127.0.0.7", "a@example.test")
    assert (got.result, got.explanation) == ("fail", None)


def test_udp_explanation(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 -all exp=why.example.test")
    dns_server.add("why.example.test", "TXT", "%{i} is not allowed for %{d}")
    got = udp(dns_server, "127.0.0.7", "a@example.test")
    assert (got.result, got.explanation) == ("fail", "127.0.0.7 is not allowed for example.test")


def test_udp_timeout_is_temperror_never_fail(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "TXT", "v=spf1 a:slow.example.test -all")
    dns_server.fail("slow.example.test", mode="timeout")
    got = udp(dns_server, "127.0.0.2", "a@example.test")
    assert got.result == "temperror"
    assert got.problem is not None and "timeout" in got.problem
    dns_server.fail("example.test", "TXT", mode="servfail")
    assert udp(dns_server, "127.0.0.2", "a@example.test").result == "temperror"


def test_udp_overall_timeout(dns_server: TestDnsServer) -> None:
    dns_server.fail("example.test", mode="timeout")
    got = udp(dns_server, "127.0.0.2", "a@example.test", timeout=0.1)
    assert got.result == "temperror"
    assert got.problem is not None and "longer than" in got.problem
