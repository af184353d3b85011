"""Real postbote processes on loopback, driven by real clients.

``postbote_server`` starts ``python -m postbote serve`` on ephemeral ports of
127.0.0.1 with its own data_dir and waits for its ``postbote: ready`` line (no sleeps).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postbote.cli import main as cli_main

READY_RE = re.compile(r"postbote: ready (.*)")
DOMAIN = "example.test"
PASSWORD = "correct horse battery staple"
DEAD_DNS_PORT = 9  # discard: nothing listens on loopback here


def require_tool(name: str, path: str | None = None) -> str:
    """The path of a Debian tool the test needs; in CI a missing tool is a failure."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed (test.sh installs it)")
    pytest.skip(f"{name} is not installed; run ./test.sh to install it")


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll a condition with a deadline (file-system effects have no event to await)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def child_processes(pid: int, module: str = "") -> list[int]:
    """The running children of ``pid``; with ``module``, only ``python -m MODULE`` ones
    (the delivery worker is postbote.queue.worker, the outbound process
    postbote.queue.runner)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid and fields[0] != "Z" and (not module or module.encode() in argv):
            found.append(int(entry.name))
    return found


class ServerProcess:
    def __init__(
        self,
        root: Path,
        extra_config: str = "",
        listen: dict[str, int | str] | None = None,
        hostname: str = f"mx.{DOMAIN}",
    ):
        """``listen``: kind -> port on 127.0.0.1, or "host:port"; ``extra_config`` is TOML
        placed before the [listen] table."""
        self.root = root
        self.data_dir = root / "data"
        self.config_path = root / "postbote.toml"
        listen = listen or {"smtp": 0, "submission": 0, "submissions": 0}
        listen_lines = "\n".join(
            f'{k} = ["{v if isinstance(v, str) else f"127.0.0.1:{v}"}"]' for k, v in listen.items()
        )
        if "[dns]" not in extra_config:
            # Tests never reach the internet's DNS: a loopback port where nothing answers
            # (a lookup fails at once, and outbound mail waits in the queue).
            extra_config = f'{extra_config}\n[dns]\nnameservers = ["127.0.0.1:{DEAD_DNS_PORT}"]\n'
        self.config_path.write_text(
            f'hostname = "{hostname}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f"{extra_config}\n"
            f"[listen]\n{listen_lines}\n"
        )
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}
        self.log: list[str] = []
        self._ready = threading.Event()
        self._stopped = threading.Event()

    def cli(self, *args: str, stdin: str | None = None) -> int:
        """Run a postbote CLI command in-process against this server's config."""
        if stdin is None:
            return cli_main([args[0], "-c", str(self.config_path), *args[1:]])
        import io

        old = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            return cli_main([args[0], "-c", str(self.config_path), *args[1:]])
        finally:
            sys.stdin = old

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        assert self.cli("user", "add", address, "--password-stdin", stdin=password + "\n") == 0

    def start(self, timeout: float = 20.0) -> None:
        self._ready.clear()
        self._stopped.clear()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "postbote", "serve", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or not self.ports:
            self.kill()
            raise AssertionError("server did not start:\n" + "".join(self.log[-30:]))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line)
            m = READY_RE.search(line)
            if m:
                self.ports = {}
                for item in m.group(1).split():
                    kind, _, addr = item.partition("=")
                    self.ports[kind] = int(addr.rpartition(":")[2])
                self._ready.set()
        proc.stderr.close()  # at EOF; else a ResourceWarning (an error here) when GC'd
        self._stopped.set()
        self._ready.set()

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self._stopped.wait(5)
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stopped.wait(5)

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.data_dir / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        root = self.maildir(address)
        out: list[bytes] = []
        for sub in ("new", "cur"):
            d = root / sub
            if d.is_dir():
                out.extend(p.read_bytes() for p in sorted(d.iterdir()))
        return out

    def wait_messages(self, address: str, count: int, timeout: float = 15.0) -> list[bytes]:
        try:
            wait_for(lambda: len(self.messages(address)) >= count, timeout, f"{count} in {address}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; server log:\n{''.join(self.log[-30:])}") from None
        return self.messages(address)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def factory(name: str = "node", **kwargs: object) -> ServerProcess:
        root = tmp_path / name
        root.mkdir()
        server = ServerProcess(root, **kwargs)  # type: ignore[arg-type]
        assert server.cli("domain", "add", DOMAIN) == 0
        server.add_user(f"alice@{DOMAIN}")
        server.add_user(f"bob@{DOMAIN}")
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    s = make_server()
    s.start()
    return s


# --- helpers for tests that share one server per module ------------------------------------


def new_server(
    root: Path, *, users: tuple[str, ...] = ("alice", "bob"), extra_config: str = ""
) -> ServerProcess:
    """A provisioned (domain + ``users``) but not yet started server under ``root``."""
    root.mkdir(parents=True)
    server = ServerProcess(root, extra_config=extra_config)
    assert server.cli("domain", "add", DOMAIN) == 0
    for user in users:
        server.add_user(f"{user}@{DOMAIN}")
    return server


def running_module_server(
    tmp_path_factory: pytest.TempPathFactory, extra_config: str = ""
) -> Iterator[ServerProcess]:
    server = new_server(tmp_path_factory.mktemp("module") / "node", extra_config=extra_config)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One running server (alice, bob) for all tests of a module that do not interfere."""
    yield from running_module_server(tmp_path_factory)


# AUTH optional on the submission ports: unauthenticated clients there are treated as on
# the MX port (local recipients only). Modules that test transports, not logins, use it.
OPTIONAL_AUTH = '[auth]\nsubmission = "optional"\nsubmissions = "optional"\n'


def tls_client_context(server: ServerProcess) -> ssl.SSLContext:
    """A verifying client context that trusts only the server's self-signed certificate."""
    return ssl.create_default_context(cafile=str(server.data_dir / "tls" / "cert.pem"))


@dataclass
class Answer:
    """One SMTP reply as read from the wire."""

    code: int
    lines: list[str]  # without CRLF, e.g. ["250-mx.example.test", "250 DSN"]

    @property
    def text(self) -> str:
        """The text after the code of the last line, e.g. "5.7.1 Relay access denied"."""
        return self.lines[-1][4:]

    def __str__(self) -> str:
        return "\n".join(self.lines)


class RawSmtp:
    """A minimal SMTP client on a raw socket: writes exactly what it is given (so it can
    pipeline) and reads replies one at a time, in order."""

    def __init__(self, port: int, *, source: str | None = None, timeout: float = 15.0) -> None:
        source_address = (source, 0) if source else None
        self.sock: socket.socket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=source_address
        )
        self._buf = b""

    def wrap_tls(self, context: ssl.SSLContext) -> None:
        assert not self._buf, "plaintext left over before TLS"
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unread: {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def reply(self) -> Answer:
        lines: list[str] = []
        while True:
            line = self._line().decode("utf-8")
            lines.append(line)
            if line[3:4] != "-":
                return Answer(int(line[:3]), lines)

    def cmd(self, line: str | bytes) -> Answer:
        data = line.encode() if isinstance(line, str) else line
        self.send(data + b"\r\n")
        return self.reply()

    def closed_by_peer(self) -> bool:
        """True when the server has closed the connection and nothing is left to read."""
        if self._buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSmtp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
