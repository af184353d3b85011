"""Password hashing for stored accounts: Argon2id hashes and SCRAM-SHA-256 keys.

Owns how a cleartext password becomes something storable: an Argon2id hash (checked for
PLAIN/LOGIN and POP3/IMAP logins) and the SCRAM-SHA-256 StoredKey/ServerKey pair
(RFC 5802 §3, RFC 7677) that a SCRAM exchange needs. Nothing here keeps a cleartext
password or does I/O; hashing is deliberately slow, so call it off the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error

# argon2-cffi's defaults are Argon2id with the RFC 9106 §4 "second recommended option"
# (t=3, m=64 MiB, p=4). A PasswordHasher holds only those parameters: it is a constant.
_HASHER = PasswordHasher()

SCRAM_DEFAULT_ITERATIONS = 4096  # RFC 7677 §4: at least 4096
SCRAM_SALT_BYTES = 16


def hash_password(pw: str) -> str:
    """Return the Argon2id hash (PHC string) of ``pw``. Slow on purpose (~0.1 s).

    Raises UnicodeEncodeError (a ValueError) if ``pw`` holds lone surrogates.
    """
    return _HASHER.hash(pw)


def verify_password(hash: str, pw: str) -> bool:
    """True if ``pw`` matches ``hash``; False on mismatch or a malformed hash. Never raises."""
    try:
        return _HASHER.verify(hash, pw)
    except (Argon2Error, ValueError):  # VerifyMismatchError, InvalidHashError, bad encoding
        return False


def needs_rehash(hash: str) -> bool:
    """True if ``hash`` was made with other parameters than today's (or is unreadable)."""
    try:
        return _HASHER.check_needs_rehash(hash)
    except (Argon2Error, ValueError):
        return True


def dummy_hash() -> str:
    """A hash of a random password, made once, with the same parameters as real ones.

    Verifying against it for an unknown user costs what verifying a known user costs,
    so the answer time does not tell whether an account exists.
    """
    return _dummy_hash_for(_HASHER)


@functools.lru_cache(maxsize=2)
def _dummy_hash_for(hasher: PasswordHasher) -> str:
    # Keyed by the hasher so that the dummy always costs what the current parameters cost.
    return hasher.hash(secrets.token_urlsafe(24))


def __getattr__(name: str) -> str:
    # ``DUMMY_HASH`` is computed on first access (module __getattr__, PEP 562), not at import.
    if name == "DUMMY_HASH":
        return dummy_hash()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- SCRAM-SHA-256 -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What a server stores for SCRAM-SHA-256 (RFC 5802 §3): never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def scram_keys(
    pw: str, *, iterations: int = SCRAM_DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramKeys:
    """Derive the SCRAM-SHA-256 keys for ``pw`` (RFC 5802 §3, RFC 7677).

    SaltedPassword = Hi(Normalize(pw), salt, i); ClientKey = HMAC(SaltedPassword, "Client Key");
    StoredKey = H(ClientKey); ServerKey = HMAC(SaltedPassword, "Server Key").
    A fresh 16-byte salt is drawn when none is given.
    """
    if iterations < 1:
        raise ValueError("SCRAM iteration count must be positive")
    if salt is None:
        salt = secrets.token_bytes(SCRAM_SALT_BYTES)
    try:
        normalized = saslprep(pw)
    except ValueError:
        # A password SASLprep refuses (control characters, bad bidi) is used as it is,
        # as PostgreSQL does: a client that cannot prep it falls back the same way.
        normalized = pw
    # RFC 5802 §2.2: Hi() is PBKDF2 (RFC 2898) with HMAC as the PRF and dkLen = len(H()).
    salted = hashlib.pbkdf2_hmac("sha256", normalized.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return ScramKeys(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", "sha256"),
    )


def _prohibited(ch: str) -> bool:
    # RFC 4013 §2.3: the prohibited output tables of RFC 3454.
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
    )


def saslprep(text: str) -> str:
    """SASLprep (RFC 4013) as a "query" (RFC 3454 §7: unassigned code points allowed).

    Unassigned code points are allowed because Python's stringprep tables are Unicode 3.2,
    under which every newer character (emoji, for instance) counts as unassigned.
    Raises ValueError for prohibited characters or a bidi violation.
    """
    # RFC 4013 §2.1: non-ASCII spaces map to SPACE; "commonly mapped to nothing" are dropped.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    # RFC 4013 §2.2: normalization form KC.
    normalized = unicodedata.normalize("NFKC", mapped)
    if not normalized:
        return normalized
    if any(_prohibited(ch) for ch in normalized):
        raise ValueError("SASLprep: prohibited character")
    # RFC 4013 §2.4 / RFC 3454 §6: bidirectional characters.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ValueError("SASLprep: mixed bidirectional text")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise ValueError("SASLprep: RandALCat text must start and end with RandALCat")
    return normalized
