"""Delivery status notifications: the bounce, delay and success reports sent back to a
message's sender (RFC 3464 format, RFC 3461 SMTP DSN parameters, RFC 6522 multipart/report,
RFC 6533 internationalised reports).

Pure functions, no I/O and no clock (the caller gives ``now``): whether a recipient's NOTIFY
asks for a report (``wants_report``), the enhanced status code of a reply (``status_of``) and
the complete report message (``build_dsn``), which the queue sends from the null
reverse-path <> to the envelope's sender (RFC 5321 §4.5.5, RFC 3464 §2).

Everything that comes from outside (replies, addresses, the original message) is made safe
before it is written: field values never hold a line break, lines stay within RFC 5322 limits,
and the MIME boundary never occurs inside a part.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from postbote.envelope import Envelope, Recipient

# RFC 3464 §2.3.3: the action-value of a per-recipient block.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

# RFC 3461 §4.1: the NOTIFY keyword that asks for each kind of report.
_NOTIFY_FOR = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}
# RFC 3461 §4.1: without NOTIFY, act "as if NOTIFY=FAILURE or NOTIFY=FAILURE,DELAY".
_DEFAULT_NOTIFY = ("FAILURE", "DELAY")

# RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39, then SP, "-" (more lines) or the end.
# Only the classes RFC 3463 has a status for (2, 4, 5) are taken.
_REPLY = re.compile(r"([245])[0-5][0-9](?:[ -]|$)")
# RFC 3463 §2: status-code = class "." subject "." detail; class = "2" / "4" / "5",
# subject = 1*3digit, detail = 1*3digit. It ends at white space or the end of the text.
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?=\s|$)")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")

# RFC 5322 §3.6.4 msg-id parts (atext and "."), and a DNS host name in ASCII.
_MSG_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252}[A-Za-z0-9_.])?")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_SPACES = re.compile(r"\s+")
_BARE_EOL = re.compile(rb"\r\n|\r|\n")

# A field value is cut to this many octets: with its name it stays far below the RFC 5322
# §2.1.1 limit of 998 octets a line, even where no white space allows folding.
_MAX_VALUE = 800
_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD NOT be longer than 78 characters
_MAX_LINE = 998  # RFC 5322 §2.1.1, RFC 2045 §2.8: MUST NOT be longer (without CRLF)

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}
_HEADINGS = {
    "failed": "Your message could not be delivered to these recipients:",
    "delayed": "Your message has not been delivered to these recipients yet. Delivery is\r\n"
    "being retried; you need not send the message again:",
    "delivered": "Your message was delivered to these recipients:",
    "relayed": "Your message was passed on to the mail system of these recipients, which\r\n"
    "may not send further reports:",
    "expanded": "Your message was delivered to these recipients, which are lists or aliases\r\n"
    "that pass it on to their members:",
}


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """What one report says about one recipient (an RFC 3464 §2.3 per-recipient block).

    ValueError when built with an action not in ACTIONS or a malformed status.
    """

    recipient: str  # the address the report is about (Final-Recipient)
    action: str  # "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    status: str  # "5.1.1", "4.4.1", "2.0.0"
    diagnostic: str | None = None  # the remote reply or our diagnosis, "550 5.1.1 no such user"
    remote_mta: str | None = None  # host name (or IP) that gave the diagnostic
    orcpt: str | None = None  # as in the envelope: "rfc822;a@b" (decoded xtext)
    last_attempt: float | None = None  # UNIX time
    will_retry_until: float | None = None  # delayed only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}")
        if not _STATUS.fullmatch(self.status):  # RFC 3463 §2
            raise ValueError(f"malformed status code {self.status!r}")


def report_envelope(*, dsn_id: str, to: str, report: bytes, now: float) -> Envelope:
    """The envelope a report built by build_dsn travels in: from <> (RFC 3461 §6.2,
    RFC 5321 §4.5.5) to ``to``, SMTPUTF8 when it uses the RFC 6533 global types, and
    8BITMIME when it holds 8-bit octets."""
    return Envelope(
        id=dsn_id,
        sender="",
        recipients=(Recipient(to),),
        received_at=now,
        smtputf8=b"global-delivery-status" in report[:4096],
        body_type="8BITMIME" if any(b > 127 for b in report) else None,
    )


def wants_report(notify: tuple[str, ...] | None, action: str) -> bool:
    """Whether a recipient's NOTIFY parameter asks for a report of this action.

    RFC 3461 §4.1: NEVER asks for nothing; no NOTIFY means FAILURE,DELAY; "failed" needs
    FAILURE, "delayed" DELAY, and "delivered", "relayed" and "expanded" need SUCCESS.
    Keywords are compared without regard to case. ValueError for an unknown action.
    """
    if action not in _NOTIFY_FOR:
        raise ValueError(f"unknown DSN action {action!r}")
    keywords = _DEFAULT_NOTIFY if notify is None else tuple(k.upper() for k in notify)
    return "NEVER" not in keywords and _NOTIFY_FOR[action] in keywords


def status_of(reply: str) -> str:
    """The RFC 3463 status code of an SMTP reply or of our own diagnosis.

    "550 5.1.1 no" -> "5.1.1"; "550 no such user" -> "5.0.0"; "451 x" -> "4.0.0"; our own
    diagnosis without a reply code, "4.4.1 connection refused" -> "4.4.1". Only the first
    line counts. An enhanced code whose class differs from the reply code's is not used
    (RFC 3463 §2: the class must agree), "550 4.1.1 x" -> "5.0.0". ValueError if the text
    starts with neither a 2xx/4xx/5xx reply code nor an enhanced status code.
    """
    line = reply.lstrip().splitlines()[0] if reply.strip() else ""
    code = _REPLY.match(line)
    if code is None:
        own = _ENHANCED.match(line)
        if own is None:
            raise ValueError(f"no reply code or status code in {reply[:80]!r}")
        return own.group(0)
    enhanced = _ENHANCED.match(line[code.end() :].lstrip(" "))
    if enhanced is not None and enhanced.group(1) == code.group(1):
        return enhanced.group(0)
    return f"{code.group(1)}.0.0"


def build_dsn(
    *,
    envelope: Envelope,
    original: bytes,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    now: float,
    message_id: str,
    max_original: int = 10 * 1024 * 1024,
) -> bytes:
    """The complete report message (RFC 6522 multipart/report, CRLF line endings), to be
    sent from <> to ``envelope.sender``.

    Parts: a text/plain explanation; the RFC 3464 delivery-status fields; the original
    message or its header section as RFC 3461 §4.3 (RET) asks, headers only when the
    original exceeds ``max_original`` octets. RFC 6533 global types when the envelope is
    SMTPUTF8 or an address is not ASCII. ValueError if the sender is the null reverse-path
    (RFC 5321 §4.5.5: never report on a report), ``recipients`` is empty, or
    ``message_id``/``reporting_mta`` cannot form a Message-ID.
    """
    if not envelope.sender:
        raise ValueError("no report is sent to the null reverse-path (RFC 5321 §4.5.5)")
    if not recipients:
        raise ValueError("a report needs at least one recipient (RFC 3464 §2.1)")
    mta = _reporting_host(reporting_mta)
    if not _MSG_ID_PART.fullmatch(message_id):
        raise ValueError(f"cannot use {message_id!r} in a Message-ID")
    utf8 = _is_global(envelope, recipients)
    returned = _returned(envelope, original, recipients, max_original)
    parts = [
        _notification_part(recipients, mta, utf8, returned),
        _status_part(envelope, recipients, mta, utf8),
    ]
    if returned is not None:
        parts.append(_original_part(*returned, utf8=utf8))
    boundary = _boundary(message_id, parts)
    head = _message_header(envelope, recipients, mta, now, message_id, utf8, boundary)
    eight_bit = not all(part.isascii() for part in parts)
    if eight_bit:  # RFC 2045 §6.4: a multipart holding 8bit parts is itself 8bit
        head += b"Content-Transfer-Encoding: 8bit\r\n"
    delimiter = b"--" + boundary.encode()
    # RFC 2046 §5.1.1: the CRLF before each delimiter line belongs to the delimiter.
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    return head + b"\r\n" + body + delimiter + b"--\r\n"


# --- the message and its parts ---------------------------------------------------------------


def _message_header(
    envelope: Envelope,
    recipients: Sequence[DsnRecipient],
    mta: str,
    now: float,
    message_id: str,
    utf8: bool,
    boundary: str,
) -> bytes:
    report_type = "global-delivery-status" if utf8 else "delivery-status"
    fields = [
        "From: Mail Delivery System <MAILER-DAEMON@" + mta + ">",
        "To: <" + _clean(envelope.sender, utf8) + ">",
        "Subject: " + _SUBJECTS[_kind(recipients)],
        "Date: " + _date(now),  # RFC 5322 §3.3
        f"Message-ID: <{message_id}@{mta}>",  # RFC 5322 §3.6.4
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
        # RFC 6522 §3: report-type is the subtype of the second part (RFC 6533 §6.3).
        f'Content-Type: multipart/report; report-type={report_type};\r\n boundary="{boundary}"',
    ]
    return "".join(f + "\r\n" for f in fields).encode()


def _notification_part(
    recipients: Sequence[DsnRecipient], mta: str, utf8: bool, returned: tuple[str, bytes] | None
) -> bytes:
    """RFC 6522 §3 first part: a human-readable explanation, each recipient with its
    diagnostic."""
    lines = [f"This is the mail system at {mta}.", ""]
    for action in ACTIONS:
        group = [r for r in recipients if r.action == action]
        if not group:
            continue
        lines += [_HEADINGS[action], ""]
        for r in group:
            lines.append("  <" + _clean(r.recipient, utf8) + ">")
            lines += _wrapped(_diagnosis_text(r, utf8))
            if r.action == "delayed" and r.will_retry_until is not None:
                lines.append("    Delivery will be retried until " + _date(r.will_retry_until))
        lines.append("")
    if returned is not None:
        what = "message" if returned[0] == "full" else "header section of the message"
        lines.append(f"The {what} this report is about is attached.")
    text = "\r\n".join(lines).rstrip("\r\n") + "\r\n"
    charset = "utf-8" if utf8 else "us-ascii"
    return _part(
        [f"Content-Type: text/plain; charset={charset}", "Content-Description: Notification"],
        text.encode("utf-8"),
    )


def _diagnosis_text(r: DsnRecipient, utf8: bool) -> str:
    text = _clean(r.diagnostic, utf8) if r.diagnostic else f"Status {r.status}"
    if r.remote_mta:
        text += f" (from {_mta_name(r.remote_mta)})"
    return text


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=_FOLD_AT - 2,
        initial_indent="    ",
        subsequent_indent="    ",
        break_on_hyphens=False,
    )


def _status_part(
    envelope: Envelope, recipients: Sequence[DsnRecipient], mta: str, utf8: bool
) -> bytes:
    """RFC 3464 §2.1: the per-message fields, then one block per recipient, blocks
    separated by an empty line."""
    # RFC 3464 §2.2: per-message fields.
    block = [_field("Reporting-MTA", "dns; " + mta)]  # §2.2.2
    envid = _clean(envelope.envid or "", utf8)
    if envid:  # §2.2.1, RFC 3461 §4.4: the ENVID, xtext-decoded
        block.append(_field("Original-Envelope-Id", envid))
    block.append(_field("Arrival-Date", _date(envelope.received_at)))  # §2.2.5
    blocks = ["".join(block)]
    blocks += [_recipient_block(r, utf8) for r in recipients]
    content_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    return _part(
        [f"Content-Type: {content_type}", "Content-Description: Delivery report"],
        "\r\n".join(blocks).encode("utf-8"),
    )


def _recipient_block(r: DsnRecipient, utf8: bool) -> str:
    """RFC 3464 §2.3: the per-recipient fields, in the order the RFC lists them."""
    fields: list[str] = []
    orcpt = _clean(r.orcpt or "", utf8)
    if ";" in orcpt:  # §2.3.1: the ORCPT as given (its type kept), xtext-decoded
        fields.append(_field("Original-Recipient", orcpt))
    # §2.3.2; RFC 6533 §3: the "utf-8" address type in a global report.
    address_type = "utf-8" if utf8 else "rfc822"
    fields.append(_field("Final-Recipient", f"{address_type}; " + _clean(r.recipient, utf8)))
    fields.append(_field("Action", r.action))  # §2.3.3
    fields.append(_field("Status", r.status))  # §2.3.4
    if r.remote_mta:  # §2.3.5
        fields.append(_field("Remote-MTA", "dns; " + _mta_name(r.remote_mta)))
    diagnostic = _clean(r.diagnostic, utf8) if r.diagnostic else ""
    if diagnostic:  # §2.3.6: "smtp" only for an SMTP reply; our own words get an X- type
        kind = "smtp" if _REPLY.match(diagnostic) else "X-Postbote"
        fields.append(_field("Diagnostic-Code", f"{kind}; {diagnostic}"))
    if r.last_attempt is not None:  # §2.3.7
        fields.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
    if r.action == "delayed" and r.will_retry_until is not None:  # §2.3.9
        fields.append(_field("Will-Retry-Until", _date(r.will_retry_until)))
    return "".join(fields)


def _original_part(kind: str, data: bytes, *, utf8: bool) -> bytes:
    """RFC 3462 §3 third part: the original message (message/rfc822) or its header section
    (text/rfc822-headers); RFC 6533 §6.3, §6.4: message/global, message/global-headers."""
    if kind == "full":
        content_type = "message/global" if utf8 else "message/rfc822"
        description = "Undelivered message"
    else:
        content_type = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Header section of the message"
    return _part([f"Content-Type: {content_type}", f"Content-Description: {description}"], data)


def _part(fields: list[str], content: bytes) -> bytes:
    """A body part: its header fields, the empty line, the content. RFC 2045 §6.2: 8bit
    when any octet is outside ASCII (RFC 2046 §5.2.1: message/* allows 7bit/8bit/binary)."""
    cte = "7bit" if content.isascii() else "8bit"
    head = "".join(f + "\r\n" for f in [*fields, f"Content-Transfer-Encoding: {cte}"])
    return head.encode() + b"\r\n" + content


def _boundary(seed: str, parts: Sequence[bytes]) -> str:
    """RFC 2046 §5.1.1: a boundary (bchars, at most 70) whose delimiter occurs in no part.
    Derived from ``seed``, so the same report is the same bytes."""
    for attempt in range(1_000_000):
        digest = hashlib.sha256(f"{seed}/{attempt}".encode()).hexdigest()[:32]
        boundary = f"=_postbote_{digest}"
        delimiter = b"--" + boundary.encode()
        if not any(delimiter in part for part in parts):
            return boundary
    raise AssertionError("no free MIME boundary")  # 2^128 candidates: unreachable


# --- what goes back of the original ----------------------------------------------------------


def _returned(
    envelope: Envelope, original: bytes, recipients: Sequence[DsnRecipient], limit: int
) -> tuple[str, bytes] | None:
    """("full", message) or ("headers", header section) or None (nothing usable).

    RFC 3461 §4.3: RET=FULL the whole message, RET=HDRS the headers; without RET the whole
    message when a recipient failed, else the headers. Headers only when the message is over
    ``limit`` octets or is not 8bit data (RFC 2045 §2.8: no NUL, lines of at most 998).
    """
    data = _crlf(original)
    ret = (envelope.ret or "").upper()
    failed = any(r.action == "failed" for r in recipients)
    if (ret == "FULL" or (ret != "HDRS" and failed)) and len(data) <= limit and _is_8bit(data):
        return ("full", data) if data else None
    headers = _header_section(data, limit)
    return ("headers", headers) if headers and _is_8bit(headers) else None


def _crlf(data: bytes) -> bytes:
    """Every line ending as CRLF: a bare CR or LF would break the report's lines."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _BARE_EOL.sub(b"\r\n", data)


def _is_8bit(data: bytes) -> bool:
    """RFC 2045 §2.8 8bit data: no NUL, no line over 998 octets."""
    if b"\0" in data:
        return False
    return all(len(line) <= _MAX_LINE for line in data.split(b"\r\n"))


def _header_section(data: bytes, limit: int) -> bytes:
    """The header section (RFC 5322 §2.1) with its last CRLF, at most ``limit`` octets: a
    longer one is cut after the last whole field that fits (RFC 5322 §2.2.3 folding)."""
    if data.startswith(b"\r\n"):
        return b""
    end = data.find(b"\r\n\r\n")
    section = data if end < 0 else data[: end + 2]
    if section and not section.endswith(b"\r\n"):
        section += b"\r\n"
    if len(section) <= limit:
        return section
    cut = section.rfind(b"\r\n", 0, max(limit - 1, 0))
    while cut >= 0 and section[cut + 2 : cut + 3] in (b" ", b"\t"):
        cut = section.rfind(b"\r\n", 0, cut)
    return section[: cut + 2] if cut >= 0 else b""


# --- field values ----------------------------------------------------------------------------


def _kind(recipients: Sequence[DsnRecipient]) -> str:
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "failed"
    return "delayed" if "delayed" in actions else "success"


def _is_global(envelope: Envelope, recipients: Sequence[DsnRecipient]) -> bool:
    """RFC 6533 §3, §6: an SMTPUTF8 message, or a non-ASCII address, needs the global types."""
    texts = [envelope.sender, *(r.recipient for r in recipients)]
    texts += [r.orcpt for r in recipients if r.orcpt]
    return envelope.smtputf8 or not all(t.isascii() for t in texts)


def _date(when: float) -> str:
    return email.utils.formatdate(when, localtime=True)  # RFC 5322 §3.3 date-time


def _reporting_host(name: str) -> str:
    host = _ascii_host(name)
    if host is None or not _HOST.fullmatch(host):
        raise ValueError(f"cannot use {name!r} as the reporting MTA's name")
    return host


def _mta_name(name: str) -> str:
    """RFC 3464 §2.3.5 mta-name for the "dns" type: the host name, in ASCII (IDNA), or an
    RFC 5321 §4.1.3 address literal for an IP address."""
    try:
        addr = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        host = _ascii_host(name.rstrip("."))
        return _clean(host if host is not None else name, False) or "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        return f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


def _ascii_host(name: str) -> str | None:
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _clean(value: str, utf8: bool) -> str:
    """A field value that cannot break a line: every white space run (CR and LF included)
    becomes one space, other unprintable characters (and, outside a global report, non-ASCII
    ones) become "?". At most _MAX_VALUE octets. RFC 5322 §2.2, RFC 6532 §3.2."""
    if not _PRINTABLE_ASCII.fullmatch(value):
        value = "".join(
            " " if c.isspace() else c if c.isprintable() and (utf8 or c.isascii()) else "?"
            for c in value
        )
    value = _SPACES.sub(" ", value).strip(" ")
    raw = value.encode("utf-8")
    if len(raw) > _MAX_VALUE:
        value = raw[:_MAX_VALUE].decode("utf-8", "ignore").rstrip(" ")
    return value


def _field(name: str, value: str) -> str:
    """``Name: value`` and CRLF, folded at spaces to keep lines near 78 characters
    (RFC 5322 §2.2.3). ``value`` is already _clean: single spaces, no line breaks."""
    lines: list[str] = []
    line = name + ":"
    for word in value.split(" "):
        if len(line) + 1 + len(word) > _FOLD_AT and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"
