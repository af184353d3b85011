"""Header checks and fixes for submitted messages (RFC 6409): the author in From: must be
one the user may send as, and a missing Date: or Message-ID: is added.

Pure functions on the message bytes (CRLF line endings). Only the header section, up to
the first empty line (RFC 5322 §2.1), is looked at; the body is never parsed. A From: field
is parsed with the stdlib email package (RFC 5322 address syntax, RFC 2047 encoded words,
RFC 6532 UTF-8); anything it has to guess at is refused rather than guessed, so that the
address checked is the address every reader of the message will see.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass

from postbote.smtp.replies import Reply

C550_FROM_NOT_ALLOWED = Reply.make(
    550, "5.7.1", "Sender address in From: not allowed for this user"
)
C550_BAD_FROM = Reply.make(
    550, "5.6.0", "Message must have exactly one From: header with one address"
)

# RFC 5322 §3.6.8: field-name = 1*ftext (printable ASCII but ":"); §4.5.3 (obsolete
# syntax) allows white space before the colon, and readers honour it, so "From :" counts.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
# RFC 5322 §2.2.3: unfolding removes each CRLF that is followed by white space.
_FOLD = re.compile(r"\r\n(?=[ \t])")
# A From: field longer than this (unfolded) is refused: one mailbox never needs it, and the
# email package's address parser is slow (worse than linear) on long adversarial input.
MAX_FROM_LENGTH = 2048
# Defects that leave the address unambiguous: obsolete but well-defined syntax (a "." in a
# display name, a comment inside an addr-spec), a UTF-8 local part (RFC 6532 §3.2), and an
# encoded word in the display name that does not decode (RFC 2047 §6.3: shown as it is).
_HARMLESS_DEFECTS = (
    email.errors.ObsoleteHeaderDefect,
    email.errors.NonASCIILocalPartDefect,
    email.errors.CharsetError,
    email.errors.InvalidBase64CharactersDefect,
    email.errors.InvalidBase64PaddingDefect,
    email.errors.InvalidBase64LengthDefect,
)
# id-left and id-right of a msg-id (RFC 5322 §3.6.4), as ASCII dot-atom-text, loosely
# (dots are not checked): atext and ".".
_MSG_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")


@dataclass(frozen=True, slots=True)
class _Mailboxes:
    """What one From: field names: its addr-specs, and whether any came in a group."""

    addresses: tuple[str, ...]
    has_group: bool


def from_addresses(message: bytes) -> list[list[str]] | None:
    """The addr-specs of each From: field, in order (members of a group included).

    None if the header section, or one of its From: fields, cannot be parsed without
    guessing. [] if there is no From: field.
    """
    values = _from_values(message)
    if values is None:
        return None
    out: list[list[str]] = []
    for value in values:
        mailboxes = _parse_from(value)
        if mailboxes is None:
            return None
        out.append(list(mailboxes.addresses))
    return out


def check_from(message: bytes, allowed: Callable[[str], bool]) -> Reply | None:
    """None if the From: field names one mailbox that ``allowed`` accepts, else the refusal.

    RFC 5322 §3.6.2: exactly one From: field; it must hold exactly one mailbox (several
    would need a Sender: field, a group is not allowed in From:), else C550_BAD_FROM.
    ``allowed`` gets the RFC 5322 addr-spec (a local part that needs it stays quoted);
    if it says no, C550_FROM_NOT_ALLOWED (RFC 6409 §6.1). Exceptions of ``allowed``
    propagate; a message that cannot be parsed is C550_BAD_FROM, never an exception.
    """
    values = _from_values(message)
    if values is None or len(values) != 1:
        return C550_BAD_FROM
    mailboxes = _parse_from(values[0])
    if mailboxes is None or mailboxes.has_group or len(mailboxes.addresses) != 1:
        return C550_BAD_FROM
    if not allowed(mailboxes.addresses[0]):
        return C550_FROM_NOT_ALLOWED
    return None


def add_missing_headers(message: bytes, *, now: float, hostname: str, unique: str) -> bytes:
    """Add ``Date:`` (RFC 6409 §8.2) and ``Message-ID: <unique@hostname>`` (RFC 6409 §8.3)
    at the top of the header section when it has none; all else stays byte for byte.

    The date is ``now`` (a POSIX time) in the local time zone, as RFC 5322 §3.3 date-time.
    ValueError if ``unique`` or ``hostname`` cannot form a msg-id.
    """
    present = {name.lower() for name in _field_names(header_section(message))}
    added: list[bytes] = []
    if b"date" not in present:
        added.append(b"Date: " + email.utils.formatdate(now, localtime=True).encode() + b"\r\n")
    if b"message-id" not in present:
        for part in (unique, hostname):
            if not _MSG_ID_PART.fullmatch(part):
                raise ValueError(f"cannot use {part!r} in a Message-ID")
        added.append(f"Message-ID: <{unique}@{hostname}>\r\n".encode())
    return b"".join(added) + message if added else message


# --- the header section ----------------------------------------------------------------------


def header_section(message: bytes) -> bytes:
    """The header section with the CRLF of its last line, without the empty line that ends
    it (RFC 5322 §2.1). A message without an empty line is all header section."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _lines(section: bytes) -> list[bytes]:
    lines = section.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _field_names(section: bytes) -> list[bytes]:
    """The names of the fields, leniently: lines that are not a field are skipped."""
    names = []
    for line in _lines(section):
        match = _FIELD.match(line)
        if match is not None:
            names.append(match.group(1))
    return names


def _from_values(message: bytes) -> list[str] | None:
    """The unfolded values of the From: fields, decoded as UTF-8 (RFC 6532 §3.2).

    None if a line is neither a field nor a continuation of one (RFC 5322 §2.2), holds a
    bare CR or LF, or a From: field is not UTF-8 or too long: readers disagree on such
    input, so no answer is given.
    """
    values: list[str] = []
    in_from = False
    raw: list[bytes] = []
    for line in [*_lines(header_section(message)), b""]:
        if b"\r" in line or b"\n" in line:  # a line break to some readers (RFC 5322 §2.3)
            return None
        if line[:1] in (b" ", b"\t") and raw:  # RFC 5322 §2.2.3: a folded continuation
            if in_from:
                raw.append(line)
            continue
        if in_from:
            value = _decode_value(b"\r\n".join(raw))
            if value is None:
                return None
            values.append(value)
        if line == b"":  # the sentinel after the last line
            break
        match = _FIELD.match(line)
        if match is None:
            return None
        in_from = match.group(1).lower() == b"from"
        raw = [line[match.end() :]]
    return values


def _decode_value(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    value = _FOLD.sub("", text).strip(" \t")
    return value if len(value) <= MAX_FROM_LENGTH else None


def _parse_from(value: str) -> _Mailboxes | None:
    """The mailboxes of one From: value (RFC 5322 §3.4); None if unparseable or ambiguous."""
    try:
        header = email.policy.SMTPUTF8.header_factory("from", value)
        defects = list(header.defects)
        groups = list(header.groups)
    except Exception:  # the parser is lenient but not total: RecursionError, IndexError...
        return None
    if any(not isinstance(d, _HARMLESS_DEFECTS) for d in defects):
        return None
    addresses: list[str] = []
    for group in groups:
        for mailbox in group.addresses:
            if not mailbox.username or not mailbox.domain:
                return None
            addresses.append(mailbox.addr_spec)
    has_group = any(group.display_name is not None for group in groups)
    return _Mailboxes(tuple(addresses), has_group)
