"""postbote.policy.dkim: the RFC 8463 vectors, sign/verify round trips, every verdict, keys,
and cross-checks with verifiers that are not ours (dkimpy's dkimverify, OpenDKIM).

Keys are served over real UDP on loopback by tests.dnsserver.TestDnsServer through
postbote.dns.DnsResolver. Vector files and their sources: tests/policy/data/dkim/SOURCES.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
import pytest
from dkim.canonicalization import CanonicalizationPolicy  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.dns import DnsResolver
from postbote.policy.dkim import (
    INLINE_LIMIT,
    OVERSIGNED,
    DkimResult,
    SigningKey,
    generate_key,
    public_record,
    sign,
    verify,
)
from tests import dnsserver
from tests.dnsserver import TestDnsServer

dns_server = dnsserver.dns_server  # the fixture, as conftest.py will register it

ROOT = Path(__file__).parents[2]
DATA = Path(__file__).parent / "data" / "dkim"
NOW = 1_700_000_000.0
MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: Lunch\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <lunch-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"\r\n"
    b"Alice\r\n"
)


def run(awaitable: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await awaitable

    return asyncio.run(main())


def resolver_for(server: TestDnsServer, timeout: float = 0.5) -> DnsResolver:
    return DnsResolver([(server.host, server.port)], timeout=timeout, attempts=1)


def check(server: TestDnsServer, message: bytes, **kwargs: Any) -> list[DkimResult]:
    results: list[DkimResult] = run(verify(message, resolver_for(server), **kwargs))
    return results


def verdicts(results: list[DkimResult]) -> list[str]:
    return [r.result for r in results]


def rfc8463_message() -> bytes:
    """RFC 8463 Appendix A.3, in the CRLF form messages have on the wire."""
    return (DATA / "rfc8463-signed.eml").read_bytes().replace(b"\n", b"\r\n")


def rfc8463_zone() -> dict[str, str]:
    """RFC 8463 Appendix A.2: the key records, each record's strings joined."""
    lines = (DATA / "rfc8463-dns.txt").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines)


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return generate_key("rsa", 2048)[0]


@pytest.fixture(scope="module")
def ed_pem() -> bytes:
    return generate_key("ed25519")[0]


@pytest.fixture
def rsa_key(rsa_pem: bytes) -> SigningKey:
    return SigningKey("example.org", "rsa1", "rsa-sha256", rsa_pem)


@pytest.fixture
def ed_key(ed_pem: bytes) -> SigningKey:
    return SigningKey("example.org", "ed1", "ed25519-sha256", ed_pem)


def publish(server: TestDnsServer, *keys: SigningKey) -> None:
    for key in keys:
        kind = key.algorithm.removesuffix("-sha256")
        server.add(
            f"{key.selector}._domainkey.{key.domain}", "TXT", public_record(key.private_key, kind)
        )


def signed(message: bytes, *keys: SigningKey, **kwargs: Any) -> bytes:
    return sign(message, keys, now=kwargs.pop("now", NOW), **kwargs) + message


def unfold(message: bytes) -> bytes:
    """The message with folded header lines joined: the same under relaxed
    canonicalization (RFC 6376 §3.4.2 unfolds by removing CRLF), easier to edit."""
    head, _, body = message.partition(b"\r\n\r\n")
    return re.sub(rb"\r\n([ \t])", rb"\1", head) + b"\r\n\r\n" + body


# -- RFC 8463 Appendix A --------------------------------------------------------------


def test_rfc8463_example_verifies_both_signatures(dns_server: TestDnsServer) -> None:
    for name, value in rfc8463_zone().items():
        dns_server.add(name, "TXT", value)
    results = check(dns_server, rfc8463_message())
    assert results == [
        DkimResult("pass", "football.example.com", "brisbane", "ed25519-sha256",
                   "@football.example.com", "/gCrinpc"),
        DkimResult("pass", "football.example.com", "test", "rsa-sha256",
                   "@football.example.com", "F45dVWDf"),
    ]  # fmt: skip
    queried = {name for name, rtype in dns_server.queries if rtype == "TXT"}
    assert queried == set(rfc8463_zone())


