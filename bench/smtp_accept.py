"""Durable SMTP accept throughput: messages/s that postbote answers "250" to (each one on
stable storage), and messages/s until all of them are in the recipient's Maildir; beside
the anchors of anchors.md measured in the same run: `smtp-sink` (protocol ceiling) and a
private Postfix instance (accepted into its queue; delivered into Maildir).

Load: Postfix's `smtp-source` (a new TCP connection per message unless --reuse, one
recipient, --size bytes), or a Python asyncio client when smtp-source is not installed.
Every server is started fresh for every run (fresh data directory) and stopped after it.

    python bench/smtp_accept.py                       # 20 sessions, 10,000 msgs, 3 runs
    python bench/smtp_accept.py --messages 2000 --runs 1 --no-anchors
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from anchor_postfix import (
    SMTP_SOURCE,
    PostfixInstance,
    SmtpSink,
    have_postfix_tools,
    postfix_version,
)
from common import (
    CLIENT_NAME,
    HOST,
    RECIPIENT,
    SENDER,
    BenchError,
    PostboteServer,
    check_counts,
    count_files,
    deferred_cleanup,
    log_tail,
    median,
    print_table,
    raise_nofile,
    sigterm_as_exit,
    temp_dir,
    wait_for,
)


@dataclass
class Series:
    """The results of one row of the table over all runs."""

    label: str
    rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """A running server: where to send, and where its Maildir is (None: discards)."""

    port: int
    maildir_new: Path | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    p.add_argument("--messages", type=int, default=10_000, help="messages per run")
    p.add_argument("--size", type=int, default=1024, help="message size in bytes")
    p.add_argument("--runs", type=int, default=3, help="runs per server (median reported)")
    p.add_argument("--reuse", action="store_true", help="reuse connections (smtp-source -d)")
    p.add_argument("--no-anchors", action="store_true", help="measure postbote only")
    p.add_argument(
        "--client",
        choices=["auto", "smtp-source", "python"],
        default="auto",
        help="load generator (auto: smtp-source when installed)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds allowed per load run (default: 60 + messages/50)",
    )
    args = p.parse_args(argv)
    check_counts(p, args, ("sessions", "messages", "size", "runs"), timeout_per_message=1 / 50)
    return args


# --- load generators -------------------------------------------------------------------


def smtp_source(port: int, args: argparse.Namespace) -> None:
    """Run smtp-source to completion; BenchError unless every message got its 250."""
    argv = [
        str(SMTP_SOURCE),
        "-c",
        "-s",
        str(args.sessions),
        "-m",
        str(args.messages),
        "-l",
        str(args.size),
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        "-M",
        CLIENT_NAME,
    ]
    if args.reuse:
        argv.append("-d")
    try:
        run = subprocess.run(
            [*argv, f"inet:{HOST}:{port}"], capture_output=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"smtp-source did not finish within {args.timeout:.0f}s") from exc
    # -c prints a counter of completed DATA transactions, separated by CR.
    counts = run.stdout.replace(b"\n", b"\r").split(b"\r")
    done = next((int(c) for c in reversed(counts) if c.strip().isdigit()), 0)
    if run.returncode != 0 or done != args.messages:
        err = " ".join(run.stderr.decode(errors="replace").split())[-300:]
        raise BenchError(f"smtp-source exit {run.returncode}, {done} accepted: {err}")


def message_body(size: int) -> bytes:
    """A message of about `size` bytes, CRLF lines, no line starting with "."."""
    head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n\r\n").encode()
    line = b"La de da de da 1.\r\n"
    body = line * max(0, (size - len(head)) // len(line) + 1)
    return head + body[: max(0, size - len(head))].rstrip(b"\r\n") + b"\r\n"


class SmtpFailure(Exception):
    pass


async def _reply(reader: asyncio.StreamReader, expect: bytes) -> None:
    for _ in range(100):  # RFC 5321 §4.2.1: multiline replies end with "NNN " ...
        line = await reader.readline()
        if not line.startswith(expect):
            raise SmtpFailure(f"expected {expect.decode()}, got {line[:80]!r}")
        if line[3:4] != b"-":
            return
    raise SmtpFailure("reply too long")


async def _transaction(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> None:
    for command, code in (
        (f"MAIL FROM:<{SENDER}>", b"250"),
        (f"RCPT TO:<{RECIPIENT}>", b"250"),
        ("DATA", b"354"),
    ):
        writer.write(command.encode() + b"\r\n")
        await _reply(reader, code)
    writer.write(body + b".\r\n")
    await _reply(reader, b"250")


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    await _reply(reader, b"220")
    writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
    await _reply(reader, b"250")
    return reader, writer


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"QUIT\r\n")
    await _reply(reader, b"221")
    writer.close()
    await writer.wait_closed()


async def _python_load(port: int, args: argparse.Namespace) -> int:
    body = message_body(args.size)
    left = [args.messages]
    done = [0]

    async def worker() -> None:
        conn = None
        while left[0] > 0:
            left[0] -= 1
            if conn is None:
                conn = await _open(port)
            await _transaction(*conn, body)
            done[0] += 1
            if not args.reuse:
                await _close(*conn)
                conn = None
        if conn is not None:
            await _close(*conn)

    await asyncio.gather(*(worker() for _ in range(args.sessions)))
    return done[0]


def python_client(port: int, args: argparse.Namespace) -> None:
    """The fallback load generator: same protocol steps as smtp-source."""
    try:
        done = asyncio.run(asyncio.wait_for(_python_load(port, args), args.timeout))
    except (OSError, SmtpFailure, TimeoutError) as exc:
        raise BenchError(f"python client: {exc!r}") from exc
    if done != args.messages:
        raise BenchError(f"python client: {done} of {args.messages} accepted")


# --- one measurement -------------------------------------------------------------------


def measure(
    target: Target, load: Callable[[int, argparse.Namespace], None], args: argparse.Namespace
) -> tuple[float, float | None]:
    """Seconds until the load tool finished (all accepted), and until all files were in
    the Maildir's new/ (None for a server without Maildir)."""
    start = time.monotonic()
    load(target.port, args)
    accepted = time.monotonic() - start
    if target.maildir_new is None:
        return accepted, None
    new = target.maildir_new
    if not wait_for(lambda: count_files(new) >= args.messages, args.timeout, 0.005):
        raise BenchError(f"only {count_files(new)} of {args.messages} files in {new}")
    delivered = time.monotonic() - start
    if not wait_for(lambda: count_files(new) > args.messages, 0.5, 0.1):
        return accepted, delivered
    raise BenchError(f"{count_files(new)} files in {new}, expected {args.messages}")


