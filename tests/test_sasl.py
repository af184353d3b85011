"""SASL server mechanisms: PLAIN (RFC 4616), LOGIN, SCRAM-SHA-256 (RFC 5802, RFC 7677)."""

from __future__ import annotations

import base64
import re

import pytest
import scramp  # type: ignore[import-untyped]
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from postbote import passwords, sasl
from postbote.passwords import ScramKeys
from postbote.sasl import Challenge, Failure, Success, new_exchange

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)

# RFC 7677 §3 test vector.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CNONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SNONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_NONCE = RFC_CNONCE + RFC_SNONCE
RFC_CLIENT_FIRST = b"n,,n=user,r=" + RFC_CNONCE.encode()
RFC_SERVER_FIRST = b"r=" + RFC_NONCE.encode() + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = (
    b"c=biws,r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# address -> password. Hashes and keys are made once, at test strength.
ACCOUNTS = {
    "alice@example.org": "alice-pw",
    "user": "pencil",
    "us,er=x": "comma-pw",
    "jörg@example.org": "pä\u00a0ss",  # SASLprep maps U+00A0 to a space (RFC 4013 §2.1)
}
HASHES = {addr: CHEAP.hash(pw) for addr, pw in ACCOUNTS.items()}
KEYS = {
    addr: passwords.scram_keys(pw, salt=RFC_SALT if addr == "user" else None)
    for addr, pw in ACCOUNTS.items()
}


class FakeCredentials:
    """In-memory accounts; records every lookup."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def verify_password(self, address: str, password: str) -> bool:
        self.calls.append(("verify_password", address))
        stored = HASHES.get(address.strip().lower())
        return stored is not None and passwords.verify_password(stored, password)

    def scram_credentials(self, address: str) -> ScramKeys | None:
        self.calls.append(("scram_credentials", address))
        return KEYS.get(address.strip().lower())


class BrokenCredentials:
    def verify_password(self, address: str, password: str) -> bool:
        raise OSError("store unavailable")

    def scram_credentials(self, address: str) -> ScramKeys | None:
        raise OSError("store unavailable")


@pytest.fixture
def creds() -> FakeCredentials:
    return FakeCredentials()


def test_credentials_fake_fits_the_protocol(creds: FakeCredentials) -> None:
    checked: sasl.Credentials = creds
    assert checked.verify_password("alice@example.org", "alice-pw")
    assert not checked.verify_password("alice@example.org", "alice-PW")


def test_mechanisms_in_advertised_order() -> None:
    assert sasl.MECHANISMS == ("PLAIN", "LOGIN", "SCRAM-SHA-256")


@pytest.mark.parametrize("mechanism", sasl.MECHANISMS)
def test_new_exchange_names_its_mechanism(mechanism: str, creds: FakeCredentials) -> None:
    exchange = new_exchange(mechanism, creds)
    assert exchange.mechanism == mechanism
    assert exchange.attempted is None


@pytest.mark.parametrize("mechanism", ["plain", "CRAM-MD5", "SCRAM-SHA-256-PLUS", "", "XOAUTH2"])
def test_unknown_mechanism_is_a_value_error(mechanism: str, creds: FakeCredentials) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        new_exchange(mechanism, creds)


# --- PLAIN -------------------------------------------------------------------------------------


def test_plain_initial_response_success(creds: FakeCredentials) -> None:
    exchange = new_exchange("PLAIN", creds)
    assert exchange.start(b"\0alice@example.org\0alice-pw") == Success("alice@example.org")
    assert exchange.attempted == "alice@example.org"
    assert creds.calls == [("verify_password", "alice@example.org")]


def test_plain_without_initial_response_gets_empty_challenge(creds: FakeCredentials) -> None:
    exchange = new_exchange("PLAIN", creds)
    assert exchange.start(None) == Challenge(b"")
    assert exchange.attempted is None
    assert exchange.step(b"\0alice@example.org\0alice-pw") == Success("alice@example.org")


def test_plain_identity_is_the_authcid_as_given_stripped(creds: FakeCredentials) -> None:
    result = new_exchange("PLAIN", creds).start(b"\0 Alice@Example.ORG \0alice-pw")
    assert result == Success("Alice@Example.ORG")


def test_plain_password_is_not_stripped(creds: FakeCredentials) -> None:
    result = new_exchange("PLAIN", creds).start(b"\0alice@example.org\0alice-pw ")
    assert result == Failure(malformed=False, reason="bad credentials")


@pytest.mark.parametrize(
    "message",
    [b"\0alice@example.org\0wrong", b"\0nobody@example.org\0alice-pw"],
    ids=["wrong-password", "unknown-user"],
)
def test_plain_bad_credentials(message: bytes, creds: FakeCredentials) -> None:
    exchange = new_exchange("PLAIN", creds)
    assert exchange.start(message) == Failure(malformed=False, reason="bad credentials")
    assert exchange.attempted == message.split(b"\0")[1].decode()


@pytest.mark.parametrize(
    "message",
    [
        b"",  # "=": an empty initial response
        b"alice@example.org",
        b"\0alice@example.org",
        b"\0alice@example.org\0alice-pw\0",
        b"x\0y\0z\0w",
        b"\0\0alice-pw",
        b"\0  \0alice-pw",
        b"\0alice@example.org\0",
        b"\0alice@example.org\0\xff\xfe",
        b"\0\xc3(\0alice-pw",
        b"\xed\xa0\x80\0alice@example.org\0alice-pw",  # an encoded surrogate is not UTF-8
        b"\0alice@example.org\0" + b"p" * 1100,
    ],
)
def test_plain_malformed(message: bytes, creds: FakeCredentials) -> None:
    result = new_exchange("PLAIN", creds).start(message)
    assert isinstance(result, Failure)
    assert result.malformed
    assert creds.calls == []


def test_plain_accepts_long_fields_within_the_cap(creds: FakeCredentials) -> None:
    # RFC 4616 §2: authcid and passwd of up to 255 octets each must be accepted.
    message = b"\0" + b"u" * 255 + b"\0" + b"p" * 255
    result = new_exchange("PLAIN", creds).start(message)
    assert result == Failure(malformed=False, reason="bad credentials")


@pytest.mark.parametrize(
    "authzid",
    ["alice@example.org", "ALICE@example.org", "Alice@EXAMPLE.ORG ", " alice@example.org"],
)
def test_plain_authzid_naming_the_same_user_is_allowed(
    authzid: str, creds: FakeCredentials
) -> None:
    message = authzid.encode() + b"\0alice@example.org\0alice-pw"
    assert new_exchange("PLAIN", creds).start(message) == Success("alice@example.org")


@pytest.mark.parametrize(
    "authzid", ["admin@example.org", "user", "alice@example.com", "alice", " ", "*"]
)
def test_plain_authzid_for_someone_else_fails_even_with_the_right_password(
    authzid: str, creds: FakeCredentials
) -> None:
    """Security regression, the maddy CVE-2023-27582 class: never log in as someone else."""
    exchange = new_exchange("PLAIN", creds)
    message = authzid.encode() + b"\0alice@example.org\0alice-pw"
    assert exchange.start(message) == Failure(malformed=False, reason="authzid differs")
    assert exchange.attempted == "alice@example.org"


# --- LOGIN -------------------------------------------------------------------------------------


def test_login_without_initial_response(creds: FakeCredentials) -> None:
    exchange = new_exchange("LOGIN", creds)
    assert exchange.start(None) == Challenge(b"Username:")
    assert exchange.step(b"alice@example.org") == Challenge(b"Password:")
    assert exchange.attempted == "alice@example.org"
    assert creds.calls == []
    assert exchange.step(b"alice-pw") == Success("alice@example.org")
    assert creds.calls == [("verify_password", "alice@example.org")]


def test_login_initial_response_is_the_username(creds: FakeCredentials) -> None:
    exchange = new_exchange("LOGIN", creds)
    assert exchange.start(b" alice@example.org ") == Challenge(b"Password:")
    assert exchange.step(b"alice-pw") == Success("alice@example.org")


def test_login_wrong_password(creds: FakeCredentials) -> None:
    exchange = new_exchange("LOGIN", creds)
    exchange.start(b"alice@example.org")
    assert exchange.step(b"bob-pw") == Failure(malformed=False, reason="bad credentials")


def test_login_non_ascii_password(creds: FakeCredentials) -> None:
    exchange = new_exchange("LOGIN", creds)
    exchange.start("jörg@example.org".encode())
    assert exchange.step("pä\u00a0ss".encode()) == Success("jörg@example.org")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (b"", None),  # "=": an empty initial response
        (b"   ", None),
        (b"\xff", None),
        (b"ali\0ce", None),
        (b"u" * 1025, None),
        (b"alice@example.org", b""),
        (b"alice@example.org", b"\xc3("),
        (b"alice@example.org", b"alice-pw\0"),
    ],
)
def test_login_malformed(username: bytes, password: bytes | None, creds: FakeCredentials) -> None:
    exchange = new_exchange("LOGIN", creds)
    result = exchange.start(username)
    if password is not None:
        assert result == Challenge(b"Password:")
        result = exchange.step(password)
    assert isinstance(result, Failure)
    assert result.malformed
    assert creds.calls == []


# --- the life of an exchange -----------------------------------------------------------------


@pytest.mark.parametrize("mechanism", sasl.MECHANISMS)
def test_calls_after_the_end_are_programming_errors(mechanism: str, creds: FakeCredentials) -> None:
    exchange = new_exchange(mechanism, creds)
    assert isinstance(exchange.start(b"\xff"), Failure)
    with pytest.raises(RuntimeError):
        exchange.step(b"")
    with pytest.raises(RuntimeError):
        exchange.start(None)


@pytest.mark.parametrize("mechanism", sasl.MECHANISMS)
def test_step_before_start_and_start_twice_are_programming_errors(
    mechanism: str, creds: FakeCredentials
) -> None:
    exchange = new_exchange(mechanism, creds)
    with pytest.raises(RuntimeError):
        exchange.step(b"")
    assert isinstance(exchange.start(None), Challenge)
    with pytest.raises(RuntimeError):
        exchange.start(None)


def test_after_success_further_steps_raise(creds: FakeCredentials) -> None:
    exchange = new_exchange("PLAIN", creds)
    assert isinstance(exchange.start(b"\0alice@example.org\0alice-pw"), Success)
    with pytest.raises(RuntimeError):
        exchange.step(b"\0alice@example.org\0alice-pw")


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [("PLAIN", b"\0alice@example.org\0alice-pw"), ("SCRAM-SHA-256", RFC_CLIENT_FIRST)],
)
def test_an_error_from_the_store_ends_the_exchange(mechanism: str, message: bytes) -> None:
    exchange = new_exchange(mechanism, BrokenCredentials())
    with pytest.raises(OSError, match="store unavailable"):
        exchange.start(message)
    with pytest.raises(RuntimeError):
        exchange.step(b"")


@given(
    mechanism=st.sampled_from(sasl.MECHANISMS),
    initial=st.none() | st.binary(max_size=64),
    responses=st.lists(st.binary(max_size=64), max_size=5),
)
def test_arbitrary_input_yields_steps_until_an_end(
    mechanism: str, initial: bytes | None, responses: list[bytes]
) -> None:
    exchange = new_exchange(mechanism, FakeCredentials())
    result = exchange.start(initial)
    for data in responses:
        if not isinstance(result, Challenge):
            with pytest.raises(RuntimeError):
                exchange.step(data)
            return
        result = exchange.step(data)
    assert isinstance(result, Challenge | Failure)  # random bytes never log anyone in


# --- SCRAM-SHA-256 -----------------------------------------------------------------------------


def rfc_exchange(creds: sasl.Credentials) -> sasl.Exchange:
    return new_exchange("SCRAM-SHA-256", creds, nonce=lambda: RFC_SNONCE)


def test_scram_rfc7677_test_vector(creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    assert exchange.start(None) == Challenge(b"")
    assert exchange.step(RFC_CLIENT_FIRST) == Challenge(RFC_SERVER_FIRST)
    assert exchange.attempted == "user"
    assert exchange.step(RFC_CLIENT_FINAL) == Challenge(RFC_SERVER_FINAL)
    # RFC 4954 §4: the client acknowledges the additional data with an empty response.
    assert exchange.step(b"") == Success("user")
    assert creds.calls == [("scram_credentials", "user")]


def test_scram_rfc7677_initial_response(creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    assert exchange.start(RFC_CLIENT_FIRST) == Challenge(RFC_SERVER_FIRST)


def test_scram_non_empty_acknowledgement_is_malformed(creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    exchange.start(RFC_CLIENT_FIRST)
    exchange.step(RFC_CLIENT_FINAL)
    result = exchange.step(b"v=")
    assert isinstance(result, Failure) and result.malformed


def scramp_login(
    creds: sasl.Credentials, username: str, password: str
) -> tuple[scramp.ScramClient, sasl.Exchange, sasl.Step]:
    """Run scramp's client against our server up to the server's answer to client-final."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], username, password)
    exchange = new_exchange("SCRAM-SHA-256", creds)
    server_first = exchange.start(client.get_client_first().encode())
    assert isinstance(server_first, Challenge)
    client.set_server_first(server_first.data.decode())
    return client, exchange, exchange.step(client.get_client_final().encode())


@pytest.mark.parametrize(
    ("username", "password"),
    [("user", "pencil"), ("alice@example.org", "alice-pw"), ("us,er=x", "comma-pw"),
     ("jörg@example.org", "pä\u00a0ss")],
)  # fmt: skip
def test_scram_with_scramp_client(username: str, password: str, creds: FakeCredentials) -> None:
    client, exchange, server_final = scramp_login(creds, username, password)
    assert isinstance(server_final, Challenge)
    client.set_server_final(server_final.data.decode())  # raises if the signature is wrong
    assert exchange.step(b"") == Success(username)
    assert creds.calls == [("scram_credentials", username)]


def test_scram_with_scramp_client_wrong_password(creds: FakeCredentials) -> None:
    _, exchange, result = scramp_login(creds, "user", "pencil2")
    assert result == Failure(malformed=False, reason="bad credentials")
    with pytest.raises(RuntimeError):
        exchange.step(b"")


SERVER_FIRST = re.compile(rb"r=(?P<nonce>[!-+\--~]+),s=(?P<salt>[A-Za-z0-9+/=]+),i=(?P<i>\d+)")


def server_first_for(creds: sasl.Credentials, username: str) -> re.Match[bytes]:
    exchange = new_exchange("SCRAM-SHA-256", creds, nonce=lambda: "snonce")
    escaped = username.replace("=", "=3D").replace(",", "=2C")
    result = exchange.start(f"n,,n={escaped},r=cnonce".encode())
    assert isinstance(result, Challenge)
    match = SERVER_FIRST.fullmatch(result.data)
    assert match is not None
    assert match["nonce"] == b"cnoncesnonce"
    return match


def test_scram_unknown_user_gets_a_plausible_server_first(creds: FakeCredentials) -> None:
    """RFC 5802 §9: the server-first message does not tell whether the user exists."""
    known = server_first_for(creds, "alice@example.org")
    unknown = server_first_for(creds, "nobody@example.org")
    assert len(base64.b64decode(unknown["salt"])) == len(base64.b64decode(known["salt"]))
    assert unknown["i"] == known["i"] == b"4096"
    assert unknown["salt"] != known["salt"]
    # A second try gets the same salt, whatever the case of the name, as a real user would.
    assert server_first_for(creds, "nobody@example.org")["salt"] == unknown["salt"]
    assert server_first_for(creds, "NoBody@Example.ORG")["salt"] == unknown["salt"]
    assert server_first_for(creds, "other@example.org")["salt"] != unknown["salt"]


def test_scram_unknown_user_fails_at_the_proof(creds: FakeCredentials) -> None:
    _, exchange, result = scramp_login(creds, "nobody@example.org", "pencil")
    assert result == Failure(malformed=False, reason="bad credentials")
    assert exchange.attempted == "nobody@example.org"


def test_scram_unknown_user_fails_even_if_the_fake_keys_matched(
    creds: FakeCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sasl, "_fake_keys", lambda username: KEYS["user"])
    _, _, result = scramp_login(creds, "nobody", "pencil")
    assert result == Failure(malformed=False, reason="bad credentials")


def test_scram_channel_binding_is_refused(creds: FakeCredentials) -> None:
    client = scramp.ScramClient(
        ["SCRAM-SHA-256-PLUS"], "user", "pencil", channel_binding=("tls-unique", b"x" * 12)
    )
    first = client.get_client_first()
    assert first.startswith("p=tls-unique,")
    result = new_exchange("SCRAM-SHA-256", creds).start(first.encode())
    assert isinstance(result, Failure)
    assert result.malformed
    assert creds.calls == []


def test_scram_gs2_flag_y_is_accepted_without_plus(creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    assert exchange.start(b"y,,n=user,r=" + RFC_CNONCE.encode()) == Challenge(RFC_SERVER_FIRST)
    # c= must repeat the gs2 header that was sent: "y,," is "eSws".
    final = RFC_CLIENT_FINAL.replace(b"c=biws", b"c=eSws")
    assert exchange.step(final) == Failure(malformed=False, reason="bad credentials")


def test_scram_authzid_for_someone_else_is_refused(creds: FakeCredentials) -> None:
    """Security regression, the maddy CVE-2023-27582 class, in SCRAM's gs2 header."""
    exchange = rfc_exchange(creds)
    result = exchange.start(b"n,a=admin,n=user,r=" + RFC_CNONCE.encode())
    assert result == Failure(malformed=False, reason="authzid differs")
    assert exchange.attempted == "user"
    assert creds.calls == []


def test_scram_authzid_naming_the_same_user_is_allowed(creds: FakeCredentials) -> None:
    exchange = new_exchange("SCRAM-SHA-256", creds, nonce=lambda: "s")
    result = exchange.start(b"n,a=USER,n=user,r=c")
    assert result == Challenge(b"r=cs,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


def test_scram_username_escapes(creds: FakeCredentials) -> None:
    # RFC 5802 §5.1: "=2C" is "," and "=3D" is "=" (ABNF strings ignore case).
    server_first_for(creds, "us,er=x")
    rfc_exchange(creds).start(b"n,,n=us=2cer=3dx,r=c")
    assert creds.calls == [("scram_credentials", "us,er=x")] * 2


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"n,,",
        b"n",
        b"n,n=user,r=abc",
        b"x,,n=user,r=abc",
        b"N,,n=user,r=abc",
        b"n,b=user,n=user,r=abc",
        b"n,a=,n=user,r=abc",
        b"n,a=ad=mi,n=user,r=abc",
        b"n,,m=ext,n=user,r=abc",  # RFC 5802 §5.1: "m" MUST fail
        b"n,,n=user",
        b"n,,r=abc,n=user",
        b"n,,n=,r=abc",
        b"n,,n= ,r=abc",
        b"n,,n=us=er,r=abc",
        b"n,,n=us=2,r=abc",
        b"n,,n=user,r=",
        b"n,,n=user,r=a b",
        b"n,,n=user,r=\xc3\xa9",
        b"n,,n=user,r=abc,",
        b"n,,n=user,r=abc,xy=1",
        b"n,,n=us\0er,r=abc",
        b"n,,n=\xff,r=abc",
    ],
)
def test_scram_malformed_client_first(message: bytes, creds: FakeCredentials) -> None:
    result = new_exchange("SCRAM-SHA-256", creds).start(message)
    assert isinstance(result, Failure)
    assert result.malformed
    assert creds.calls == []


def test_scram_client_first_extensions_are_ignored(creds: FakeCredentials) -> None:
    result = rfc_exchange(creds).start(RFC_CLIENT_FIRST + b",x=whatever")
    assert result == Challenge(RFC_SERVER_FIRST)


RFC_PROOF = b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


@pytest.mark.parametrize(
    "final",
    [
        b"",
        b"c=biws,r=" + RFC_NONCE.encode(),  # no proof
        b"c=biws" + RFC_PROOF,
        b"c=eSws,r=" + RFC_NONCE.encode() + RFC_PROOF,  # gs2 header differs
        b"c=biws=,r=" + RFC_NONCE.encode() + RFC_PROOF,
        b"c=biws,r=" + RFC_CNONCE.encode() + RFC_PROOF,  # only the client's nonce
        b"c=biws,r=" + RFC_NONCE.encode() + b"x" + RFC_PROOF,
        b"r=" + RFC_NONCE.encode() + b",c=biws" + RFC_PROOF,
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ==",
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=not base64!",
        b"c=biws,r=" + RFC_NONCE.encode() + RFC_PROOF + b",x=1",
        b"c=biws,r=" + RFC_NONCE.encode() + b",p=\xc3\xa9",
    ],
)
def test_scram_malformed_client_final(final: bytes, creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    exchange.start(RFC_CLIENT_FIRST)
    result = exchange.step(final)
    assert isinstance(result, Failure)
    assert result.malformed, result.reason
    with pytest.raises(RuntimeError):
        exchange.step(RFC_CLIENT_FINAL)


def test_scram_client_final_extensions_are_ignored_but_signed(creds: FakeCredentials) -> None:
    # The extension is part of AuthMessage, so the RFC's proof no longer matches.
    exchange = rfc_exchange(creds)
    exchange.start(RFC_CLIENT_FIRST)
    final = b"c=biws,r=" + RFC_NONCE.encode() + b",x=ext" + RFC_PROOF
    assert exchange.step(final) == Failure(malformed=False, reason="bad credentials")


def test_scram_tampered_proof_is_bad_credentials(creds: FakeCredentials) -> None:
    exchange = rfc_exchange(creds)
    exchange.start(RFC_CLIENT_FIRST)
    proof = bytearray(base64.b64decode(RFC_PROOF[3:]))
    proof[0] ^= 1
    final = b"c=biws,r=" + RFC_NONCE.encode() + b",p=" + base64.b64encode(bytes(proof))
    assert exchange.step(final) == Failure(malformed=False, reason="bad credentials")


def test_scram_proof_replayed_against_another_nonce_fails(creds: FakeCredentials) -> None:
    exchange = new_exchange("SCRAM-SHA-256", creds, nonce=lambda: "another-server-nonce")
    exchange.start(RFC_CLIENT_FIRST)
    final = b"c=biws,r=" + RFC_CNONCE.encode() + b"another-server-nonce" + RFC_PROOF
    assert exchange.step(final) == Failure(malformed=False, reason="bad credentials")


def test_scram_default_nonces_are_fresh(creds: FakeCredentials) -> None:
    nonces = {server_first_nonce(creds) for _ in range(3)}
    assert len(nonces) == 3


def server_first_nonce(creds: sasl.Credentials) -> bytes:
    result = new_exchange("SCRAM-SHA-256", creds).start(RFC_CLIENT_FIRST)
    assert isinstance(result, Challenge)
    match = SERVER_FIRST.fullmatch(result.data)
    assert match is not None and match["nonce"].startswith(RFC_CNONCE.encode())
    assert len(match["nonce"]) >= len(RFC_CNONCE) + 24
    return match["nonce"]


@pytest.mark.parametrize("bad", ["", "a,b", "é"])
def test_scram_bad_nonce_hook_is_a_programming_error(bad: str, creds: FakeCredentials) -> None:
    with pytest.raises(ValueError, match="nonce"):
        new_exchange("SCRAM-SHA-256", creds, nonce=lambda: bad).start(RFC_CLIENT_FIRST)
