"""The Authentication-Results header field (RFC 8601): building ours, removing forged ones.

``authentication_results`` renders the SPF, DKIM, DMARC and iprev results of one message as
one folded, CRLF-terminated header field to prepend; every value that comes from the
message or the network is quoted or escaped, so no input can end the field or add another.
``remove_ours`` deletes the fields that claim our authserv-id (RFC 8601 §5) and leaves every
other byte of the message alone. ``split_header`` is the header-section splitter both use
(and dmarc.py for the From field).

The results are taken through small Protocols (the fields used of spf.SpfResult,
dkim.DkimResult and dmarc.DmarcResult) so that this module imports none of them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from postbote.dns import to_ascii

FIELD_NAME = b"authentication-results"
MAX_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
MAX_COMMENT = 200  # our own bound on reason text, so that no line nears 998 octets
MAX_VALUE = 255  # longer than any domain name (RFC 1035 §2.3.4) or SMTP path

# RFC 8601 §2.7: the results defined for each method.
RESULTS = {
    "iprev": frozenset({"pass", "fail", "temperror", "permerror"}),
    "spf": frozenset(
        {"none", "neutral", "pass", "fail", "softfail", "temperror", "permerror", "policy"}
    ),
    "dkim": frozenset({"none", "pass", "fail", "policy", "neutral", "temperror", "permerror"}),
    "dmarc": frozenset({"none", "pass", "fail", "temperror", "permerror"}),
}


class SpfLike(Protocol):
    """What we show of an SPF result (spf.SpfResult)."""

    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def scope(self) -> str: ...  # "mailfrom" | "helo"
    @property
    def problem(self) -> str | None: ...


class DkimLike(Protocol):
    """What we show of one DKIM signature's result (dkim.DkimResult)."""

    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def identity(self) -> str: ...
    @property
    def header_b(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


class DmarcLike(Protocol):
    """What we show of a DMARC result (dmarc.DmarcResult)."""

    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def disposition(self) -> str: ...
    @property
    def reason(self) -> str | None: ...


class IprevLike(Protocol):
    """What we show of a reverse-DNS check (RFC 8601 §3: iprev)."""

    @property
    def result(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def name(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IprevResult:
    """An iprev result: ``address`` is the client's IP, ``name`` the verified PTR name."""

    result: str  # "pass" | "fail" | "temperror" | "permerror"
    address: str
    name: str | None = None


# --- building ---------------------------------------------------------------------------------


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfLike | None = None,
    dkim: Sequence[DkimLike] | None = None,
    dmarc: DmarcLike | None = None,
    iprev: IprevLike | None = None,
) -> bytes:
    """One ``Authentication-Results:`` field (RFC 8601 §2.2), CRLF-terminated, to prepend.

    A check given as None was not run and is left out; ``dkim=[]`` (checked, no signature)
    gives ``dkim=none``. With nothing at all the field says ``none`` (§2.2 no-result).
    Reasons become comments. Raises ValueError for a result the RFC does not define for
    the method (a bug in the caller, never a property of the message).
    """
    groups: list[list[str]] = []
    if iprev is not None:
        groups.append(
            [
                _method("iprev", iprev.result),
                *_comments(iprev.name),
                *_prop("policy.iprev", iprev.address),
            ]
        )
    if spf is not None:
        ptype = "smtp.helo" if spf.scope == "helo" else "smtp.mailfrom"  # RFC 7208 §9.1
        groups.append(
            [_method("spf", spf.result), *_comments(spf.problem), *_prop(ptype, spf.domain)]
        )
    if dkim is not None:
        groups.extend(_dkim(sig) for sig in dkim)
        if not dkim:
            groups.append([_method("dkim", "none")])
    if dmarc is not None:
        groups.append(_dmarc(dmarc))
    return _fold(_value(_ascii(authserv_id)), groups)


def _dkim(sig: DkimLike) -> list[str]:
    # RFC 8601 §2.7.1 header.d/header.i; RFC 6008 §4 header.b; RFC 8601 §2.7.1 header.a/header.s
    return [
        _method("dkim", sig.result),
        *_comments(sig.reason),
        *_prop("header.d", sig.domain),
        *_prop("header.i", sig.identity),
        *_prop("header.s", sig.selector),
        *_prop("header.a", sig.algorithm),
        *_prop("header.b", sig.header_b),
    ]


def _dmarc(result: DmarcLike) -> list[str]:
    units = [_method("dmarc", result.result)]
    if result.result in ("pass", "fail"):
        units += _comments(f"p={result.policy} dis={result.disposition}")
    return [*units, *_comments(result.reason), *_prop("header.from", result.domain)]


def _method(method: str, result: str) -> str:
    """RFC 8601 §2.2 methodspec."""
    word = result.lower()
    if word not in RESULTS[method]:
        raise ValueError(f"{result!r} is not an RFC 8601 result for {method}")
    return f"{method}={word}"


def _prop(name: str, value: str | None) -> list[str]:
    """RFC 8601 §2.2 propspec, or nothing for an empty value."""
    return [f"{name}={_pvalue(value)}"] if value else []


# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 5322 §3.4.1 dot-atom local-part; RFC 6376 §3.5 domain-name (RFC 8601 §2.2 pvalue)
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
_ADDRESS = re.compile(rf"(?:{_LOCAL})?@{_DOMAIN}")


def _pvalue(text: str) -> str:
    """RFC 8601 §2.2 pvalue: ``[local-part] "@" domain-name``, a token, or a quoted-string.
    U-labels become A-labels; anything else is quoted (ASCII only, CTLs removed)."""
    text = text[:MAX_VALUE]
    local, at, domain = text.rpartition("@")
    candidate = f"{local}{at}{_ascii(domain)}"
    if _ADDRESS.fullmatch(candidate) or _TOKEN.fullmatch(candidate):
        return candidate
    return _value(text)


def _ascii(domain: str) -> str:
    """A domain with A-labels (RFC 5890), or as it is when IDNA rejects it."""
    try:
        return to_ascii(domain)
    except UnicodeError:
        return domain


def _value(text: str) -> str:
    """RFC 2045 value: a token as it is, anything else as a quoted-string (RFC 5322 §3.2.4)."""
    if _TOKEN.fullmatch(text):
        return text
    clean = _printable(text[:MAX_VALUE])
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comments(text: str | None) -> list[str]:
    """A comment (RFC 5322 §3.2.2) as words, so that it may fold between them."""
    if not text:
        return []
    clean = _printable(text[:MAX_COMMENT])
    words = re.sub(r"([()\\])", r"\\\1", clean).split()
    if not words:
        return []
    words[0] = "(" + words[0]
    words[-1] += ")"
    return words


def _printable(text: str) -> str:
    """Printable ASCII and spaces only: CR, LF and every other CTL or non-ASCII character
    become a space or "?", so no input can end the field (header injection)."""
    return "".join(c if " " <= c <= "~" else (" " if c.isspace() or c < " " else "?") for c in text)


def _fold(authserv_id: str, groups: list[list[str]]) -> bytes:
    """``Authentication-Results: id;`` and each result on its own line, longer lines
    folded between words (RFC 5322 §2.2.3); CRLF-terminated. Line lengths count a tab as
    one character, as RFC 5322 §2.1.1 does."""
    head = f"Authentication-Results: {authserv_id};"
    if not groups:
        return f"{head} none\r\n".encode("ascii")  # RFC 8601 §2.2 no-result
    lines = [head]
    for index, units in enumerate(groups):
        if index < len(groups) - 1:
            units = [*units[:-1], units[-1] + ";"]
        line = "\t" + units[0]
        for unit in units[1:]:
            if len(line) + 1 + len(unit) > MAX_LINE:
                lines.append(line)
                line = "\t  " + unit  # deeper, to tell folds from results
            else:
                line += " " + unit
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# --- removing -------------------------------------------------------------------------------


def split_header(message: bytes) -> tuple[list[bytes], int]:
    """The header fields of ``message``, each with its continuation lines and line
    endings (CRLF, or bare LF), and the offset where the header section ends: the empty
    line (RFC 5322 §2.1), or the end of a message without one. Joining the fields gives
    ``message[:offset]`` byte for byte. A line that is neither a field nor a continuation
    is kept as a field of its own."""
    starts: list[int] = []
    offset = 0
    size = len(message)
    while offset < size:
        first = message[offset : offset + 2]
        if first == b"\r\n" or first[:1] == b"\n":
            break
        if not starts or first[:1] not in (b" ", b"\t"):  # RFC 5322 §2.2.3 folding
            starts.append(offset)
        end = message.find(b"\n", offset)
        offset = size if end < 0 else end + 1
    bounds = [*starts, offset]
    return [message[a:b] for a, b in itertools.pairwise(bounds)], offset


def field_name(field: bytes) -> bytes:
    """The lowercased name of a raw field, or b"" for a line without a colon
    (RFC 5322 §3.6.8; §4.5: the obsolete syntax allows WSP before the colon)."""
    name, colon, _ = field.partition(b":")
    return name.rstrip(b" \t").lower() if colon else b""


def remove_ours(message: bytes, authserv_id: str) -> bytes:
    """``message`` without the Authentication-Results fields whose authserv-id is ours
    (RFC 8601 §5: a field claiming to be ours that we did not add is forged), anywhere in
    the header section; everything else, the body included, stays byte for byte.

    The id is compared case-insensitively (RFC 8601 §2.5: a domain name), ignoring a final
    dot, quoting and IDNA form, after any comments and folding. A field so malformed that
    no id can be read is removed when our id appears before its first ";"."""
    ours = _normal_id(authserv_id)
    fields, end = split_header(message)
    kept = [f for f in fields if field_name(f) != FIELD_NAME or not _claims(f, ours)]
    if len(kept) == len(fields):
        return message
    return b"".join(kept) + message[end:]


def _claims(field: bytes, ours: str) -> bool:
    value = field.partition(b":")[2].decode("utf-8", "replace")
    value = value.replace("\r", "").replace("\n", "")
    found = _authserv_id(value)
    if found is not None:
        return _normal_id(found) == ours
    before = value.split(";", 1)[0].lower()
    return re.search(rf"(?<![\w.-]){re.escape(ours)}\.?(?![\w.-])", before) is not None


def _normal_id(text: str) -> str:
    return _ascii(text.strip().lower().removesuffix("."))


_SPECIALS = set('()<>@,;:\\"/[]?= \t')


def _authserv_id(value: str) -> str | None:
    """The authserv-id at the start of a field value (RFC 8601 §2.2: [CFWS] value), with
    comments skipped and a quoted-string unquoted; None when there is none."""
    i = _skip_cfws(value, 0)
    if i is None or i >= len(value):
        return None
    if value[i] == '"':
        out = []
        i += 1
        while i < len(value):
            c = value[i]
            if c == "\\" and i + 1 < len(value):
                out.append(value[i + 1])
                i += 2
                continue
            if c == '"':
                return "".join(out)
            out.append(c)
            i += 1
        return None
    start = i
    while i < len(value) and value[i] not in _SPECIALS and value[i] >= " ":
        i += 1
    return value[start:i] or None


def _skip_cfws(text: str, i: int) -> int | None:
    """The index after any whitespace and (nested) comments from ``i``; None when a
    comment is not closed."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth and c not in " \t":
            return i
        i += 1
    return None if depth else i
