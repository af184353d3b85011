"""POP3 RETR throughput: messages/s retrieved with RETR over one connection from a Maildir
of --messages messages of --size bytes, by postbote and, in the same run, by a private
Dovecot instance (Debian's dovecot-pop3d) serving a copy of the same Maildir.

The Maildir is built once (CRLF lines, realistic headers, varied bodies, lines starting
with "." for dot-stuffing) and copied afresh into each server for every run. Both servers
are measured over plaintext POP3 on loopback (no TLS), with the same client: one untimed
login (it builds the server's index; its time is reported apart), then a second session
that logs in, RETRs every message (timed; no DELE) and QUITs. Every retrieved message is
checked byte for byte against its file.

    python bench/pop3_retr.py                        # 10,000 msgs of 4 KiB, 3 runs
    python bench/pop3_retr.py --pipeline             # RFC 2449 PIPELINING client
    python bench/pop3_retr.py --messages 2000 --runs 1 --no-anchors
"""

from __future__ import annotations

import argparse
import email.utils
import os
import platform
import pwd
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    DOMAIN,
    HOST,
    RECIPIENT,
    BenchError,
    PostboteServer,
    check_counts,
    free_port,
    is_listening,
    log_tail,
    median,
    print_table,
    sigterm_as_exit,
    stop_process,
    temp_dir,
    wait_for,
)
from smtp_relay import cpu_seconds

from postbote.store.maildir import mailbox_root

PASSWORD = "bench-password"  # the password PostboteServer gives RECIPIENT
DOVECOT = Path("/usr/sbin/dovecot")
POP3_READY = re.compile(r"ready .*\bpop3=127\.0\.0\.1:(\d+)")
MESSAGE_ID = re.compile(rb"\r\nMessage-ID: (<[^>\r\n]+>)\r\n")
_WORDS = (
    "the quick brown fox jumps over lazy dog meeting agenda invoice report draft review "
    "Grüße schön Straße café naïve pretty please thanks regards tomorrow budget server "
    "mailbox queue delivery retry backup archive kernel patch release notes minutes"
)
WORDS = tuple(_WORDS.split())
# Lines that a POP3 server must dot-stuff (RFC 1939 §3), the lone "." above all.
DOT_LINES = (".", "..", ".hidden by a careless server", "...and so on", ". indented")


@dataclass
class Series:
    """The results of one server over all runs."""

    label: str
    rates: list[float] = field(default_factory=list)  # RETR messages/s
    mib_s: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per message during RETR
    client_ms: list[float] = field(default_factory=list)  # client CPU per message
    first_login: list[float] = field(default_factory=list)  # seconds, builds the index
    login: list[float] = field(default_factory=list)  # seconds, index already built
    quit: list[float] = field(default_factory=list)  # seconds for QUIT (UPDATE state)
    mismatches: int = 0
    errors: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=10_000, help="messages in the Maildir")
    p.add_argument("--size", type=int, default=4096, help="message size in bytes")
    p.add_argument("--runs", type=int, default=3, help="runs per server (median reported)")
    p.add_argument("--no-anchors", action="store_true", help="measure postbote only")
    p.add_argument("--pipeline", action="store_true", help="pipeline RETRs (RFC 2449)")
    p.add_argument("--depth", type=int, default=64, help="RETRs in flight with --pipeline")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds allowed per session (default: 60 + messages/100)",
    )
    args = p.parse_args(argv)
    check_counts(p, args, ("messages", "size", "runs", "depth"), timeout_per_message=1 / 100)
    return args


# --- the Maildir ---------------------------------------------------------------------------


