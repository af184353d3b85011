"""MX routing (queue/routing.py): RFC 5321 §5.1 and the null MX of RFC 7505, resolved with
DnsResolver against the in-process test DNS server over real loopback UDP.

Addresses in the test zones come from the documentation ranges; nothing connects to them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection
from typing import Any

import pytest

from postbote.dns import DnsResolver
from postbote.queue.routing import MAX_MX_HOSTS, Host, Route, RouteError, resolve_route
from tests import dnsserver
from tests.dnsserver import TestDnsServer

dns_server = dnsserver.dns_server  # the fixture, as conftest.py will register it


def route(
    server: TestDnsServer,
    domain: str,
    *,
    local_names: Collection[str] = (),
    rng: random.Random | None = None,
    resolver: Any = None,
) -> Route:
    resolver = resolver or DnsResolver([(server.host, server.port)], timeout=0.3)
    return asyncio.run(resolve_route(domain, resolver, local_names=local_names, rng=rng))


def route_error(server: TestDnsServer, domain: str, **kwargs: Any) -> RouteError:
    with pytest.raises(RouteError) as info:
        route(server, domain, **kwargs)
    return info.value


def names(r: Route) -> list[str]:
    return [h.name for h in r.hosts]


def add_host(
    server: TestDnsServer, name: str, v4: str | None = None, v6: str | None = None
) -> None:
    if v4:
        server.add(name, "A", v4)
    if v6:
        server.add(name, "AAAA", v6)


def test_preferred_mx_first(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "30 mx3.example.test.")
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("example.test", "MX", "20 mx2.example.test.")
    for i in (1, 2, 3):
        add_host(dns_server, f"mx{i}.example.test", v4=f"192.0.2.{i}")
    r = route(dns_server, "Example.TEST.")
    assert r == Route(
        "example.test",
        (
            Host("mx1.example.test", 10, ("192.0.2.1",)),
            Host("mx2.example.test", 20, ("192.0.2.2",)),
            Host("mx3.example.test", 30, ("192.0.2.3",)),
        ),
        implicit=False,
    )


def test_equal_preferences_are_shuffled_by_the_rng(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "5 first.example.test.")
    add_host(dns_server, "first.example.test", v4="192.0.2.1")
    for i in range(4):
        dns_server.add("example.test", "MX", f"10 eq{i}.example.test.")
        add_host(dns_server, f"eq{i}.example.test", v4=f"192.0.2.{10 + i}")
    dns_server.add("example.test", "MX", "20 last.example.test.")
    add_host(dns_server, "last.example.test", v4="192.0.2.2")

    orders = set()
    for seed in range(12):
        got = names(route(dns_server, "example.test", rng=random.Random(seed)))
        assert got == names(route(dns_server, "example.test", rng=random.Random(seed)))
        assert got[0] == "first.example.test" and got[-1] == "last.example.test"
        assert sorted(got[1:-1]) == [f"eq{i}.example.test" for i in range(4)]
        orders.add(tuple(got))
    assert len(orders) > 1  # equal preferences do not always come in the same order


def test_ipv6_addresses_before_ipv4(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    add_host(dns_server, "mx.example.test", v4="192.0.2.1", v6="2001:db8::1")
    dns_server.add("mx.example.test", "AAAA", "2001:db8::2")
    (host,) = route(dns_server, "example.test").hosts
    assert host.addresses[2:] == ("192.0.2.1",)
    assert sorted(host.addresses[:2]) == ["2001:db8::1", "2001:db8::2"]


def test_implicit_mx_uses_the_domains_addresses(dns_server: TestDnsServer) -> None:
    add_host(dns_server, "plain.test", v4="192.0.2.7", v6="2001:db8::7")
    assert route(dns_server, "plain.test") == Route(
        "plain.test", (Host("plain.test", 0, ("2001:db8::7", "192.0.2.7")),), implicit=True
    )


def test_implicit_mx_without_address_is_permanent(dns_server: TestDnsServer) -> None:
    dns_server.add("noaddr.test", "TXT", "v=spf1 -all")  # the name exists, no MX/A/AAAA
    err = route_error(dns_server, "noaddr.test")
    assert err.permanent
    assert err.reply.startswith("550 5.1.2 ")


def test_implicit_mx_temporary_failure_is_temporary(dns_server: TestDnsServer) -> None:
    dns_server.add("flaky.test", "TXT", "x")
    dns_server.fail("flaky.test", "A")
    err = route_error(dns_server, "flaky.test")
    assert not err.permanent
    assert err.reply.startswith("451 4.4.3 ")


def test_implicit_mx_with_one_family_failing_still_routes(dns_server: TestDnsServer) -> None:
    add_host(dns_server, "half.test", v4="192.0.2.8")
    dns_server.fail("half.test", "AAAA", mode="timeout")
    r = route(dns_server, "half.test")
    assert r.hosts == (Host("half.test", 0, ("192.0.2.8",)),)


def test_null_mx_is_permanent_556(dns_server: TestDnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    add_host(dns_server, "nomail.test", v4="192.0.2.9")  # must not fall back to it
    err = route_error(dns_server, "nomail.test")
    assert err.permanent
    assert err.reply.startswith("556 5.1.10 ")
    assert "null MX" in err.reply
    assert dns_server.queries == [("nomail.test", "MX")]


def test_null_mx_among_other_mx_records_still_refuses(dns_server: TestDnsServer) -> None:
    # RFC 7505 §3: a domain with a null MX MUST NOT advertise other MX records.
    dns_server.add("mixed.test", "MX", "0 .")
    dns_server.add("mixed.test", "MX", "10 mx.mixed.test.")
    add_host(dns_server, "mx.mixed.test", v4="192.0.2.1")
    assert route_error(dns_server, "mixed.test").reply.startswith("556 5.1.10 ")


def test_nxdomain_is_permanent_domain_not_found(dns_server: TestDnsServer) -> None:
    err = route_error(dns_server, "nowhere.test")
    assert err.permanent
    assert err.reply == "550 5.1.2 nowhere.test: domain not found"
    assert str(err) == err.reply


@pytest.mark.parametrize("mode", ["servfail", "refused", "timeout"])
def test_mx_lookup_failure_is_temporary(dns_server: TestDnsServer, mode: str) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    dns_server.fail("example.test", "MX", mode=mode)
    err = route_error(dns_server, "example.test")
    assert not err.permanent
    assert err.reply.startswith("451 4.4.3 ")


def test_hosts_without_address_are_skipped(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")  # NXDOMAIN
    dns_server.add("example.test", "MX", "20 bare.example.test.")  # NODATA
    dns_server.add("bare.example.test", "TXT", "no address here")
    dns_server.add("example.test", "MX", "30 good.example.test.")
    add_host(dns_server, "good.example.test", v4="192.0.2.3")
    r = route(dns_server, "example.test")
    assert r.hosts == (Host("good.example.test", 30, ("192.0.2.3",)),)


def test_host_with_one_family_failing_keeps_the_other(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    add_host(dns_server, "mx.example.test", v4="192.0.2.4", v6="2001:db8::4")
    dns_server.fail("mx.example.test", "AAAA")
    assert route(dns_server, "example.test").hosts == (Host("mx.example.test", 10, ("192.0.2.4",)),)


def test_no_address_for_any_mx_host_is_permanent(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 gone1.example.test.")
    dns_server.add("example.test", "MX", "20 gone2.example.test.")
    err = route_error(dns_server, "example.test")
    assert err.permanent
    assert err.reply.startswith("550 5.4.4 ")


def test_no_address_with_a_temporary_failure_is_temporary(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 gone.example.test.")
    dns_server.add("example.test", "MX", "20 flaky.example.test.")
    add_host(dns_server, "flaky.example.test", v4="192.0.2.5")
    dns_server.fail("flaky.example.test", "A", mode="timeout")
    err = route_error(dns_server, "example.test")
    assert not err.permanent
    assert err.reply.startswith("451 4.4.3 ")


def test_loops_back_to_myself_drops_equal_and_less_preferred(dns_server: TestDnsServer) -> None:
    for pref, host in [(10, "mx1"), (20, "me"), (20, "peer"), (30, "backup")]:
        dns_server.add("example.test", "MX", f"{pref} {host}.example.test.")
        add_host(dns_server, f"{host}.example.test", v4="192.0.2.6")
    r = route(dns_server, "example.test", local_names=["ME.example.test."])
    assert names(r) == ["mx1.example.test"]
    # only the remaining host was looked up
    assert {q for q in dns_server.queries if q[1] in ("A", "AAAA")} == {
        ("mx1.example.test", "A"),
        ("mx1.example.test", "AAAA"),
    }


def test_loops_back_to_myself_when_most_preferred(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 me.example.test.")
    dns_server.add("example.test", "MX", "20 backup.example.test.")
    add_host(dns_server, "backup.example.test", v4="192.0.2.6")
    err = route_error(dns_server, "example.test", local_names={"me.example.test"})
    assert err.permanent
    assert err.reply == "550 5.4.6 mail for example.test loops back to myself"


def test_implicit_mx_to_myself_loops(dns_server: TestDnsServer) -> None:
    add_host(dns_server, "me.test", v4="192.0.2.1")
    err = route_error(dns_server, "me.test", local_names=["me.test"])
    assert err.reply.startswith("550 5.4.6 ")


@pytest.mark.parametrize(
    ("literal", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:DB8:0::1]", "2001:db8::1"),
        ("[ipv6:::1]", "::1"),
    ],
)
def test_address_literal_needs_no_dns(
    dns_server: TestDnsServer, literal: str, address: str
) -> None:
    r = route(dns_server, literal)
    assert [h.addresses for h in r.hosts] == [(address,)]
    assert r.hosts[0].preference == 0
    assert dns_server.queries == []


@pytest.mark.parametrize(
    "literal",
    ["[300.1.2.3]", "[192.0.2.1", "[IPv6:fe80::1%eth0]", "[IPv6:192.0.2.1]", "[x400:abc]", "[]"],
)
def test_invalid_address_literal_is_permanent(dns_server: TestDnsServer, literal: str) -> None:
    err = route_error(dns_server, literal)
    assert err.permanent
    assert err.reply.startswith("550 5.1.2 ")
    assert dns_server.queries == []


def test_ip_literal_mx_exchange_is_skipped(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "5 192.0.2.99.")
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    add_host(dns_server, "mx.example.test", v4="192.0.2.1")
    assert names(route(dns_server, "example.test")) == ["mx.example.test"]
    assert ("192.0.2.99", "A") not in dns_server.queries


def test_only_ip_literal_mx_exchanges_is_permanent(dns_server: TestDnsServer) -> None:
    dns_server.add("example.test", "MX", "10 192.0.2.99.")
    assert route_error(dns_server, "example.test").reply.startswith("550 5.4.4 ")


def test_repeated_exchange_is_tried_once_at_its_best_preference(
    dns_server: TestDnsServer,
) -> None:
    dns_server.add("example.test", "MX", "20 mx.example.test.")
    dns_server.add("example.test", "MX", "10 mx.example.test.")
    add_host(dns_server, "mx.example.test", v4="192.0.2.1")
    assert route(dns_server, "example.test").hosts == (Host("mx.example.test", 10, ("192.0.2.1",)),)


def test_number_of_hosts_is_bounded(dns_server: TestDnsServer) -> None:
    for i in range(MAX_MX_HOSTS + 3):
        dns_server.add("many.test", "MX", f"{i} mx{i}.many.test.")
        add_host(dns_server, f"mx{i}.many.test", v4="192.0.2.1")
    r = route(dns_server, "many.test")
    assert names(r) == [f"mx{i}.many.test" for i in range(MAX_MX_HOSTS)]


def test_unicode_domain_is_routed_by_its_a_label(dns_server: TestDnsServer) -> None:
    add_host(dns_server, "xn--bcher-kva.test", v4="192.0.2.1")
    r = route(dns_server, "Bücher.test")
    assert r.domain == "bücher.test"
    assert r.hosts == (Host("xn--bcher-kva.test", 0, ("192.0.2.1",)),)


class CountingResolver:
    """A DnsResolver that records how many address lookups were in flight at once."""

    def __init__(self, inner: DnsResolver) -> None:
        self.inner = inner
        self.in_flight = 0
        self.most_in_flight = 0

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self.inner.mx(name)

    async def _count(self, lookup: Any, name: str) -> list[str]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            result: list[str] = await lookup(name)
            return result
        finally:
            self.in_flight -= 1

    async def a(self, name: str) -> list[str]:
        return await self._count(self.inner.a, name)

    async def aaaa(self, name: str) -> list[str]:
        return await self._count(self.inner.aaaa, name)

    async def txt(self, name: str) -> list[bytes]:
        return await self.inner.txt(name)

    async def ptr(self, address: str) -> list[str]:
        return await self.inner.ptr(address)


def test_address_lookups_run_concurrently(dns_server: TestDnsServer) -> None:
    for i in range(3):
        dns_server.add("example.test", "MX", f"{i} mx{i}.example.test.")
        add_host(dns_server, f"mx{i}.example.test", v4="192.0.2.1", v6="2001:db8::1")
    counting = CountingResolver(DnsResolver([(dns_server.host, dns_server.port)], timeout=0.3))
    assert len(route(dns_server, "example.test", resolver=counting).hosts) == 3
    assert counting.most_in_flight == 6  # AAAA and A of all three hosts at once
