"""The server side of an in-protocol TLS upgrade (SMTP STARTTLS, POP3 STLS), shared by
the asyncio glue of each protocol.

The protocol core has already answered "go ahead" and dropped whatever the client
pipelined in plaintext after the command (RFC 3207 §4.2, RFC 2595 §4; CVE-2011-0411).
From the moment ``start_tls`` is called, every byte the session's ``data_received``
gets has been decrypted by the TLS layer. A client may send its first command in the
same flight as the end of its handshake (TLS 1.3 lets it), so those bytes can arrive
before ``loop.start_tls()`` returns and before the core knows TLS is up: they are kept
here and handed back, to be fed after the core's ``tls_established()``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

log = logging.getLogger("postbote.tls")

HANDSHAKE_TIMEOUT = 30.0
MAX_EARLY = 256 * 1024  # nobody sends that much unasked


class TlsUpgrade:
    __slots__ = ("_early",)

    def __init__(self) -> None:
        self._early: bytearray | None = None

    @property
    def in_progress(self) -> bool:
        return self._early is not None

    def keep(self, data: bytes) -> bool:
        """Hold decrypted bytes that came before the upgrade completed; False when
        there is too much of it (the caller drops the connection)."""
        assert self._early is not None
        self._early += data
        return len(self._early) <= MAX_EARLY

    async def start_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.WriteTransport,
        protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        peer: str,
    ) -> tuple[asyncio.Transport | None, bytes]:
        """Run the handshake. Returns (the TLS transport, bytes received meanwhile), or
        (None, b"") when the handshake failed (logged; the caller aborts)."""
        self._early = bytearray()
        try:
            new = await loop.start_tls(
                transport,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            log.info("TLS handshake with %s failed: %s", peer, exc)
            new = None
        early, self._early = self._early, None
        if new is None:
            return None, b""
        return new, bytes(early)
