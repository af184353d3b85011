"""TLS: the server certificate and the ssl contexts every listener and client uses.

This module owns where the certificate comes from (the configured PEM files, or a
self-signed pair generated once into data_dir/tls/) and how ssl contexts are set up:
TLS 1.2 or newer only (RFC 8996 deprecates 1.0 and 1.1; RFC 8314 §4.1 for mail).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from postbote.config import Config
from postbote.errors import ConfigError
from postbote.fsutil import fsync_path

SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)


def ensure_certificate(config: Config) -> tuple[Path, Path]:
    """Return (cert, key) paths: the configured ones, else a self-signed pair.

    The self-signed pair lives in data_dir/tls/ (directory 0700, key 0600). It is made on
    first use and reused afterwards; delete the directory to get a new one (for example
    after changing `hostname`). Each file is written to a temporary name and renamed, the
    certificate last, so a crash leaves either a complete pair or one that is remade.
    """
    if config.tls.cert is not None and config.tls.key is not None:
        return config.tls.cert, config.tls.key
    directory = config.data_dir / "tls"
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    cert_pem, key_pem = _self_signed(config.hostname)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    fsync_path(directory)
    return cert_path, key_path


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    """A self-signed EC P-256 certificate for `hostname`, "localhost" and 127.0.0.1/::1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    dns_names = dict.fromkeys([hostname, "localhost"])  # ordered, without duplicates
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Create a fresh file with `mode` (never wider, whatever is there), then rename it."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for STARTTLS and implicit TLS (RFC 3207, RFC 8314), TLS >= 1.2.

    Raises ConfigError("tls.cert: cannot load <cert>: <reason>") on any failure.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8996 §2, RFC 8314 §4.1
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        _check_pem(cert, key)
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        reason = err.reason or ""
        if reason == "KEY_VALUES_MISMATCH":
            reason = f"key {key} does not belong to this certificate"
        raise ConfigError(f"tls.cert: cannot load {cert}: {reason or err}") from None
    except OSError as err:
        raise ConfigError(f"tls.cert: cannot load {cert}: {err.strerror or err}") from None
    except ValueError as err:
        raise ConfigError(f"tls.cert: cannot load {cert}: {err}") from None
    return context


def _check_pem(cert: Path, key: Path) -> None:
    """Raise ValueError saying which file is wrong; OpenSSL only says "PEM lib"."""
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        raise ValueError("not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except OSError as err:
        raise ValueError(f"key {key}: {err.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"key {key} is not an unencrypted PEM private key") from None


def client_context_insecure() -> ssl.SSLContext:
    """A client context for opportunistic outbound STARTTLS: encrypts, verifies nothing.

    RFC 7435 (opportunistic security) and RFC 3207 §4.1: an MTA that cannot verify the
    peer still encrypts; authenticated delivery (MTA-STS, DANE) uses its own context.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
