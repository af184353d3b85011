"""Address rules shared by every store backend: the directory's normal form of
domains and addresses, and how an address resolves (users, aliases, +tags,
postmaster) against a snapshot of the directory. Pure functions, no I/O."""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass, field

from postbote.errors import StoreError

MAX_ALIAS_DEPTH = 10
POSTMASTER = "postmaster"

# Whitespace, C0/C1 controls and lone surrogates (undecodable input), and the path brackets.
_BAD_IN_ADDRESS = re.compile(r"[\s<>\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_IN_DOMAIN = re.compile(r"[\s<>@/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# --- normal forms ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def normalize_domain(domain: str) -> str:
    """Lower-case, strip one trailing dot, U-labels to A-labels; StoreError if invalid."""
    name = domain.lower().removesuffix(".")
    # RFC 5890 §2.3.2.1: compare domains in their A-label form. A name the codec refuses
    # (a label over 63 octets, say) stays lower-cased.
    with contextlib.suppress(UnicodeError):
        name = name.encode("idna").decode("ascii")
    # Checked after encoding: nameprep maps e.g. U+FF0F FULLWIDTH SOLIDUS to "/".
    if (
        "" in name.split(".")
        or _BAD_IN_DOMAIN.search(name)
        or len(name.encode("utf-8", "surrogatepass")) > 255  # RFC 5321 §4.5.3.1.2
    ):
        raise StoreError(f"invalid domain: {domain!r}")
    return name


def split_address(address: str) -> tuple[str, str]:
    """Return (local part as given, normalised domain); StoreError if invalid."""
    local, at, domain = address.partition("@")
    if (
        not at
        or not local
        or "@" in domain
        or _BAD_IN_ADDRESS.search(local)
        or len(local.encode()) > 64  # RFC 5321 §4.5.3.1.1
    ):
        raise StoreError(f"invalid address: {address!r}")
    try:
        return local, normalize_domain(domain)
    except StoreError:
        raise StoreError(f"invalid address: {address!r}") from None


def normalize_address(address: str) -> str:
    """The directory's form of an address: 'local@domain', both lower-case, A-labels."""
    local, domain = split_address(address)
    # The destination host decides how its local parts compare (RFC 5321 §2.4): ours are
    # case-insensitive, UTF-8 allowed (RFC 6531).
    return f"{local.lower()}@{domain}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


# --- the snapshot used by lookups ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    domains: frozenset[str]
    users: frozenset[str]
    aliases: dict[str, tuple[str, ...]]


@dataclass(slots=True)
class Expansion:
    mailboxes: dict[str, None] = field(default_factory=dict)  # ordered set
    remote: dict[str, None] = field(default_factory=dict)


def resolve_local(snap: Snapshot, addr: str, depth: int, seen: set[str], out: Expansion) -> bool:
    """Resolve a normalised address in a local domain into ``out``; False if nothing."""
    if _resolve_direct(snap, addr, depth, seen, out):
        return True
    local, _, domain = addr.rpartition("@")
    # RFC 5233 §1: "user+detail" is delivered to "user" (the detail follows the first "+").
    base = local.split("+", 1)[0]
    if base and base != local and _resolve_direct(snap, f"{base}@{domain}", depth, seen, out):
        return True
    if local == POSTMASTER:  # RFC 5321 §4.5.1: postmaster must always be accepted
        out.mailboxes[addr] = None
        return True
    return False


def _resolve_direct(snap: Snapshot, addr: str, depth: int, seen: set[str], out: Expansion) -> bool:
    """A user, or an alias expanded recursively (cycle-safe, depth-limited)."""
    if addr in snap.users:
        out.mailboxes[addr] = None
        return True
    targets = snap.aliases.get(addr)
    if targets is None or addr in seen or depth >= MAX_ALIAS_DEPTH:
        return False
    seen.add(addr)
    found = False
    for target in targets:
        local, _, domain = target.rpartition("@")
        if domain in snap.domains:
            found |= resolve_local(snap, f"{local.lower()}@{domain}", depth + 1, seen, out)
        else:
            out.remote[target] = None
            found = True
    return found