def test_rfc8463_example_with_lf_line_ends_verifies(dns_server: TestDnsServer) -> None:
    for name, value in rfc8463_zone().items():
        dns_server.add(name, "TXT", value)
    lf = rfc8463_message().replace(b"\r\n", b"\n")
    assert verdicts(check(dns_server, lf)) == ["pass", "pass"]


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"hungry", b"angry", "body hash did not verify"),
        (b"Subject: Is dinner ready?", b"Subject: Is lunch ready?", "signature did not verify"),
        (b"From: Joe", b"From: Mallory <m@evil.example>\r\nFrom: Joe", "signature did not verify"),
    ],
)
def test_rfc8463_example_altered_fails(
    dns_server: TestDnsServer, old: bytes, new: bytes, reason: str
) -> None:
    for name, value in rfc8463_zone().items():
        dns_server.add(name, "TXT", value)
    results = check(dns_server, rfc8463_message().replace(old, new, 1))
    assert [(r.result, r.reason) for r in results] == [("fail", reason)] * 2


def test_rfc8463_example_with_truncated_signatures_fails(dns_server: TestDnsServer) -> None:
    for name, value in rfc8463_zone().items():
        dns_server.add(name, "TXT", value)
    message = re.sub(rb" b=[^;]+?\r\n(?=From|DKIM)", b" b=AAAA\r\n", rfc8463_message())
    assert message.count(b"b=AAAA\r\n") == 2
    results = check(dns_server, message)
    assert [(r.result, r.reason) for r in results] == [("fail", "signature did not verify")] * 2


def test_rfc8463_keys_reproduce_the_published_signatures() -> None:
    """Ed25519 and RSASSA-PKCS1-v1_5 are deterministic: our key loading and signing of the
    header hash give the RFC's b= values byte for byte."""
    headers, _ = dkim.rfc822_parse(rfc8463_message())
    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    keys = [
        SigningKey("football.example.com", "brisbane", "ed25519-sha256",
                   (DATA / "rfc8463-brisbane.seed").read_bytes()),
        SigningKey("football.example.com", "test", "rsa-sha256",
                   (DATA / "rfc8463-test.pem").read_bytes()),
    ]  # fmt: skip
    for key, header in zip(keys, headers[:2], strict=True):
        tags = dkim.util.parse_tag_value(header[1])
        names = [n.lower() for n in re.split(rb"\s*:\s*", tags[b"h"])]
        digest = hashlib.sha256()
        canonical = relaxed.canonicalize_headers(headers)
        dkim.hash_headers(digest, relaxed, canonical, names, tuple(header), tags)
        published = re.sub(rb"\s+", b"", tags[b"b"])
        assert base64.b64encode(key.sign_digest(digest.digest())) == published


def test_rfc8463_private_keys_give_the_published_records() -> None:
    zone = rfc8463_zone()
    seed = (DATA / "rfc8463-brisbane.seed").read_bytes()
    rsa_pem = (DATA / "rfc8463-test.pem").read_bytes()
    assert public_record(seed, "ed25519") == zone["brisbane._domainkey.football.example.com"]
    assert public_record(rsa_pem, "rsa-sha256") == zone["test._domainkey.football.example.com"]
    raw_seed = base64.b64decode(seed)
    assert public_record(raw_seed, "ed25519-sha256") == public_record(seed, "ed25519")


# -- sign() then verify() -------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa", "ed25519", "dual"])
def test_sign_then_verify_passes(
    dns_server: TestDnsServer, rsa_key: SigningKey, ed_key: SigningKey, which: str
) -> None:
    keys = {"rsa": [rsa_key], "ed25519": [ed_key], "dual": [rsa_key, ed_key]}[which]
    publish(dns_server, *keys)
    results = check(dns_server, signed(MESSAGE, *keys))
    assert [(r.result, r.selector, r.algorithm) for r in results] == [
        ("pass", key.selector, key.algorithm) for key in keys
    ]
    assert all(r.domain == "example.org" and r.identity == "@example.org" for r in results)
    assert len({r.header_b for r in results}) == len(keys)


def test_signature_fields_are_folded_crlf_lines(rsa_key: SigningKey, ed_key: SigningKey) -> None:
    out = sign(MESSAGE, [rsa_key, ed_key], now=NOW)
    assert out.endswith(b"\r\n")
    lines = out[:-2].split(b"\r\n")
    assert all(len(line) <= 78 and b"\r" not in line and b"\n" not in line for line in lines)
    starts = [line for line in lines if not line[:1].isspace()]
    assert starts == [line for line in lines if line.startswith(b"DKIM-Signature: v=1; ")]
    assert len(starts) == 2


