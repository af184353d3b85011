"""DnsResolver (postbote/dns.py) against the in-process test DNS server over loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest

from postbote.dns import DnsNotFound, DnsResolver, DnsTemporaryError, Resolver, to_ascii
from tests import dnsserver
from tests.dnsserver import TestDnsServer

dns_server = dnsserver.dns_server  # the fixture, as conftest.py will register it


def resolver_for(server: TestDnsServer, **kwargs: Any) -> DnsResolver:
    kwargs.setdefault("timeout", 0.3)
    return DnsResolver([(server.host, server.port)], **kwargs)


def run(awaitable: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


def free_udp_port() -> int:
    """A loopback UDP port nobody listens on (an ICMP port unreachable answers it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_dnsresolver_is_a_resolver(dns_server: TestDnsServer) -> None:
    resolver: Resolver = resolver_for(dns_server)  # mypy checks the protocol here
    assert isinstance(resolver, DnsResolver)


def test_mx_preference_and_lowercase_exchange_without_dot(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 MX1.Example.TEST.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    got = run(resolver_for(dns_server).mx("example.test"))
    assert sorted(got) == [(10, "mx1.example.test"), (20, "mx2.example.test")]


def test_null_mx_exchange_is_empty_string(dns_server: TestDnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    assert run(resolver_for(dns_server).mx("nomail.test")) == [(0, "")]


def test_a_and_aaaa(dns_server: TestDnsServer) -> None:
    dns_server.add("host.test", "A", "127.0.0.2")
    dns_server.add("host.test", "A", "127.0.0.3")
    dns_server.add("host.test", "AAAA", "2001:DB8:0:0:0:0:0:1")
    resolver = resolver_for(dns_server)
    assert sorted(run(resolver.a("host.test"))) == ["127.0.0.2", "127.0.0.3"]
    assert run(resolver.aaaa("host.test.")) == ["2001:db8::1"]


def test_txt_strings_of_one_record_are_concatenated(dns_server: TestDnsServer) -> None:
    # RFC 7208 §3.3: "v=spf1 " "a" "-all" is one record, read as "v=spf1 a-all".
    split = dns.rdtypes.ANY.TXT.TXT(
        dns.rdataclass.IN, dns.rdatatype.TXT, [b"v=spf1 ", b"a", b"-all"]
    )
    dns_server.add_rdata("spf.test", split)
    dns_server.add("long.test", "TXT", "k=" + "x" * 600)
    resolver = resolver_for(dns_server)
    assert run(resolver.txt("spf.test")) == [b"v=spf1 a-all"]
    assert run(resolver.txt("long.test")) == [b"k=" + b"x" * 600]


def test_txt_one_item_per_record(dns_server: TestDnsServer) -> None:
    dns_server.add("two.test", "TXT", "first")
    dns_server.add("two.test", "TXT", "second")
    assert sorted(run(resolver_for(dns_server).txt("two.test"))) == [b"first", b"second"]


def test_ptr_ipv4_and_ipv6(dns_server: TestDnsServer) -> None:
    dns_server.add("2.0.0.127.in-addr.arpa", "PTR", "MX.Example.test.")
    dns_server.add(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        "PTR",
        "six.example.test.",
    )
    resolver = resolver_for(dns_server)
    assert run(resolver.ptr("127.0.0.2")) == ["mx.example.test"]
    assert run(resolver.ptr("2001:db8::1")) == ["six.example.test"]


def test_ptr_of_a_non_address_is_not_found(dns_server: TestDnsServer) -> None:
    with pytest.raises(DnsNotFound):
        run(resolver_for(dns_server).ptr("not-an-ip"))
    assert dns_server.queries == []


LOOKUPS: list[tuple[str, Callable[[DnsResolver], Callable[[str], Awaitable[Any]]], str]] = [
    ("mx", lambda r: r.mx, "gone.test"),
    ("a", lambda r: r.a, "gone.test"),
    ("aaaa", lambda r: r.aaaa, "gone.test"),
    ("txt", lambda r: r.txt, "gone.test"),
    ("ptr", lambda r: r.ptr, "127.0.0.9"),
]


@pytest.mark.parametrize(("kind", "method", "name"), LOOKUPS, ids=[x[0] for x in LOOKUPS])
def test_nxdomain_raises_not_found(
    dns_server: TestDnsServer,
    kind: str,
    method: Callable[[DnsResolver], Callable[[str], Awaitable[Any]]],
    name: str,
) -> None:
    dns_server.add("other.test", "A", "127.0.0.2")
    with pytest.raises(DnsNotFound):
        run(method(resolver_for(dns_server))(name))


@pytest.mark.parametrize(("kind", "method", "name"), LOOKUPS, ids=[x[0] for x in LOOKUPS])
def test_nodata_returns_empty_list(
    dns_server: TestDnsServer,
    kind: str,
    method: Callable[[DnsResolver], Callable[[str], Awaitable[Any]]],
    name: str,
) -> None:
    owner = "9.0.0.127.in-addr.arpa" if kind == "ptr" else name
    dns_server.add(owner, "HINFO", '"cpu" "os"')  # the name exists, other type
    assert run(method(resolver_for(dns_server))(name)) == []


@pytest.mark.parametrize("mode", ["servfail", "refused"])
def test_server_failure_raises_temporary(dns_server: TestDnsServer, mode: str) -> None:
    dns_server.add("flaky.test", "A", "127.0.0.2")
    dns_server.fail("flaky.test", "A", mode=mode)
    with pytest.raises(DnsTemporaryError, match=mode.upper()):
        run(resolver_for(dns_server).a("flaky.test"))


def test_timeout_raises_temporary_after_the_attempts(dns_server: TestDnsServer) -> None:
    dns_server.fail("slow.test", mode="timeout")
    with pytest.raises(DnsTemporaryError, match="timeout"):
        run(resolver_for(dns_server, timeout=0.3, attempts=2).mx("slow.test"))
    assert dns_server.queries == [("slow.test", "MX")] * 2


def test_unreachable_server_raises_temporary() -> None:
    resolver = DnsResolver([("127.0.0.1", free_udp_port())], timeout=0.3, attempts=1)
    with pytest.raises(DnsTemporaryError):
        run(resolver.a("host.test"))


def test_next_server_is_asked_when_one_is_down(dns_server: TestDnsServer) -> None:
    dns_server.add("host.test", "A", "127.0.0.2")
    resolver = DnsResolver(
        [("127.0.0.1", free_udp_port()), (dns_server.host, dns_server.port)], timeout=0.3
    )
    assert run(resolver.a("host.test")) == ["127.0.0.2"]


def test_truncated_udp_answer_is_retried_over_tcp(dns_server: TestDnsServer) -> None:
    dns_server.add("big.test", "TXT", "z" * 3000)
    assert run(resolver_for(dns_server).txt("big.test")) == [b"z" * 3000]
    # once over UDP (answered with TC set), once over TCP
    assert dns_server.queries == [("big.test", "TXT"), ("big.test", "TXT")]


def test_cname_is_followed(dns_server: TestDnsServer) -> None:
    dns_server.add("alias.test", "CNAME", "real.test.")
    dns_server.add("real.test", "A", "127.0.0.5")
    dns_server.add("dangling.test", "CNAME", "nowhere.test.")
    resolver = resolver_for(dns_server)
    assert run(resolver.a("alias.test")) == ["127.0.0.5"]
    assert run(resolver.aaaa("alias.test")) == []
    with pytest.raises(DnsNotFound):
        run(resolver.a("dangling.test"))


def test_unicode_names_are_asked_as_a_labels(dns_server: TestDnsServer) -> None:
    dns_server.add("xn--bcher-kva.test", "A", "127.0.0.6")
    assert run(resolver_for(dns_server).a("Bücher.test")) == ["127.0.0.6"]
    assert dns_server.queries == [("xn--bcher-kva.test", "A")]


def test_to_ascii_keeps_ascii_labels() -> None:
    assert to_ascii("_dmarc.bücher.test") == "_dmarc.xn--bcher-kva.test"
    assert to_ascii("Plain.Test") == "Plain.Test"


@pytest.mark.parametrize("name", ["", "a..test", "x" * 64 + ".test", "\u0301abc.test"])
def test_invalid_names_are_not_found_without_a_query(dns_server: TestDnsServer, name: str) -> None:
    with pytest.raises(DnsNotFound):
        run(resolver_for(dns_server).a(name))
    assert dns_server.queries == []


def test_answers_are_cached_for_their_ttl(dns_server: TestDnsServer) -> None:
    dns_server.add("cached.test", "A", "127.0.0.7", ttl=300)
    dns_server.add("fleeting.test", "A", "127.0.0.8", ttl=0)
    resolver = resolver_for(dns_server, cache_size=100)

    async def twice() -> None:
        for _ in range(2):
            assert await resolver.a("cached.test") == ["127.0.0.7"]
            assert await resolver.a("fleeting.test") == ["127.0.0.8"]
            with pytest.raises(DnsNotFound):
                await resolver.a("missing.test")

    run(twice())
    assert dns_server.queries == [
        ("cached.test", "A"),
        ("fleeting.test", "A"),
        ("missing.test", "A"),
        ("fleeting.test", "A"),  # TTL 0: asked again
    ]


def test_no_cache_by_default(dns_server: TestDnsServer) -> None:
    dns_server.add("host.test", "A", "127.0.0.2")
    resolver = resolver_for(dns_server)
    run(resolver.a("host.test"))
    dns_server.remove("host.test")
    with pytest.raises(DnsNotFound):
        run(resolver.a("host.test"))


def test_concurrent_lookups_share_one_resolver(dns_server: TestDnsServer) -> None:
    for i in range(20):
        dns_server.add(f"h{i}.test", "A", f"127.0.1.{i}")
    resolver = resolver_for(dns_server)

    async def all_at_once() -> list[list[str]]:
        return list(await asyncio.gather(*(resolver.a(f"h{i}.test") for i in range(20))))

    assert run(all_at_once()) == [[f"127.0.1.{i}"] for i in range(20)]


@pytest.mark.parametrize("kwargs", [{"timeout": 0}, {"attempts": 0}, {"nameservers": []}], ids=str)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("nameservers", [("127.0.0.1", 53)])
    with pytest.raises(ValueError):
        DnsResolver(**kwargs)
