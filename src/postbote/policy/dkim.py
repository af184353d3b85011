"""DKIM: verifying the signatures of incoming mail, signing outgoing mail, and DKIM keys.

This module owns DKIM policy (RFC 6376, RFC 8463 Ed25519, RFC 8301): which signatures of a
message are checked and the RFC 8601 result of each, how postbote signs (relaxed/relaxed,
which header fields, over-signing), and the key formats stored and published in DNS.
Canonicalization and signature verification are dkimpy's; key records are fetched first with
postbote's async ``Resolver``, so dkimpy never touches DNS and the event loop never waits on
it. Private-key operations use ``cryptography`` (OpenSSL), not dkimpy's pure-Python RSA.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    InvalidCanonicalizationPolicyError,
)

from postbote.dns import DnsNotFound, DnsTemporaryError, Resolver, to_ascii

# RFC 8601 §2.7.1; "none" (no signature) is an empty result list.
RESULTS = frozenset({"pass", "fail", "neutral", "temperror", "permerror", "policy"})
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits, and verifiers MUST NOT
# consider signatures with shorter keys valid; verifiers MUST handle up to 4096 bits. Larger
# keys are refused above 8192 bits, which bounds the work one signature can cost.
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 8192
MAX_GENERATED_RSA_BITS = 4096
MAX_SIGNED_FIELDS = 256  # h= entries; a longer list only costs the verifier time
INLINE_LIMIT = 64 * 1024  # larger messages are verified in a worker thread
LINE_WIDTH = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters

# RFC 6376 §5.4.1: the fields a signer should sign, when present. From is REQUIRED (§5.4);
# RFC 8058 §4 requires List-Unsubscribe and List-Unsubscribe-Post to be signed.
DEFAULT_HEADERS: tuple[str, ...] = (
    "From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", "Content-ID", "Content-Description",
    "Resent-Date", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc",
    "Resent-Message-ID", "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post",
    "List-Subscribe", "List-Post", "List-Owner", "List-Archive", "Autocrypt",
)  # fmt: skip
# RFC 6376 §8.15 (and §5.4.2): a field added above the signed one is not covered, and many
# MUAs show the topmost, so a second From or Subject could be shown while the signature still
# verifies. Naming a field once more in h= than it occurs ("over-signing") covers the absent
# instance, so no instance can be added. These are the RFC 5322 §3.6 singletons a reader
# trusts: who wrote it, where replies go, who got it, what and when. An absent Reply-To is
# covered too (replaying a signed message with an added Reply-To is a phishing vector).
OVERSIGNED: tuple[str, ...] = ("From", "Reply-To", "To", "Cc", "Subject", "Date")

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
# RFC 6376 §3.1 selector = sub-domain *( "." sub-domain ); labels as found in DNS, where
# selectors and _-prefixed names occur, checked on the A-label form.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_DIGITS = re.compile(rb"[0-9]{1,12}")
_REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")  # RFC 6376 §6.1.1


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The verdict on one DKIM-Signature field, with what Authentication-Results reports.

    ``result`` is an RFC 8601 §2.7.1 dkim result. ``header_b`` is the first 8 characters of
    b= (RFC 6008 ``header.b``). Every text field is free of whitespace and control
    characters; ``reason`` is postbote's own wording, never text taken from the message.
    """

    result: str
    domain: str
    selector: str
    algorithm: str
    identity: str
    header_b: str
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"not an RFC 8601 dkim result: {self.result!r}")


@dataclass(frozen=True, slots=True)
class _Signature:
    """A DKIM-Signature whose tags passed every check that needs no key."""

    header: tuple[bytes, bytes]
    tags: dict[bytes, bytes]
    base: DkimResult  # the reported fields, result still to be decided
    key_name: str
    signed: list[bytes]  # h=, lowercase


# -- verification ----------------------------------------------------------------------


