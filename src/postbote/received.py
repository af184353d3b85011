"""Trace headers: Received (RFC 5321 §4.4, RFC 5322 §3.6.7, RFC 3848 protocol
names, RFC 6531 §4.3 UTF8SMTP), Return-Path and Delivered-To at final delivery."""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from email.utils import formatdate


def protocol_name(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """RFC 3848 §2 / RFC 6531 §4.3 'with' keyword: SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


@functools.lru_cache(maxsize=4096)  # parsed once per client address, not per message
def ip_literal(ip: str) -> str:
    """RFC 5321 §4.1.3 address literal for a client IP."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "[unknown]"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"[{addr.ipv4_mapped}]"
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


_PLAIN = re.compile(r"[!-'*-~]{1,255}")  # printable ASCII but space and parentheses


def _clean(token: str) -> str:
    """A header-safe token: printable, no spaces, no CR/LF, bounded."""
    if _PLAIN.fullmatch(token):
        return token
    out = "".join(
        c if (c.isprintable() and not c.isspace() and c not in "()") else "?" for c in token
    )
    return out[:255] or "unknown"


class DateCache:
    """RFC 5322 §3.3 date-time, formatted at most once per second."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def at(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = formatdate(second, localtime=True)
        return self._text


_dates = DateCache()


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    now: float | None = None,
    hide_client: bool = False,
) -> bytes:
    """One Received: header field, folded, ending in CRLF. ``recipient`` is given only
    for single-recipient messages (RFC 5321 §4.4 'for' clause: not to leak a list)."""
    when = _dates.at(time.time() if now is None else now)
    if hide_client:
        origin = f"from {_clean(helo)}" if helo else "from unknown"
    else:
        origin = f"from {_clean(helo) if helo else 'unknown'} ({ip_literal(client_ip)})"
    lines = [f"Received: {origin}", f"\tby {hostname} (postbote) with {protocol} id {queue_id}"]
    if recipient is not None:
        lines.append(f"\tfor <{_clean(recipient)}>; {when}")
    else:
        lines[-1] += f"; {when}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def delivery_headers(sender: str, mailbox: str) -> bytes:
    """Return-Path (RFC 5321 §4.4: added at final delivery) and Delivered-To."""
    path = sender.replace("\r", "").replace("\n", "")
    return f"Return-Path: <{path}>\r\nDelivered-To: {mailbox}\r\n".encode()
