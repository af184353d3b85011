"""DMARC (RFC 7489): the From domain, policy records, alignment and the verdict.

It owns finding the RFC5322.From domain of a message (§6.6.1), the Organizational Domain
(§3.2, from the bundled public suffix list; no network), parsing and discovering policy
records (§6.3, §6.4, §6.6.3), identifier alignment (§3.1) and the evaluation of SPF and DKIM
results against the policy, pct sampling included (§6.6.2, §6.6.4). It takes SPF and DKIM
results as plain values and imports neither checker; DNS goes through the ``Resolver``.
"""

from __future__ import annotations

import enum
import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

from postbote.dns import DnsNotFound, DnsTemporaryError, Resolver, to_ascii
from postbote.policy.authresults import field_name, split_header

POLICIES = ("none", "quarantine", "reject")
# RFC 7489 §6.3 pct: messages not sampled get "the next less strict policy".
WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


# --- domains ----------------------------------------------------------------------------------


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package: no download


def normal_domain(domain: str) -> str:
    """Lowercase A-labels without a final dot. ValueError for a name IDNA rejects."""
    try:
        return to_ascii(domain.strip().rstrip(".")).lower()
    except UnicodeError as exc:
        raise ValueError(f"invalid domain name {domain!r}") from exc


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix of ``domain`` plus one label ("a.b.example.co.uk"
    gives "example.co.uk"); a public suffix itself stays as it is. An unknown TLD counts
    as a public suffix, and the list's private section (e.g. github.io) is used.
    ValueError for a name IDNA rejects."""
    name = normal_domain(domain)
    return _public_suffixes().privatesuffix(name) or name


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict ("s") alignment is equality of the two domains, relaxed ("r")
    equality of their Organizational Domains (§3.1.1 DKIM, §3.1.2 SPF)."""
    try:
        first, second = normal_domain(a), normal_domain(b)
    except ValueError:
        return False
    if not first or not second:
        return False
    if mode == "s":
        return first == second
    return organizational_domain(first) == organizational_domain(second)


# --- the RFC5322.From domain (§6.6.1) -----------------------------------------------------


class FromUnusable(enum.Enum):
    """Why a message has no single From domain to evaluate (RFC 7489 §6.6.1)."""

    NO_FIELD = "no From header field"
    MULTIPLE_FIELDS = "more than one From header field"
    NO_ADDRESS = "no address in From"
    MULTIPLE_ADDRESSES = "more than one address in From"
    INVALID = "From is not a valid address"


def from_domain(message: bytes) -> str | FromUnusable:
    """The domain of the one address in the one From field (RFC 7489 §6.6.1), as lowercase
    A-labels; else why not. Group syntax (RFC 6854) counts the mailboxes of the group;
    an address literal, an encoded-word or anything else that is not a DNS domain, or a
    syntax error anywhere in the field, is INVALID (a mail client might display another
    address than the one we would check)."""
    fields = [f for f in split_header(message)[0] if field_name(f) == b"from"]
    if not fields:
        return FromUnusable.NO_FIELD
    if len(fields) > 1:
        return FromUnusable.MULTIPLE_FIELDS
    value = fields[0].partition(b":")[2]
    # RFC 5322 §2.2.3 unfolding; RFC 6532 §3.2: UTF-8 in header fields.
    text = value.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "replace")
    try:
        domains = _AddressList(_tokens(text)).domains()
    except _SyntaxError:
        return FromUnusable.INVALID
    if not domains:
        return FromUnusable.NO_ADDRESS
    if len(domains) > 1:
        return FromUnusable.MULTIPLE_ADDRESSES
    return _dns_domain(domains[0]) or FromUnusable.INVALID


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _dns_domain(domain: str) -> str | None:
    """``domain`` as lowercase A-labels if it is a host name (RFC 1123 §2.1), else None."""
    try:
        name = to_ascii(domain).lower()
    except UnicodeError:
        return None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


class _SyntaxError(Exception):
    pass


