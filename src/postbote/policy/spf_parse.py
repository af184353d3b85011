"""SPF record syntax (RFC 7208 §4.5, §4.6, §7.1, §12): choosing the one "v=spf1" record
among a domain's TXT records, and parsing it into mechanisms, modifiers and macro
strings. Every syntax error anywhere in a record raises ``SpfSyntaxError`` (a permerror,
RFC 7208 §4.6), before any term is evaluated. Evaluation lives in spf.py, macro expansion
in spf_macro.py.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

# RFC 7208 §12: qualifier = "+" / "-" / "?" / "~", with the results of §4.6.2.
QUALIFIERS: Final = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}

# RFC 7208 §7.1: macro-letter; "c", "r" and "t" only in explanation text (§7.3).
MACRO_LETTERS: Final = frozenset("slodiphcrtv")
EXPLAIN_ONLY_LETTERS: Final = frozenset("crt")
# RFC 7208 §7.1: delimiter = "." / "-" / "+" / "," / "/" / "_" / "="
DELIMITERS: Final = frozenset(".-+,/_=")

_VERSION = b"v=spf1"

# RFC 7208 §12: modifier name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ), then "=".
_MODIFIER = re.compile(r"([a-z][a-z0-9_.\-]*)=(.*)", re.IGNORECASE | re.DOTALL)
# RFC 7208 §12: directive = [ qualifier ] mechanism; the mechanism name, then the rest.
_DIRECTIVE = re.compile(r"([+\-?~]?)([a-z][a-z0-9]*)(.*)", re.IGNORECASE | re.DOTALL)
# RFC 7208 §12: dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
_DUAL_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?", re.DOTALL)
_SINGLE_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?", re.DOTALL)
# RFC 7208 §12: ip4-network = qnum "." qnum "." qnum "." qnum (no leading zeros)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4_NETWORK = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}")
_IP6_CHARS = re.compile(r"[0-9a-f:.]+", re.IGNORECASE)
# RFC 7208 §7.1: toplabel = ( *alphanum ALPHA *alphanum ) /
#                           ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
TOPLABEL: Final = re.compile(
    r"[a-z0-9]*[a-z][a-z0-9]*|[a-z0-9]+-[a-z0-9\-]*[a-z0-9]", re.IGNORECASE
)
# RFC 7208 §7.1: domain-end = ( "." toplabel [ "." ] ) / macro-expand
_DOMAIN_END = re.compile(r".*\.([^.]+)\.?", re.DOTALL)


class SpfSyntaxError(ValueError):
    """The record (or an explanation string) breaks the RFC 7208 §12 grammar."""


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{...}`` macro-expand (RFC 7208 §7.1)."""

    letter: str  # lowercase macro-letter
    digits: int | None  # keep this many right-hand parts; None for all
    reverse: bool  # the "r" transformer
    delimiters: str  # split on these; "" means "." (RFC 7208 §7.3)
    escape: bool  # an uppercase letter: URL-escape the value (RFC 7208 §7.3)


# A macro-string as literal text and macros, "%%", "%_" and "%-" already turned into text.
MacroString = tuple[str | Macro, ...]


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One directive (RFC 7208 §4.6.2, §5)."""

    qualifier: str  # "+", "-", "~" or "?"
    kind: str  # "all" "include" "a" "mx" "ptr" "ip4" "ip6" "exists"
    domain: MacroString | None = None  # domain-spec; None: the current <domain>
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # ip4/ip6
    cidr4: int = 32  # a/mx: ip4-cidr-length
    cidr6: int = 128  # a/mx: ip6-cidr-length

    @property
    def result(self) -> str:
        return QUALIFIERS[self.qualifier]


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed SPF record: its mechanisms in order and the two known modifiers."""

    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None = None
    explanation: MacroString | None = None