@contextmanager
def postbote_target(workdir: Path, args: argparse.Namespace) -> Iterator[Target]:
    server = PostboteServer(workdir, max_connections=max(1000, 4 * args.sessions))
    with server:
        server.start()
        try:
            yield Target(server.port, server.maildir_new)
        except BenchError as exc:
            raise BenchError(f"{exc}\npostbote log:\n{log_tail(server.log)}") from exc


@contextmanager
def sink_target() -> Iterator[Target]:
    with SmtpSink() as sink:
        yield Target(sink.port, None)


@contextmanager
def postfix_target() -> Iterator[Target]:
    with PostfixInstance() as pf:
        yield Target(pf.port, pf.maildir_new)


def run_once(
    name: str,
    target: AbstractContextManager[Target],
    load: Callable[[int, argparse.Namespace], None],
    args: argparse.Namespace,
    accepted: Series,
    delivered: Series | None,
) -> None:
    """One run against one server; a failure is recorded, printed, and not raised."""
    try:
        with target as t:
            acc, dlv = measure(t, load, args)
    except BenchError as exc:
        accepted.errors.append(str(exc))
        print(f"  {name}: FAILED: {exc}", flush=True)
        return
    accepted.rates.append(args.messages / acc)
    shown = f"  {name}: accepted {args.messages / acc:,.0f}/s"
    if delivered is not None and dlv is not None:
        delivered.rates.append(args.messages / dlv)
        shown += f", in Maildir {args.messages / dlv:,.0f}/s"
    print(shown, flush=True)


def run_all(
    args: argparse.Namespace, load: Callable[[int, argparse.Namespace], None], anchors: bool
) -> list[Series]:
    mode = ", connections reused (-d)" if args.reuse else ""
    sink = Series("smtp-sink (discards: protocol ceiling)" + mode)
    sink_reuse = Series("smtp-sink, connections reused (-d)")
    reuse_args = argparse.Namespace(**{**vars(args), "reuse": True})
    pf_acc = Series("Postfix, accepted into its queue" + mode)
    pf_dlv = Series("Postfix, all delivered into Maildir" + mode)
    pb_acc = Series("postbote, accepted (durable 250)" + mode)
    pb_dlv = Series("postbote, all in Maildir new/" + mode)
    postfix_ok = anchors
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        if anchors:
            run_once("smtp-sink", sink_target(), load, args, sink, None)
            if not args.reuse:
                run_once("smtp-sink -d", sink_target(), load, reuse_args, sink_reuse, None)
        if postfix_ok:
            run_once("Postfix", postfix_target(), load, args, pf_acc, pf_dlv)
            if not pf_acc.rates and pf_acc.errors:
                postfix_ok = False  # it failed to start or run: continue with postbote alone
        with temp_dir("bench-postbote-") as work:
            run_once("postbote", postbote_target(work, args), load, args, pb_acc, pb_dlv)
    rows = [pb_acc, pb_dlv]
    if anchors:
        rows = [sink, *([] if args.reuse else [sink_reuse]), pf_acc, pf_dlv, *rows]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_exit()
    raise_nofile(4 * args.sessions + 256)
    tools = have_postfix_tools()
    if args.client == "smtp-source" and not tools:
        print("smtp-source not found (Debian package postfix)", file=sys.stderr)
        return 2
    use_source = tools and args.client != "python"
    load = smtp_source if use_source else python_client
    anchors = tools and not args.no_anchors
    print(
        f"# smtp_accept: {args.messages} messages of {args.size} bytes, 1 recipient, "
        f"{args.sessions} sessions, {args.runs} run(s), "
        f"{'connections reused' if args.reuse else 'new connection per message'}"
    )
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}"
    )
    if use_source:
        print(f"# load: {SMTP_SOURCE} (Postfix {postfix_version()})")
    else:
        why = "forced by --client python" if tools else "smtp-source NOT installed"
        print(f"# load: Python asyncio client ({why}); numbers are not comparable to anchors.md")
    if not tools:
        print("# anchors skipped: Postfix not installed (see bench/README.md)")
    with deferred_cleanup():  # see its docstring: no run pays for an earlier one's files
        series = run_all(args, load, anchors)
    print()
    print_table(
        ["server", "sessions", "msgs/s (median)", "runs (msgs/s each)"],
        [
            [
                s.label,
                str(args.sessions),
                f"{median(s.rates):,.0f}" if s.rates else "FAILED",
                ", ".join(f"{r:,.0f}" for r in s.rates)
                + (f" ({len(s.errors)} failed)" if s.errors else ""),
            ]
            for s in series
        ],
    )
    postbote = [s for s in series if s.label.startswith("postbote")]
    return 0 if all(s.rates and not s.errors for s in postbote) else 1


if __name__ == "__main__":
    sys.exit(main())
