"""SASL server mechanisms for SMTP AUTH (RFC 4954): PLAIN, LOGIN and SCRAM-SHA-256, sans-IO.

Owns one exchange between "AUTH <mechanism>" and its end: it reads what the client sent
(already base64-decoded by the SMTP core), asks a ``Credentials`` provider, and answers
with the next ``Step``: a ``Challenge`` (sent as "334 base64(data)"), a ``Success`` or a
``Failure``. No sockets, no clock, no logging; the caller maps steps to replies and logs.

Security rules kept here: the identity is always the authentication identity (authcid),
and an authorisation identity naming someone else fails (the maddy CVE-2023-27582 class);
SCRAM answers an unknown user like a known one until the proof (RFC 5802 §9).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol, TypeAlias

from postbote.errors import StoreError
from postbote.passwords import SCRAM_DEFAULT_ITERATIONS, SCRAM_SALT_BYTES, ScramKeys
from postbote.store.addresses import normalize_address

MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256")  # advertised order

# Longest decoded client response we read. RFC 4616 §2 asks servers to accept authcid and
# passwd of 255 octets each; SCRAM messages are far shorter than this.
MAX_RESPONSE_OCTETS = 1024


class Credentials(Protocol):
    """The account store as SASL sees it. Both methods normalise the address themselves.

    ``verify_password`` is slow (Argon2) and must cost the same for unknown users;
    ``scram_credentials`` returns None for an unknown user. Errors propagate to the caller.
    """

    def verify_password(self, address: str, password: str) -> bool: ...

    def scram_credentials(self, address: str) -> ScramKeys | None: ...


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334 base64(data)`` and feed the client's next line to ``Exchange.step``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as ``identity``: the authcid as the client gave it, stripped."""

    identity: str


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange failed. ``malformed``: protocol or syntax error (501 5.5.2); otherwise
    bad credentials (535 5.7.8). ``reason`` is for the log only, never for the client."""

    malformed: bool
    reason: str


Step: TypeAlias = Challenge | Success | Failure

_BAD_CREDENTIALS = Failure(malformed=False, reason="bad credentials")
_AUTHZID_DIFFERS = Failure(malformed=False, reason="authzid differs")


def _malformed(reason: str) -> Failure:
    return Failure(malformed=True, reason=reason)


def _user_key(name: str) -> str:
    """The form under which two names are the same account: the store's normal form when
    the name is an address, else the stripped lower-case name."""
    name = name.strip()
    try:
        return normalize_address(name)
    except StoreError:
        return name.lower()


def _same_user(a: str, b: str) -> bool:
    return _user_key(a) == _user_key(b)


def _text(data: bytes) -> str | None:
    """Strict UTF-8 without NUL, or None."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _Life(Enum):
    NEW = auto()  # start() not called yet
    RUNNING = auto()  # a Challenge is outstanding: step() expected
    DONE = auto()  # Success or Failure returned (or the credentials raised)


class Exchange(ABC):
    """One AUTH exchange, created per AUTH command.

    Driven by ``start(initial)`` once, then ``step(data)`` for each client response while
    the last result was a ``Challenge``. After a ``Success`` or ``Failure`` (or an exception
    from the credentials), any further call raises RuntimeError. ``attempted`` is the
    authcid the client tried, once known (client-controlled text: log it with repr).
    """

    mechanism: str
    _first_challenge: bytes  # sent when AUTH came without an initial response

    def __init__(self, credentials: Credentials) -> None:
        self.attempted: str | None = None
        self._credentials = credentials
        self._life = _Life.NEW

    def start(self, initial: bytes | None) -> Step:
        """``initial``: the AUTH line's initial response, None if absent, b"" for "="."""
        if self._life is not _Life.NEW:
            raise RuntimeError(f"AUTH {self.mechanism}: start() called twice")
        if initial is None:  # RFC 4954 §4: the server sends an empty or first challenge
            self._life = _Life.RUNNING
            return Challenge(self._first_challenge)
        return self._advance(initial)

    def step(self, data: bytes) -> Step:
        """``data``: one client response, base64-decoded (the core handles "*")."""
        if self._life is not _Life.RUNNING:
            state = "before start()" if self._life is _Life.NEW else "after the end"
            raise RuntimeError(f"AUTH {self.mechanism}: step() called {state}")
        return self._advance(data)

    def _advance(self, data: bytes) -> Step:
        self._life = _Life.DONE  # stays so if the credentials raise
        result = (
            _malformed("response too long")
            if len(data) > MAX_RESPONSE_OCTETS
            else self._respond(data)
        )
        if isinstance(result, Challenge):
            self._life = _Life.RUNNING
        return result

    @abstractmethod
    def _respond(self, data: bytes) -> Step:
        """Handle one client message (the initial response or a later one)."""

    def _verify(self, identity: str, password: str) -> Step:
        if self._credentials.verify_password(identity, password):
            return Success(identity)
        return _BAD_CREDENTIALS