async def verify(
    message: bytes, resolver: Resolver, *, max_signatures: int = 5, now: float | None = None
) -> list[DkimResult]:
    """One result per DKIM-Signature field, top first, for at most ``max_signatures`` of
    them (RFC 6376 §6.1 lets a verifier limit the count); ``[]`` when there is none.

    Keys are looked up concurrently with ``resolver``; a failed lookup is temperror, no key
    or an unusable one permerror. Messages larger than ``INLINE_LIMIT`` are verified in a
    worker thread. ``now`` (Unix time) is the clock for x= expiry. Never raises for
    anything found in ``message``.
    """
    when = time.time() if now is None else now
    try:
        headers, _ = dkim.rfc822_parse(_header_block(message))
    except dkim.DKIMException:
        # A header block dkimpy cannot split cannot be verified: report what it claims.
        fields = _lenient_signatures(message)[:max_signatures]
        return [_unverifiable(value) for value in fields]
    found = [(bytes(n), bytes(v)) for n, v in headers if n.lower() == b"dkim-signature"]
    examined = [_examine(h, when) for h in found[:max_signatures]]
    signatures = [s for s in examined if isinstance(s, _Signature)]
    names = sorted({s.key_name for s in signatures})
    lookups = await asyncio.gather(*(_fetch_key(resolver, name) for name in names))
    keys = dict(zip(names, lookups, strict=True))
    verdicts: dict[int, tuple[str, str | None]] = {}
    jobs: list[tuple[_Signature, bytes]] = []
    positions: list[int] = []
    for index, item in enumerate(examined):
        if isinstance(item, _Signature):
            chosen = _choose_key(item, keys[item.key_name])
            if isinstance(chosen, bytes):
                jobs.append((item, chosen))
                positions.append(index)
            else:
                verdicts[index] = chosen
    if len(message) > INLINE_LIMIT:
        outcomes = await asyncio.to_thread(_verify_jobs, message, jobs)
    else:
        outcomes = _verify_jobs(message, jobs)
    verdicts.update(zip(positions, outcomes, strict=True))
    return [
        item if isinstance(item, DkimResult) else _decided(item, verdicts[index])
        for index, item in enumerate(examined)
    ]


def _decided(sig: _Signature, verdict: tuple[str, str | None]) -> DkimResult:
    return replace(sig.base, result=verdict[0], reason=verdict[1])


def _header_block(message: bytes) -> bytes:
    """The header section: up to the first empty line (RFC 5322 §2.1)."""
    if message.startswith((b"\r\n", b"\n")):
        return b""
    end = re.search(rb"\n\r?\n", message)
    return message if end is None else message[: end.start() + 1]


def _lenient_signatures(message: bytes) -> list[bytes]:
    """The values of the DKIM-Signature fields, found without a full header parse."""
    block = _header_block(message)
    return [
        m.group(1) for m in re.finditer(rb"(?im)^dkim-signature[ \t]*:(.*(?:\r?\n[ \t].*)*)", block)
    ]


# RFC 8601 §2.7.1: neutral is for signatures with syntax errors.
_SYNTAX_ERROR = DkimResult("neutral", "", "", "", "", "", "signature syntax error")


