"""Composition root: builds the store, spool, delivery and listeners from a Config,
runs them, and shuts them down gracefully on SIGTERM/SIGINT.

Startup order: store → spool recovery → delivery (re-submits recovered messages) →
outbound process → listeners. Shutdown order: stop accepting → let transactions finish
within ``limits.shutdown_grace`` → drain delivery → stop the outbound process → close
the spool (final fsync) → store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass

from postbote import sasl
from postbote.auth import Authenticator
from postbote.config import Config, ListenAddress
from postbote.errors import ConfigError
from postbote.inbound import InboundBackend
from postbote.policy.checks import MailChecks
from postbote.policy.dkimkeys import DkimKeys
from postbote.policy.ratelimit import LimiterSettings
from postbote.pop3.protocol import Pop3Settings
from postbote.pop3.server import Pop3Server
from postbote.queue.dispatch import LocalDelivery
from postbote.queue.runner import OutboundProcess, make_resolver
from postbote.smtp.protocol import ServerSettings
from postbote.smtp.server import BodyMemory, SmtpServer
from postbote.spool import Spool
from postbote.store.sqlite import SqliteStore
from postbote.tls import ensure_certificate, server_context

log = logging.getLogger("postbote")


@dataclass(frozen=True, slots=True)
class _ListenerKind:
    name: str
    implicit_tls: bool


_KINDS = (
    _ListenerKind("smtp", implicit_tls=False),
    _ListenerKind("submission", implicit_tls=False),
    _ListenerKind("submissions", implicit_tls=True),
)
_POP3_KINDS = (
    _ListenerKind("pop3", implicit_tls=False),  # RFC 2595 STLS
    _ListenerKind("pop3s", implicit_tls=True),  # RFC 8314
)


def open_store(config: Config) -> SqliteStore:
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return SqliteStore(config.data_dir / "postbote.db", config.data_dir / "queue")


class App:
    """One postbote node. ``await App(config).run()`` serves until a signal arrives."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.servers: list[SmtpServer] = []
        self.pop3_servers: list[Pop3Server] = []
        self.bound: list[tuple[str, str]] = []  # (kind, "host:port") actually bound
        self._listeners: list[asyncio.Server] = []
        self._stop = asyncio.Event()

    def _settings(self, kind: _ListenerKind, tls_available: bool) -> ServerSettings:
        c = self.config
        mode = getattr(c.auth, kind.name)  # "required" | "optional" | "off"
        return ServerSettings(
            auth_mechanisms=sasl.MECHANISMS if mode != "off" else (),
            auth_requires_tls=True,  # RFC 4954 §4, RFC 8314: never over plaintext
            auth_required=mode == "required",
            hostname=c.hostname,
            max_message_size=c.limits.max_message_size,
            max_recipients=c.limits.max_recipients,
            max_errors=c.limits.max_errors,
            tls_available=tls_available and not kind.implicit_tls,
            in_tls=kind.implicit_tls,
            bare_newlines=c.smtp.bare_newlines,
            banner=c.smtp.banner,
            command_timeout=c.limits.command_timeout,
            data_timeout=c.limits.data_timeout,
        )

    async def run(self) -> None:
        c = self.config
        loop = asyncio.get_running_loop()
        cert, key = ensure_certificate(c)
        ssl_ctx = server_context(cert, key)
        store = open_store(c)
        spool = Spool(
            c.data_dir / "spool",
            segment_size=c.spool.segment_size,
            min_free_space=c.spool.min_free_space,
        )
        recovered = spool.recover()
        await spool.start()
        delivery = LocalDelivery(spool=spool, data_dir=c.data_dir, hostname=c.hostname)
        await delivery.start()
        outbound = OutboundProcess(c)
        await outbound.start()
        delivery.on_queued = outbound.nudge
        for message in recovered:
            delivery.submit(message, fresh=False)
        if recovered:
            log.info("recovered %d spooled messages", len(recovered))
        authenticator = Authenticator(
            store,
            LimiterSettings(
                max_failures_per_ip=c.auth.max_failures_per_ip,
                max_failures_per_account=c.auth.max_failures_per_account,
                window=c.auth.failure_window,
                lockout=c.auth.lockout,
                delay_after=c.auth.delay_after,
            ),
        )
        authserv_id = c.checks.authserv_id or c.hostname
        backend = InboundBackend(
            hostname=c.hostname,
            directory=store,
            spool=spool,
            delivery=delivery,
            authenticator=authenticator,
            privacy=c.submission.privacy,
            checks=MailChecks(c.checks, make_resolver(c), authserv_id),
            dkim_keys=DkimKeys(c.data_dir),
            authserv_id=authserv_id,
        )
        started = False
        body_memory = BodyMemory(c.limits.max_message_memory)  # shared by all listeners
        try:
            for kind in _KINDS:
                addresses: tuple[ListenAddress, ...] = getattr(c.listen, kind.name)
                if not addresses:
                    continue
                server = SmtpServer(
                    kind.name,
                    self._settings(kind, tls_available=True),
                    backend,
                    ssl_context=ssl_ctx,
                    implicit_tls=kind.implicit_tls,
                    max_connections=c.limits.max_connections,
                    max_connections_per_ip=c.limits.max_connections_per_ip,
                    body_memory=body_memory,
                )
                self.servers.append(server)
                for addr in addresses:
                    await self._listen(
                        server.protocol_factory,
                        kind.name,
                        addr,
                        ssl_ctx if kind.implicit_tls else None,
                    )
            for kind in _POP3_KINDS:
                addresses = getattr(c.listen, kind.name)
                if not addresses:
                    continue
                pop3 = self._pop3_server(kind, authenticator, store, ssl_ctx)
                self.pop3_servers.append(pop3)
                for addr in addresses:
                    await self._listen(
                        pop3.protocol_factory,
                        kind.name,
                        addr,
                        ssl_ctx if kind.implicit_tls else None,
                    )
            if not self._listeners:
                raise ConfigError(f"{c.source}: listen: no listener configured")
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            ready = " ".join(f"{k}={a}" for k, a in self.bound)
            log.info("ready %s", ready)
            print(f"postbote: ready {ready}", file=sys.stderr, flush=True)
            started = True
            await self._stop.wait()
            log.info("shutting down")
        finally:
            for listener in self._listeners:
                listener.close()
            await asyncio.gather(
                *(s.shutdown(c.limits.shutdown_grace) for s in self.servers),
                *(p.shutdown(c.limits.shutdown_grace) for p in self.pop3_servers),
                return_exceptions=True,
            )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(delivery.wait_idle(), c.limits.shutdown_grace)
            await delivery.close()
            await outbound.close()
            await spool.close()
            store.close()
            if started:  # a start-up error is reported alone, in one line, by the CLI
                print("postbote: stopped", file=sys.stderr, flush=True)

    def _pop3_server(
        self,
        kind: _ListenerKind,
        authenticator: Authenticator,
        store: SqliteStore,
        ssl_ctx: ssl.SSLContext,
    ) -> Pop3Server:
        c = self.config

        def local_user(address: str) -> bool:
            found = store.resolve(address)
            return found is not None and address in found.mailboxes

        return Pop3Server(
            kind=kind.name,
            settings=Pop3Settings(
                hostname=c.hostname,
                stls_available=not kind.implicit_tls,
                in_tls=kind.implicit_tls,
                autologout=c.pop3.autologout,
                login_delay=c.pop3.login_delay,
                max_errors=c.limits.max_errors,
            ),
            authenticator=authenticator,
            data_dir=c.data_dir,
            ssl_context=ssl_ctx,
            plaintext_loopback=c.pop3.plaintext_on_loopback,
            max_connections=c.limits.max_connections,
            max_connections_per_ip=c.limits.max_connections_per_ip,
            local_user=local_user,
        )

    async def _listen(
        self,
        factory: Callable[[], asyncio.BaseProtocol],
        kind: str,
        addr: ListenAddress,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        try:
            listener = await loop.create_server(
                factory,
                host=addr.host,
                port=addr.port,
                family=family,
                ssl=ssl_ctx,
                reuse_address=True,
                backlog=4096,
                ssl_handshake_timeout=30.0 if ssl_ctx is not None else None,
            )
        except OSError as exc:
            # uvloop's errors carry no strerror; derive the usual text from errno.
            reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
            raise ConfigError(f"listen.{kind}: cannot listen on {addr}: {reason}") from exc
        self._listeners.append(listener)
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self.bound.append((kind, shown))

    def stop(self) -> None:
        self._stop.set()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (design.md); POSTBOTE_NO_UVLOOP=1 turns it off."""
    if os.environ.get("POSTBOTE_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(config: Config) -> None:
    """Run a node until SIGTERM/SIGINT. Raises ConfigError for bad listeners/TLS."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(App(config).run())