# --- PLAIN (RFC 4616) ------------------------------------------------------------------------


class _Plain(Exchange):
    mechanism = "PLAIN"
    _first_challenge = b""

    def _respond(self, data: bytes) -> Step:
        # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        fields = data.split(b"\0")
        if len(fields) != 3:
            return _malformed("PLAIN message needs exactly two NULs")
        try:
            authzid, authcid, passwd = (f.decode("utf-8") for f in fields)
        except UnicodeDecodeError:
            return _malformed("PLAIN message is not UTF-8")
        identity = authcid.strip()
        if not identity:
            return _malformed("empty authcid")
        self.attempted = identity
        if not passwd:
            return _malformed("empty password")
        # RFC 4616 §2: the server must check that the authcid may act as the authzid.
        # Nobody may act as anyone else (the maddy CVE-2023-27582 class).
        if authzid and not _same_user(authzid, identity):
            return _AUTHZID_DIFFERS
        return self._verify(identity, passwd)


# --- LOGIN (draft-murchison-sasl-login-00) -------------------------------------------------


class _Login(Exchange):
    mechanism = "LOGIN"
    _first_challenge = b"Username:"

    def __init__(self, credentials: Credentials) -> None:
        super().__init__(credentials)
        self._username: str | None = None

    def _respond(self, data: bytes) -> Step:
        # draft-murchison-sasl-login §2: "Username:" then "Password:"; an initial response
        # to AUTH LOGIN is the user name.
        text = _text(data)
        if text is None:
            return _malformed("LOGIN response is not UTF-8 text")
        if self._username is None:
            identity = text.strip()
            if not identity:
                return _malformed("empty username")
            self._username = self.attempted = identity
            return Challenge(b"Password:")
        if not text:
            return _malformed("empty password")
        return self._verify(self._username, text)


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) ----------------------------------------------------

_DIGEST_SIZE = hashlib.sha256().digest_size

# Keys of the fake accounts answered for unknown users. Per process: the same name gets
# the same salt for as long as the process runs (RFC 5802 §9).
_FAKE_SECRET = secrets.token_bytes(32)

# RFC 5802 §7: saslname = 1*(value-safe-char / "=2C" / "=3D"); ABNF strings ignore case.
_ESCAPE = re.compile(r"=(2C|3D)", re.IGNORECASE)
_BAD_ESCAPE = re.compile(r"=(?!2C|3D)", re.IGNORECASE)


def _default_nonce() -> str:
    return secrets.token_urlsafe(18)  # 144 random bits, base64url: all "printable" (§7)


def _unescape_saslname(value: str) -> str | None:
    """RFC 5802 §5.1: "=2C" is ",", "=3D" is "="; any other "=" is an error."""
    if not value or _BAD_ESCAPE.search(value):
        return None
    return _ESCAPE.sub(lambda m: "," if m[1].upper() == "2C" else "=", value)


def _printable(value: str) -> bool:
    # RFC 5802 §7: printable = %x21-2B / %x2D-7E  ; all but ","
    return bool(value) and all("\x21" <= ch <= "\x7e" and ch != "," for ch in value)


def _attributes(message: str) -> list[tuple[str, str]] | None:
    """RFC 5802 §7: attr-val = ALPHA "=" value, separated by ","; None if not so."""
    out = []
    for part in message.split(","):
        name, eq, value = part.partition("=")
        if not eq or len(name) != 1 or not (name.isascii() and name.isalpha()):
            return None
        out.append((name, value))
    return out


