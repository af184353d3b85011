"""Recipient policy: local recipients, relay control (no open relay).

An unauthenticated client may only send to recipients in our local domains. Every
classic disguise of a remote recipient is refused as relaying (554 5.7.1):
``user%other@local`` (the %-hack), ``"user@other"@local`` (quoted @),
``other!user@local`` (UUCP bang path), ``@local:user@other`` (source route; the
grammar already reduced it to ``user@other``, RFC 5321 Appendix C),
``user@[192.0.2.1]`` (address literal), in any case and with a trailing dot.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postbote.smtp import replies as R
from postbote.smtp.grammar import Address, normalize_domain
from postbote.smtp.replies import Reply
from postbote.store.interfaces import Directory, Resolution

# Characters that route mail onwards when they appear in a local part.
_ROUTING_CHARS = frozenset("%!@")


class RcptKind(enum.Enum):
    LOCAL = "local"
    REMOTE = "remote"


@dataclass(frozen=True, slots=True)
class RcptDecision:
    kind: RcptKind | None  # None: refused
    address: str  # canonical key: 'local@domain' lower-cased, normalised domain
    reply: Reply | None  # the refusal, if kind is None
    resolution: Resolution | None = None


def check_recipient(
    rcpt: Address, directory: Directory, *, may_relay: bool, postmaster_domain: str | None
) -> RcptDecision:
    """Decide one RCPT TO. ``may_relay`` is True only for authenticated submission.

    RFC 5321 §4.5.1: ``postmaster@domain`` of every local domain, and bare
    ``<Postmaster>``, must be accepted.
    """
    if rcpt.domain == "":
        if postmaster_domain is None:
            return RcptDecision(None, "postmaster", R.C550_MAILBOX_UNAVAILABLE)
        rcpt = Address("postmaster", postmaster_domain)
    domain = normalize_domain(rcpt.domain)
    key = f"{rcpt.local.lower()}@{domain}"
    local_domain = not rcpt.is_address_literal and directory.is_local_domain(domain)
    if not local_domain:
        if may_relay:
            return RcptDecision(RcptKind.REMOTE, f"{rcpt.local}@{domain}", None)
        return RcptDecision(None, key, R.C554_RELAY_DENIED)
    if _ROUTING_CHARS.intersection(rcpt.local):
        # A routing character in a local part asks us to forward elsewhere.
        if may_relay:
            return RcptDecision(None, key, R.C550_MAILBOX_UNAVAILABLE)
        return RcptDecision(None, key, R.C554_RELAY_DENIED)
    resolution = directory.resolve(key)
    if resolution is None:
        return RcptDecision(None, key, R.C550_MAILBOX_UNAVAILABLE)
    return RcptDecision(RcptKind.LOCAL, key, None, resolution)