def make_message(i: int, size: int, rng: random.Random) -> bytes:
    """Message `i`: `size` bytes (more if the headers alone are longer), CRLF lines."""
    sender = f"{rng.choice(WORDS[:12])}.{i % 97}@remote{i % 7}.test"
    sent = 1_700_000_000 + 37 * i
    headers = [
        f"Return-Path: <{sender}>",
        f"Delivered-To: {RECIPIENT}",
        f"Received: from mail{i % 7}.remote{i % 7}.test (mail{i % 7}.remote{i % 7}.test "
        f"[192.0.2.{i % 250 + 1}])",
        f"\tby mx.{DOMAIN} (postbote) with ESMTPS id {rng.getrandbits(64):016X}",
        f"\tfor <{RECIPIENT}>; {email.utils.formatdate(sent)}",
        f'From: "{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}" <{sender}>',
        f"To: <{RECIPIENT}>",
        f"Subject: {' '.join(rng.choices(WORDS, k=rng.randint(2, 8)))}",
        f"Date: {email.utils.formatdate(sent)}",
        f"Message-ID: <{i}.{rng.getrandbits(48):012x}@remote{i % 7}.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
    ]
    head = "\r\n".join(headers).encode() + b"\r\n"
    lines: list[str] = [".first body line"] if i % 10 == 0 else []
    length = len(head)
    while length < size:
        if i % 5 == 0 and rng.random() < 0.15:  # every fifth message has dot lines
            line = rng.choice(DOT_LINES)
        else:
            line = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
        lines.append(line)
        length += len(line.encode()) + 2
    data = head + "\r\n".join(lines).encode()
    tail = b"\r\n.\r\n" if i % 20 == 5 else b"\r\n"  # some end with a lone "."
    keep = max(size - len(tail), len(head))
    data = data[:keep].rstrip(b"\r")  # cut to size; never leave a bare CR
    return data + b"x" * (keep - len(data)) + tail


def build_maildir(root: Path, count: int, size: int) -> dict[bytes, bytes]:
    """A Maildir at `root` with `count` messages in new/ (written to tmp/, renamed to
    new/, mtimes ascending); returns Message-ID -> message."""
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = random.Random(1939)
    expected: dict[bytes, bytes] = {}
    base = 1_700_000_000
    for i in range(count):
        data = make_message(i, size, rng)
        match = MESSAGE_ID.search(data)
        assert match is not None
        expected[match.group(1)] = data
        name = f"{base + i}.M{i % 1_000_000}P{os.getpid()}Q{i}.bench.{DOMAIN}"
        tmp = root / "tmp" / name
        tmp.write_bytes(data)
        os.utime(tmp, ns=((base + i) * 10**9,) * 2)
        os.rename(tmp, root / "new" / name)
    return expected


def copy_maildir(src: Path, dst: Path, owner: tuple[int, int] | None = None) -> None:
    """Copy the Maildir (mtimes kept); with `owner`, chown the copy to (uid, gid)."""
    shutil.copytree(src, dst, copy_function=shutil.copy2, dirs_exist_ok=True)
    if owner is not None:
        for directory, _, files in os.walk(dst):
            os.chown(directory, *owner)
            for name in files:
                os.chown(os.path.join(directory, name), *owner)


# --- the client ----------------------------------------------------------------------------


class PopError(BenchError):
    pass