def _unverifiable(value: bytes) -> DkimResult:
    """The result for a signature in a message whose header cannot be parsed."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList:
        return _SYNTAX_ERROR
    return replace(_describe(tags), reason="message header malformed")


def _describe(tags: dict[bytes, bytes]) -> DkimResult:
    """The reported fields of a signature (result still permerror) from its tags; a field
    whose value is malformed is reported as ""."""
    domain = _name(tags.get(b"d", b"")) or ""
    identity = _token(tags[b"i"]) if b"i" in tags else (f"@{domain}" if domain else "")
    return DkimResult(
        "permerror",
        domain,
        _name(tags.get(b"s", b"")) or "",
        _token(tags.get(b"a", b"")).lower(),
        identity,
        _token(re.sub(rb"\s+", b"", tags.get(b"b", b""))[:8]),
    )


def _examine(header: tuple[bytes, bytes], when: float) -> _Signature | DkimResult:
    """Check a signature's tags (RFC 6376 §6.1.1): a ``_Signature`` to verify with its key,
    or the final result when the tags alone decide it."""
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(header[1])
    except dkim.util.InvalidTagValueList:
        return _SYNTAX_ERROR
    base = _describe(tags)
    problem = _tag_problem(tags, base.domain, base.selector, when)
    if problem is not None:
        return replace(base, result=problem[0], reason=problem[1])
    signed = [n.lower() for n in re.split(rb"\s*:\s*", tags[b"h"].strip())]
    return _Signature(header, tags, base, f"{base.selector}._domainkey.{base.domain}", signed)


def _tag_problem(
    tags: dict[bytes, bytes], domain: str, selector: str, when: float
) -> tuple[str, str] | None:
    """What is wrong with the tags, as (result, reason), or None. ``domain`` and
    ``selector`` are "" when malformed."""
    for tag in _REQUIRED_TAGS:
        if tag not in tags:
            return "neutral", f"missing {tag.decode()}= tag"
    if tags[b"v"] != b"1":
        return "neutral", "unsupported DKIM version"
    algorithm = tags[b"a"].lower()
    if algorithm == b"rsa-sha1":
        # RFC 8301 §3.1: rsa-sha1 MUST NOT be used for verifying; such signatures "have
        # permanently failed evaluation" (RFC 6376 §3.9 PERMFAIL). Not verified, so not
        # "fail" (which says verification was done): permerror.
        return "permerror", "rsa-sha1 is not accepted (RFC 8301)"
    if algorithm.decode("ascii", "replace") not in ALGORITHMS:
        return "permerror", "unsupported signature algorithm"
    for tag in (b"b", b"bh"):
        if not _BASE64.fullmatch(re.sub(rb"\s+", b"", tags[tag])) or not tags[tag].strip():
            return "neutral", f"malformed {tag.decode()}= tag"
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        return "neutral", "unsupported canonicalization"
    if not domain or not selector:
        return "neutral", "malformed d= or s= tag"
    for tag in (b"l", b"t", b"x"):
        if tag in tags and not _DIGITS.fullmatch(tags[tag]):
            return "neutral", f"malformed {tag.decode()}= tag"
    return _semantic_problem(tags, domain, when)


def _semantic_problem(tags: dict[bytes, bytes], domain: str, when: float) -> tuple[str, str] | None:
    """The RFC 6376 §6.1.1 checks on well-formed tags."""
    if b"q" in tags and b"dns/txt" not in re.split(rb"\s*:\s*", tags[b"q"].strip().lower()):
        return "permerror", "unsupported query method"
    if b"i" in tags:
        # The i= domain MUST be d= or a subdomain of it; else PERMFAIL (domain mismatch).
        i_domain = _name(tags[b"i"].rpartition(b"@")[2])
        if b"@" not in tags[b"i"] or i_domain is None or not _within(i_domain, domain):
            return "permerror", "i= is not within d="
    signed = [n.lower() for n in re.split(rb"\s*:\s*", tags[b"h"].strip())]
    if b"from" not in signed:
        return "permerror", "From not signed"  # PERMFAIL (From field not signed)
    if len(signed) > MAX_SIGNED_FIELDS:
        return "permerror", "too many signed fields"
    if b"x" in tags:
        expires = int(tags[b"x"])
        if b"t" in tags and expires < int(tags[b"t"]):
            return "permerror", "x= is before t="  # §3.5: x= MUST be greater than t=
        if expires < when:
            # §3.5 x=: a verifier MAY consider the signature invalid past the expiry; it
            # was made, but is no longer acceptable as valid: fail (RFC 8601 §2.7.1).
            return "fail", "signature expired"
    return None


def _name(raw: bytes) -> str | None:
    """A d= or s= value as a lowercase A-label name, or None when it cannot be one."""
    try:
        text = to_ascii(raw.decode("utf-8").strip()).lower()
    except (UnicodeError, ValueError):
        return None
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(lb) for lb in labels):
        return None
    return text


def _strict_name(text: str) -> str | None:
    """``_name`` for our own configuration: nothing stripped, no surrounding space."""
    if text != text.strip():
        return None
    return _name(text.encode("utf-8", "surrogatepass"))


def _token(raw: bytes) -> str:
    """A tag value for reporting: printable UTF-8 without whitespace (RFC 8616 allows
    UTF-8 in i=), else ""."""
    try:
        text = raw.strip().decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if text.isprintable() and not any(c.isspace() for c in text) else ""


def _within(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


async def _fetch_key(resolver: Resolver, name: str) -> list[bytes] | tuple[str, str]:
    """The key records at ``name``, or the (result, reason) that their absence means."""
    try:
        records = await resolver.txt(name)
    except DnsTemporaryError:
        return "temperror", "key lookup failed"  # RFC 6376 §6.1.2 TEMPFAIL (key unavailable)
    except DnsNotFound:
        return "permerror", "no key for signature"  # §6.1.2 PERMFAIL (no key for signature)
    return records or ("permerror", "no key for signature")


def _choose_key(sig: _Signature, lookup: list[bytes] | tuple[str, str]) -> bytes | tuple[str, str]:
    """The first usable key record (RFC 6376 §6.1.2 lets a verifier pick one of several),
    or the (result, reason) of the first record's problem."""
    if isinstance(lookup, tuple):
        return lookup
    first: tuple[str, str] | None = None
    for record in lookup:
        problem = _key_problem(sig, record)
        if problem is None:
            return record
        first = first or problem
    assert first is not None  # lookup is never an empty list
    return first


