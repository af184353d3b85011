"""Where mail for a domain goes: MX routing per RFC 5321 §5.1 and the null MX (RFC 7505).

``resolve_route`` turns a recipient domain into an ordered list of hosts with their
addresses, or a ``RouteError`` that carries the reply for the delivery status
(permanent 5xx: bounce now; temporary 4xx: retry later). It asks DNS only through the
``Resolver`` protocol and never connects anywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from postbote.dns import DnsError, DnsNotFound, Resolver, to_ascii
from postbote.errors import PostboteError

# Hosts beyond this many (after sorting) are not tried: a bound on the lookups one
# hostile domain can cause. Postfix tries at most 5 addresses per delivery.
MAX_MX_HOSTS = 10

_AddressLookup = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Host:
    """One host to try: its name (the address literal as written, for a literal
    domain), its MX preference (0 for an implicit MX or a literal) and its addresses,
    IPv6 first, then IPv4."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """The hosts for ``domain`` in the order to try them. ``implicit`` is true when the
    domain has no MX records and its own addresses are used (RFC 5321 §5.1), and for an
    address literal (no DNS at all)."""

    domain: str
    hosts: tuple[Host, ...]
    implicit: bool


class RouteError(PostboteError):
    """No host to deliver to; ``reply`` (e.g. "556 5.1.10 ...") explains why and
    ``permanent`` says whether to bounce (5xx) or retry later (4xx)."""

    def __init__(self, reply: str, *, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


def _temporary(domain: str) -> RouteError:
    # RFC 3463 §3.5: X.4.3 "directory server failure" (DNS unavailable).
    return RouteError(f"451 4.4.3 {domain}: temporary DNS failure", permanent=False)


async def resolve_route(
    domain: str,
    resolver: Resolver,
    *,
    local_names: Collection[str] = (),
    rng: random.Random | None = None,
) -> Route:
    """The route for mail to ``domain`` (as in the recipient address, or an address
    literal like "[192.0.2.1]" / "[IPv6:2001:db8::1]"). ``local_names`` are this
    server's own host names, for the loop rule; ``rng`` orders MX hosts of equal
    preference. Raises ``RouteError``."""
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("["):
        return _literal_route(domain)
    try:
        name = to_ascii(domain)  # the A-label form, to compare and to connect with
    except UnicodeError:
        raise RouteError(f"550 5.1.2 {domain}: invalid domain name", permanent=True) from None
    try:
        mxs = await resolver.mx(name)
    except DnsNotFound:
        # RFC 3463 §3.2: X.1.2 "bad destination system address".
        raise RouteError(f"550 5.1.2 {domain}: domain not found", permanent=True) from None
    except DnsError:
        raise _temporary(domain) from None
    # RFC 7505 §3-4: a null MX ("." as exchange) says the domain accepts no mail.
    if any(exchange == "" for _, exchange in mxs):
        raise RouteError(
            f"556 5.1.10 {domain}: domain does not accept mail (null MX)", permanent=True
        )
    local = _normalise_names(local_names)
    if not mxs:
        return await _implicit_route(domain, name, resolver, local)
    candidates = _order(_usable(mxs), rng or random.Random())
    candidates = _drop_self(domain, candidates, local)
    return await _mx_route(domain, resolver, candidates[:MAX_MX_HOSTS])


def _literal_route(domain: str) -> Route:
    """RFC 5321 §4.1.3: an address literal names the host directly; no DNS (§5.1)."""
    inner = domain[1:-1] if domain.endswith("]") else ""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    try:
        if inner.startswith("ipv6:"):
            # RFC 5321 §4.1.3: IPv6-address-literal = "IPv6:" IPv6-addr (no zone index).
            if "%" not in inner:
                address = ipaddress.IPv6Address(inner[5:])
        elif inner and inner[0].isdigit():
            address = ipaddress.IPv4Address(inner)
    except ValueError:
        address = None
    if address is None:
        raise RouteError(f"550 5.1.2 {domain}: invalid address literal", permanent=True)
    return Route(domain, (Host(domain, 0, (address.compressed,)),), implicit=True)


def _normalise_names(names: Collection[str]) -> frozenset[str]:
    """Host names as lowercase A-labels without the trailing dot, to compare with MX
    exchanges as the resolver returns them."""
    out: set[str] = set()
    for name in names:
        text = name.strip().rstrip(".").lower()
        try:
            out.add(to_ascii(text).lower())
        except UnicodeError:
            out.add(text)
    return frozenset(out)


def _usable(mxs: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop MX records that name an IP address instead of a host (RFC 5321 §5.1: the
    exchange is a domain name; RFC 7505 §3 and RFC 2181 §10.3), and repeated hosts
    (keeping the most preferred)."""
    best: dict[str, int] = {}
    for preference, exchange in mxs:
        if _is_ip(exchange):
            continue
        if exchange not in best or preference < best[exchange]:
            best[exchange] = preference
    return [(preference, exchange) for exchange, preference in best.items()]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _order(mxs: list[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """RFC 5321 §5.1: most preferred (lowest value) first; hosts of equal preference
    in random order. The input is sorted first (DNS servers vary the record order), so
    the result depends on the records and ``rng`` only."""
    shuffled = sorted(mxs)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda mx: mx[0])  # sorted() is stable


def _drop_self(
    domain: str, mxs: list[tuple[int, str]], local: frozenset[str]
) -> list[tuple[int, str]]:
    """RFC 5321 §5.1: if we are one of the MX hosts, discard every MX with a preference
    equal to or greater than ours, so that mail does not loop back to us."""
    ours = [preference for preference, exchange in mxs if exchange in local]
    if not ours:
        return mxs
    kept = [mx for mx in mxs if mx[0] < min(ours)]
    if not kept:
        # RFC 3463 §3.5: X.4.6 "routing loop detected".
        raise RouteError(f"550 5.4.6 mail for {domain} loops back to myself", permanent=True)
    return kept


async def _implicit_route(
    domain: str, name: str, resolver: Resolver, local: frozenset[str]
) -> Route:
    """RFC 5321 §5.1: no MX records: the domain itself is the implicit MX, preference 0
    (so the loop rule applies to it too)."""
    if name in local:
        raise RouteError(f"550 5.4.6 mail for {domain} loops back to myself", permanent=True)
    addresses, temporary = await _addresses(name, resolver)
    if addresses:
        return Route(domain, (Host(name, 0, addresses),), implicit=True)
    if temporary:
        raise _temporary(domain)
    raise RouteError(f"550 5.1.2 {domain}: no MX and no address for the domain", permanent=True)


async def _mx_route(domain: str, resolver: Resolver, mxs: list[tuple[int, str]]) -> Route:
    """Look up every host's addresses at once; skip hosts without any (RFC 5321 §5.1:
    try the other MX hosts)."""
    results = await asyncio.gather(*(_addresses(exchange, resolver) for _, exchange in mxs))
    hosts = tuple(
        Host(exchange, preference, addresses)
        for (preference, exchange), (addresses, _) in zip(mxs, results, strict=True)
        if addresses
    )
    if hosts:
        return Route(domain, hosts, implicit=False)
    if any(temporary for _, temporary in results):
        raise _temporary(domain)
    # RFC 3463 §3.5: X.4.4 "unable to route".
    raise RouteError(f"550 5.4.4 {domain}: no address for any MX host", permanent=True)


async def _addresses(name: str, resolver: Resolver) -> tuple[tuple[str, ...], bool]:
    """The host's IPv6 then IPv4 addresses, looked up concurrently, and whether a lookup
    failed temporarily."""
    aaaa, a = await asyncio.gather(_lookup(resolver.aaaa, name), _lookup(resolver.a, name))
    addresses = tuple(dict.fromkeys([*aaaa[0], *a[0]]))
    return addresses, aaaa[1] or a[1]


async def _lookup(method: _AddressLookup, name: str) -> tuple[list[str], bool]:
    """(addresses, failed temporarily); a permanent failure counts as no address."""
    try:
        return await method(name), False
    except DnsNotFound:
        return [], False
    except DnsError:
        return [], True
