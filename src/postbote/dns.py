"""The one asynchronous DNS resolver that every part of postbote uses.

It owns the lookups (MX, A, AAAA, TXT, PTR), the translation of every DNS outcome into
three answers — records, "no such name" (``DnsNotFound``) and "try later"
(``DnsTemporaryError``) — and an optional TTL-respecting cache. Callers depend on the
``Resolver`` protocol, so tests can inject a fake or point ``DnsResolver`` at the
in-process test server (tests/dnsserver.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.reversename

from postbote.errors import ConfigError, PostboteError

# RFC 6891 §6.2.5 and the 2020 DNS flag day: 1232 octets avoids IP fragmentation.
EDNS_PAYLOAD = 1232


class DnsError(PostboteError):
    """A lookup produced no records. Carries no dnspython exception type to the caller."""


class DnsTemporaryError(DnsError):
    """Timeout, SERVFAIL, REFUSED or a network error: the answer may come later."""


class DnsNotFound(DnsError):
    """NXDOMAIN: the name does not exist (also raised for a name that cannot exist)."""


class Resolver(Protocol):
    """What the rest of postbote asks of DNS.

    Every method returns the records of its type for ``name`` (``[]`` when the name exists
    but has no such records, "NODATA"), raises ``DnsNotFound`` when the name does not
    exist, and ``DnsTemporaryError`` when no answer could be had. Names may be given as
    A-labels or U-labels, with or without the trailing dot; names in results are
    lowercase A-labels without the trailing dot. CNAMEs are followed.
    """

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs, unsorted; the null MX "." gives exchange ""."""
        ...

    async def a(self, name: str) -> list[str]:
        """IPv4 addresses as dotted quads."""
        ...

    async def aaaa(self, name: str) -> list[str]:
        """IPv6 addresses in compressed form."""
        ...

    async def txt(self, name: str) -> list[bytes]:
        """One item per TXT record, its strings concatenated (RFC 7208 §3.3)."""
        ...

    async def ptr(self, address: str) -> list[str]:
        """Names for an IPv4 or IPv6 address (in-addr.arpa / ip6.arpa)."""
        ...


def to_name(name: str) -> dns.name.Name:
    """``name`` as an absolute DNS name, U-labels converted to A-labels (``to_ascii``).
    Raises ``DnsNotFound`` for a name that cannot exist."""
    text = name.strip()
    if not text:
        raise DnsNotFound("empty domain name")
    try:
        return dns.name.from_text(to_ascii(text))
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise DnsNotFound(f"invalid domain name {name!r}") from exc


def to_ascii(text: str) -> str:
    """A domain with its U-labels converted to A-labels: IDNA 2008 with the UTS #46
    mapping (RFC 5891 §4.2, as browsers and mail clients do) when the ``idna`` package is
    installed, else the stdlib's IDNA 2003 codec. ASCII labels (``_dmarc``) pass
    unchanged. Raises ``UnicodeError`` for a label that IDNA rejects."""
    if text.isascii():
        return text
    try:
        import idna
    except ImportError:  # pragma: no cover - idna comes with most installations
        return text.encode("idna").decode("ascii")
    mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    return ".".join(
        label if label.isascii() else idna.alabel(label).decode("ascii")
        for label in mapped.split(".")
    )


def name_text(name: dns.name.Name) -> str:
    """Lowercase A-label text without the trailing dot ("" for the root)."""
    return name.to_text(omit_final_dot=True).lower() if name != dns.name.root else ""


class DnsResolver:
    """``Resolver`` implemented with dnspython's asyncio stub resolver.

    Driven only by the lookup coroutines; it holds no tasks or sockets between calls.
    ``timeout`` bounds the wait for one server's answer and ``timeout * attempts`` the
    whole lookup (servers are retried in turn until then). Truncated UDP answers are
    retried over TCP (RFC 7766 §5). With ``cache_size`` > 0, up to that many answers
    (positive and negative) are kept for their TTL (RFC 2308 §5); the default 0 leaves
    caching to the system's resolver and lets tests change zones between lookups.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: float = 5.0,
        attempts: int = 2,
        cache_size: int = 0,
    ) -> None:
        if timeout <= 0 or attempts < 1:
            raise ValueError("timeout must be positive and attempts at least 1")
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:
                raise ConfigError(f"/etc/resolv.conf: no usable nameserver ({exc})") from exc
        else:
            if not nameservers:
                raise ValueError("nameservers must not be empty")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers
            ]
        resolver.timeout = timeout
        resolver.lifetime = timeout * attempts
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = dns.resolver.LRUCache(cache_size) if cache_size > 0 else None
        self._resolver = resolver

    async def _query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[object]:
        """The rdata of the final RRset (after CNAMEs); [] for NODATA."""
        try:
            answer = await self._resolver.resolve(
                qname, rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            raise DnsNotFound(f"{name_text(qname)}: no such domain") from exc
        except dns.resolver.YXDOMAIN as exc:
            # RFC 6672 §2.2: the DNAME substitution gives an overlong name; it cannot exist.
            raise DnsNotFound(f"{name_text(qname)}: name too long after DNAME") from exc
        except dns.exception.Timeout as exc:
            raise DnsTemporaryError(f"{name_text(qname)}: DNS timeout") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(
                f"{name_text(qname)}: DNS servers failed ({_rcodes(exc)})"
            ) from exc
        except (dns.exception.DNSException, OSError, EOFError, ValueError) as exc:
            raise DnsTemporaryError(f"{name_text(qname)}: DNS error ({exc})") from exc
        if answer.rrset is None:
            return []  # RFC 2308 §2.2: NODATA
        return list(answer.rrset)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        records = await self._query(to_name(name), dns.rdatatype.MX)
        return [
            (r.preference, name_text(r.exchange))
            for r in records
            if isinstance(r, dns.rdtypes.ANY.MX.MX)
        ]

    async def a(self, name: str) -> list[str]:
        records = await self._query(to_name(name), dns.rdatatype.A)
        return [str(r.address) for r in records if isinstance(r, dns.rdtypes.IN.A.A)]

    async def aaaa(self, name: str) -> list[str]:
        records = await self._query(to_name(name), dns.rdatatype.AAAA)
        return [str(r.address) for r in records if isinstance(r, dns.rdtypes.IN.AAAA.AAAA)]

    async def txt(self, name: str) -> list[bytes]:
        records = await self._query(to_name(name), dns.rdatatype.TXT)
        # RFC 7208 §3.3: the character-strings of one record are concatenated without spaces.
        return [b"".join(r.strings) for r in records if isinstance(r, dns.rdtypes.ANY.TXT.TXT)]

    async def ptr(self, address: str) -> list[str]:
        try:
            qname = dns.reversename.from_address(address)
        except (dns.exception.DNSException, ValueError) as exc:
            raise DnsNotFound(f"not an IP address: {address!r}") from exc
        records = await self._query(qname, dns.rdatatype.PTR)
        return [name_text(r.target) for r in records if isinstance(r, dns.rdtypes.ANY.PTR.PTR)]


def _rcodes(exc: dns.resolver.NoNameservers) -> str:
    """The servers' failures in short, e.g. "SERVFAIL" or "REFUSED, timeout"."""
    seen: list[str] = []
    for error in exc.kwargs.get("errors", []):
        what = error[3]
        text = what if isinstance(what, str) else type(what).__name__
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) or "no answer"