def test_signature_tags(rsa_key: SigningKey) -> None:
    header = sign(MESSAGE, [rsa_key], now=NOW, expire_after=3600)
    tags = dkim.util.parse_tag_value(header.split(b":", 1)[1])
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"], tags[b"a"]) == (b"example.org", b"rsa1", b"rsa-sha256")
    assert (tags[b"t"], tags[b"x"]) == (b"1700000000", b"1700003600")
    names = [n.lower() for n in re.split(rb"\s*:\s*", tags[b"h"])]
    # Present fields once each, then one more of each OVERSIGNED field (RFC 6376 §8.15).
    present = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version",
               b"content-type"]  # fmt: skip
    assert names == present + [name.lower().encode() for name in OVERSIGNED]
    assert b"reply-to" in names and b"bcc" not in names and b"received" not in names


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"noon?", b"nine?", "body hash did not verify"),
        (b"Subject: Lunch", b"Subject: Dinner", "signature did not verify"),
        (
            b"From: Alice",
            b"From: Mallory <m@evil.example>\r\nFrom: Alice",
            "signature did not verify",
        ),
        (b"Subject: Lunch", b"Subject: Free money\r\nSubject: Lunch", "signature did not verify"),
        (b"\r\nDate:", b"\r\nReply-To: m@evil.example\r\nDate:", "signature did not verify"),
    ],
    ids=["body", "subject", "second-from", "second-subject", "added-reply-to"],
)
def test_message_altered_after_signing_fails(
    dns_server: TestDnsServer,
    rsa_key: SigningKey,
    ed_key: SigningKey,
    old: bytes,
    new: bytes,
    reason: str,
) -> None:
    publish(dns_server, rsa_key, ed_key)
    message = signed(MESSAGE, rsa_key, ed_key)
    assert verdicts(check(dns_server, message)) == ["pass", "pass"]
    altered = message.replace(old, new, 1)
    assert altered != message
    assert [(r.result, r.reason) for r in check(dns_server, altered)] == [("fail", reason)] * 2


def test_unsigned_field_may_be_added(dns_server: TestDnsServer, ed_key: SigningKey) -> None:
    publish(dns_server, ed_key)
    message = signed(MESSAGE, ed_key).replace(b"\r\nDate:", b"\r\nX-Spam: 0\r\nDate:", 1)
    assert verdicts(check(dns_server, message)) == ["pass"]