def select_record(txts: list[bytes]) -> str | None:
    """The SPF record among a domain's TXT records, or None when there is none.

    RFC 7208 §4.5: records that begin with "v=spf1" (case-insensitive) followed by a space
    or their end are SPF records; other TXT records are ignored, whatever they contain.
    More than one SPF record is a permerror; so is an SPF record that is not 7-bit ASCII
    (RFC 7208 §3.1).
    """
    found = [
        txt
        for txt in txts
        if txt[: len(_VERSION)].lower() == _VERSION and txt[len(_VERSION) :][:1] in (b"", b" ")
    ]
    if not found:
        return None
    if len(found) > 1:
        raise SpfSyntaxError(f"{len(found)} SPF records")
    try:
        return found[0].decode("ascii")
    except UnicodeDecodeError:
        raise SpfSyntaxError("SPF record is not ASCII") from None


def parse_record(text: str) -> Record:
    """Parse a record chosen by ``select_record`` (RFC 7208 §4.6, §12)."""
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, MacroString] = {}
    # RFC 7208 §4.6.1: terms are separated by one or more spaces; trailing spaces allowed.
    for term in text[len(_VERSION) :].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            mechanisms.append(_parse_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name in ("redirect", "exp"):
            # RFC 7208 §6: each of these at most once.
            if name in modifiers:
                raise SpfSyntaxError(f"{name}= appears twice")
            modifiers[name] = parse_domain_spec(value)
        else:
            # RFC 7208 §6: unknown modifiers are ignored, but must be valid (§12).
            parse_macro_string(value, explain=True)
    return Record(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"))


def _parse_mechanism(term: str) -> Mechanism:
    match = _DIRECTIVE.fullmatch(term)
    if match is None:
        raise SpfSyntaxError(f"invalid term {term!r}")
    qualifier, kind, rest = match.group(1) or "+", match.group(2).lower(), match.group(3)
    if kind == "all":  # RFC 7208 §5.1: all = "all"
        if rest:
            raise SpfSyntaxError(f"invalid term {term!r}")
        return Mechanism(qualifier, kind)
    if kind in ("include", "exists"):  # RFC 7208 §5.2, §5.7: ":" domain-spec
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{kind} needs a domain: {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]))
    if kind == "ptr":  # RFC 7208 §5.5: "ptr" [ ":" domain-spec ]
        if not rest:
            return Mechanism(qualifier, kind)
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"invalid term {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]))
    if kind in ("a", "mx"):  # RFC 7208 §5.3, §5.4: [ ":" domain-spec ] [ dual-cidr-length ]
        return _parse_a_mx(qualifier, kind, rest, term)
    if kind in ("ip4", "ip6"):  # RFC 7208 §5.6
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{kind} needs a network: {term!r}")
        return Mechanism(qualifier, kind, network=_parse_network(kind, rest[1:]))
    raise SpfSyntaxError(f"unknown mechanism {term!r}")


def _parse_a_mx(qualifier: str, kind: str, rest: str, term: str) -> Mechanism:
    match = _DUAL_CIDR.fullmatch(rest)
    assert match is not None  # every group is optional
    spec, cidr4, cidr6 = match.groups()
    domain: MacroString | None = None
    if spec.startswith(":"):
        domain = parse_domain_spec(spec[1:])
    elif spec:
        raise SpfSyntaxError(f"invalid term {term!r}")
    return Mechanism(
        qualifier,
        kind,
        domain,
        cidr4=32 if cidr4 is None else _cidr(cidr4, 32),
        cidr6=128 if cidr6 is None else _cidr(cidr6, 128),
    )


