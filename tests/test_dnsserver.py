"""The in-process test DNS server (tests/dnsserver.py), queried with dnspython directly."""

from __future__ import annotations

import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest

from tests import dnsserver
from tests.dnsserver import TestDnsServer

dns_server = dnsserver.dns_server  # the fixture, as conftest.py will register it

TRANSPORTS = ["udp", "tcp"]


def ask(
    server: TestDnsServer,
    name: str,
    rdtype: str,
    transport: str = "udp",
    timeout: float = 2.0,
    payload: int | None = None,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if payload is not None:
        query.use_edns(0, 0, payload)
    if transport == "udp":
        return dns.query.udp(query, server.host, timeout=timeout, port=server.port)
    return dns.query.tcp(query, server.host, timeout=timeout, port=server.port)


def answers(response: dns.message.Message) -> list[tuple[str, str, str]]:
    return [
        (rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rdata.to_text())
        for rrset in response.answer
        for rdata in rrset
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_answers_a_aaaa_mx_authoritatively(dns_server: TestDnsServer, transport: str) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx1.example.test", "AAAA", "::1", ttl=30)

    mx = ask(dns_server, "example.test", "MX", transport)
    assert mx.rcode() == dns.rcode.NOERROR
    assert mx.flags & dns.flags.AA
    assert answers(mx) == [("example.test.", "MX", "10 mx1.example.test.")]
    assert answers(ask(dns_server, "mx1.example.test", "A", transport)) == [
        ("mx1.example.test.", "A", "127.0.0.2")
    ]
    aaaa = ask(dns_server, "mx1.example.test", "AAAA", transport)
    assert answers(aaaa) == [("mx1.example.test.", "AAAA", "::1")]
    assert aaaa.answer[0].ttl == 30


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_txt_is_split_into_255_octet_strings(dns_server: TestDnsServer, transport: str) -> None:
    dns_server.add("x.test", "TXT", "v=spf1 -all")
    dns_server.add("long.test", "TXT", "a" * 300)

    (short,) = ask(dns_server, "x.test", "TXT", transport).answer[0]
    assert isinstance(short, dns.rdtypes.ANY.TXT.TXT)
    assert short.strings == (b"v=spf1 -all",)
    (long,) = ask(dns_server, "long.test", "TXT", transport).answer[0]
    assert isinstance(long, dns.rdtypes.ANY.TXT.TXT)
    assert list(long.strings) == [b"a" * 255, b"a" * 45]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nxdomain_for_unknown_name_with_soa(dns_server: TestDnsServer, transport: str) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    response = ask(dns_server, "nothing.example.test", "A", transport)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.answer == []
    assert [dns.rdatatype.to_text(r.rdtype) for r in response.authority] == ["SOA"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nodata_for_existing_name_without_the_type(
    dns_server: TestDnsServer, transport: str
) -> None:
    dns_server.add("a.b.example.test", "A", "127.0.0.2")
    for name in ("a.b.example.test", "b.example.test"):  # the second: an empty non-terminal
        response = ask(dns_server, name, "MX", transport)
        assert response.rcode() == dns.rcode.NOERROR, name
        assert response.answer == [], name
        assert [dns.rdatatype.to_text(r.rdtype) for r in response.authority] == ["SOA"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("mode", "rcode"), [("servfail", dns.rcode.SERVFAIL), ("refused", dns.rcode.REFUSED)]
)
def test_fail_answers_with_rcode(
    dns_server: TestDnsServer, transport: str, mode: str, rcode: dns.rcode.Rcode
) -> None:
    dns_server.add("bad.test", "A", "127.0.0.2")
    dns_server.add("bad.test", "MX", "10 mx.bad.test.")
    dns_server.fail("bad.test", "A", mode=mode)
    assert ask(dns_server, "bad.test", "A", transport).rcode() == rcode
    assert ask(dns_server, "bad.test", "MX", transport).rcode() == dns.rcode.NOERROR
    dns_server.fail("bad.test", mode=mode)  # every type
    assert ask(dns_server, "bad.test", "MX", transport).rcode() == rcode
    dns_server.unfail("bad.test")
    dns_server.unfail("bad.test", "A")
    assert answers(ask(dns_server, "bad.test", "A", transport)) == [("bad.test.", "A", "127.0.0.2")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_mode_never_answers(dns_server: TestDnsServer, transport: str) -> None:
    dns_server.fail("slow.test", mode="timeout")
    with pytest.raises(dns.exception.Timeout):
        ask(dns_server, "slow.test", "A", transport, timeout=0.2)
    assert dns_server.queries == [("slow.test", "A")]


def test_fail_rejects_unknown_mode(dns_server: TestDnsServer) -> None:
    with pytest.raises(ValueError, match="mode"):
        dns_server.fail("x.test", mode="slow")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cname_followed_within_the_data(dns_server: TestDnsServer, transport: str) -> None:
    dns_server.add("www.example.test", "CNAME", "host.example.test.")
    dns_server.add("host.example.test", "A", "127.0.0.3")
    dns_server.add("dangling.example.test", "CNAME", "gone.example.test.")

    assert answers(ask(dns_server, "www.example.test", "A", transport)) == [
        ("www.example.test.", "CNAME", "host.example.test."),
        ("host.example.test.", "A", "127.0.0.3"),
    ]
    # asked for the CNAME itself: no chasing
    assert answers(ask(dns_server, "www.example.test", "CNAME", transport)) == [
        ("www.example.test.", "CNAME", "host.example.test.")
    ]
    dangling = ask(dns_server, "dangling.example.test", "A", transport)
    assert dangling.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: the last name's RCODE
    assert answers(dangling) == [("dangling.example.test.", "CNAME", "gone.example.test.")]


def test_names_are_case_insensitive(dns_server: TestDnsServer) -> None:
    dns_server.add("MiXed.Example.TEST.", "A", "127.0.0.4")
    assert answers(ask(dns_server, "mixed.example.test", "A")) == [
        ("mixed.example.test.", "A", "127.0.0.4")
    ]
    dns_server.remove("MIXED.example.test", "a")
    assert ask(dns_server, "mixed.example.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_remove_one_type_or_all(dns_server: TestDnsServer) -> None:
    dns_server.add("r.test", "A", "127.0.0.2")
    dns_server.add("r.test", "AAAA", "::1")
    dns_server.remove("r.test", "A")
    assert ask(dns_server, "r.test", "A").rcode() == dns.rcode.NOERROR
    assert ask(dns_server, "r.test", "A").answer == []
    assert len(ask(dns_server, "r.test", "AAAA").answer) == 1
    dns_server.remove("r.test")
    assert ask(dns_server, "r.test", "AAAA").rcode() == dns.rcode.NXDOMAIN


def test_large_udp_answer_is_truncated_and_whole_over_tcp(dns_server: TestDnsServer) -> None:
    dns_server.add("big.test", "TXT", "x" * 2000)
    udp = ask(dns_server, "big.test", "TXT", "udp", payload=1232)
    assert udp.flags & dns.flags.TC
    assert udp.answer == []
    tcp = ask(dns_server, "big.test", "TXT", "tcp")
    assert not tcp.flags & dns.flags.TC
    (rdata,) = tcp.answer[0]
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert b"".join(rdata.strings) == b"x" * 2000


def test_udp_limit_is_512_without_edns_and_the_payload_with_it(
    dns_server: TestDnsServer,
) -> None:
    dns_server.add("mid.test", "TXT", "y" * 700)
    assert ask(dns_server, "mid.test", "TXT", "udp").flags & dns.flags.TC
    with_edns = ask(dns_server, "mid.test", "TXT", "udp", payload=1232)
    assert not with_edns.flags & dns.flags.TC
    assert len(with_edns.answer) == 1


def test_queries_are_recorded_in_order(dns_server: TestDnsServer) -> None:
    dns_server.add("q.test", "A", "127.0.0.2")
    ask(dns_server, "Q.test", "A")
    ask(dns_server, "q.test", "MX", "tcp")
    ask(dns_server, "none.test", "TXT")
    assert dns_server.queries == [("q.test", "A"), ("q.test", "MX"), ("none.test", "TXT")]


def test_ipv6_loopback_server() -> None:
    with TestDnsServer("::1") as server:
        server.add("six.test", "AAAA", "::1")
        for transport in TRANSPORTS:
            assert answers(ask(server, "six.test", "AAAA", transport)) == [
                ("six.test.", "AAAA", "::1")
            ]


def test_stop_ends_open_tcp_connections() -> None:
    server = TestDnsServer()
    server.start()
    server.fail("hang.test", mode="timeout")
    query = dns.message.make_query("hang.test", "A")
    with socket.create_connection((server.host, server.port)) as conn:
        dns.query.send_tcp(conn, query)
        server.stop()  # must not wait for the client to hang up
        conn.settimeout(2.0)
        try:
            data = conn.recv(1)
        except ConnectionResetError:  # closed before the query was read
            data = b""
        assert data == b""


def test_concurrent_changes_and_queries() -> None:
    errors: list[BaseException] = []
    with TestDnsServer() as server:

        def worker(i: int) -> None:
            try:
                for j in range(10):
                    name = f"h{j}.w{i}.test"
                    server.add(name, "A", f"127.0.{i}.{j + 1}")
                    got = answers(ask(server, name, "A", "tcp" if j % 2 else "udp"))
                    assert got == [(name + ".", "A", f"127.0.{i}.{j + 1}")]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(server.queries) == 60