# RFC 5322 §3.2.3 atext, and RFC 6532 §3.2 UTF8-non-ascii
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f]")
_SPECIALS = "<>@,;:."


def _tokens(text: str) -> list[tuple[str, str]]:
    """RFC 5322 §3.2 lexical tokens: ("atom"|"quoted"|"literal", text) or (special, special);
    whitespace and comments dropped. _SyntaxError for anything else."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "(":
            i = _skip_comment(text, i)
        elif c in _SPECIALS:
            out.append((c, c))
            i += 1
        elif c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < len(text) and text[j] != close:
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise _SyntaxError("unterminated quoted-string or domain-literal")
            out.append(("quoted" if c == '"' else "literal", text[i : j + 1]))
            i = j + 1
        elif _ATEXT.match(c):
            j = i + 1
            while j < len(text) and _ATEXT.match(text[j]):
                j += 1
            out.append(("atom", text[i:j]))
            i = j
        else:
            raise _SyntaxError(f"unexpected {c!r}")
    return out


def _skip_comment(text: str, i: int) -> int:
    """RFC 5322 §3.2.2: the index after the (nested) comment that starts at ``i``."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        depth += (c == "(") - (c == ")")
        i += 1
        if depth == 0:
            return i
    raise _SyntaxError("unterminated comment")


class _AddressList:
    """RFC 5322 §3.4 address-list (RFC 6854 allows it in From), obsolete forms of §4.4
    included (empty list elements, routes, periods in phrases). Collects the domain of
    every mailbox."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def take(self, kind: str) -> str:
        if self.peek() != kind:
            raise _SyntaxError(f"expected {kind}")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def domains(self) -> list[str]:
        found: list[str] = []
        while self.peek() is not None:
            if self.peek() != ",":  # RFC 5322 §4.4 obs-addr-list: empty elements
                found += self.address(group_allowed=True)
            if self.peek() is not None:
                self.take(",")
        return found

    def address(self, *, group_allowed: bool) -> list[str]:
        start = self.i
        while self.peek() in ("atom", "quoted", "."):  # §3.2.5 phrase, §4.1 obs-phrase
            self.i += 1
        phrase = self.i > start
        if phrase and group_allowed and self.peek() == ":":  # §3.4 group
            self.i += 1
            members: list[str] = []
            while self.peek() != ";":
                if self.peek() != ",":
                    members += self.address(group_allowed=False)
                if self.peek() != ";":
                    self.take(",")
            self.i += 1
            return members
        if self.peek() == "<":  # §3.4 name-addr
            self.i += 1
            if self.peek() == "@":  # §4.4 obs-route
                while self.peek() != ":":
                    self.i += 1
                    if self.peek() is None:
                        raise _SyntaxError("unterminated route")
                self.i += 1
            domain = self.addr_spec()
            self.take(">")
            return [domain]
        self.i = start
        return [self.addr_spec()]

    def addr_spec(self) -> str:
        """§3.4.1 addr-spec; the domain, or _SyntaxError for a domain-literal."""
        self.word()
        while self.peek() == ".":
            self.i += 1
            self.word()
        self.take("@")
        labels = [self.take("atom")]
        while self.peek() == ".":
            self.i += 1
            labels.append(self.take("atom"))
        return ".".join(labels)

    def word(self) -> None:
        if self.peek() not in ("atom", "quoted"):
            raise _SyntaxError("expected a word")
        self.i += 1


# --- records (§6.3, §6.4) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A policy record with its defaults filled in (RFC 7489 §6.3)."""

    p: str  # "none" | "quarantine" | "reject"
    sp: str | None = None  # for subdomains; None: p applies
    pct: int = 100
    adkim: str = "r"  # "r" | "s"
    aspf: str = "r"
    rua: tuple[str, ...] = ()  # reporting URIs, "!size" suffix kept
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400