def _key_problem(sig: _Signature, record: bytes) -> tuple[str, str] | None:
    """Why ``record`` cannot verify ``sig`` (RFC 6376 §3.6.1, §6.1.2), or None."""
    try:
        key: dict[bytes, bytes] = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return "permerror", "key record syntax error"
    if key.get(b"v", b"DKIM1") != b"DKIM1":
        return "permerror", "key record version is not DKIM1"
    if b"p" not in key:
        return "permerror", "key record has no p="
    if not re.sub(rb"\s+", b"", key[b"p"]):
        return "permerror", "key revoked"  # §3.6.1: an empty p= means revoked
    wanted = sig.base.algorithm.partition("-")[0].encode()
    if key.get(b"k", b"rsa").lower() != wanted:
        return "permerror", "key type does not match a="  # PERMFAIL (inappropriate key)
    if b"h" in key and b"sha256" not in _tag_list(key[b"h"]):
        return "permerror", "key does not allow sha256"
    if b"s" in key and not {b"*", b"email"} & set(_tag_list(key[b"s"])):
        return "permerror", "key is not for email"
    # t=s: the i= domain MUST equal d=, no subdomain.
    strict = b"s" in _tag_list(key.get(b"t", b""))
    if strict and sig.base.identity.rpartition("@")[2].lower() != sig.base.domain:
        return "permerror", "i= must equal d= for this key (t=s)"
    try:
        public, bits, ktag, _ = dkim.evaluate_pk(sig.key_name.encode(), record)
    except (dkim.DKIMException, binascii.Error, ValueError, TypeError, IndexError):
        return "permerror", "key record unusable"
    if ktag == b"rsa":
        if bits < MIN_RSA_BITS:
            return "permerror", f"RSA key shorter than {MIN_RSA_BITS} bits (RFC 8301)"
        if bits > MAX_RSA_BITS or public["publicExponent"] >= 1 << 64:
            return "permerror", "RSA key too large"
    return None


def _tag_list(value: bytes) -> list[bytes]:
    return [item.strip().lower() for item in value.split(b":")]


def _verify_jobs(
    message: bytes, jobs: list[tuple[_Signature, bytes]]
) -> list[tuple[str, str | None]]:
    """dkimpy's verification of each signature with its chosen key record (CPU only)."""
    if not jobs:
        return []
    try:
        checker = dkim.DKIM(message, minkey=MIN_RSA_BITS)
    except dkim.DKIMException:
        return [("permerror", "message header malformed")] * len(jobs)
    return [_verify_one(checker, sig, record) for sig, record in jobs]


def _verify_one(checker: dkim.DKIM, sig: _Signature, record: bytes) -> tuple[str, str | None]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        return record  # the record fetched (and checked) for this very signature

    signature = base64.b64decode(re.sub(rb"\s+", b"", sig.tags[b"b"]))
    if sig.base.algorithm == "ed25519-sha256" and len(signature) != 64:
        return "fail", "signature did not verify"  # RFC 8032 §5.1.6: 64 octets, no more
    try:
        # RFC 6376 §6.1.3: body hash, then the header hash against the signature.
        valid = checker.verify_sig(sig.tags, list(sig.signed), sig.header, dnsfunc)
    except dkim.ValidationError:
        return "fail", "body hash did not verify"
    except Exception:  # a third-party parser on hostile input: never raise
        return "permerror", "signature could not be processed"
    if not valid:
        return "fail", "signature did not verify"
    if b"l" in sig.tags:
        # RFC 6376 §8.2: content past l= is not covered by the signature; a passing
        # signature over part of the body is not acceptable (RFC 8601 §2.7.1 policy).
        canon = CanonicalizationPolicy.from_c_value(sig.tags.get(b"c", b"simple/simple"))
        if int(sig.tags[b"l"]) < len(canon.canonicalize_body(checker.body)):
            return "policy", "body only partly signed (l=)"
    return "pass", None