def test_large_message_is_verified_in_a_thread(
    dns_server: TestDnsServer, ed_key: SigningKey
) -> None:
    publish(dns_server, ed_key)
    big = MESSAGE + (b"x" * 76 + b"\r\n") * (INLINE_LIMIT // 78 + 1)
    assert len(big) > INLINE_LIMIT
    message = signed(big, ed_key)
    assert verdicts(check(dns_server, message)) == ["pass"]
    assert verdicts(check(dns_server, message[:-10] + b"y" * 8 + b"\r\n")) == ["fail"]


def test_unsigned_message_has_no_results(dns_server: TestDnsServer) -> None:
    assert check(dns_server, MESSAGE) == []
    assert dns_server.queries == []


def test_at_most_max_signatures_are_checked(dns_server: TestDnsServer, ed_key: SigningKey) -> None:
    publish(dns_server, ed_key)
    message = signed(MESSAGE, *[ed_key] * 7)
    assert verdicts(check(dns_server, message)) == ["pass"] * 5
    assert verdicts(check(dns_server, message, max_signatures=7)) == ["pass"] * 7
    assert dns_server.queries.count(("ed1._domainkey.example.org", "TXT")) == 2


def test_expiry_uses_now(dns_server: TestDnsServer, ed_key: SigningKey) -> None:
    publish(dns_server, ed_key)
    message = signed(MESSAGE, ed_key, expire_after=3600)
    assert verdicts(check(dns_server, message, now=NOW + 3599)) == ["pass"]
    late = check(dns_server, message, now=NOW + 3601)
    assert [(r.result, r.reason) for r in late] == [("fail", "signature expired")]


# -- key lookup -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["timeout", "servfail"])
def test_key_lookup_failure_is_temperror(
    dns_server: TestDnsServer, ed_key: SigningKey, mode: str
) -> None:
    publish(dns_server, ed_key)
    dns_server.fail("ed1._domainkey.example.org", "TXT", mode)
    results = run(verify(signed(MESSAGE, ed_key), resolver_for(dns_server, timeout=0.2)))
    assert [(r.result, r.reason) for r in results] == [("temperror", "key lookup failed")]


def test_missing_key_is_permerror(dns_server: TestDnsServer, ed_key: SigningKey) -> None:
    results = check(dns_server, signed(MESSAGE, ed_key))
    assert [(r.result, r.reason) for r in results] == [("permerror", "no key for signature")]
    dns_server.add("ed1._domainkey.example.org", "A", "127.0.0.9")  # NODATA for TXT
    results = check(dns_server, signed(MESSAGE, ed_key))
    assert [(r.result, r.reason) for r in results] == [("permerror", "no key for signature")]


def _rsa_p(pem: bytes) -> str:
    return public_record(pem, "rsa").partition("p=")[2]


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("v=DKIM1; k=rsa; p=", "key revoked"),
        ("v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
         "key type does not match a="),
        ("v=DKIM1; k=rsa; h=sha1; p={p}", "key does not allow sha256"),
        ("v=DKIM1; k=rsa; s=tlsrpt; p={p}", "key is not for email"),
        ("v=DKIM2; k=rsa; p={p}", "key record version is not DKIM1"),
        ("v=DKIM1; k=rsa", "key record has no p="),
        ("v=DKIM1; k=rsa; p=AAAA", "key record unusable"),
        ("not a key record", "key record syntax error"),
    ],
)  # fmt: skip
def test_unusable_key_record_is_permerror(
    dns_server: TestDnsServer, rsa_key: SigningKey, rsa_pem: bytes, record: str, reason: str
) -> None:
    dns_server.add("rsa1._domainkey.example.org", "TXT", record.format(p=_rsa_p(rsa_pem)))
    results = check(dns_server, signed(MESSAGE, rsa_key))
    assert [(r.result, r.reason) for r in results] == [("permerror", reason)]


def test_usable_record_among_several_is_chosen(
    dns_server: TestDnsServer, rsa_key: SigningKey
) -> None:
    dns_server.add("rsa1._domainkey.example.org", "TXT", "v=DKIM1; k=rsa; p=")
    publish(dns_server, rsa_key)
    assert verdicts(check(dns_server, signed(MESSAGE, rsa_key))) == ["pass"]


def test_rsa_key_of_512_bits_is_permerror(dns_server: TestDnsServer) -> None:
    """RFC 8301 §3.2: signatures with RSA keys under 1024 bits are not valid. Signed by
    dkimpy, as our signer refuses such a key."""
    pem = (DATA / "rsa512.pem").read_bytes()
    dns_server.add("weak._domainkey.example.org", "TXT", public_record(pem, "rsa"))
    header = dkim.sign(MESSAGE, b"weak", b"example.org", pem,
                       canonicalize=(b"relaxed", b"relaxed"))  # fmt: skip
    results = check(dns_server, header + MESSAGE)
    assert [(r.result, r.reason) for r in results] == [
        ("permerror", "RSA key shorter than 1024 bits (RFC 8301)")
    ]
    with pytest.raises(ValueError, match="1024"):
        SigningKey("example.org", "weak", "rsa-sha256", pem)


def test_rsa_sha1_is_permerror(dns_server: TestDnsServer, rsa_key: SigningKey) -> None:
    """RFC 8301 §3.1: rsa-sha1 MUST NOT be used for verifying. dkimpy signs it; the
    signature itself is good (dkimpy verifies it), we refuse it."""
    publish(dns_server, rsa_key)
    header = dkim.sign(MESSAGE, b"rsa1", b"example.org", rsa_key.private_key,
                       signature_algorithm=b"rsa-sha1")  # fmt: skip
    record = public_record(rsa_key.private_key, "rsa").encode()
    assert dkim.verify(header + MESSAGE, dnsfunc=lambda name, timeout=5: record)
    results = check(dns_server, header + MESSAGE)
    assert [(r.result, r.algorithm) for r in results] == [("permerror", "rsa-sha1")]