def _tags(text: str) -> list[tuple[str, str]] | None:
    """The tag-list (RFC 7489 §6.4 dmarc-sep, *WSP around "="), tag names lowercased;
    None unless the first tag is exactly "v=DMARC1" (§6.4: case-sensitive, first).
    Parts that are no tag are syntax errors in the remainder and ignored (§6.3)."""
    tags = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq and name.strip():
            tags.append((name.strip().lower(), value.strip()))
        elif part.strip() and not tags:
            return None
    if not tags or tags[0] != ("v", "DMARC1"):
        return None
    return tags


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record starts with "v=DMARC1" (RFC 7489 §6.6.3 steps 2 and 4)."""
    return _tags(text) is not None


# RFC 7489 §6.4 dmarc-uri: URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]; commas and "!"
# inside the URI are %-encoded (§6.2).
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!;]+(?:![0-9]+[kmgtKMGT]?)?")


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC policy record (RFC 7489 §6.3, §6.4), or None if it is none or unusable.

    v=DMARC1 must come first. Unknown tags are ignored, and so are a repeated tag (the
    first counts) and invalid values of the optional tags, which keep their defaults
    (§6.3 "Syntax errors in the remainder of the record SHOULD be discarded in favor of
    default values"). A missing or invalid p, or an invalid sp, makes the record p=none
    if rua has a valid URI, else unusable (§6.6.3 step 6).
    """
    tags = _tags(text)
    if tags is None:
        return None
    values: dict[str, str] = {}
    for name, value in tags[1:]:
        values.setdefault(name, value)
    rua = _uris(values.get("rua"))
    p = values.get("p", "").lower()
    sp = values["sp"].lower() if "sp" in values else None
    if p not in POLICIES or (sp is not None and sp not in POLICIES):
        if not rua:
            return None
        p, sp = "none", None
    return DmarcRecord(
        p=p,
        sp=sp,
        pct=_number(values.get("pct"), 100, top=100),
        adkim=_choice(values.get("adkim"), ("r", "s"), "r"),
        aspf=_choice(values.get("aspf"), ("r", "s"), "r"),
        rua=rua,
        ruf=_uris(values.get("ruf")),
        fo=_options(values.get("fo"), re.compile(r"[01ds]"), ("0",)),
        rf=_options(values.get("rf"), re.compile(r"[a-z0-9][a-z0-9-]*"), ("afrf",)),
        ri=_number(values.get("ri"), 86400, top=2**32 - 1),
    )


def _uris(value: str | None) -> tuple[str, ...]:
    parts = [] if value is None else [u.strip() for u in value.split(",")]
    return tuple(u for u in parts if _URI.fullmatch(u))


def _number(value: str | None, default: int, *, top: int) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 10:
        return default
    number = int(value)
    return number if number <= top else default


def _choice(value: str | None, allowed: tuple[str, ...], default: str) -> str:
    word = (value or "").lower()
    return word if word in allowed else default


def _options(
    value: str | None, option: re.Pattern[str], default: tuple[str, ...]
) -> tuple[str, ...]:
    if value is None:
        return default
    parts = tuple(p.strip().lower() for p in value.split(":"))
    return parts if all(option.fullmatch(p) for p in parts) else default


# --- discovery (§6.6.3) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyLookup:
    """The outcome of policy discovery: a record and where it was found, or none (with
    ``error`` set when that is not simply "no record")."""

    record: DmarcRecord | None
    where: Literal["exact", "org"] | None  # _dmarc.<From domain> or _dmarc.<org domain>
    error: Literal["temperror", "permerror"] | None = None
    reason: str | None = None


