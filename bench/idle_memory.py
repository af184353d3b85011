"""Memory per idle SMTP connection: the growth of the server's PSS (proportional set
size, /proc/PID/smaps_rollup, summed over the server and any children) while it holds
--connections connections, each greeted (220) and past EHLO (250), divided by their
number. Then a NOOP on every connection confirms they were all still alive.

Servers: postbote (with uvloop, its default; and with the stock asyncio loop), and as
the anchor aiosmtpd (asyncio and uvloop) when it is installed (`pip install aiosmtpd`).

    python bench/idle_memory.py                     # 10,000 connections
    python bench/idle_memory.py --connections 2000 --servers postbote
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import (
    CLIENT_NAME,
    HOST,
    BenchError,
    PostboteServer,
    ServerProcess,
    log_tail,
    print_table,
    pss_kib,
    raise_nofile,
    sigterm_as_exit,
    temp_dir,
)

SERVERS = ("postbote", "postbote-asyncio", "aiosmtpd", "aiosmtpd-uvloop")
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class Result:
    server: str
    connections: int
    before_kib: int
    after_kib: int
    alive: int

    @property
    def per_connection(self) -> float:
        return (self.after_kib - self.before_kib) / self.connections


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--connections", type=int, default=10_000, help="idle connections to hold")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)}",
    )
    p.add_argument("--parallel", type=int, default=200, help="connections opened at once")
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before each PSS reading"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per server")
    p.add_argument("--serve-aiosmtpd", choices=["asyncio", "uvloop"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.servers.split(",")) - set(SERVERS)
    if unknown:
        p.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    if args.connections < 1 or args.parallel < 1:
        p.error("--connections and --parallel must be at least 1")
    return args


# --- the client -------------------------------------------------------------------------


async def _reply(reader: asyncio.StreamReader, code: bytes) -> None:
    for _ in range(100):  # RFC 5321 §4.2.1: the last line of a reply has "NNN "
        line = await reader.readline()
        if not line.startswith(code):
            raise BenchError(f"expected {code.decode()}, got {line[:80]!r}")
        if line[3:4] != b"-":
            return
    raise BenchError("reply too long")


async def _open(port: int, gate: asyncio.Semaphore) -> Conn:
    async with gate:
        reader, writer = await asyncio.open_connection(HOST, port)
        await _reply(reader, b"220")
        writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
        await _reply(reader, b"250")
        return reader, writer


async def _noop(conn: Conn, gate: asyncio.Semaphore) -> bool:
    reader, writer = conn
    async with gate:
        try:
            writer.write(b"NOOP\r\n")
            await asyncio.wait_for(_reply(reader, b"250"), 30.0)
        except (OSError, BenchError, TimeoutError):
            return False
        return True


async def _hold(server: ServerProcess, args: argparse.Namespace) -> Result:
    gate = asyncio.Semaphore(args.parallel)
    for _ in range(3):  # warm-up: first connections allocate once-only state
        conns = await asyncio.gather(*(_open(server.port, gate) for _ in range(20)))
        await _close_all(conns)
    await asyncio.sleep(args.settle)
    before = pss_kib(server.pid)
    opened = await asyncio.gather(
        *(_open(server.port, gate) for _ in range(args.connections)), return_exceptions=True
    )
    conns = [c for c in opened if not isinstance(c, BaseException)]
    try:
        failed = [c for c in opened if isinstance(c, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} connections failed, first: {failed[0]!r}")
        await asyncio.sleep(args.settle)
        after = pss_kib(server.pid)
        alive = sum(await asyncio.gather(*(_noop(c, gate) for c in conns)))
    finally:
        await _close_all(conns)
    return Result(server.name, args.connections, before, after, alive)


async def _close_all(conns: Sequence[Conn]) -> None:
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


def measure(server: ServerProcess, args: argparse.Namespace) -> Result:
    try:
        return asyncio.run(asyncio.wait_for(_hold(server, args), args.timeout))
    except (OSError, TimeoutError) as exc:
        raise BenchError(f"{exc!r}") from exc


# --- the servers ------------------------------------------------------------------------


def start_server(name: str, work: Path, nofile: int) -> ServerProcess:
    env = dict(os.environ)
    if name.startswith("postbote"):
        server: ServerProcess = PostboteServer(work, max_connections=nofile, nofile=nofile)
        if name == "postbote-asyncio":
            env["POSTBOTE_NO_UVLOOP"] = "1"
    else:
        loop = "uvloop" if name.endswith("uvloop") else "asyncio"
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-aiosmtpd", loop]
        server = ServerProcess(name, argv, work / "server.log", nofile=nofile)
    server.name = name
    server.start(env=env)
    return server


async def _serve_aiosmtpd() -> None:
    """The anchor server: aiosmtpd's SMTP protocol with a handler that accepts DATA."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Accept:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            return "250 OK"

    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: SMTP(Accept(), hostname="aiosmtpd.example.test"), HOST, 0, backlog=4096
    )
    port = listener.sockets[0].getsockname()[1]
    print(f"aiosmtpd: ready smtp={HOST}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    listener.close()


def serve_aiosmtpd(loop: str) -> int:
    if loop == "uvloop":
        import uvloop

        uvloop.run(_serve_aiosmtpd())
    else:
        asyncio.run(_serve_aiosmtpd())
    return 0


def available(name: str) -> str | None:
    """None if `name` can run here, else why not."""
    modules = {"aiosmtpd": ["aiosmtpd"], "aiosmtpd-uvloop": ["aiosmtpd", "uvloop"]}
    for module in modules.get(name, []):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed (pip install {module})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_aiosmtpd:
        return serve_aiosmtpd(args.serve_aiosmtpd)
    sigterm_as_exit()
    nofile = args.connections + 1024
    if raise_nofile(nofile) < nofile:
        print(f"cannot raise RLIMIT_NOFILE to {nofile} (hard limit too low)", file=sys.stderr)
        return 2
    print(
        f"# idle_memory: {args.connections} connections held after EHLO; PSS growth / connections"
    )
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}"
    )
    results: list[Result] = []
    failed = False
    for name in args.servers.split(","):
        why = available(name)
        if why:
            print(f"  {name}: skipped: {why}", flush=True)
            continue
        with temp_dir("bench-idle-") as work:
            server = None
            try:
                server = start_server(name, work, nofile)
                result = measure(server, args)
            except BenchError as exc:
                tail = log_tail(server.log) if server is not None else ""
                print(f"  {name}: FAILED: {exc}\n{tail}", flush=True)
                failed = failed or name.startswith("postbote")
                continue
            finally:
                if server is not None:
                    server.stop()
        results.append(result)
        failed = failed or (name.startswith("postbote") and result.alive != result.connections)
        print(
            f"  {name}: {result.per_connection:.1f} KiB/connection "
            f"({result.before_kib:,} -> {result.after_kib:,} KiB; "
            f"{result.alive}/{result.connections} alive)",
            flush=True,
        )
    print()
    print_table(
        ["server", "connections", "KiB per connection", "PSS before -> after (KiB)", "alive"],
        [
            [
                r.server,
                f"{r.connections:,}",
                f"{r.per_connection:.1f}",
                f"{r.before_kib:,} -> {r.after_kib:,}",
                f"{r.alive:,}",
            ]
            for r in results
        ],
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