def test_foreign_signer_relaxed_simple_and_simple_simple(
    dns_server: TestDnsServer, rsa_key: SigningKey
) -> None:
    """Signatures made by dkimpy (another signer) with the other canonicalizations."""
    publish(dns_server, rsa_key)
    for canon in [(b"relaxed", b"simple"), (b"simple", b"simple")]:
        header = dkim.sign(MESSAGE, b"rsa1", b"example.org", rsa_key.private_key,
                           canonicalize=canon)  # fmt: skip
        assert verdicts(check(dns_server, header + MESSAGE)) == ["pass"]


def test_partial_body_length_is_policy(dns_server: TestDnsServer, rsa_key: SigningKey) -> None:
    """RFC 6376 §8.2: text after l= is unsigned; RFC 8601 §2.7.1 policy."""
    publish(dns_server, rsa_key)
    header = dkim.sign(MESSAGE, b"rsa1", b"example.org", rsa_key.private_key, length=True)
    assert verdicts(check(dns_server, header + MESSAGE)) == ["pass"]
    appended = check(dns_server, header + MESSAGE + b"Click here: http://evil.example/\r\n")
    assert [(r.result, r.reason) for r in appended] == [("policy", "body only partly signed (l=)")]


# -- the signature's own tags ---------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "result", "reason"),
    [
        (b"v=1;", b"v=2;", "neutral", "unsupported DKIM version"),
        (b" bh=", b" xh=", "neutral", "missing bh= tag"),
        (b"s=ed1;", b"s=ed1; s=ed1;", "neutral", "signature syntax error"),
        (b"c=relaxed/relaxed", b"c=fancy/relaxed", "neutral", "unsupported canonicalization"),
        (b"d=example.org", b"d=exa mple.org", "neutral", "malformed d= or s= tag"),
        (b"t=1700000000", b"t=soon", "neutral", "malformed t= tag"),
        (b"a=ed25519-sha256", b"a=rsa-sha512", "permerror", "unsupported signature algorithm"),
        (b"d=example.org;", b"d=example.org; i=joe@example.net;", "permerror",
         "i= is not within d="),
        (b"d=example.org;", b"d=example.org; q=http/well-known;", "permerror",
         "unsupported query method"),
        (b"From:", b"", "permerror", "From not signed"),
        (b"t=1700000000", b"t=1700000000; x=1600000000", "permerror", "x= is before t="),
    ],
)  # fmt: skip
def test_bad_signature_tags(
    dns_server: TestDnsServer, ed_key: SigningKey, old: bytes, new: bytes, result: str, reason: str
) -> None:
    publish(dns_server, ed_key)
    message = unfold(signed(MESSAGE, ed_key))
    assert verdicts(check(dns_server, message)) == ["pass"]
    field, rest = message.split(b"\r\n", 1)  # unfolded: the signature is the first line
    broken = field.replace(old, new) + b"\r\n" + rest
    assert broken != message
    assert [(r.result, r.reason) for r in check(dns_server, broken)] == [(result, reason)]


def test_i_within_d_passes_and_t_s_key_requires_equal(
    dns_server: TestDnsServer, ed_pem: bytes
) -> None:
    header = dkim.sign(MESSAGE, b"ed1", b"example.org", _dkimpy_seed(ed_pem),
                       identity=b"alice@news.example.org",
                       signature_algorithm=b"ed25519-sha256")  # fmt: skip
    record = public_record(ed_pem, "ed25519")
    dns_server.add("ed1._domainkey.example.org", "TXT", record)
    results = check(dns_server, header + MESSAGE)
    assert [(r.result, r.identity) for r in results] == [("pass", "alice@news.example.org")]
    dns_server.remove("ed1._domainkey.example.org")
    dns_server.add("ed1._domainkey.example.org", "TXT", record + "; t=s")
    results = check(dns_server, header + MESSAGE)
    assert [(r.result, r.reason) for r in results] == [
        ("permerror", "i= must equal d= for this key (t=s)")
    ]


