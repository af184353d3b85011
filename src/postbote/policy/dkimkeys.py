"""Where the DKIM signing keys live, and which apply to a message.

Layout: ``data_dir/dkim/<domain>/<selector>.<rsa|ed25519>.key``, every file mode 0600
and the folders 0700 (private keys). ``postbote dkim keygen`` writes them; the server
and the delivery processes read them, and see new keys without a restart (the folder
is looked at again at most once a second).

A message is signed with the keys of its From: domain, or else of the closest parent
domain that has keys: a d= of the organizational domain still aligns for DMARC in
relaxed mode (RFC 7489 §3.1.1), so MAILER-DAEMON@mx.example.org is signed for example.org.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from pathlib import Path

from postbote.errors import AlreadyExists, StoreError
from postbote.policy.dkim import SigningKey, generate_key, sign
from postbote.policy.dmarc import from_domain

log = logging.getLogger("postbote.dkim")

ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
RESCAN_AFTER = 1.0  # seconds
_SELECTOR = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # RFC 6376 §3.1: a DNS label
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


class DkimKeys:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "dkim"
        self._lock = threading.Lock()
        self._keys: dict[str, list[SigningKey]] = {}
        self._scanned = float("-inf")
        self._stamp: tuple[int, ...] = ()

    # -- the operator ----------------------------------------------------------------------

    def generate(self, domain: str, selector: str, algorithm: str) -> tuple[Path, SigningKey]:
        """Make a new key (RSA 2048 or ed25519) and store it; AlreadyExists if that
        selector is taken for the domain."""
        domain, selector = _check_domain(domain), _check_selector(selector)
        if algorithm not in ALGORITHMS:
            raise StoreError(f"unknown DKIM algorithm {algorithm!r}: use rsa or ed25519")
        folder = self.root / domain
        for existing in folder.glob(f"{selector}.*.key") if folder.is_dir() else ():
            raise AlreadyExists(f"selector {selector} of {domain} exists: {existing}")
        private, _ = generate_key(algorithm)
        _private_dir(self.root)
        _private_dir(folder)
        path = folder / f"{selector}.{algorithm}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(private)
            f.flush()
            os.fsync(f.fileno())
        with self._lock:
            self._scanned = float("-inf")
        return path, SigningKey(domain, selector, ALGORITHMS[algorithm], private)

    def all(self) -> dict[str, list[SigningKey]]:
        self._refresh()
        with self._lock:
            return {d: list(keys) for d, keys in self._keys.items()}

    # -- signing ---------------------------------------------------------------------------

    def for_domain(self, domain: str) -> list[SigningKey]:
        """The keys for mail from ``domain``: its own, or those of its closest parent."""
        self._refresh()
        name = domain.lower().rstrip(".")
        with self._lock:
            while name:
                keys = self._keys.get(name)
                if keys:
                    return list(keys)
                _, _, name = name.partition(".")
                if "." not in name:  # never a bare top-level domain
                    break
        return []

    def _refresh(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._scanned < RESCAN_AFTER:
                return
            self._scanned = now
            stamp = _stamp(self.root)
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._keys = _load(self.root)


def sign_message(keys: DkimKeys, message: bytes) -> bytes:
    """``message`` with DKIM-Signature fields for its From: domain prepended, or as it
    is when that domain has no key. Slow for RSA (a few ms): call it from a thread."""
    domain = from_domain(message)
    if not isinstance(domain, str):
        return message
    found = keys.for_domain(domain)
    if not found:
        return message
    try:
        return sign(message, found) + message
    except Exception:  # a broken key must not stop mail: it goes out unsigned
        log.exception("DKIM signing for %s failed", domain)
        return message


def _stamp(root: Path) -> tuple[int, ...]:
    """Changes when a key is added or removed (folder mtimes)."""
    try:
        folders = [root, *(p for p in root.iterdir() if p.is_dir())]
        return (*(p.stat().st_mtime_ns for p in folders), len(folders))
    except OSError:
        return ()


def _load(root: Path) -> dict[str, list[SigningKey]]:
    keys: dict[str, list[SigningKey]] = {}
    if not root.is_dir():
        return keys
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.key")):
            selector, _, rest = path.name.partition(".")
            algorithm = rest.removesuffix(".key")
            if algorithm not in ALGORITHMS or not _SELECTOR.fullmatch(selector):
                continue
            with contextlib.suppress(OSError, ValueError):  # one bad file spoils no others
                private = path.read_bytes()
                keys.setdefault(folder.name, []).append(
                    SigningKey(folder.name, selector, ALGORITHMS[algorithm], private)
                )
    return keys


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _check_domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise StoreError(f"not a domain name: {domain!r}") from None
    if not _DOMAIN.fullmatch(name):
        raise StoreError(f"not a domain name: {domain!r}")
    return name


def _check_selector(selector: str) -> str:
    name = selector.strip().lower()
    if not _SELECTOR.fullmatch(name):
        raise StoreError(f"a selector is one DNS label (letters, digits, -): {selector!r}")
    return name