def _b64decode(value: str) -> bytes | None:
    """RFC 5802 §7: base64 (RFC 4648 §4) in its one canonical form, else None."""
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return None
    # b64decode lets through excess padding ("biws=") and non-zero trailing bits.
    return data if base64.b64encode(data) == value.encode("ascii") else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fake_keys(username: str) -> ScramKeys:
    """RFC 5802 §9: keys for an unknown user, so that the server-first message looks the
    same whether the account exists. Stable per account name, matched by no password."""
    name = _user_key(username).encode("utf-8")

    def derive(label: bytes) -> bytes:
        return hmac.digest(_FAKE_SECRET, label + b"\0" + name, "sha256")

    return ScramKeys(
        salt=derive(b"salt")[:SCRAM_SALT_BYTES],
        iterations=SCRAM_DEFAULT_ITERATIONS,
        stored_key=derive(b"stored key"),
        server_key=derive(b"server key"),
    )


@dataclass(frozen=True, slots=True)
class _ClientFirst:
    gs2_header: str
    bare: str
    username: str
    authzid: str | None
    cnonce: str


def _parse_client_first(message: str) -> _ClientFirst | Failure:
    # RFC 5802 §7: client-first-message = gs2-header client-first-message-bare
    #   gs2-header = gs2-cbind-flag "," [ authzid ] ","
    parts = message.split(",", 2)
    if len(parts) != 3:
        return _malformed("SCRAM client-first: no gs2 header")
    flag, authz, bare = parts
    if flag.startswith("p="):  # RFC 5802 §6: we offer no SCRAM-SHA-256-PLUS
        return _malformed("SCRAM channel binding requested, not offered")
    # "n": no binding. "y": the client could bind but thinks we cannot, which is true as
    # long as no -PLUS is advertised (§6; a server offering -PLUS must refuse "y").
    if flag not in ("n", "y"):
        return _malformed("SCRAM client-first: bad gs2-cbind-flag")
    authzid = None
    if authz:
        authzid = _unescape_saslname(authz[2:]) if authz.startswith("a=") else None
        if authzid is None:
            return _malformed("SCRAM client-first: bad authzid")
    attrs = _attributes(bare)
    if attrs is None or len(attrs) < 2:
        return _malformed("SCRAM client-first: bad attributes")
    if attrs[0][0] == "m":  # RFC 5802 §5.1: "m" MUST cause authentication failure
        return _malformed("SCRAM client-first: mandatory extension")
    (n, user), (r, cnonce) = attrs[:2]
    # Later attributes are extensions, ignored when not understood (§5.1).
    username = _unescape_saslname(user) if n == "n" else None
    if username is None or not username.strip():
        return _malformed("SCRAM client-first: bad username")
    if r != "r" or not _printable(cnonce):
        return _malformed("SCRAM client-first: bad nonce")
    return _ClientFirst(f"{flag},{authz},", bare, username.strip(), authzid, cnonce)


class _ScramPhase(Enum):
    CLIENT_FIRST = auto()
    CLIENT_FINAL = auto()
    ACKNOWLEDGE = auto()  # server-final sent as a 334 challenge; expect an empty response