class PopClient:
    """A raw-socket POP3 client: lockstep or pipelined RETR (RFC 2449 §6.6 PIPELINING)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.sock = socket.create_connection((HOST, port), timeout=min(timeout, 30.0))
        self.buf = bytearray()
        self.line()  # the greeting

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        if time.monotonic() > self.deadline:
            raise PopError("session took longer than --timeout")
        try:
            data = self.sock.recv(1 << 18)
        except TimeoutError as exc:
            raise PopError("no answer from the server within 30 s") from exc
        if not data:
            raise PopError("the server closed the connection")
        self.buf += data

    def line(self) -> bytes:
        """One +OK status line (RFC 1939 §3); PopError on -ERR."""
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        if not line.startswith(b"+OK"):
            raise PopError(f"server said {line[:120]!r}")
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def open_maildrop(self) -> tuple[float, int]:
        """USER, PASS (RFC 1939 §7) and STAT: seconds until STAT was answered, and the
        message count. STAT is included because a server may answer PASS before it has
        listed the mailbox (Dovecot does: its index is built at the first command)."""
        start = time.monotonic()
        self.command(f"USER {RECIPIENT}")
        self.command(f"PASS {PASSWORD}")
        count = int(self.command("STAT").split()[1])
        return time.monotonic() - start, count

    def quit(self) -> float:
        start = time.monotonic()
        self.command("QUIT")  # RFC 1939 §6: answered after the UPDATE state
        return time.monotonic() - start

    def _multiline(self, pos: int) -> tuple[bytes, int] | None:
        """The body of a complete multi-line reply at `pos` (still dot-stuffed, CRLF
        lines) and the position after it; None if incomplete. PopError on -ERR."""
        status = self.buf.find(b"\r\n", pos)
        if status < 0:
            return None
        if not self.buf.startswith(b"+OK", pos):
            raise PopError(f"server said {bytes(self.buf[pos:status])[:120]!r}")
        end = self.buf.find(b"\r\n.\r\n", status)  # RFC 1939 §3: CRLF "." CRLF
        if end < 0:
            return None
        return bytes(self.buf[status + 2 : end + 2]), end + 5

    def _take(self, bodies: list[bytes]) -> int:
        """Move every complete multi-line reply from the buffer into `bodies`."""
        pos = taken = 0
        while (reply := self._multiline(pos)) is not None:
            bodies.append(reply[0])
            pos = reply[1]
            taken += 1
        del self.buf[:pos]
        return taken

    def retr_all(self, count: int, depth: int) -> list[bytes]:
        """RETR 1..count with up to `depth` commands in flight (1: lockstep); the raw
        bodies in order."""
        bodies: list[bytes] = []
        sent = 0
        while len(bodies) < count:
            limit = min(count, len(bodies) + depth)
            if sent < limit:
                self.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(sent + 1, limit + 1)))
                sent = limit
            if not self._take(bodies):
                self._fill()
        return bodies


def unstuff(raw: bytes) -> bytes:
    """Undo dot-stuffing (RFC 1939 §3) of a multi-line body."""
    return (b"\r\n" + raw).replace(b"\r\n..", b"\r\n.")[2:]


def mismatches(bodies: list[bytes], expected: dict[bytes, bytes]) -> int:
    """Messages retrieved that differ from every file, plus files never retrieved."""
    seen: set[bytes] = set()
    bad = 0
    for raw in bodies:
        data = unstuff(raw)
        match = MESSAGE_ID.search(data)
        key = match.group(1) if match else b""
        if key in seen or expected.get(key) != data:
            bad += 1
        seen.add(key)
    return bad + len(expected.keys() - seen)


# --- the servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A running POP3 server: its port and the pid whose process tree does the work."""

    port: int
    pid: int


class Pop3Postbote(PostboteServer):
    """postbote with a plaintext POP3 listener that accepts passwords from loopback."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, max_connections=100)
        text = self.config.read_text()
        if "[listen]\n" not in text:
            raise BenchError("unexpected postbote config template (no [listen] table)")
        text = text.replace("[listen]\n", f'[listen]\npop3 = ["{HOST}:0"]\n', 1)
        self.config.write_text(text + "[pop3]\nplaintext_on_loopback = true\n")
        self.mailbox = mailbox_root(self.data_dir, RECIPIENT)
        self.pop3_port = 0

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
        super().start(timeout, env)
        match = POP3_READY.search(self.log.read_text(errors="replace"))
        if match is None:
            self.stop()
            raise BenchError(f"postbote has no pop3 listener:\n{log_tail(self.log)}")
        self.pop3_port = int(match.group(1))
        return self.pop3_port


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/log/dovecot.log
protocols = pop3
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{base}/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/passwd
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def dovecot_users() -> tuple[str, str, int, int]:
    """(internal user, login user, mail uid, mail gid). As root: Debian's dovecot and
    dovenull users, mail as nobody (Dovecot refuses mail access as uid 0); otherwise
    all as the current user."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid
    nobody = pwd.getpwnam("nobody")
    return "dovecot", "dovenull", nobody.pw_uid, nobody.pw_gid


