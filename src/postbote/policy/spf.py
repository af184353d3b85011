"""SPF: is this client IP allowed to send mail for this domain? (RFC 7208)

It owns ``check_host`` (RFC 7208 §4) and the session-level ``check_sender`` (§2.3, §2.4)
on the one ``Resolver`` (postbote/dns.py): record lookup and selection, the mechanisms
and modifiers, include/redirect recursion, the DNS processing limits (§4.6.4) and the
explanation (§6.2). The grammar is in spf_parse.py, macro expansion in spf_macro.py.
Results are spelled as the RFC does; a DNS failure is "temperror", never "fail".
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from postbote.dns import DnsError, DnsNotFound, DnsTemporaryError, Resolver, to_ascii
from postbote.policy.spf_macro import (
    expand,
    ip_macro_values,
    is_valid_domain,
    query_name,
    sanitize,
)
from postbote.policy.spf_parse import (
    Macro,
    MacroString,
    Mechanism,
    Record,
    SpfSyntaxError,
    parse_macro_string,
    parse_record,
    select_record,
)

RESULTS: Final = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
MAX_DNS_TERMS: Final = 10  # RFC 7208 §4.6.4: terms that cause DNS queries
MAX_VOID_LOOKUPS: Final = 2  # RFC 7208 §4.6.4: lookups that return nothing
MAX_NAMES: Final = 10  # RFC 7208 §4.6.4: MX names per "mx", PTR names per "ptr"/%{p}
MAX_EXPLANATION: Final = 300  # characters of explanation kept (fits an SMTP reply line)
DEFAULT_TIMEOUT: Final = 20.0  # RFC 7208 §4.6.4: allow at least 20 seconds

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check."""

    result: str  # "pass" "fail" "softfail" "neutral" "none" "temperror" "permerror"
    domain: str  # the domain checked (MAIL FROM domain, or HELO name)
    scope: str  # "mailfrom" | "helo"
    explanation: str | None = None  # exp= text for "fail" (RFC 7208 §6.2), printable ASCII
    problem: str | None = None  # why permerror/temperror, for logs and A-R comments

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"not an SPF result: {self.result!r}")
        if self.scope not in ("mailfrom", "helo"):
            raise ValueError(f"not an SPF scope: {self.scope!r}")


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str,
    resolver: Resolver,
    receiver: str = "unknown",
    clock: Callable[[], float] = time.time,
) -> SpfResult:
    """RFC 7208 §4: check_host(<ip>, <domain>, <sender>), scope "mailfrom".

    ``sender`` is the MAIL FROM address (or "postmaster@<helo>"); one without a local
    part gets "postmaster" (§4.3). ``helo`` fills %{h}, ``receiver`` %{r} and ``clock``
    %{t}. Raises ValueError if ``ip`` is not an IP address. No time limit of its own:
    ``check_sender`` adds the one of §4.6.4.
    """
    return await _check(ip, domain, sender, helo, "mailfrom", resolver, receiver, clock)


async def check_sender(
    ip: str,
    mail_from: str,
    helo: str,
    *,
    resolver: Resolver,
    receiver: str = "unknown",
    timeout: float = DEFAULT_TIMEOUT,
    clock: Callable[[], float] = time.time,
) -> SpfResult:
    """The SPF check of an SMTP transaction (RFC 7208 §2.3, §2.4).

    ``mail_from`` is the reverse-path without angle brackets, "" for the null sender; then
    the HELO identity is checked as "postmaster@<helo>" (scope "helo"). A sender without
    "@" is taken as a domain. The whole evaluation is bounded by ``timeout`` seconds;
    exceeding it gives "temperror" (RFC 7208 §4.6.4, §5).
    """
    if mail_from:
        sender, scope = mail_from, "mailfrom"
        domain = mail_from.rpartition("@")[2]
    else:
        sender, scope, domain = f"postmaster@{helo}", "helo", helo
    try:
        async with asyncio.timeout(timeout):
            return await _check(ip, domain, sender, helo, scope, resolver, receiver, clock)
    except TimeoutError:
        problem = f"SPF evaluation took longer than {timeout:g} s"
        return SpfResult("temperror", domain, scope, problem=problem)


async def _check(
    ip: str,
    domain: str,
    sender: str,
    helo: str,
    scope: str,
    resolver: Resolver,
    receiver: str,
    clock: Callable[[], float],
) -> SpfResult:
    address = ipaddress.ip_address(ip)
    # RFC 7208 §5: an IPv4-mapped IPv6 address is treated as IPv4 throughout.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        sender_domain = sender
    # RFC 7208 §4.3: no local-part -> "postmaster".
    local = local or "postmaster"
    try:
        ascii_domain = to_ascii(domain.strip())  # RFC 8616 §4: A-labels in DNS queries
    except UnicodeError:
        return SpfResult("none", domain, scope, problem=None)
    values = {
        "s": f"{local}@{sender_domain}",
        "l": local,
        "o": sender_domain,
        "h": helo,
        "r": receiver,
        "t": str(int(clock())),
        **ip_macro_values(address),
    }
    evaluation = _Evaluation(address, resolver, values)
    outcome = await evaluation.check_host(ascii_domain, explain=True)
    return SpfResult(outcome.result, domain, scope, outcome.explanation, outcome.problem)


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: str
    explanation: str | None = None
    problem: str | None = None