class _ScramSha256(Exchange):
    """RFC 5802 §5 with SHA-256 (RFC 7677), server side, without channel binding."""

    mechanism = "SCRAM-SHA-256"
    _first_challenge = b""

    def __init__(self, credentials: Credentials, nonce: Callable[[], str]) -> None:
        super().__init__(credentials)
        self._nonce = nonce
        self._phase = _ScramPhase.CLIENT_FIRST
        self._first: _ClientFirst | None = None
        self._keys: ScramKeys | None = None
        self._known = False
        self._nonce_full = ""
        self._server_first = ""

    def _respond(self, data: bytes) -> Step:
        if self._phase is _ScramPhase.ACKNOWLEDGE:
            # RFC 4954 §4: additional data with success goes in a 334 challenge, to which
            # the client answers with an empty response.
            if data:
                return _malformed("SCRAM: expected an empty response to server-final")
            assert self._first is not None
            return Success(self._first.username)
        text = _text(data)
        if text is None:
            return _malformed("SCRAM message is not UTF-8 text")
        if self._phase is _ScramPhase.CLIENT_FIRST:
            return self._client_first(text)
        return self._client_final(text)

    def _client_first(self, text: str) -> Step:
        first = _parse_client_first(text)
        if isinstance(first, Failure):
            return first
        self.attempted = first.username
        if first.authzid is not None and not _same_user(first.authzid, first.username):
            return _AUTHZID_DIFFERS
        snonce = self._nonce()
        if not _printable(snonce):
            raise ValueError(f"SCRAM server nonce must be printable without ',': {snonce!r}")
        keys = self._credentials.scram_credentials(first.username)
        self._known = keys is not None
        self._keys = keys if keys is not None else _fake_keys(first.username)
        self._first = first
        self._nonce_full = first.cnonce + snonce
        # RFC 5802 §7: server-first-message = [reserved-mext ","] nonce "," salt ","
        #   iteration-count [ "," extensions ]
        self._server_first = (
            f"r={self._nonce_full},s={_b64(self._keys.salt)},i={self._keys.iterations}"
        )
        self._phase = _ScramPhase.CLIENT_FINAL
        return Challenge(self._server_first.encode("ascii"))

    def _client_final(self, text: str) -> Step:
        assert self._first is not None and self._keys is not None
        # RFC 5802 §7: client-final-message = client-final-message-without-proof "," proof
        #   client-final-message-without-proof = channel-binding "," nonce ["," extensions]
        attrs = _attributes(text)
        if attrs is None or len(attrs) < 3:
            return _malformed("SCRAM client-final: bad attributes")
        (c, cbind), (r, nonce), (p, proof_b64) = attrs[0], attrs[1], attrs[-1]
        if (c, r, p) != ("c", "r", "p"):
            return _malformed("SCRAM client-final: bad attributes")
        # RFC 5802 §7: without channel binding, c= is base64 of the gs2 header alone.
        if _b64decode(cbind) != self._first.gs2_header.encode("utf-8"):
            return _malformed("SCRAM client-final: channel binding differs")
        if nonce != self._nonce_full:
            return _malformed("SCRAM client-final: nonce differs")
        proof = _b64decode(proof_b64)
        if proof is None or len(proof) != _DIGEST_SIZE:
            return _malformed("SCRAM client-final: bad proof")
        without_proof = text.rpartition(",")[0]
        # RFC 5802 §3: AuthMessage = client-first-message-bare + "," +
        #   server-first-message + "," + client-final-message-without-proof
        auth_message = f"{self._first.bare},{self._server_first},{without_proof}".encode()
        if not (self._proof_matches(proof, auth_message) and self._known):
            return _BAD_CREDENTIALS
        # RFC 5802 §3: ServerSignature = HMAC(ServerKey, AuthMessage); server-final "v="
        signature = hmac.digest(self._keys.server_key, auth_message, "sha256")
        self._phase = _ScramPhase.ACKNOWLEDGE
        return Challenge(b"v=" + base64.b64encode(signature))

    def _proof_matches(self, proof: bytes, auth_message: bytes) -> bool:
        assert self._keys is not None
        # RFC 5802 §3: ClientSignature = HMAC(StoredKey, AuthMessage);
        #   ClientKey = ClientProof XOR ClientSignature; the proof holds if H(ClientKey)
        #   equals StoredKey.
        client_signature = hmac.digest(self._keys.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), self._keys.stored_key)


def new_exchange(
    mechanism: str, credentials: Credentials, *, nonce: Callable[[], str] | None = None
) -> Exchange:
    """A fresh exchange for ``mechanism`` (upper-case, one of MECHANISMS; else ValueError).

    ``nonce`` returns the server part of the SCRAM nonce (printable ASCII without ",");
    the default draws 144 random bits. Tests pass a fixed one.
    """
    if mechanism == "PLAIN":
        return _Plain(credentials)
    if mechanism == "LOGIN":
        return _Login(credentials)
    if mechanism == "SCRAM-SHA-256":
        return _ScramSha256(credentials, nonce or _default_nonce)
    raise ValueError(f"unsupported SASL mechanism: {mechanism!r}")