def dovecot_version() -> str:
    try:
        run = subprocess.run([str(DOVECOT), "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return run.stdout.decode(errors="replace").strip() or "?"


@contextmanager
def dovecot_target(master: Path) -> Iterator[Target]:
    """A private Dovecot (pop3 only, plaintext, on loopback) serving a copy of `master`,
    configured and logging in a temporary directory; stopped (SIGTERM) on exit."""
    internal, login, uid, gid = dovecot_users()
    with temp_dir("bench-pop3-dovecot-") as base:
        for sub in ("run", "state", "log", "home"):
            (base / sub).mkdir()
        copy_maildir(master, base / "Maildir", (uid, gid))
        os.chown(base / "home", uid, gid)
        passwd = base / "passwd"
        passwd.write_text(f"{RECIPIENT}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{base}/home::\n")
        passwd.chmod(0o644)
        port = free_port()
        conf = base / "dovecot.conf"
        conf.write_text(
            DOVECOT_CONF.format(
                base=base, host=HOST, port=port, internal=internal, login=login, uid=uid, gid=gid
            )
        )
        log = base / "log" / "dovecot.log"
        with (base / "log" / "stderr.log").open("wb") as err:
            proc = subprocess.Popen(
                [str(DOVECOT), "-F", "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: proc.poll() is not None or is_listening(port), 30.0, 0.05)
            if proc.poll() is not None or not is_listening(port):
                why = log_tail(base / "log" / "stderr.log") + "\n" + log_tail(log)
                raise BenchError(f"dovecot did not start:\n{why}")
            try:
                yield Target(port, proc.pid)
            except BenchError as exc:
                raise BenchError(f"{exc}\ndovecot log:\n{log_tail(log)}") from exc
        finally:
            stop_process(proc, 20.0)


@contextmanager
def postbote_target(master: Path) -> Iterator[Target]:
    """postbote in a fresh data_dir whose user's Maildir is a copy of `master`."""
    with temp_dir("bench-pop3-postbote-") as work:
        server = Pop3Postbote(work)
        with server:  # (its __enter__ is typed as returning the base class)
            port = server.start()
            copy_maildir(master, server.mailbox)
            try:
                yield Target(port, server.pid)
            except BenchError as exc:
                raise BenchError(f"{exc}\npostbote log:\n{log_tail(server.log)}") from exc


# --- one measurement -----------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    first_login: float  # seconds: USER, PASS, STAT of the first session (index built)
    login: float  # seconds: USER, PASS, STAT of the measured session
    retr: float  # seconds from the first RETR sent to the last reply received
    quit: float  # seconds for QUIT (the UPDATE state: retrieved messages marked seen)
    cpu: float  # server CPU seconds (process tree) during the RETRs
    client_cpu: float  # this script's CPU seconds during the RETRs
    octets: int  # message octets retrieved (before dot-unstuffing)
    mismatches: int


def open_maildrop(client: PopClient, args: argparse.Namespace) -> float:
    seconds, count = client.open_maildrop()
    if count != args.messages:
        raise BenchError(f"STAT says {count} messages, expected {args.messages}")
    return seconds


def measure(target: Target, args: argparse.Namespace, expected: dict[bytes, bytes]) -> Result:
    """An untimed first session (login, STAT, QUIT: the server builds its index), then
    one that logs in, RETRs every message and QUITs."""
    client = PopClient(target.port, args.timeout)
    try:
        first = open_maildrop(client, args)
        client.quit()
    finally:
        client.close()
    client = PopClient(target.port, args.timeout)
    try:
        login = open_maildrop(client, args)
        cpu, own = cpu_seconds(target.pid, tree=True), time.process_time()
        start = time.monotonic()
        bodies = client.retr_all(args.messages, args.depth if args.pipeline else 1)
        retr = time.monotonic() - start
        cpu, own = cpu_seconds(target.pid, tree=True) - cpu, time.process_time() - own
        quit_s = client.quit()
    finally:
        client.close()
    octets = sum(len(b) for b in bodies)
    return Result(first, login, retr, quit_s, cpu, own, octets, mismatches(bodies, expected))


def run_once(
    name: str,
    target: Callable[[], AbstractContextManager[Target]],
    args: argparse.Namespace,
    expected: dict[bytes, bytes],
    series: Series,
) -> None:
    """One run against one server; a failure is recorded, printed, and not raised."""
    try:
        with target() as t:
            r = measure(t, args, expected)
        if r.mismatches:
            series.mismatches += r.mismatches
            raise BenchError(f"{r.mismatches} of {args.messages} messages not byte-identical")
    except (BenchError, OSError) as exc:
        series.errors.append(str(exc))
        print(f"  {name}: FAILED: {exc}", flush=True)
        return
    n = args.messages
    series.rates.append(n / r.retr)
    series.mib_s.append(r.octets / r.retr / 2**20)
    series.cpu_ms.append(1000 * r.cpu / n)
    series.client_ms.append(1000 * r.client_cpu / n)
    series.first_login.append(r.first_login)
    series.login.append(r.login)
    series.quit.append(r.quit)
    print(
        f"  {name}: RETR {n / r.retr:,.0f} msgs/s ({r.octets / r.retr / 2**20:.1f} MiB/s, "
        f"CPU ms/msg: server {1000 * r.cpu / n:.3f}, client {1000 * r.client_cpu / n:.3f}); "
        f"first login+STAT {r.first_login:.3f} s, "
        f"login+STAT {r.login:.3f} s, QUIT {r.quit:.3f} s; all {n} byte-identical",
        flush=True,
    )


# --- runs and the table --------------------------------------------------------------------


def run_all(
    args: argparse.Namespace, master: Path, expected: dict[bytes, bytes], anchors: bool
) -> list[Series]:
    mode = f"pipelined, depth {args.depth}" if args.pipeline else "lockstep"
    dovecot = Series(f"Dovecot {dovecot_version().split()[0]} pop3 ({mode})")
    postbote = Series(f"postbote ({mode})")
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        if anchors:
            run_once("Dovecot", lambda: dovecot_target(master), args, expected, dovecot)
        run_once("postbote", lambda: postbote_target(master), args, expected, postbote)
    return [dovecot, postbote] if anchors else [postbote]


def print_results(series: list[Series]) -> None:
    def cell(values: list[float], fmt: str) -> str:
        return format(median(values), fmt) if values else ""

    print()
    print_table(
        [
            "server",
            "RETR msgs/s (median)",
            "runs (msgs/s each)",
            "MiB/s",
            "server CPU ms/msg",
            "client CPU ms/msg",
            "first login+STAT s",
            "login+STAT s",
            "QUIT s",
            "mismatches",
        ],
        [
            [
                s.label,
                cell(s.rates, ",.0f") or "FAILED",
                ", ".join(f"{r:,.0f}" for r in s.rates)
                + (f" ({len(s.errors)} failed)" if s.errors else ""),
                cell(s.mib_s, ".1f"),
                cell(s.cpu_ms, ".3f"),
                cell(s.client_ms, ".3f"),
                cell(s.first_login, ".3f"),
                cell(s.login, ".3f"),
                cell(s.quit, ".3f"),
                str(s.mismatches),
            ]
            for s in series
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_exit()
    anchors = not args.no_anchors and DOVECOT.exists()
    client = f"pipelined, up to {args.depth} RETRs in flight" if args.pipeline else "lockstep"
    print(
        f"# pop3_retr: {args.messages} messages of {args.size} bytes, RETR over one "
        f"connection, plaintext POP3 on loopback (no TLS), {client} client, {args.runs} run(s)"
    )
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}"
    )
    if not args.no_anchors and not anchors:
        print(f"# anchor skipped: {DOVECOT} not found (Debian package dovecot-pop3d)")
    elif anchors:
        print(f"# anchor: {DOVECOT} {dovecot_version()}, a copy of the same Maildir")
    with temp_dir("bench-pop3-maildir-") as work:
        start = time.monotonic()
        expected = build_maildir(work / "Maildir", args.messages, args.size)
        dots = sum(1 for m in expected.values() if b"\r\n." in m)
        print(
            f"# Maildir built in {time.monotonic() - start:.1f} s; {dots} messages have "
            "lines starting with '.'",
            flush=True,
        )
        series = run_all(args, work / "Maildir", expected, anchors)
    print_results(series)
    return 0 if series[-1].rates and not series[-1].errors else 1


if __name__ == "__main__":
    sys.exit(main())
