"""The RFC 7208 test suite (openspf.org, release 2014.04, tests/policy/data/rfc7208-tests.yml)
run against postbote.policy.spf: one pytest case per suite test, each scenario's zonedata
served by ``ZoneResolver``.

The suite's conventions, as its reference driver (pyspf's testspf.py) applies them:
an "SPF" record is also served as TXT unless the name lists TXT records of its own
("TXT: NONE" lists none); "TIMEOUT" makes queries for types the name has no records of
time out; an "explanation" of "DEFAULT" means no exp= text (ours is None).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.reversename
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the test extras

from postbote.dns import DnsNotFound, DnsTemporaryError
from postbote.policy.spf import check_sender

SUITE = Path(__file__).parent / "data" / "rfc7208-tests.yml"
MAX_CNAME_CHAIN = 8
RECEIVER = "receiver.example.net"
NOW = 1_400_000_000.0

# The suite writes the "i" macro of an IPv6 address with uppercase hex nibbles; RFC 7208
# §7.4 shows them in lowercase ("1.0.b.c.0.0..."), as we expand them. DNS does not care;
# only this explanation text shows the difference.
EXPLANATION_OVERRIDES = {
    "v-macro-ip6": "cafe:babe::1 is queried as "
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.b.a.b.e.f.a.c.ip6.arpa",
}


def _key(name: str) -> str:
    return name.lower().removesuffix(".")


def _txt(value: str | list[str]) -> bytes:
    # RFC 7208 §3.3: the strings of one TXT record are joined without separator.
    strings = [value] if isinstance(value, str) else value
    return b"".join(s.encode("utf-8") for s in strings)


class ZoneResolver:
    """A ``Resolver`` over one scenario's zonedata. Names are case-insensitive and CNAMEs
    are followed (a loop is a temporary error, as a recursive server's SERVFAIL)."""

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.zone: dict[str, dict[str, list[Any]]] = {}
        self.timeouts: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        for name, entries in zonedata.items():
            records: dict[str, list[Any]] = {}
            spf: list[bytes] = []
            txt_listed = False
            for entry in entries:
                if entry == "TIMEOUT":
                    self.timeouts.add(_key(name))
                    continue
                ((rtype, value),) = entry.items()
                txt_listed = txt_listed or rtype == "TXT"
                if rtype == "SPF":
                    spf.append(_txt(value))
                elif value != "NONE":
                    records.setdefault(rtype, []).append(_convert(rtype, value))
            if spf and not txt_listed:
                records["TXT"] = spf
            self.zone[_key(name)] = records

    def _lookup(self, name: str, rtype: str) -> list[Any]:
        labels = name.removesuffix(".").split(".")
        assert all(0 < len(label) <= 63 for label in labels), f"queried bad name {name!r}"
        self.queries.append((name, rtype))
        key = _key(name)
        for _ in range(MAX_CNAME_CHAIN):
            records = self.zone.get(key)
            if records is None:
                raise DnsNotFound(f"{key}: no such domain")
            if rtype in records:
                return list(records[rtype])
            if "CNAME" in records:
                key = _key(records["CNAME"][0])
                continue
            if key in self.timeouts:
                raise DnsTemporaryError(f"{key}: DNS timeout")
            return []
        raise DnsTemporaryError(f"{name}: CNAME loop")

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return self._lookup(name, "MX")

    async def a(self, name: str) -> list[str]:
        return self._lookup(name, "A")

    async def aaaa(self, name: str) -> list[str]:
        return self._lookup(name, "AAAA")

    async def txt(self, name: str) -> list[bytes]:
        return self._lookup(name, "TXT")

    async def ptr(self, address: str) -> list[str]:
        reverse = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        return self._lookup(reverse, "PTR")


def _convert(rtype: str, value: Any) -> Any:
    if rtype == "TXT":
        return _txt(value)
    if rtype == "AAAA":
        return str(ipaddress.IPv6Address(value))
    if rtype == "MX":
        preference, exchange = value
        return (int(preference), exchange.removesuffix("."))
    if rtype in ("PTR", "CNAME"):
        return str(value).removesuffix(".")  # case kept: the evaluator must not mind
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cases() -> Iterator[Any]:
    with SUITE.open("rb") as fp:
        for scenario in yaml.safe_load_all(fp):
            for name, case in scenario["tests"].items():
                yield pytest.param(
                    scenario["zonedata"], name, case, id=f"{_slug(scenario['description'])}/{name}"
                )


CASES = list(_cases())


def test_the_whole_suite_is_collected() -> None:
    assert len(CASES) == 203
    assert len({param.id for param in CASES}) == len(CASES)


@pytest.mark.parametrize(("zonedata", "name", "case"), CASES)
def test_rfc7208(zonedata: dict[str, list[Any]], name: str, case: dict[str, Any]) -> None:
    resolver = ZoneResolver(zonedata)
    result = asyncio.run(
        check_sender(
            case["host"],
            case["mailfrom"],
            case["helo"],
            resolver=resolver,
            receiver=RECEIVER,
            clock=lambda: NOW,
        )
    )
    expected = case["result"]
    accepted = expected if isinstance(expected, list) else [expected]
    assert result.result in accepted, (
        f"{case.get('description', '')} spec {case['spec']}: got {result}"
    )
    if "explanation" in case:
        want = EXPLANATION_OVERRIDES.get(name, case["explanation"])
        assert result.explanation == (None if want == "DEFAULT" else want)
