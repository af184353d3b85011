"""The SMTP path and parameter grammar (RFC 5321 §4.1.2-§4.1.3, RFC 6531 §3.3), sans-IO.

This module owns turning the text after ``MAIL``/``RCPT``/``EHLO`` into an :class:`Address`
and typed ESMTP parameters (SIZE, BODY, SMTPUTF8, DSN, AUTH), or a :class:`GrammarError`
carrying the reply to send. Every function is pure. The common ``<simple@dot.domain>`` form is
recognised by one compiled regex; anything else goes through the full grammar.

Leniency, on purpose: a space after ``FROM:``/``TO:`` is accepted, ONE trailing dot on a
domain is stripped, and source routes are accepted and ignored (RFC 5321 Appendix C).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from postbote.smtp.replies import (
    C501_BAD_ADDRESS,
    C501_BAD_SENDER_ADDRESS,
    C501_SYNTAX_PARAMS,
    C553_NOT_ALLOWED_UTF8,
    Reply,
)

__all__ = [
    "C501_ADDRESS_TOO_LONG",
    "C501_BAD_PARAM_VALUE",
    "C501_DUPLICATE_PARAM",
    "C501_HELO_SYNTAX",
    "C501_SENDER_TOO_LONG",
    "C504_BINARYMIME",
    "C555_UNSUPPORTED_PARAM",
    "Address",
    "GrammarError",
    "MailParams",
    "RcptParams",
    "address_literal_ip",
    "normalize_domain",
    "parse_helo_name",
    "parse_mail_from",
    "parse_mailbox",
    "parse_rcpt_to",
    "xtext_decode",
    "xtext_encode",
]

# RFC 5321 §4.2.3: 555 "MAIL FROM/RCPT TO parameters not recognized or not implemented".
C555_UNSUPPORTED_PARAM = Reply.make(555, "5.5.4", "Unsupported parameter")
C501_DUPLICATE_PARAM = Reply.make(501, "5.5.4", "Duplicate parameter")
C501_BAD_PARAM_VALUE = Reply.make(501, "5.5.4", "Bad parameter value")
C501_ADDRESS_TOO_LONG = Reply.make(501, "5.1.3", "Address too long")
C501_SENDER_TOO_LONG = Reply.make(501, "5.1.7", "Sender address too long")
C501_HELO_SYNTAX = Reply.make(501, "5.5.4", "Syntax: EHLO hostname")
C504_BINARYMIME = Reply.make(504, "5.5.4", "BINARYMIME not supported")

# RFC 5321 §4.5.3.1.1-§4.5.3.1.3, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_PATH = 256
# RFC 3461 §4.4: ENVID at most 100 characters (encoded).
MAX_ENVID = 100


class GrammarError(ValueError):
    """Bad syntax or a refused parameter; ``.reply`` is the Reply to send."""

    reply: Reply

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# ---------------------------------------------------------------------------------------------
# Character classes (contents of [...]), named after the ABNF rules.

# RFC 5322 §3.2.3: atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
#                          "-" / "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~"
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
# RFC 6531 §3.3: UTF8-non-ascii (any non-ASCII scalar value; surrogates are not UTF-8, and
# are what a surrogateescape decode leaves for invalid octets).
_U = "\u0080-\ud7ff\ue000-\U0010ffff"
# RFC 5321 §4.1.2: qtextSMTP = %d32-33 / %d35-91 / %d93-126   (RFC 6531: =/ UTF8-non-ascii)
_QTEXT = r"\x20\x21\x23-\x5b\x5d-\x7e" + _U
# RFC 5321 §4.1.2: dcontent = %d33-90 / %d94-126
_DCONTENT = r"\x21-\x5a\x5e-\x7e"

# RFC 5321 §4.1.2: Dot-string = Atom *("." Atom); Atom = 1*atext
_DOT_STRING_A = rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*"
_DOT_STRING_U = rf"[{_ATEXT}{_U}]+(?:\.[{_ATEXT}{_U}]+)*"
# RFC 5321 §4.1.2: Quoted-string = DQUOTE *QcontentSMTP DQUOTE
#                  QcontentSMTP = qtextSMTP / quoted-pairSMTP
#                  quoted-pairSMTP = %d92 %d32-126
_QUOTED = rf'"(?:[{_QTEXT}]|\\[\x20-\x7e])*"'
# RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str]; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig
_LABEL_A = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
# RFC 6531 §3.3: sub-domain =/ U-label. Lengths are checked after matching.
_LABEL_U = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9\-{_U}]*[A-Za-z0-9{_U}])?"
# RFC 5321 §4.1.2: Domain = sub-domain *("." sub-domain); plus one lenient trailing dot.
_DOMAIN_A = rf"{_LABEL_A}(?:\.{_LABEL_A})*\.?"
_DOMAIN_U = rf"{_LABEL_U}(?:\.{_LABEL_U})*\.?"
# RFC 5321 §4.1.3: address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
#                  General-address-literal ) "]"   (the inside is validated after matching)
_LITERAL = rf"\[[{_DCONTENT}]+\]"
# RFC 5321 §4.1.2: A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain
_ADL = rf"@{_DOMAIN_U}(?:,@{_DOMAIN_U})*"

# RFC 5321 §4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">"; Mailbox = Local-part "@" ( Domain /
#                  address-literal )
_PATH_RE = re.compile(
    rf"<(?:{_ADL}:)?(?P<local>{_DOT_STRING_U}|{_QUOTED})@(?P<domain>{_DOMAIN_U}|{_LITERAL})>"
)
_DOT_STRING_U_RE = re.compile(_DOT_STRING_U)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)

# Fast paths: the whole argument in one match for <simple@dot.domain> [params].
_FAST_MAIL_RE = re.compile(
    rf" *[Ff][Rr][Oo][Mm]: *<({_DOT_STRING_A})@({_DOMAIN_A})>(?: +(.*))?", re.DOTALL
)
_FAST_RCPT_RE = re.compile(rf" *[Tt][Oo]: *<({_DOT_STRING_A})@({_DOMAIN_A})>(?: +(.*))?", re.DOTALL)
_FROM_RE = re.compile(r" *[Ff][Rr][Oo][Mm]: *")
_TO_RE = re.compile(r" *[Tt][Oo]: *")
_NULL_PATH = "<>"
# RFC 5321 §4.1.1.3: "<Postmaster>" (case-insensitive) without a domain.
_POSTMASTER_RE = re.compile(r"<[Pp][Oo][Ss][Tt][Mm][Aa][Ss][Tt][Ee][Rr]>")

# RFC 5321 §4.1.3: IPv4-address-literal = Snum 3("."  Snum); Snum = 1*3DIGIT
_IPV4_LITERAL_RE = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
# RFC 5321 §4.1.3: Standardized-tag = Ldh-str
_LDH_STR_RE = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]")

# RFC 5321 §4.1.2: esmtp-param = esmtp-keyword ["=" esmtp-value]
#   esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#   esmtp-value = 1*(%d33-60 / %d62-126)   (RFC 6531 §3.3: =/ UTF8-non-ascii)
_PARAM_RE = re.compile(rf"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e{_U}]+))?")
# RFC 1870 §3: size-value = 1*20DIGIT
_SIZE_RE = re.compile(r"[0-9]{1,20}")
# RFC 5322 §3.2.3: atom (used by RFC 3461 §4.2 addr-type)
_ATOM_RE = re.compile(rf"[{_ATEXT}]+")

# RFC 3461 §4: xtext = *( xchar / hexchar ); xchar = %d33-42 / %d44-60 / %d62-126;
#   hexchar = "+" 2(%x30-39 / %x41-46)
_XCHAR = r"\x21-\x2a\x2c-\x3c\x3e-\x7e"
_XTEXT_RE = re.compile(rf"(?:[{_XCHAR}]|\+[0-9A-F]{{2}})*")
# RFC 6533 §3 utf-8-addr-unitext: xtext plus raw UTF-8 (ORCPT under SMTPUTF8).
_XTEXT_U_RE = re.compile(rf"(?:[{_XCHAR}{_U}]|\+[0-9A-F]{{2}})*")
_XCHAR_ONLY_RE = re.compile(rf"[{_XCHAR}]*")
_HEXCHAR_RE = re.compile(rb"\+([0-9A-F]{2})")
# RFC 3461 §4.2, §4.4: decoded ORCPT/ENVID are printable; no controls reach DSN headers.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# EHLO/HELO: one token, printable ASCII or UTF-8, no spaces or controls (lenient like Postfix).
_HELO_RE = re.compile(rf"[\x21-\x7e{_U}]+")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox from a path: unquoted local part and domain, both case preserved.

    ``domain`` has no trailing dot; an address literal keeps its brackets; ``""`` only for the
    bare ``<Postmaster>`` recipient (RFC 5321 §4.1.1.3).
    """

    local: str
    domain: str

    def __str__(self) -> str:
        # RFC 5321 §4.1.2: re-quote the local part only when it is not a Dot-string.
        local = self.local
        if _DOT_STRING_U_RE.fullmatch(local) is None:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if not self.domain:
            return local
        return f"{local}@{self.domain}"

    @property
    def is_utf8(self) -> bool:
        """True if the local part or domain holds non-ASCII (needs SMTPUTF8, RFC 6531)."""
        return not (self.local.isascii() and self.domain.isascii())

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    def key(self) -> str:
        """Lookup key: both parts lower-cased (the domain has no trailing dot)."""
        return f"{self.local.lower()}@{self.domain.lower()}"


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM, validated and normalised (keywords upper-case)."""

    size: int | None = None  # RFC 1870
    body: str | None = None  # "7BIT" | "8BITMIME" (RFC 6152)
    smtputf8: bool = False  # RFC 6531 §3.4
    ret: str | None = None  # "FULL" | "HDRS" (RFC 3461 §4.3)
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded
    auth: str | None = None  # RFC 4954 §5, xtext-decoded or "<>"; kept, not trusted


@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (RFC 3461 DSN)."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or subset of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # "addr-type;decoded-address"


_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()


# ---------------------------------------------------------------------------------------------
# Paths


def _octets(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _label_too_long(label: str) -> bool:
    if label.isascii():
        return len(label) > MAX_LABEL
    # A U-label's limit applies to its A-label (RFC 5890 §2.3.2.1).
    return len(label.lower().encode("punycode")) + 4 > MAX_LABEL


def _parse_literal(inner: str) -> IPv4Address | IPv6Address | None:
    """Validate the inside of an address literal; return its IP (None for a general one).

    Raises ValueError if it is not a valid literal.
    """
    tag, colon, rest = inner.partition(":")
    if not colon:
        # RFC 5321 §4.1.3: IPv4-address-literal; Snum = 1*3DIGIT representing 0-255.
        if _IPV4_LITERAL_RE.fullmatch(inner) is None:
            raise ValueError("bad IPv4 literal")
        return IPv4Address(".".join(str(int(part)) for part in inner.split(".")))
    if tag.lower() == "ipv6":
        # RFC 5321 §4.1.3: IPv6-address-literal = "IPv6:" IPv6-addr (no zone index).
        if "%" in rest:
            raise ValueError("zone index in IPv6 literal")
        return IPv6Address(rest)
    # RFC 5321 §4.1.3: General-address-literal = Standardized-tag ":" 1*dcontent
    if _LDH_STR_RE.fullmatch(tag) is None or not rest:
        raise ValueError("bad general address literal")
    return None


def address_literal_ip(domain: str) -> IPv4Address | IPv6Address | None:
    """The IP of an ``[IPv4]`` or ``[IPv6:...]`` domain, else None (for the relay check)."""
    if len(domain) < 3 or domain[0] != "[" or domain[-1] != "]":
        return None
    try:
        return _parse_literal(domain[1:-1])
    except ValueError:
        return None


def _parse_path(text: str, bad: Reply, too_long: Reply) -> tuple[Address, str]:
    """Parse a Path at the start of ``text``; return the Address and the text after it."""
    m = _PATH_RE.match(text)
    if m is None:
        raise GrammarError(bad)
    end = m.end()
    if end != len(text) and text[end] != " ":
        raise GrammarError(bad)
    local, domain = m.group("local", "domain")
    if domain[0] == "[":
        try:
            _parse_literal(domain[1:-1])
        except ValueError:
            raise GrammarError(bad) from None
    elif domain[-1] == ".":
        domain = domain[:-1]
    # RFC 5321 §4.5.3.1.1-§4.5.3.1.3: local part 64, domain 255, path 256 octets.
    if (
        _octets(local) > MAX_LOCAL_PART
        or _octets(domain) > MAX_DOMAIN
        or _octets(text[:end]) > MAX_PATH
        or (domain[0] != "[" and any(_label_too_long(lbl) for lbl in domain.split(".")))
    ):
        raise GrammarError(too_long)
    if local[0] == '"':
        local = _QUOTED_PAIR_RE.sub(r"\1", local[1:-1])
    return Address(local, domain), text[end:]


def _fast_lengths_ok(local: str, domain: str) -> bool:
    # ASCII only here, so characters are octets. Path = "<" local "@" domain ">".
    return (
        len(local) <= MAX_LOCAL_PART
        and len(domain) <= MAX_DOMAIN
        and len(local) + len(domain) + 3 <= MAX_PATH
    )


def parse_mailbox(text: str) -> Address:
    """Parse a bare ``local@domain`` (no brackets), e.g. ``str(Address)`` read back.

    UTF-8 is allowed; callers that need SMTPUTF8 check ``Address.is_utf8``.
    """
    address, rest = _parse_path(f"<{text}>", C501_BAD_ADDRESS, C501_ADDRESS_TOO_LONG)
    if rest:
        raise GrammarError(C501_BAD_ADDRESS)
    return address


# ---------------------------------------------------------------------------------------------
# Parameters


def _split_params(text: str, esmtp: bool, known: frozenset[str]) -> dict[str, str | None]:
    """Split ``esmtp-param *(SP esmtp-param)`` into {KEYWORD: value} (RFC 5321 §4.1.2)."""
    out: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue
        if not esmtp:
            # RFC 5321 §4.1.1.2: parameters only after EHLO.
            raise GrammarError(C555_UNSUPPORTED_PARAM)
        m = _PARAM_RE.fullmatch(token)
        if m is None:
            raise GrammarError(C501_SYNTAX_PARAMS)
        keyword = m[1].upper()
        if keyword in out:
            raise GrammarError(C501_DUPLICATE_PARAM)
        if keyword not in known:
            raise GrammarError(C555_UNSUPPORTED_PARAM)
        out[keyword] = m[2]
    return out


def _required(value: str | None) -> str:
    if value is None:
        raise GrammarError(C501_BAD_PARAM_VALUE)
    return value


def _upper_choice(value: str | None, choices: frozenset[str]) -> str:
    value = _required(value)
    upper = value.upper()
    if not value.isascii() or upper not in choices:
        raise GrammarError(C501_BAD_PARAM_VALUE)
    return upper


def _printable(decoded: str) -> str:
    if not decoded or _CONTROL_RE.search(decoded) is not None:
        raise GrammarError(C501_BAD_PARAM_VALUE)
    return decoded


_MAIL_KEYWORDS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})
_RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})
_BODY_VALUES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})
_RET_VALUES = frozenset({"FULL", "HDRS"})
_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
_NOTIFY_VALUES = frozenset({"NEVER", *_NOTIFY_ORDER})


def _mail_params(text: str, esmtp: bool) -> MailParams:
    raw = _split_params(text, esmtp, _MAIL_KEYWORDS)
    if not raw:
        return _NO_MAIL_PARAMS
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    if "SIZE" in raw:  # RFC 1870 §3: SIZE=1*20DIGIT
        value = _required(raw["SIZE"])
        if _SIZE_RE.fullmatch(value) is None:
            raise GrammarError(C501_BAD_PARAM_VALUE)
        size = int(value)
    if "BODY" in raw:  # RFC 6152 §2; RFC 3030 §3 BINARYMIME is not offered
        body = _upper_choice(raw["BODY"], _BODY_VALUES)
        if body == "BINARYMIME":
            raise GrammarError(C504_BINARYMIME)
    if "SMTPUTF8" in raw and raw["SMTPUTF8"] is not None:  # RFC 6531 §3.4: no value
        raise GrammarError(C501_BAD_PARAM_VALUE)
    if "RET" in raw:  # RFC 3461 §4.3: RET=FULL / RET=HDRS
        ret = _upper_choice(raw["RET"], _RET_VALUES)
    if "ENVID" in raw:  # RFC 3461 §4.4: ENVID=xtext, at most 100 characters
        value = _required(raw["ENVID"])
        if len(value) > MAX_ENVID:
            raise GrammarError(C501_BAD_PARAM_VALUE)
        envid = _printable(_xtext_decode(value, allow_utf8=False))
    if "AUTH" in raw:  # RFC 4954 §5: AUTH=xtext mailbox / "<>"
        value = _required(raw["AUTH"])
        auth = value if value == "<>" else _printable(_xtext_decode(value, allow_utf8=False))
    return MailParams(size, body, "SMTPUTF8" in raw, ret, envid, auth)


def _notify(value: str | None) -> tuple[str, ...]:
    # RFC 3461 §4.1: "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )
    value = _required(value)
    items = set(value.upper().split(","))
    if not value.isascii() or not items <= _NOTIFY_VALUES:
        raise GrammarError(C501_BAD_PARAM_VALUE)
    if "NEVER" in items:
        if len(items) != 1:
            raise GrammarError(C501_BAD_PARAM_VALUE)
        return ("NEVER",)
    return tuple(kw for kw in _NOTIFY_ORDER if kw in items)


def _orcpt(value: str | None, smtputf8: bool) -> str:
    # RFC 3461 §4.2: original-recipient-address = addr-type ";" xtext; addr-type = atom
    # RFC 6533 §3: under SMTPUTF8 the address may carry raw UTF-8 (utf-8-addr-unitext).
    addr_type, semicolon, encoded = _required(value).partition(";")
    if not semicolon or _ATOM_RE.fullmatch(addr_type) is None:
        raise GrammarError(C501_BAD_PARAM_VALUE)
    return f"{addr_type};{_printable(_xtext_decode(encoded, allow_utf8=smtputf8))}"


def _rcpt_params(text: str, esmtp: bool, smtputf8: bool) -> RcptParams:
    raw = _split_params(text, esmtp, _RCPT_KEYWORDS)
    if not raw:
        return _NO_RCPT_PARAMS
    notify = _notify(raw["NOTIFY"]) if "NOTIFY" in raw else None
    orcpt = _orcpt(raw["ORCPT"], smtputf8) if "ORCPT" in raw else None
    return RcptParams(notify, orcpt)


# ---------------------------------------------------------------------------------------------
# Commands


def parse_mail_from(arg: str, *, esmtp: bool) -> tuple[Address | None, MailParams]:
    """Parse the argument of MAIL (``FROM:<path> [params]``); None is the null path ``<>``.

    ``esmtp`` is False after HELO: then any parameter is refused with 555.
    """
    m = _FAST_MAIL_RE.fullmatch(arg)
    if m is not None and _fast_lengths_ok(m[1], m[2]):
        domain = m[2][:-1] if m[2][-1] == "." else m[2]
        params = _mail_params(m[3], esmtp) if m[3] else _NO_MAIL_PARAMS
        return Address(m[1], domain), params
    verb = _FROM_RE.match(arg)
    if verb is None:
        raise GrammarError(C501_SYNTAX_PARAMS)
    rest = arg[verb.end() :]
    address: Address | None
    if rest.startswith(_NULL_PATH) and (len(rest) == 2 or rest[2] == " "):
        address, rest = None, rest[2:]
    else:
        address, rest = _parse_path(rest, C501_BAD_SENDER_ADDRESS, C501_SENDER_TOO_LONG)
    params = _mail_params(rest, esmtp)
    # RFC 6531 §3.4: a non-ASCII reverse-path needs SMTPUTF8 on this very MAIL command.
    if address is not None and address.is_utf8 and not params.smtputf8:
        raise GrammarError(C553_NOT_ALLOWED_UTF8)
    return address, params


def parse_rcpt_to(arg: str, *, esmtp: bool, smtputf8: bool) -> tuple[Address, RcptParams]:
    """Parse the argument of RCPT (``TO:<path> [params]``).

    ``smtputf8`` says whether this transaction's MAIL carried SMTPUTF8 (RFC 6531 §3.4).
    """
    m = _FAST_RCPT_RE.fullmatch(arg)
    if m is not None and _fast_lengths_ok(m[1], m[2]):
        domain = m[2][:-1] if m[2][-1] == "." else m[2]
        params = _rcpt_params(m[3], esmtp, smtputf8) if m[3] else _NO_RCPT_PARAMS
        return Address(m[1], domain), params
    verb = _TO_RE.match(arg)
    if verb is None:
        raise GrammarError(C501_SYNTAX_PARAMS)
    rest = arg[verb.end() :]
    pm = _POSTMASTER_RE.match(rest)
    if pm is not None and (pm.end() == len(rest) or rest[pm.end()] == " "):
        # RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
        address, rest = Address("Postmaster", ""), rest[pm.end() :]
    else:
        # RFC 5321 §4.1.1.3: Forward-path has no null form; "<>" fails the Path grammar.
        address, rest = _parse_path(rest, C501_BAD_ADDRESS, C501_ADDRESS_TOO_LONG)
    params = _rcpt_params(rest, esmtp, smtputf8)
    if not smtputf8 and address.is_utf8:  # RFC 6531 §3.4
        raise GrammarError(C553_NOT_ALLOWED_UTF8)
    return address, params


def parse_helo_name(arg: str) -> str:
    """The EHLO/HELO argument (RFC 5321 §4.1.1.1), accepted leniently like Postfix.

    Any one token of printable ASCII or UTF-8 is accepted and returned as given.
    """
    name = arg.strip(" \t")
    if _HELO_RE.fullmatch(name) is None:
        raise GrammarError(C501_HELO_SYNTAX)
    return name


# ---------------------------------------------------------------------------------------------
# xtext and domains


def _xtext_decode(s: str, *, allow_utf8: bool) -> str:
    pattern = _XTEXT_U_RE if allow_utf8 else _XTEXT_RE
    if pattern.fullmatch(s) is None:
        raise GrammarError(C501_SYNTAX_PARAMS)
    if "+" not in s:
        return s
    raw = _HEXCHAR_RE.sub(lambda m: bytes((int(m[1], 16),)), s.encode("utf-8"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GrammarError(C501_SYNTAX_PARAMS) from None


def xtext_decode(s: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX``, upper-case hex; octets read as UTF-8)."""
    return _xtext_decode(s, allow_utf8=False)


def xtext_encode(s: str) -> str:
    """Encode text as RFC 3461 §4 xtext; non-ASCII goes out as ``+XX`` of its UTF-8 octets."""
    if _XCHAR_ONLY_RE.fullmatch(s) is not None:
        return s
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}"
        for b in s.encode("utf-8", "surrogateescape")
    )


def normalize_domain(domain: str) -> str:
    """Canonical form for comparing domains: lower-case, no trailing dot, A-labels.

    U-labels go through the stdlib ``idna`` codec (IDNA 2003); if it refuses, the lower-cased
    UTF-8 form is returned. Address literals are only lower-cased.
    """
    if domain.endswith("."):
        domain = domain[:-1]
    if domain.isascii() or domain.startswith("["):
        return domain.lower()
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain.lower()
