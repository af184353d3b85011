"""Argon2id hashes, the dummy hash, SASLprep and SCRAM-SHA-256 keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import sys

import pytest
from argon2 import PasswordHasher, extract_parameters

from postbote import passwords
from postbote.passwords import ScramKeys, saslprep, scram_keys


def test_hash_is_argon2id_and_verifies() -> None:
    h = passwords.hash_password("correct horse")
    assert h.startswith("$argon2id$")
    assert "correct horse" not in h
    assert passwords.verify_password(h, "correct horse")
    assert not passwords.verify_password(h, "correct horsE")
    assert not passwords.verify_password(h, "")


def test_hashes_are_salted() -> None:
    assert passwords.hash_password("pw") != passwords.hash_password("pw")


def test_non_ascii_password() -> None:
    h = passwords.hash_password("pässwörd🔑")
    assert passwords.verify_password(h, "pässwörd🔑")
    assert not passwords.verify_password(h, "passwoerd🔑")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "$argon2id$v=19$m=65536,t=3,p=4$xx",
        "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$",
        "é$argon2id$v=19",
        "\x00",
    ],
)
def test_verify_malformed_hash_is_false(bad: str) -> None:
    assert passwords.verify_password(bad, "pw") is False


def test_verify_truncated_hash_is_false() -> None:
    h = passwords.hash_password("pw")
    assert passwords.verify_password(h[:-4], "pw") is False


def test_verify_undecodable_password_is_false() -> None:
    h = passwords.hash_password("pw")
    assert passwords.verify_password(h, "pw\udcff") is False


def test_needs_rehash() -> None:
    assert passwords.needs_rehash(passwords.hash_password("pw")) is False
    weak = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    assert passwords.needs_rehash(weak) is True
    assert passwords.needs_rehash("garbage") is True


def test_dummy_hash_is_cached_and_like_real_hashes() -> None:
    first = passwords.DUMMY_HASH
    assert passwords.DUMMY_HASH is first
    assert passwords.dummy_hash() is first
    # Same cost as a real hash: same algorithm and parameters.
    assert extract_parameters(first) == extract_parameters(passwords.hash_password("x"))
    assert not passwords.verify_password(first, "")


def test_dummy_hash_is_lazy() -> None:
    code = (
        "import postbote.passwords as p; "
        "assert p._dummy_hash_for.cache_info().currsize == 0; "
        "p.DUMMY_HASH; "
        "assert p._dummy_hash_for.cache_info().currsize == 1"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_module_attribute() -> None:
    with pytest.raises(AttributeError):
        name = "NO_SUCH_THING"
        getattr(passwords, name)


# --- SASLprep ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # RFC 4013 §3 examples
        ("I\u00adX", "IX"),  # SOFT HYPHEN mapped to nothing
        ("user", "user"),
        ("USER", "USER"),  # case preserved
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),  # NFKC
        # RFC 4013 §2.1: non-ASCII space to SPACE
        ("a\u00a0b", "a b"),
        ("", ""),
        ("🔑", "🔑"),  # unassigned in Unicode 3.2: allowed (query)
    ],
)
def test_saslprep(given: str, expected: str) -> None:
    assert saslprep(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "\u0007",  # RFC 4013 §3: prohibited character
        "\u0627\u0031",  # RFC 4013 §3: bidi check
        "a\u0627",  # RandALCat mixed with LCat
        "\ue000",  # private use
    ],
)
def test_saslprep_rejects(given: str) -> None:
    with pytest.raises(ValueError):
        saslprep(given)


# --- SCRAM-SHA-256 -----------------------------------------------------------------------

# RFC 7677 §3, the whole exchange for user "user", password "pencil".
RFC7677_CLIENT_FIRST_BARE = "n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL_NO_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC7677_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def test_scram_rfc7677_vector() -> None:
    keys = scram_keys("pencil", iterations=4096, salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    auth_message = ",".join(
        [RFC7677_CLIENT_FIRST_BARE, RFC7677_SERVER_FIRST, RFC7677_CLIENT_FINAL_NO_PROOF]
    ).encode()
    # RFC 5802 §3: the server recovers ClientKey from the proof and checks H(ClientKey).
    client_signature = hmac.digest(keys.stored_key, auth_message, "sha256")
    client_key = _xor(base64.b64decode(RFC7677_PROOF), client_signature)
    assert hashlib.sha256(client_key).digest() == keys.stored_key
    # ... and proves itself with ServerSignature = HMAC(ServerKey, AuthMessage).
    server_signature = hmac.digest(keys.server_key, auth_message, "sha256")
    assert base64.b64encode(server_signature).decode() == RFC7677_SERVER_SIGNATURE
    assert keys.iterations == 4096


def test_scram_wrong_password_does_not_verify() -> None:
    keys = scram_keys("pencil!", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    auth_message = ",".join(
        [RFC7677_CLIENT_FIRST_BARE, RFC7677_SERVER_FIRST, RFC7677_CLIENT_FINAL_NO_PROOF]
    ).encode()
    client_signature = hmac.digest(keys.stored_key, auth_message, "sha256")
    client_key = _xor(base64.b64decode(RFC7677_PROOF), client_signature)
    assert hashlib.sha256(client_key).digest() != keys.stored_key


def test_scram_defaults() -> None:
    a = scram_keys("pw")
    b = scram_keys("pw")
    assert isinstance(a, ScramKeys)
    assert a.iterations == 4096
    assert len(a.salt) == 16
    assert a.salt != b.salt and a.stored_key != b.stored_key
    assert len(a.stored_key) == len(a.server_key) == 32


def test_scram_is_deterministic_for_salt_and_iterations() -> None:
    salt = b"0123456789abcdef"
    assert scram_keys("pw", salt=salt, iterations=10) == scram_keys("pw", salt=salt, iterations=10)
    assert scram_keys("pw", salt=salt, iterations=10) != scram_keys("pw", salt=salt, iterations=11)


def test_scram_uses_saslprep() -> None:
    salt = b"s" * 16
    assert scram_keys("I\u00adX", salt=salt) == scram_keys("IX", salt=salt)
    assert scram_keys("\u2168", salt=salt) == scram_keys("IX", salt=salt)


def test_scram_unprepable_password_used_raw() -> None:
    salt = b"s" * 16
    salted = hashlib.pbkdf2_hmac("sha256", b"a\x07b", salt, 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    assert scram_keys("a\x07b", salt=salt).stored_key == hashlib.sha256(client_key).digest()


def test_scram_rejects_zero_iterations() -> None:
    with pytest.raises(ValueError):
        scram_keys("pw", iterations=0)


def test_dummy_hash_follows_the_hasher_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", cheap)
    assert extract_parameters(passwords.DUMMY_HASH) == extract_parameters(cheap.hash("x"))
    assert not passwords.needs_rehash(passwords.DUMMY_HASH)