def _dkimpy_seed(pem: bytes) -> bytes:
    """dkimpy's form of an Ed25519 private key: the base64 seed."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(raw)


def test_unparsable_header_is_permerror_without_dns(
    dns_server: TestDnsServer, ed_key: SigningKey
) -> None:
    publish(dns_server, ed_key)
    message = signed(MESSAGE, ed_key).replace(b"\r\nDate:", b"\r\nno colon here\r\nDate:", 1)
    results = check(dns_server, message)
    assert [(r.result, r.reason, r.domain) for r in results] == [
        ("permerror", "message header malformed", "example.org")
    ]
    assert dns_server.queries == []


def test_garbage_signature_is_neutral(dns_server: TestDnsServer) -> None:
    message = b"DKIM-Signature: this is not a tag list\r\n" + MESSAGE
    assert check(dns_server, message) == [
        DkimResult("neutral", "", "", "", "", "", "signature syntax error")
    ]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_verify_never_raises_on_hostile_signatures(value: bytes) -> None:
    class NoKeys:
        async def txt(self, name: str) -> list[bytes]:
            return []

    message = b"DKIM-Signature: " + value.replace(b"\n", b"\n ") + b"\r\n" + MESSAGE
    for result in run(verify(message, NoKeys())):  # type: ignore[arg-type]
        assert result.result != "pass"
        fields = (result.domain, result.selector, result.algorithm, result.identity)
        assert not any(c.isspace() or not c.isprintable() for f in fields for c in f)


# -- SigningKey and key generation ----------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "selector"),
    [
        ("example.org\r\nBcc: x@evil.example", "sel"),
        ("example.org", "sel\r\nBcc: x@evil.example"),
        ("example.org", "sel; d=evil.example"),
        ("example.org", "sel\n"),
        ("exa mple.org", "sel"),
        ("example.org", " sel"),
        ("", "sel"),
        ("example.org", ""),
        ("example.org", "sélecteur"),
    ],
)
def test_signing_key_refuses_names_that_could_inject(
    ed_pem: bytes, domain: str, selector: str
) -> None:
    with pytest.raises(ValueError, match="not a valid DKIM"):
        SigningKey(domain, selector, "ed25519-sha256", ed_pem)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("ab-_.\r\n;= \t:é"), max_size=12),
    st.text(alphabet=st.sampled_from("ab-_.\r\n;= \t:é"), max_size=12),
)
def test_accepted_names_give_exactly_one_clean_field(domain: str, selector: str) -> None:
    seed = (DATA / "rfc8463-brisbane.seed").read_bytes()
    try:
        key = SigningKey(domain, selector, "ed25519-sha256", seed)
    except ValueError:
        return  # refusing is always safe; what is accepted must be clean:
    assert not any(c in domain + selector for c in "\r\n;= \t:")
    out = sign(MESSAGE, [key], now=NOW)
    assert out.count(b"\n") == out.count(b"\r\n") == len(out.split(b"\r\n")) - 1
    assert [line[:1].isspace() for line in out.split(b"\r\n")[:-1]].count(False) == 1
    tags = dkim.util.parse_tag_value(out.split(b":", 1)[1])
    assert (tags[b"d"], tags[b"s"]) == (key.domain.encode(), selector.encode())


def test_signing_key_normalizes_domain_and_hides_private_key(ed_pem: bytes) -> None:
    key = SigningKey("Bücher.Example", "sel", "ed25519-sha256", ed_pem)
    assert key.domain == "xn--bcher-kva.example"
    assert b"PRIVATE" not in repr(key).encode() and "private_key" not in repr(key)


def test_signing_key_checks_algorithm_and_key(rsa_pem: bytes, ed_pem: bytes) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        SigningKey("example.org", "s", "rsa-sha1", rsa_pem)
    with pytest.raises(ValueError, match="not a ed25519-sha256 key"):
        SigningKey("example.org", "s", "ed25519-sha256", rsa_pem)
    with pytest.raises(ValueError, match="not a rsa-sha256 key"):
        SigningKey("example.org", "s", "rsa-sha256", ed_pem)
    with pytest.raises(ValueError, match="unreadable"):
        SigningKey("example.org", "s", "rsa-sha256", b"-----BEGIN PRIVATE KEY-----\nAAAA\n")


def test_sign_needs_a_from_field(ed_key: SigningKey) -> None:
    with pytest.raises(ValueError, match="From"):
        sign(MESSAGE.replace(b"From:", b"Sender:"), [ed_key])
    with pytest.raises(ValueError, match="parsed"):
        sign(b"no colon here\r\n" + MESSAGE, [ed_key])


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519", "rsa-sha256", "ed25519-sha256"])
def test_generate_key_gives_matching_record(algorithm: str) -> None:
    pem, record = generate_key(algorithm, 1024)
    kind = algorithm.removesuffix("-sha256")
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert re.fullmatch(rf"v=DKIM1; k={kind}; p=[A-Za-z0-9+/]+=*", record)
    assert public_record(pem, algorithm) == record
    p = base64.b64decode(record.partition("p=")[2])
    assert (len(p) == 32) if kind == "ed25519" else p.startswith(b"\x30")


def test_generate_key_limits() -> None:
    with pytest.raises(ValueError, match="size"):
        generate_key("rsa", 512)
    with pytest.raises(ValueError, match="size"):
        generate_key("rsa", 8192)
    with pytest.raises(ValueError, match="algorithm"):
        generate_key("dsa")


# -- verifiers that are not ours ------------------------------------------------------

DKIMPY_VERIFY = """
import json, sys, dkim
message, zone = open(sys.argv[1], "rb").read(), json.load(open(sys.argv[2]))
def dnsfunc(name, timeout=5):
    return zone.get(name.decode().rstrip(".").lower(), "").encode() or None