def _parse_network(kind: str, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    match = _SINGLE_CIDR.fullmatch(text)
    assert match is not None
    address, length = match.groups()
    if kind == "ip4":
        if not _IP4_NETWORK.fullmatch(address):
            raise SpfSyntaxError(f"invalid ip4-network {address!r}")
        prefix = 32 if length is None else _cidr(length, 32)
        return ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
    # RFC 7208 §5.6: ip6-network as in RFC 4291 §2.2 (no zone index).
    if not _IP6_CHARS.fullmatch(address):
        raise SpfSyntaxError(f"invalid ip6-network {address!r}")
    try:
        ip6 = ipaddress.IPv6Address(address)
    except ValueError:
        raise SpfSyntaxError(f"invalid ip6-network {address!r}") from None
    prefix = 128 if length is None else _cidr(length, 128)
    return ipaddress.IPv6Network(f"{ip6}/{prefix}", strict=False)


def _cidr(text: str, maximum: int) -> int:
    """RFC 7208 §12: ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT), at most 32;
    ip6-cidr-length likewise up to 128. Leading zeros are invalid (§5.6)."""
    if (len(text) > 1 and text.startswith("0")) or int(text) > maximum:
        raise SpfSyntaxError(f"invalid CIDR length /{text}")
    return int(text)


def parse_domain_spec(text: str) -> MacroString:
    """RFC 7208 §7.1: domain-spec = macro-string domain-end; no "c", "r", "t" macros."""
    tokens, ends_with_macro = _scan(text, explain=False)
    if not ends_with_macro:
        end = _DOMAIN_END.fullmatch(tokens[-1]) if tokens and isinstance(tokens[-1], str) else None
        if end is None or not TOPLABEL.fullmatch(end.group(1)):
            raise SpfSyntaxError(f"invalid domain-spec {text!r}")
    return tokens


def parse_macro_string(text: str, *, explain: bool) -> MacroString:
    """A macro-string (RFC 7208 §7.1); with ``explain``, an explain-string (§6.2), in
    which spaces and the "c", "r" and "t" macros are allowed."""
    tokens, _ = _scan(text, explain=explain)
    return tokens


def _scan(text: str, *, explain: bool) -> tuple[MacroString, bool]:
    """Tokens of a macro-string, and whether it ends with a macro-expand."""
    tokens: list[str | Macro] = []
    literal: list[str] = []
    ends_with_macro = False
    i = 0
    while i < len(text):
        char = text[i]
        ends_with_macro = char == "%"
        if char != "%":
            # RFC 7208 §7.1: macro-literal = %x21-24 / %x26-7E; explain-string adds SP.
            if not ("\x21" <= char <= "\x7e" or (explain and char == " ")):
                raise SpfSyntaxError(f"invalid character {char!r} in {text!r}")
            literal.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        escapes = {"%": "%", "_": " ", "-": "%20"}  # RFC 7208 §7.1: "%%" / "%_" / "%-"
        if following in escapes:
            literal.append(escapes[following])
            i += 2
            continue
        if following != "{":
            raise SpfSyntaxError(f"'%' not followed by '{{', '%', '_' or '-' in {text!r}")
        close = text.find("}", i)
        if close < 0:
            raise SpfSyntaxError(f"unterminated macro in {text!r}")
        if literal:
            tokens.append("".join(literal))
            literal.clear()
        tokens.append(_parse_macro(text[i + 2 : close], explain=explain))
        i = close + 1
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens), ends_with_macro


def _parse_macro(body: str, *, explain: bool) -> Macro:
    """RFC 7208 §7.1: macro-letter transformers *delimiter, transformers = *DIGIT [ "r" ]."""
    match = re.fullmatch(r"([a-z])([0-9]*)(r?)(.*)", body, re.IGNORECASE | re.DOTALL)
    if match is None:
        raise SpfSyntaxError(f"invalid macro %{{{body}}}")
    letter, digits, reverse, delimiters = match.groups()
    lower = letter.lower()
    if lower not in MACRO_LETTERS or (lower in EXPLAIN_ONLY_LETTERS and not explain):
        raise SpfSyntaxError(f"macro letter {letter!r} not allowed here")
    if not set(delimiters) <= DELIMITERS:
        raise SpfSyntaxError(f"invalid macro delimiters {delimiters!r}")
    if digits and int(digits) == 0:  # RFC 7208 §7.3: the DIGIT value MUST be nonzero
        raise SpfSyntaxError(f"macro %{{{body}}} keeps zero parts")
    return Macro(
        letter=lower,
        digits=int(digits) if digits else None,
        reverse=bool(reverse),
        delimiters=delimiters,
        escape=letter.isupper(),
    )