class _PermError(Exception):
    """Ends the whole evaluation with "permerror" (RFC 7208 §2.6.7)."""


class _TempError(Exception):
    """Ends the whole evaluation with "temperror" (RFC 7208 §2.6.6)."""


@dataclass
class _Evaluation:
    """One top-level check_host and its recursions: the state shared across include and
    redirect — the DNS term and void lookup counters (RFC 7208 §4.6.4) and the client's
    PTR names, looked up at most once."""

    ip: IPAddress
    resolver: Resolver
    values: dict[str, str]  # macro values except "d" and "p"
    dns_terms: int = 0
    void_lookups: int = 0
    _ptr_names: list[str] | None = None
    _ptr_void: bool = False
    _validated: dict[str, bool] = field(default_factory=dict)

    async def check_host(self, domain: str, *, explain: bool) -> _Outcome:
        """RFC 7208 §4; ``explain`` is False inside include (§6.2: the included
        record's exp= is not used)."""
        # RFC 7208 §4.3: a malformed or single-label domain gives "none".
        if not is_valid_domain(domain):
            return _Outcome("none")
        domain = domain.removesuffix(".")
        try:
            record = await self._fetch_record(domain)
            if record is None:
                return _Outcome("none")
            return await self._evaluate(record, domain, explain)
        except _PermError as exc:
            return _Outcome("permerror", problem=str(exc))
        except _TempError as exc:
            return _Outcome("temperror", problem=str(exc))

    async def _fetch_record(self, domain: str) -> Record | None:
        """RFC 7208 §4.4, §4.5: the one SPF record of ``domain`` from TXT, parsed."""
        try:
            txts = await self.resolver.txt(domain)
        except DnsNotFound:
            return None  # RFC 7208 §4.3: "Domain does not exist" -> none
        except DnsTemporaryError as exc:
            raise _TempError(f"{domain}: {exc}") from None
        try:
            text = select_record(txts)
            return None if text is None else parse_record(text)
        except SpfSyntaxError as exc:
            raise _PermError(f"{domain}: {exc}") from None

    async def _evaluate(self, record: Record, domain: str, explain: bool) -> _Outcome:
        # RFC 7208 §4.6.2: the first matching mechanism gives the result.
        for mechanism in record.mechanisms:
            if await self._matches(mechanism, domain):
                result = mechanism.result
                explanation = None
                if result == "fail" and explain and record.explanation is not None:
                    explanation = await self._explain(record.explanation, domain)
                return _Outcome(result, explanation)
        if record.redirect is not None:
            # RFC 7208 §6.1: redirect applies when nothing matched; the target's result
            # (and its exp=, not ours, §6.2) is ours; "none" there is a permerror.
            self._count_term()
            target = await self._target(record.redirect, domain)
            outcome = await self.check_host(target or "", explain=explain)
            if outcome.result == "none":
                raise _PermError(f"redirect={target or '(invalid name)'}: no SPF record")
            return outcome
        return _Outcome("neutral")  # RFC 7208 §4.7: default result

    async def _matches(self, mechanism: Mechanism, domain: str) -> bool:
        kind = mechanism.kind
        if kind == "all":
            return True  # RFC 7208 §5.1
        if kind in ("ip4", "ip6"):
            # RFC 7208 §5.6: only an address of the same family can match.
            network = mechanism.network
            assert network is not None
            return self.ip.version == network.version and self.ip in network
        self._count_term()
        target = (
            domain if mechanism.domain is None else await self._target(mechanism.domain, domain)
        )
        if kind == "include":
            return await self._include(target)
        if target is None:
            # RFC 7208 §4.8: a name that cannot be queried does not exist.
            self._count_void("(invalid name)")
            return False
        if kind == "a":
            return await self._a(target, mechanism)
        if kind == "mx":
            return await self._mx(target, mechanism)
        if kind == "ptr":
            return await self._ptr(target)
        assert kind == "exists"
        # RFC 7208 §5.7: an A query, whatever the client's address family.
        return bool(await self._query(self.resolver.a, target))

    async def _include(self, target: str | None) -> bool:
        """RFC 7208 §5.2: the recursive result, mapped to match / no match / error."""
        outcome = await self.check_host(target or "", explain=False)
        if outcome.result == "pass":
            return True
        if outcome.result in ("fail", "softfail", "neutral"):
            return False
        if outcome.result == "temperror":
            raise _TempError(outcome.problem or "temperror")
        if outcome.result == "none":
            raise _PermError(f"include:{target or '(invalid name)'}: no SPF record")
        raise _PermError(outcome.problem or "permerror")

    async def _a(self, target: str, mechanism: Mechanism) -> bool:
        """RFC 7208 §5.3: A or AAAA records of the target, by the client's family."""
        return self._in_any(await self._addresses(target, void=True), mechanism)

    async def _mx(self, target: str, mechanism: Mechanism) -> bool:
        """RFC 7208 §5.4: the addresses of the target's MX hosts. No implicit MX."""
        records = await self._query(self.resolver.mx, target)
        names = [exchange for _, exchange in sorted(records) if exchange]  # RFC 7505 null MX
        if len(names) > MAX_NAMES:
            raise _PermError(f"{target}: more than {MAX_NAMES} MX names (RFC 7208 §4.6.4)")
        for name in names:
            if self._in_any(await self._addresses(name, void=False), mechanism):
                return True
        return False

    async def _ptr(self, target: str) -> bool:
        """RFC 7208 §5.5: a validated PTR name equal to or below the target. DNS errors
        make it not match, never temperror."""
        names = await self._client_names()
        if self._ptr_void:
            self._count_void(target)
        target = target.lower()
        for name in names:
            if (name == target or name.endswith("." + target)) and await self._validate(name):
                return True
        return False

    def _in_any(self, addresses: list[str], mechanism: Mechanism) -> bool:
        prefix = mechanism.cidr4 if self.ip.version == 4 else mechanism.cidr6
        for text in addresses:
            try:
                network = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
            except ValueError:
                continue
            if self.ip in network:
                return True
        return False

    async def _addresses(self, name: str, *, void: bool) -> list[str]:
        lookup = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
        return await self._query(lookup, name, void=void)

    async def _query(
        self, lookup: Callable[[str], Awaitable[list[_T]]], name: str, *, void: bool = True
    ) -> list[_T]:
        """A lookup for a mechanism: "no such domain" is no records (RFC 7208 §5), and
        no records is a void lookup (§4.6.4); any other DNS failure is temperror."""
        try:
            records = await lookup(name)
        except DnsNotFound:
            records = []
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from None
        if not records and void:
            self._count_void(name)
        return records

    def _count_term(self) -> None:
        # RFC 7208 §4.6.4: include, a, mx, ptr, exists and redirect count; at most 10.
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms (RFC 7208 §4.6.4)")

    def _count_void(self, name: str) -> None:
        self.void_lookups += 1
        if self.void_lookups > MAX_VOID_LOOKUPS:
            raise _PermError(
                f"more than {MAX_VOID_LOOKUPS} void lookups, last {name} (RFC 7208 §4.6.4)"
            )

    async def _client_names(self) -> list[str]:
        """The first 10 PTR names of the client (RFC 7208 §4.6.4), [] on any DNS error."""
        if self._ptr_names is None:
            try:
                names = await self.resolver.ptr(str(self.ip))
                self._ptr_void = not names
            except DnsNotFound:
                names, self._ptr_void = [], True
            except DnsTemporaryError:
                names = []
            self._ptr_names = [n.lower().removesuffix(".") for n in names[:MAX_NAMES]]
        return self._ptr_names

    async def _validate(self, name: str) -> bool:
        """RFC 7208 §5.5: does ``name`` resolve back to the client's address? DNS errors
        mean no (the name is skipped)."""
        if name not in self._validated:
            lookup = self.resolver.a if self.ip.version == 4 else self.resolver.aaaa
            try:
                addresses = await lookup(name)
            except DnsError:
                addresses = []
            self._validated[name] = any(_same_ip(text, self.ip) for text in addresses)
        return self._validated[name]

    async def _validated_name(self, domain: str) -> str:
        """RFC 7208 §7.3 "p": a validated name of the client, preferring <domain> itself,
        then a name below it; "unknown" when none validates."""
        names = await self._client_names()
        domain = domain.lower()
        ranked = sorted(
            names,
            key=lambda n: 0 if n == domain else 1 if n.endswith("." + domain) else 2,
        )
        for name in ranked:
            if await self._validate(name):
                return name
        return "unknown"

    async def _expand(self, tokens: MacroString, domain: str) -> str:
        values = {**self.values, "d": domain}
        if any(isinstance(t, Macro) and t.letter == "p" for t in tokens):
            values["p"] = await self._validated_name(domain)
        return expand(tokens, values)

    async def _target(self, tokens: MacroString, domain: str) -> str | None:
        """An expanded domain-spec as a name to query; None if no such name can exist."""
        return query_name(await self._expand(tokens, domain))

    async def _explain(self, tokens: MacroString, domain: str) -> str | None:
        """RFC 7208 §6.2: the explanation, or None when anything about it fails. Its
        lookup counts against no limit."""
        name = await self._target(tokens, domain)
        if name is None:
            return None
        try:
            txts = await self.resolver.txt(name)
        except DnsError:
            return None
        if len(txts) != 1:
            return None
        try:
            text = txts[0].decode("ascii")
            parsed = parse_macro_string(text, explain=True)
        except (UnicodeDecodeError, SpfSyntaxError):
            return None
        return sanitize(await self._expand(parsed, domain), MAX_EXPLANATION) or None


def _same_ip(text: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False
