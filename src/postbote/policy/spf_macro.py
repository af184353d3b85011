"""SPF macro expansion (RFC 7208 §7.3, §7.4): turning a parsed macro string into text,
and an expanded domain-spec into a name to query (§7.3 truncation, §4.3 validity).

Pure functions of their inputs; the evaluator in spf.py gathers the macro values,
including the DNS-derived "p".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import quote

from postbote.policy.spf_parse import TOPLABEL, Macro, MacroString

MAX_NAME = 253  # RFC 7208 §7.3: a domain name in text form, without the trailing dot
MAX_LABEL = 63  # RFC 1035 §2.3.4


def expand(tokens: MacroString, values: Mapping[str, str]) -> str:
    """The macro string with each macro replaced by its transformed value (RFC 7208 §7.3).

    ``values`` maps lowercase macro letters to their values; a macro whose letter is
    missing is a programming error (KeyError).
    """
    return "".join(
        token if isinstance(token, str) else _expand_one(token, values[token.letter])
        for token in tokens
    )


def _expand_one(macro: Macro, value: str) -> str:
    # RFC 7208 §7.3: split on the delimiters ("." by default), reverse, keep the
    # right-hand parts, rejoin with "."; then URL-escape for an uppercase letter.
    if macro.delimiters or macro.reverse or macro.digits is not None:
        delimiters = macro.delimiters or "."
        parts = re.split("[" + re.escape(delimiters) + "]", value)
        if macro.reverse:
            parts.reverse()
        if macro.digits is not None:
            parts = parts[-macro.digits :]
        value = ".".join(parts)
    if macro.escape:
        # RFC 7208 §7.3: every character outside RFC 3986 "unreserved" is escaped.
        value = quote(value, safe="")
    return value


def ip_macro_values(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> dict[str, str]:
    """The "i", "c" and "v" macro values for the client address (RFC 7208 §7.3)."""
    if ip.version == 4:
        return {"i": str(ip), "c": str(ip), "v": "in-addr"}
    # RFC 7208 §7.3: "i" is the dot-format nibbles (example in §7.4: lowercase hex);
    # "c" the readable form (RFC 5952 compressed).
    return {"i": ".".join(ip.exploded.replace(":", "")), "c": str(ip), "v": "ip6"}


def query_name(expanded: str) -> str | None:
    """The DNS name for an expanded domain-spec, or None when it cannot be a name.

    The trailing dot is dropped (RFC 7208 §7.3, "trailing-dot-domain") and a name longer
    than 253 characters loses labels on the left until it fits (§7.3). A name with an
    empty or over-long label cannot exist: the caller treats it as "no such domain"
    (RFC 7208 §4.3, §4.8).
    """
    name = expanded[:-1] if expanded.endswith(".") else expanded
    while len(name) > MAX_NAME and "." in name:
        name = name.split(".", 1)[1]
    labels = name.split(".")
    if len(name) > MAX_NAME or any(not label or len(label) > MAX_LABEL for label in labels):
        return None
    return name


def is_valid_domain(domain: str) -> bool:
    """RFC 7208 §4.3: <domain> is a well-formed, multi-label, fully qualified name whose
    last label is a toplabel (§7.1), so no domain literal and no bare host name."""
    name = domain[:-1] if domain.endswith(".") else domain
    labels = name.split(".")
    return (
        len(name) <= MAX_NAME
        and len(labels) >= 2
        and all(0 < len(label) <= MAX_LABEL for label in labels)
        and TOPLABEL.fullmatch(labels[-1]) is not None
    )


def sanitize(text: str, limit: int) -> str:
    """Explanation text for an SMTP reply: printable ASCII only, at most ``limit``
    characters (RFC 7208 §6.2 explanations come from a third party)."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return cleaned[:limit]
