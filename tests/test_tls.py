"""Tests for postbote.tls: the self-signed certificate, the contexts and real handshakes."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import stat
import warnings
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from postbote.config import Config, parse_config
from postbote.errors import ConfigError
from postbote.tls import client_context_insecure, ensure_certificate, server_context


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return parse_config('hostname = "mail.example.test"\n', "t.toml", tmp_path)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None = None
) -> tuple[str, bytes, int]:
    """Connect `client` to a TLS server on 127.0.0.1:0; return (version, greeting, sessions).

    `sessions` counts connections whose handshake completed on the server side.
    """
    sessions = 0

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        writer.write(b"220 ready\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    listener = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=server_hostname
        )
        try:
            greeting = await reader.readline()
            version = writer.get_extra_info("ssl_object").version()
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        listener.close()
        await listener.wait_closed()
    return version, greeting, sessions


# -- the self-signed certificate --------------------------------------------------------------


def test_generates_a_private_key_and_reuses_it(config):
    cert, key = ensure_certificate(config)
    assert (cert, key) == (config.data_dir / "tls/cert.pem", config.data_dir / "tls/key.pem")
    assert mode(key) == 0o600
    assert mode(cert.parent) == 0o700
    first = cert.read_bytes(), key.read_bytes()
    assert b"PRIVATE KEY" in first[1]

    assert ensure_certificate(config) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first
    assert sorted(p.name for p in cert.parent.iterdir()) == ["cert.pem", "key.pem"]


def test_certificate_names_the_host_and_lasts_ten_years(config):
    cert_path, _ = ensure_certificate(config)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert cert.issuer == cert.subject  # self-signed
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "mail.example.test"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3651)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_tightens_an_existing_tls_directory(config):
    (config.data_dir / "tls").mkdir(parents=True, mode=0o755)
    ensure_certificate(config)
    assert mode(config.data_dir / "tls") == 0o700


def test_half_written_pair_is_made_again(config):
    cert, key = ensure_certificate(config)
    old_key = key.read_bytes()
    cert.unlink()  # as if the process died between writing the key and the certificate
    assert ensure_certificate(config) == (cert, key)
    assert key.read_bytes() != old_key
    assert mode(key) == 0o600
    server_context(cert, key)  # the new key belongs to the new certificate


def test_configured_certificate_is_returned_as_is(tmp_path):
    issued = trustme.CA().issue_cert("mail.example.test")
    issued.cert_chain_pems[0].write_to_path(tmp_path / "chain.pem")
    issued.private_key_pem.write_to_path(tmp_path / "private.pem")
    config = parse_config('[tls]\ncert = "chain.pem"\nkey = "private.pem"\n', "t.toml", tmp_path)
    assert ensure_certificate(config) == (tmp_path / "chain.pem", tmp_path / "private.pem")
    assert not (tmp_path / "postbote-data").exists()


# -- handshakes on loopback -------------------------------------------------------------------


def test_handshake_with_the_generated_certificate(config):
    cert, key = ensure_certificate(config)
    client = ssl.create_default_context(cafile=str(cert))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    version, greeting, sessions = asyncio.run(
        handshake(server_context(cert, key), client, server_hostname="localhost")
    )
    assert greeting == b"220 ready\r\n"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert sessions == 1


def test_generated_certificate_fails_verification_for_another_name(config):
    cert, key = ensure_certificate(config)
    client = ssl.create_default_context(cafile=str(cert))
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        asyncio.run(handshake(server_context(cert, key), client, server_hostname="other.test"))


def test_insecure_client_encrypts_without_verifying(config):
    client = client_context_insecure()
    assert client.verify_mode == ssl.CERT_NONE
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    cert, key = ensure_certificate(config)
    version, greeting, _ = asyncio.run(handshake(server_context(cert, key), client))
    assert greeting == b"220 ready\r\n"
    assert version in ("TLSv1.2", "TLSv1.3")


def tls11_only(context: ssl.SSLContext) -> ssl.SSLContext:
    """Restrict `context` to TLS 1.1, or skip when the local OpenSSL cannot do it at all."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError) as err:
        pytest.skip(f"this OpenSSL cannot restrict a context to TLS 1.1: {err}")
    return context


def test_tls11_client_is_refused(config):
    cert, key = ensure_certificate(config)
    client = tls11_only(client_context_insecure())

    # Control: the client really can speak TLS 1.1 to a server that allows it.
    permissive = tls11_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    permissive.load_cert_chain(cert, key)
    try:
        version, _, _ = asyncio.run(handshake(permissive, client))
    except (ssl.SSLError, ConnectionError) as err:
        pytest.skip(f"this OpenSSL refuses TLS 1.1 on its own: {err!r}")
    assert version == "TLSv1.1"

    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(handshake(server_context(cert, key), client))


# -- certificates that do not load ------------------------------------------------------------


@pytest.fixture
def issued(tmp_path: Path) -> tuple[Path, Path]:
    pair = trustme.CA().issue_cert("mail.example.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pair.cert_chain_pems[0].write_to_path(cert)
    pair.private_key_pem.write_to_path(key)
    return cert, key


def load_error(cert: Path, key: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        server_context(cert, key)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    return message


def test_good_pair_loads(issued):
    assert server_context(*issued).minimum_version == ssl.TLSVersion.TLSv1_2


def test_garbage_certificate(issued, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    assert load_error(garbage, issued[1]) == (
        f"tls.cert: cannot load {garbage}: not a PEM certificate"
    )


def test_missing_certificate(issued, tmp_path):
    missing = tmp_path / "missing.pem"
    assert load_error(missing, issued[1]) == (
        f"tls.cert: cannot load {missing}: No such file or directory"
    )


def test_garbage_key(issued, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert load_error(issued[0], garbage) == (
        f"tls.cert: cannot load {issued[0]}: key {garbage} is not an unencrypted PEM private key"
    )


def test_key_of_another_certificate(issued, tmp_path):
    other = trustme.CA().issue_cert("other.test")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(other_key)
    assert load_error(issued[0], other_key) == (
        f"tls.cert: cannot load {issued[0]}: key {other_key} does not belong to this certificate"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_certificate(issued):
    issued[0].chmod(0)
    assert load_error(*issued) == f"tls.cert: cannot load {issued[0]}: Permission denied"
