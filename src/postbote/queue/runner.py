"""The outbound delivery process and its supervision by the server.

``python -m postbote.queue.runner [--config FILE] --parent PID`` runs the scheduler of
queue/outbound.py on its own event loop. The server (``OutboundProcess``) starts it,
writes a byte to its stdin whenever new mail may be queued (a nudge, so delivery starts
at once instead of at the next scan), restarts it if it dies, and stops it by closing
stdin: the process then lets attempts under way finish (``limits.shutdown_grace``) and
exits. Attempts cut short are retried after the next start (``QueueStore.recover``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from postbote.config import Config, load_config, parse_hostport
from postbote.dns import DnsResolver, DnsTemporaryError, Resolver
from postbote.errors import ConfigError, StoreError
from postbote.process import start_background_child
from postbote.queue.outbound import Outbound
from postbote.queue.remote import set_ca_file

log = logging.getLogger("postbote.outbound")

RESTART_DELAY = 1.0
DNS_CACHE_SIZE = 10_000  # answers kept for their TTL: the same MX for many messages


def make_resolver(config: Config) -> Resolver:
    """The configured resolver; without a usable one (no /etc/resolv.conf), one whose
    every lookup fails temporarily, so that outbound mail waits instead of bouncing."""
    servers = [parse_hostport(s, 53) for s in config.dns.nameservers] or None
    try:
        return DnsResolver(servers, timeout=config.dns.timeout, cache_size=DNS_CACHE_SIZE)
    except ConfigError as exc:
        log.error("no DNS resolver, outbound mail waits: %s (set [dns] nameservers)", exc)
        return _NoResolver(str(exc))


class _NoResolver:
    def __init__(self, why: str) -> None:
        self.why = why

    async def mx(self, name: str) -> list[tuple[int, str]]:
        raise DnsTemporaryError(self.why)

    async def a(self, name: str) -> list[str]:
        raise DnsTemporaryError(self.why)

    async def aaaa(self, name: str) -> list[str]:
        raise DnsTemporaryError(self.why)

    async def txt(self, name: str) -> list[bytes]:
        raise DnsTemporaryError(self.why)

    async def ptr(self, address: str) -> list[str]:
        raise DnsTemporaryError(self.why)


async def run(config: Config) -> None:
    from postbote.app import open_store  # the composition root owns how the store opens

    loop = asyncio.get_running_loop()
    store = open_store(config)
    if config.delivery.ca_file is not None:
        set_ca_file(str(config.delivery.ca_file))
    outbound = Outbound(config, store, make_resolver(config), node=config.hostname)

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            outbound.nudge()
        else:  # the server closed our stdin: stop
            loop.remove_reader(0)
            outbound.stop()

    os.set_blocking(0, False)
    loop.add_reader(0, on_stdin)
    try:
        await outbound.run()
        await outbound.drain(config.limits.shutdown_grace)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(0)
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="postbote-outbound")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--parent", type=int, default=0, help="exit if this process dies")
    args = p.parse_args(argv)
    start_background_child(args.parent)
    try:
        config = load_config(args.config)
        from postbote.app import loop_factory

        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run(config))
    except (ConfigError, StoreError) as exc:
        print(f"postbote-outbound: {exc}", file=sys.stderr)
        return 1
    return 0


class OutboundProcess:
    """The server's handle on the outbound process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._closing = False
        self._nudged = False

    async def start(self) -> None:
        args = [sys.executable, "-m", "postbote.queue.runner", "--parent", str(os.getpid())]
        if Path(self.config.source).exists():
            args += ["--config", str(Path(self.config.source).absolute())]
        self._proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE)
        self._watch = asyncio.get_running_loop().create_task(self._wait(self._proc))

    async def _wait(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._closing:
            return
        log.error("outbound delivery process exited with %s; restarting", code)
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._restart = None
            if not self._closing:
                self._watch = loop.create_task(self._respawn())

        self._restart = loop.call_later(RESTART_DELAY, again)

    async def _respawn(self) -> None:
        try:
            await self.start()
        except OSError as exc:
            log.error("cannot restart the outbound delivery process: %s", exc)

    def nudge(self) -> None:
        """Tell the process that mail may have been queued (coalesced per loop turn)."""
        if self._nudged:
            return
        self._nudged = True
        asyncio.get_running_loop().call_soon(self._send_nudge)

    def _send_nudge(self) -> None:
        self._nudged = False
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(OSError):
                proc.stdin.write(b"n")

    async def close(self) -> None:
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), self.config.limits.shutdown_grace + 10.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch


if __name__ == "__main__":
    raise SystemExit(main())