# -- signing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A DKIM signing key of ``domain`` published at ``selector._domainkey.domain``.

    ``algorithm`` is "rsa-sha256" or "ed25519-sha256". ``private_key`` is PEM (PKCS#8, or
    PKCS#1 for RSA), as ``generate_key`` makes it; an Ed25519 key may also be its 32-byte
    seed, raw or base64 (the form of RFC 8463 Appendix A and of dkimpy's dknewkey).
    Validated when built: ``ValueError`` for a malformed domain or selector (so no CR, LF or
    ';' can reach the header), an unknown algorithm, a key that does not parse or does not
    match ``algorithm``, or an RSA key under 1024 bits (RFC 8301 §3.2). ``domain`` is kept
    as A-labels, lowercase.
    """

    domain: str
    selector: str
    algorithm: str
    private_key: bytes = field(repr=False)
    _key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        domain = _strict_name(self.domain)
        if domain is None:
            raise ValueError(f"not a valid DKIM domain: {self.domain!r}")
        if not self.selector.isascii() or _strict_name(self.selector) is None:
            raise ValueError(f"not a valid DKIM selector: {self.selector!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"DKIM algorithm must be one of {ALGORITHMS}")
        key = _load_private_key(self.private_key, self.algorithm)
        if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key shorter than {MIN_RSA_BITS} bits (RFC 8301 §3.2)")
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "_key", key)

    def sign_digest(self, digest: bytes) -> bytes:
        """The b= signature of a SHA-256 header ``digest`` (RFC 6376 §3.7)."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            # RFC 6376 §3.3.1: RSASSA-PKCS1-v1_5 with SHA-256.
            return self._key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self._key.sign(digest)  # RFC 8463 §3: PureEdDSA Ed25519 over the SHA-256 hash


def sign(
    message: bytes,
    keys: Sequence[SigningKey],
    *,
    now: float | None = None,
    expire_after: int | None = None,
) -> bytes:
    """The DKIM-Signature fields (CRLF-terminated, folded) to prepend to ``message``, one
    per key, in the order of ``keys`` (dual signing: e.g. one RSA and one Ed25519 key).

    relaxed/relaxed canonicalization; h= names the ``DEFAULT_HEADERS`` present (each
    instance) plus one more instance of each ``OVERSIGNED`` field. t= is ``now`` (default
    the clock); ``expire_after`` seconds, if given, sets x= (RFC 6376 §3.5). Raises
    ``ValueError`` when the header cannot be parsed or has no From field (RFC 6376 §5.4).
    """
    try:
        headers, body = dkim.rfc822_parse(message)
    except dkim.DKIMException as exc:
        raise ValueError("message header cannot be parsed for DKIM") from exc
    names = [bytes(name).decode("ascii").lower() for name, _ in headers]
    if "from" not in names:
        raise ValueError("message has no From header field (RFC 6376 §5.4)")
    if expire_after is not None and expire_after <= 0:
        raise ValueError("expire_after must be positive")
    signed = _fields_to_sign(names)
    canonical = _RELAXED.canonicalize_headers(headers)
    body_hash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    stamp = int(time.time() if now is None else now)
    out = []
    for key in keys:
        tags = [("v", "1"), ("a", key.algorithm), ("c", "relaxed/relaxed"), ("d", key.domain)]
        tags += [("s", key.selector), ("t", str(stamp))]
        if expire_after is not None:
            tags.append(("x", str(stamp + expire_after)))
        tags += [("h", ":".join(signed)), ("bh", body_hash.decode("ascii"))]
        prefix = _fold(tags)
        digest = hashlib.sha256()
        unsigned = (b"DKIM-Signature", prefix[len("DKIM-Signature:") :] + b"\r\n b=")
        dkim.hash_headers(digest, _RELAXED, canonical, [n.lower().encode() for n in signed],
                          unsigned, {})  # fmt: skip
        signature = base64.b64encode(key.sign_digest(digest.digest())).decode("ascii")
        out.append(prefix + b"\r\n b=" + _wrap(signature) + b"\r\n")
    return b"".join(out)


def _fields_to_sign(present: list[str]) -> list[str]:
    """h=: each present DEFAULT_HEADERS instance in message order, then one more of each
    OVERSIGNED field (RFC 6376 §5.4.2: instances are taken bottom-up, so the extra one is
    the absent instance above)."""
    spelling = {name.lower(): name for name in DEFAULT_HEADERS}
    signed = [spelling[name] for name in present if name in spelling]
    return signed + list(OVERSIGNED)


def _fold(tags: list[tuple[str, str]]) -> bytes:
    """'DKIM-Signature:' and the tags, each ending in ';', folded at LINE_WIDTH: between
    tags, and inside h= after ':' and inside bh= (FWS allowed there, RFC 6376 §3.5)."""
    lines = ["DKIM-Signature:"]
    for name, value in tags:
        if name == "h":
            parts = [f"{field}:" for field in value.split(":")]
            parts[-1] = parts[-1][:-1]
        elif name == "bh":
            parts = [value[i : i + 60] for i in range(0, len(value), 60)]
        else:
            parts = [value]
        parts[0] = f"{name}={parts[0]}"
        parts[-1] += ";"
        for i, part in enumerate(parts):
            sep = " " if i == 0 else ""
            if len(lines[-1]) + len(sep) + len(part) > LINE_WIDTH:
                lines.append(" " + part)
            else:
                lines[-1] += sep + part
    return "\r\n".join(lines).encode("ascii")


def _wrap(signature: str) -> bytes:
    """b= continued on lines of LINE_WIDTH (the first line has ' b=' before it)."""
    width = LINE_WIDTH - 3
    chunks = [signature[i : i + width] for i in range(0, len(signature), width)]
    return "\r\n   ".join(chunks).encode("ascii")


# -- keys ------------------------------------------------------------------------------


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """A new key: (the private key to store, PEM PKCS#8; the DNS TXT record value).

    ``algorithm`` is "rsa" or "ed25519" (or the a= names); ``bits`` (RSA only) must be
    1024..4096 (RFC 8301 §3.2: at least 1024, SHOULD be 2048; verifiers need only handle
    4096). The record is one string: split it into strings of at most 255 octets when
    publishing (RFC 6376 §3.6.2.2 concatenates them).
    """
    kind = _kind(algorithm)
    if kind == "rsa":
        if not MIN_RSA_BITS <= bits <= MAX_GENERATED_RSA_BITS:
            raise ValueError(f"RSA key size must be {MIN_RSA_BITS}..{MAX_GENERATED_RSA_BITS}")
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(65537, bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_record(pem, kind)


def public_record(private_key: bytes, algorithm: str) -> str:
    """The DNS TXT record value for a stored private key (RFC 6376 §3.6.1): for RSA, p= is
    the DER SubjectPublicKeyInfo; for Ed25519 the raw 32-octet key (RFC 8463 §4.2)."""
    kind = _kind(algorithm)
    key = _load_private_key(private_key, f"{kind}-sha256")
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return f"v=DKIM1; k={kind}; p={base64.b64encode(raw).decode('ascii')}"


def _kind(algorithm: str) -> str:
    kind = algorithm.lower().removesuffix("-sha256")
    if kind not in ("rsa", "ed25519"):
        raise ValueError(f"unknown DKIM key algorithm: {algorithm!r}")
    return kind


def _load_private_key(data: bytes, algorithm: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Parse a stored key (see SigningKey) and check it is of ``algorithm``'s type."""
    wants_rsa = algorithm.startswith("rsa")
    try:
        if not wants_rsa and len(data) == 32:
            key: object = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        elif data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        elif not wants_rsa:
            seed = base64.b64decode(data.strip(), validate=True)
            key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        else:
            raise ValueError("an RSA key must be PEM")
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"unreadable {algorithm} private key") from exc
    if wants_rsa and isinstance(key, rsa.RSAPrivateKey):
        return key
    if not wants_rsa and isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"private key is not a {algorithm} key")