checker = dkim.DKIM(message)
print(json.dumps([checker.verify(i, dnsfunc=dnsfunc) for i in range(int(sys.argv[3]))]))
"""


def test_dkimpy_in_another_process_verifies_our_signatures(
    tmp_path: Path, rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    zone = {f"{k.selector}._domainkey.{k.domain}": public_record(k.private_key, k.algorithm)
            for k in (rsa_key, ed_key)}  # fmt: skip
    (tmp_path / "zone.json").write_text(json.dumps(zone))
    for name, message, expected in [
        ("good", signed(MESSAGE, rsa_key, ed_key), [True, True]),
        ("bad", signed(MESSAGE, rsa_key, ed_key).replace(b"Lunch", b"Lunch!"), [False, False]),
    ]:
        (tmp_path / name).write_bytes(message)
        argv = [
            sys.executable,
            "-c",
            DKIMPY_VERIFY,
            str(tmp_path / name),
            str(tmp_path / "zone.json"),
            "2",
        ]
        done = subprocess.run(argv, capture_output=True, check=True, timeout=60)
        assert json.loads(done.stdout) == expected, name


# Runs in a private network and mount namespace (unshare): only its own loopback exists,
# /etc/resolv.conf is bind-mounted to name 127.0.0.1 there, and a TestDnsServer answers on
# port 53 of it, so the real tools' own resolvers (dnspython for dkimverify, libresolv for
# OpenDKIM) find our keys. Nothing outside the namespace is touched.
NETNS_HELPER = """
import fcntl, json, os, socket, struct, subprocess, sys, tempfile
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(probe, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(probe, 0x8914, struct.pack("16sH", b"lo", flags | 1))  # SIOCSIFFLAGS lo up
conf = os.path.join(tempfile.mkdtemp(), "resolv.conf")
with open(conf, "w") as f:
    f.write("nameserver 127.0.0.1\\noptions edns0\\n")
subprocess.run(["mount", "--bind", conf, "/etc/resolv.conf"], check=True)
bind = socket.socket.bind
socket.socket.bind = lambda s, a: bind(s, (a[0], 53) if a[1] == 0 else a)
from tests.dnsserver import TestDnsServer
job = json.load(open(sys.argv[1]))
out = []
with TestDnsServer() as server:
    for name, value in job["zone"].items():
        server.add(name, "TXT", value)
    for path, command in job["runs"]:
        with open(path, "rb") as message:
            done = subprocess.run(command, stdin=message, capture_output=True, timeout=60)
        out.append([done.returncode, (done.stdout + done.stderr).decode(errors="replace")])
    out.append(sorted({name for name, _ in server.queries}))
print(json.dumps(out))
"""


def in_netns(tmp_path: Path, zone: dict[str, str], runs: list[tuple[bytes, list[str]]]) -> Any:
    """Each (message, command) run with the message on stdin, DNS answered from ``zone``;
    [(returncode, output), ..., names queried]."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("unshare/mount not installed")
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no namespaces here: {probe.stderr.decode().strip()}")
    jobs = []
    for i, (message, command) in enumerate(runs):
        (tmp_path / f"m{i}").write_bytes(message)
        jobs.append([str(tmp_path / f"m{i}"), command])
    (tmp_path / "job.json").write_text(json.dumps({"zone": zone, "runs": jobs}))
    argv = ["unshare", "--net", "--mount", "--propagation", "private",
            sys.executable, "-c", NETNS_HELPER, str(tmp_path / "job.json")]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_dkimverify_command_verifies_our_signatures(
    tmp_path: Path, rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    zone = {f"{k.selector}._domainkey.{k.domain}": public_record(k.private_key, k.algorithm)
            for k in (rsa_key, ed_key)}  # fmt: skip
    tool = shutil.which("dkimverify")
    command = [tool] if tool else [sys.executable, "-m", "dkim.dkimverify"]
    good = signed(MESSAGE, rsa_key, ed_key)
    bad = good.replace(b"Subject: Lunch", b"Subject: Brunch")
    out = in_netns(tmp_path, zone, [
        (good, [*command, "--index", "0"]), (good, [*command, "--index", "1"]),
        (bad, [*command, "--index", "0"]), (bad, [*command, "--index", "1"]),
    ])  # fmt: skip
    assert [rc for rc, _ in out[:4]] == [0, 0, 1, 1], out
    assert out[0][1] == "signature ok\n"
    assert out[4] == sorted(zone)


@pytest.mark.skipif(shutil.which("opendkim-testmsg") is None, reason="opendkim-tools missing")
def test_opendkim_verifies_our_signatures(
    tmp_path: Path, rsa_key: SigningKey, ed_key: SigningKey, rsa_pem: bytes
) -> None:
    """opendkim-testmsg verifies all signatures of a message at once, so each key signs a
    message of its own. A wrong published key and an altered body must fail there too."""
    zone = {f"{k.selector}._domainkey.{k.domain}": public_record(k.private_key, k.algorithm)
            for k in (rsa_key, ed_key)}  # fmt: skip
    other = SigningKey("example.org", "other", "rsa-sha256", generate_key("rsa", 1024)[0])
    zone["other._domainkey.example.org"] = public_record(rsa_pem, "rsa")  # not other's key
    tool = ["opendkim-testmsg"]
    out = in_netns(tmp_path, zone, [
        (signed(MESSAGE, rsa_key), tool),
        (signed(MESSAGE, ed_key), tool),
        (signed(MESSAGE, other), tool),
        (signed(MESSAGE, rsa_key).replace(b"noon", b"nine"), tool),
    ])  # fmt: skip
    assert [rc == 0 for rc, _ in out[:4]] == [True, True, False, False], out
    assert out[0][1] == "" and out[1][1] == ""
    assert {"rsa1._domainkey.example.org", "ed1._domainkey.example.org"} <= set(out[4])


@pytest.mark.skipif(shutil.which("opendkim-testmsg") is None, reason="opendkim-tools missing")
def test_opendkim_signature_is_rsa_sha1_and_refused(
    tmp_path: Path, dns_server: TestDnsServer, rsa_pem: bytes
) -> None:
    """opendkim-testmsg signs with its defaults, rsa-sha1 relaxed/simple: a foreign,
    valid signature that RFC 8301 makes unacceptable."""
    (tmp_path / "key.pem").write_bytes(rsa_pem)
    argv = [
        "opendkim-testmsg",
        "-C",
        "-d",
        "example.org",
        "-s",
        "od",
        "-k",
        str(tmp_path / "key.pem"),
    ]
    done = subprocess.run(argv, input=MESSAGE, capture_output=True, check=True, timeout=60)
    assert done.stdout.endswith(MESSAGE)
    dns_server.add("od._domainkey.example.org", "TXT", public_record(rsa_pem, "rsa"))
    record = public_record(rsa_pem, "rsa").encode()
    assert dkim.verify(done.stdout, dnsfunc=lambda name, timeout=5: record)
    results = check(dns_server, done.stdout)
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        ("permerror", "rsa-sha1", "od")
    ]
