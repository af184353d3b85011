"""A client's first command inside TLS may travel in the same packet as the end of its
handshake (TLS 1.3 lets the client send right after its Finished message). The server
must answer it, not drop it as if it were plaintext pipelined after STARTTLS
(regression: the session stalled until its timeout; with the standard asyncio loop,
every time)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess, new_server, tls_client_context


@pytest.fixture(params=["uvloop", "asyncio"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServerProcess]:
    if request.param == "asyncio":
        monkeypatch.setenv("POSTBOTE_NO_UVLOOP", "1")
    srv = new_server(tmp_path / "node")
    srv.start()
    yield srv
    srv.kill()


class _TlsOverSocket:
    """TLS driven by hand through memory BIOs, so that we choose what goes out together."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.incoming.write(chunk)

    def handshake_then_send(self, first: bytes) -> None:
        """Complete the handshake, but hold our last handshake flight back and send it
        with ``first`` in one write."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self.tls.write(first)
        self._flush()  # Finished and the first command, in one send

    def reply(self) -> bytes:
        buf = b""
        while True:
            try:
                buf += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()
                continue
            lines = buf.split(b"\r\n")
            if len(lines) > 1 and all(len(x) >= 4 for x in lines[:-1]) and lines[-2][3:4] == b" ":
                return buf


def _plain_reply(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n") or buf.split(b"\r\n")[-2][3:4] != b" ":
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    return buf


def test_ehlo_sent_with_the_end_of_the_handshake_is_answered(server: ServerProcess) -> None:
    ctx = tls_client_context(server)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection(("127.0.0.1", server.ports["submission"]), timeout=10) as sock:
        assert _plain_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in _plain_reply(sock)
        sock.sendall(b"STARTTLS\r\n")
        assert _plain_reply(sock).startswith(b"220 ")
        tls = _TlsOverSocket(sock, ctx)
        tls.handshake_then_send(b"EHLO client.example\r\n")
        answer = tls.reply()  # before the fix: nothing until the command timeout
        assert answer.startswith(b"250-") and b"AUTH" in answer
        tls.tls.write(b"QUIT\r\n")
        tls._flush()
        assert tls.reply().startswith(b"221 ")
