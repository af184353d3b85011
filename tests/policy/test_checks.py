"""The incoming check pipeline (policy/checks.py): which mail is checked, and what each
configured mode does with each result. DNS answers come from a real DNS server on
127.0.0.1 through postbote's resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from postbote.config import ChecksConfig
from postbote.dns import DnsResolver
from postbote.policy.checks import MailChecks
from tests.dnsserver import TestDnsServer

ID = "mx.receiver.test"


@pytest.fixture(scope="module")
def zone() -> Iterator[TestDnsServer]:
    with TestDnsServer() as dns:
        dns.add("good.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
        dns.add("_dmarc.good.test", "TXT", "v=DMARC1; p=reject")
        dns.add("strict.test", "TXT", "v=spf1 -all")
        dns.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
        dns.add("careful.test", "TXT", "v=spf1 -all")
        dns.add("_dmarc.careful.test", "TXT", "v=DMARC1; p=quarantine")
        dns.add("flaky.test", "TXT", "v=spf1 -all")
        dns.fail("_dmarc.flaky.test", "TXT", "timeout")
        yield dns


def checks(zone: TestDnsServer, **modes: str) -> MailChecks:
    resolver = DnsResolver([("127.0.0.1", zone.port)], timeout=0.3, attempts=1)
    return MailChecks(ChecksConfig(trusted_networks=("10.0.0.0/8",), **modes), resolver, ID)  # type: ignore[arg-type]


def message(from_: str) -> bytes:
    return f"From: {from_}\r\nTo: b@receiver.test\r\nSubject: t\r\n\r\nbody\r\n".encode()


def run(mc: MailChecks, ip: str, sender: str, from_: str) -> tuple[int | None, bytes]:
    outcome = asyncio.run(mc.run(ip=ip, helo="client.test", sender=sender, message=message(from_)))
    return (outcome.reply.code if outcome.reply else None), outcome.header


@pytest.mark.parametrize(
    ("listener", "ip", "user", "expected"),
    [
        ("smtp", "192.0.2.1", None, True),
        ("smtp", "10.1.2.3", None, False),  # trusted network
        ("smtp", "192.0.2.1", "alice@x.test", False),  # logged in
        ("submission", "192.0.2.1", None, False),  # not the MX listener
    ],
)
def test_which_mail_is_checked(
    zone: TestDnsServer, listener: str, ip: str, user: str | None, expected: bool
) -> None:
    assert checks(zone).applies(listener, ip, user) is expected


def test_pass_is_recorded_in_one_header(zone: TestDnsServer) -> None:
    code, header = run(checks(zone), "192.0.2.7", "a@good.test", "a@good.test")
    assert code is None
    assert header.startswith(b"Authentication-Results: " + ID.encode() + b";")
    assert b"spf=pass" in header and b"dmarc=pass" in header and b"dkim=none" in header


def test_dmarc_p_reject_refuses_with_5_7_1(zone: TestDnsServer) -> None:
    assert run(checks(zone), "198.51.100.1", "x@attacker.test", "ceo@strict.test")[0] == 550
    tagged = checks(zone, dmarc="tag")
    code, header = run(tagged, "198.51.100.1", "x@attacker.test", "ceo@strict.test")
    assert code is None and b"dmarc=fail" in header


def test_dmarc_p_quarantine_is_delivered_with_a_mark(zone: TestDnsServer) -> None:
    code, header = run(checks(zone), "198.51.100.1", "x@attacker.test", "b@careful.test")
    assert code is None and b"X-Postbote-Quarantine: dmarc=fail" in header


def test_a_dns_time_out_is_a_temporary_refusal_never_a_reject(zone: TestDnsServer) -> None:
    code, header = run(checks(zone), "198.51.100.1", "x@flaky.test", "a@flaky.test")
    assert code == 451
    code, header = run(checks(zone, dmarc="tag"), "198.51.100.1", "x@flaky.test", "a@flaky.test")
    assert code is None and b"dmarc=temperror" in header


def test_spf_modes(zone: TestDnsServer) -> None:
    # SPF fails for strict.test; DMARC is off so that only the SPF mode decides.
    rejecting = checks(zone, spf="reject", dmarc="off")
    assert run(rejecting, "198.51.100.1", "x@strict.test", "x@strict.test")[0] == 550
    tagging = checks(zone, spf="tag", dmarc="off")
    code, header = run(tagging, "198.51.100.1", "x@strict.test", "x@strict.test")
    assert code is None and b"spf=fail" in header
    off = checks(zone, spf="off", dkim="off", dmarc="off")
    code, header = run(off, "198.51.100.1", "x@strict.test", "x@strict.test")
    assert code is None and b"spf=" not in header and b"dkim=" not in header
