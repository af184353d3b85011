"""Sender policy for submission: which addresses an authenticated user may send as.

One rule, used for the envelope (MAIL FROM) and for the author (the From: header field):
a user may use the addresses that deliver to them, plus what the administrator granted
(``postbote user allow-sender``). Pure function of its inputs and the directory.
"""

from __future__ import annotations

import re

from postbote.errors import StoreError
from postbote.store.addresses import domain_of, normalize_address, normalize_domain
from postbote.store.interfaces import Directory

# RFC 5322 §3.2.4 quoted-string (without CFWS): '"' *(qtext / quoted-pair) '"'.
_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def may_send_as(user: str, sender: str, directory: Directory) -> bool:
    """May the authenticated ``user`` (an address) send as ``sender`` (an address)?

    RFC 6409 §6.1 lets a submission server refuse a MAIL FROM that the authentication does
    not authorise (550 5.7.1); the same rule applies to the author of the message, the
    mailbox in From: (RFC 5322 §3.6.2). Local parts compare case-insensitively and domains
    in their normal form (A-labels); a quoted local part counts as its content (RFC 5322
    §3.4.1). ``sender`` is allowed when it is

    - the user's own address;
    - an address whose mail is delivered to the user: ``directory.resolve`` lists the user
      among its mailboxes. That covers +tags (RFC 5233) and aliases. An address that
      delivers elsewhere is refused even if it looks like a +tag of the user, e.g. an
      alias ``alice+x@`` pointing at bob; an alias delivering to several users is usable
      by each of them;
    - a +tag of the user's own address (``alice+tag@d`` for ``alice@d``) that the
      directory does not know at all;
    - granted by ``directory.sender_grants(user)``: the exact address, or ``@domain`` for
      any address in that domain.

    Malformed addresses are refused. The null sender (MAIL FROM:<>) is the caller's
    decision, not made here.
    """
    try:
        me = normalize_address(user)
        addr = normalize_address(_unquote_local(sender))
    except StoreError:
        return False
    if addr == me or _granted(addr, directory.sender_grants(me)):
        return True
    resolution = directory.resolve(addr)
    if resolution is not None:
        return me in resolution.mailboxes
    return _is_tag_of(addr, me)


def _unquote_local(address: str) -> str:
    """``"local"@domain`` as ``local@domain``: a quoted local part means its content."""
    local, at, domain = address.rpartition("@")
    match = _QUOTED_LOCAL.fullmatch(local) if at else None
    if match is None:
        return address
    return _QUOTED_PAIR.sub(r"\1", match.group(1)) + "@" + domain


def _granted(addr: str, grants: list[str]) -> bool:
    """Does one of the grants (normalised addresses or '@domain') cover ``addr``?"""
    domain = domain_of(addr)
    for grant in grants:
        try:
            if grant.startswith("@"):
                if normalize_domain(grant[1:]) == domain:
                    return True
            elif normalize_address(grant) == addr:
                return True
        except StoreError:
            continue  # a malformed grant grants nothing
    return False


def _is_tag_of(addr: str, me: str) -> bool:
    """RFC 5233: ``local+detail@domain`` is a subaddress of ``local@domain``."""
    local, _, domain = addr.rpartition("@")
    my_local, _, my_domain = me.rpartition("@")
    return domain == my_domain and local.startswith(my_local + "+")