async def lookup(from_dom: str, resolver: Resolver) -> PolicyLookup:
    """RFC 7489 §6.6.3: the record at _dmarc.<From domain>, else at _dmarc.<Organizational
    Domain>. Non-DMARC TXT records are discarded first; several DMARC records, or one that
    is unusable, end discovery with ``permerror`` (no policy applies); a DNS failure gives
    ``temperror`` (§6.6.3 leaves DNS errors to the receiver)."""
    try:
        domain = normal_domain(from_dom)
        org = organizational_domain(domain)
    except ValueError as exc:
        return PolicyLookup(None, None, "permerror", str(exc))
    where: Literal["exact", "org"] = "exact"
    try:
        texts = await _dmarc_records(domain, resolver)
        if not texts and org != domain:
            where = "org"
            texts = await _dmarc_records(org, resolver)
    except DnsTemporaryError as exc:
        return PolicyLookup(None, None, "temperror", str(exc))
    if not texts:
        return PolicyLookup(None, None, None, "no DMARC record")
    if len(texts) > 1:
        return PolicyLookup(None, where, "permerror", "multiple DMARC records")
    record = parse_record(texts[0])
    if record is None:
        return PolicyLookup(None, where, "permerror", "invalid DMARC record")
    return PolicyLookup(record, where)


async def _dmarc_records(domain: str, resolver: Resolver) -> list[str]:
    try:
        answers = await resolver.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return []
    texts = (raw.decode("utf-8", "replace") for raw in answers)
    return [text for text in texts if is_dmarc_record(text)]


# --- evaluation (§6.6.2, §6.6.4) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC verdict on a message (results spelled as in RFC 8601 §2.7)."""

    result: str  # "pass" | "fail" | "none" | "temperror" | "permerror"
    domain: str  # header.from
    policy: str  # the policy that applies: p, or sp for a subdomain; "none" without record
    disposition: str  # what to do after pct sampling (§6.6.4): "none" | "quarantine" | "reject"
    reason: str | None = None
    record: DmarcRecord | None = None  # the record used (for reports)


async def evaluate(
    message_from_domain: str,
    *,
    spf_result: str,
    spf_domain: str,
    dkim: Sequence[tuple[str, str]],
    resolver: Resolver,
    rng: Callable[[], float] = random.random,
) -> DmarcResult:
    """The DMARC result for a message whose From domain is ``message_from_domain``, given
    the SPF result for ``spf_domain`` (MAIL FROM, or HELO for the null sender: RFC 7489
    §4.1) and the (result, d=) of each DKIM signature.

    It passes when an SPF or DKIM pass is aligned (§4.2, §3.1). A failure gets the policy
    as disposition when ``rng()`` (in [0, 1)) samples it by pct, else the next weaker one
    (§6.3 pct, §6.6.4). DNS trouble is "temperror", never a fail: so is a failure where an
    aligned SPF or DKIM check failed temporarily, as it might have passed; ``policy``
    then says what a definite failure would meet, and ``disposition`` is "none".
    """
    try:
        domain = normal_domain(message_from_domain)
    except ValueError:
        domain = message_from_domain
    found = await lookup(domain, resolver)
    record = found.record
    if record is None:
        return DmarcResult(found.error or "none", domain, "none", "none", found.reason)
    policy = _policy(record, found.where)
    checks = [(spf_result, spf_domain, record.aspf)]
    checks += [(result, d, record.adkim) for result, d in dkim]
    if any(r.lower() == "pass" and aligned(d, domain, mode) for r, d, mode in checks):
        return DmarcResult("pass", domain, policy, "none", None, record)
    if any(r.lower() == "temperror" and aligned(d, domain, mode) for r, d, mode in checks):
        reason = "an aligned SPF or DKIM check failed temporarily"
        return DmarcResult("temperror", domain, policy, "none", reason, record)
    disposition = policy
    reason = "no aligned SPF or DKIM pass"
    # RFC 7489 §6.6.4: pct=100 (or p=none) needs no draw.
    if policy != "none" and record.pct < 100 and rng() * 100 >= record.pct:
        disposition = WEAKER[policy]
        reason += f"; not sampled at pct={record.pct}"
    return DmarcResult("fail", domain, policy, disposition, reason, record)


def _policy(record: DmarcRecord, where: str | None) -> str:
    """p, or sp for a From domain below the Organizational Domain whose record was found
    there (RFC 7489 §6.3 sp: it is ignored in records published on subdomains)."""
    if where == "org" and record.sp is not None:
        return record.sp
    return record.p
