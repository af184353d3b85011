"""Relay throughput: messages/s from postbote's outbound queue to a remote server, beside a
private Postfix instance relaying the same load in the same run (issue 4 §5).

Every run starts fresh: Postfix's `smtp-sink` on 127.0.0.2 (the remote destination, which
counts the messages it receives), then the server under test on 127.0.0.1 with the local
domain example.test whose alias relay@example.test points to sink@relay.test. postbote
finds relay.test by MX (`relay.test MX 10 mx.relay.test.`, `mx.relay.test A 127.0.0.2`)
from the test DNS server of tests/dnsserver.py; Postfix has a transport map to
[127.0.0.2]:PORT (it cannot use a DNS server on another port). `smtp-source` sends the
load to the server's MX port, a new connection per message. The script reports messages /
time from the start of smtp-source until the sink has all of them ("relayed"), and until
smtp-source finished ("accepted").

    python bench/smtp_relay.py                            # 5,000 msgs, 20 sessions, 3 runs
    python bench/smtp_relay.py --messages 1000 --runs 1 --no-anchors
    python bench/smtp_relay.py --profile /tmp/relay-prof  # py-spy on postbote's processes
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from anchor_postfix import (
    SMTP_SINK,
    SMTP_SOURCE,
    PostfixInstance,
    have_postfix_tools,
    postfix_version,
)
from common import (
    CLIENT_NAME,
    DOMAIN,
    HOST,
    SENDER,
    BenchError,
    PostboteServer,
    ServerProcess,
    check_counts,
    child_pids,
    log_tail,
    median,
    print_table,
    raise_nofile,
    sigterm_as_exit,
    stop_process,
    temp_dir,
    wait_for,
)

if TYPE_CHECKING:
    from tests.dnsserver import TestDnsServer

REPO = Path(__file__).resolve().parent.parent
SINK_HOST = "127.0.0.2"  # the remote destination: another loopback address
RELAY_DOMAIN = "relay.test"
MX_NAME = "mx.relay.test"
ALIAS = f"relay@{DOMAIN}"
REMOTE = f"sink@{RELAY_DOMAIN}"
MESG = re.compile(rb"mesg=(\d+)")


@dataclass
class Series:
    """The results of one row of the table over all runs."""

    label: str
    rates: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # CPU time per message


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    p.add_argument("--messages", type=int, default=5000, help="messages per run")
    p.add_argument("--size", type=int, default=1024, help="message size in bytes")
    p.add_argument("--runs", type=int, default=3, help="runs per server (median reported)")
    p.add_argument("--no-anchors", action="store_true", help="measure postbote only")
    p.add_argument("--profile", type=Path, help="py-spy raw profiles of postbote go here")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds allowed per run (default: 60 + messages/50)",
    )
    args = p.parse_args(argv)
    check_counts(p, args, ("sessions", "messages", "size", "runs"), timeout_per_message=1 / 50)
    if args.profile is not None and shutil.which("py-spy") is None:
        p.error("--profile needs py-spy (pip install py-spy)")
    return args


# --- the remote side: DNS and smtp-sink -------------------------------------------------


def start_dns() -> TestDnsServer:
    """The test DNS server of the test suite, with relay.test's MX on 127.0.0.2."""
    sys.path.insert(0, str(REPO))  # `tests` is a package at the repository root
    from tests.dnsserver import TestDnsServer

    dns = TestDnsServer(HOST)
    dns.add(RELAY_DOMAIN, "MX", f"10 {MX_NAME}.")
    dns.add(MX_NAME, "A", SINK_HOST)
    dns.start()
    return dns


def free_port_on(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


class CountingSink:
    """`smtp-sink -c` on 127.0.0.2: discards messages, and its running counters (written
    to a file) say how many it has received."""

    def __init__(self, workdir: Path) -> None:
        self.port = 0
        self.counters = workdir / "smtp-sink.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> CountingSink:
        self.port = free_port_on(SINK_HOST)
        argv = [str(SMTP_SINK), "-c"]
        if os.geteuid() == 0:  # smtp-sink refuses to keep root privileges
            argv += ["-u", "postfix" if _has_user("postfix") else "nobody"]
        argv += ["-m", "1000", f"{SINK_HOST}:{self.port}", "1000"]
        with self.counters.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or _listening(SINK_HOST, self.port), 10.0)
        if proc.poll() is not None or not _listening(SINK_HOST, self.port):
            self.__exit__(None, None, None)
            raise BenchError(f"smtp-sink did not start: {log_tail(self.counters, 3)}")
        return self

    def received(self) -> int:
        """Messages received so far ("mesg=N" of the last counter line, CR-separated)."""
        with self.counters.open("rb") as f:
            f.seek(max(0, self.counters.stat().st_size - 200))
            found = MESG.findall(f.read())
        return int(found[-1]) if found else 0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5.0)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --- the servers under test -------------------------------------------------------------


class RelayPostbote(PostboteServer):
    """postbote whose alias relay@example.test points to sink@relay.test, resolving
    relay.test with the test DNS server and delivering to the sink's port."""

    def __init__(self, workdir: Path, *, dns_port: int, sink_port: int, sessions: int) -> None:
        super().__init__(workdir, max_connections=max(1000, 4 * sessions))
        extra = f'[dns]\nnameservers = ["{HOST}:{dns_port}"]\n[delivery]\nport = {sink_port}\n'
        self.config.write_text(self.config.read_text() + extra)

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
        for args in (["domain", "add", DOMAIN], ["alias", "add", ALIAS, REMOTE]):
            run = subprocess.run(
                [*self._cli, *args, "-c", str(self.config)],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if run.returncode != 0:
                raise BenchError(f"postbote {' '.join(args)}: {run.stderr.decode().strip()}")
        return ServerProcess.start(self, timeout, env)

    def roles(self) -> dict[str, int]:
        """pid of the server and of its worker and outbound processes, by role."""
        found = {"server": self.pid}
        for pid in child_pids(self.pid)[1:]:
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                for role in ("worker", "runner"):
                    if f"postbote.queue.{role}".encode() in cmd:
                        found[role] = pid
        return found

    def queue_summary(self) -> str:
        """The states of the outbound queue, for a failed run's diagnosis."""
        run = subprocess.run(
            [*self._cli, "queue", "list", "-c", str(self.config)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        states = Counter(
            word
            for line in run.stdout.decode(errors="replace").splitlines()
            for word in line.split()
            if word in ("queued", "inflight", "deferred", "delivered", "failed", "held")
        )
        return f"queue: {dict(states)}\n" if states else ""


class RelayPostfix(PostfixInstance):
    """The Postfix anchor, with relay@example.test aliased to sink@relay.test and a
    transport map sending relay.test to the sink (default smtp(8) settings otherwise:
    20 connections per destination, connection cache on demand, no TLS)."""

    def __init__(self, sink_port: int) -> None:
        super().__init__()
        self.sink_port = sink_port

    def _configure(self) -> None:
        super()._configure()
        main_cf = self.base / "etc" / "main.cf"
        main_cf.write_text(
            main_cf.read_text()
            + f"virtual_alias_maps = inline:{{ {ALIAS}={REMOTE} }}\n"
            + f"transport_maps = inline:{{ {RELAY_DOMAIN}=smtp:[{SINK_HOST}]:{self.sink_port} }}\n"
        )

    def master_pid(self) -> int:
        text = (self.base / "queue" / "pid" / "master.pid").read_text()
        return int(text.split()[0])


# --- measuring ----------------------------------------------------------------------------


def cpu_seconds(pid: int, *, tree: bool) -> float:
    """CPU time (user + system) used so far by process `pid`; with `tree`, also by its
    descendants and by the children they have reaped (short-lived processes included)."""
    ticks = 0
    for p in child_pids(pid) if tree else [pid]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(v) for v in stat[11 : 15 if tree else 13])  # utime stime cu cs
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Result:
    accepted: float  # seconds until smtp-source finished
    relayed: float  # seconds until the sink had every message
    cpu: dict[str, float]  # CPU seconds per process role during the run


def source_argv(host: str, port: int, args: argparse.Namespace) -> list[str]:
    return [
        str(SMTP_SOURCE),
        "-c",
        *("-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size)),
        *("-f", SENDER, "-t", ALIAS, "-M", CLIENT_NAME),
        f"inet:{host}:{port}",
    ]


def measure(
    port: int,
    sink: CountingSink,
    args: argparse.Namespace,
    cpu: dict[str, int],
    work: Path,
    *,
    host: str = HOST,
    tree: bool = False,
) -> Result:
    """Run smtp-source against `host`:`port`; time it and the arrival of everything at the
    sink. `cpu`: processes (with `tree`: process trees) whose CPU time is reported."""
    before = {role: cpu_seconds(pid, tree=tree) for role, pid in cpu.items()}
    out, err = work / "smtp-source.out", work / "smtp-source.err"
    start = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        source = subprocess.Popen(source_argv(host, port, args), stdout=o, stderr=e)
    try:
        done: dict[str, float] = {}

        def finished() -> bool:
            if "accepted" not in done and source.poll() is not None:
                done["accepted"] = time.monotonic() - start
            if "relayed" not in done and sink.received() >= args.messages:
                done["relayed"] = time.monotonic() - start
            return len(done) == 2 or (source.returncode not in (None, 0))

        wait_for(finished, args.timeout, 0.005)
    finally:
        stop_process(source, 1.0)
    used = {role: cpu_seconds(pid, tree=tree) - before[role] for role, pid in cpu.items()}
    _check_source(source.returncode, out, err, args)
    if "relayed" not in done:
        raise BenchError(f"the sink received {sink.received()} of {args.messages} messages")
    if wait_for(lambda: sink.received() > args.messages, 0.5, 0.1):
        raise BenchError(f"the sink received {sink.received()}, expected {args.messages}")
    return Result(done["accepted"], done["relayed"], used)


def _check_source(code: int | None, out: Path, err: Path, args: argparse.Namespace) -> None:
    """BenchError unless smtp-source exited 0 with every message completed (its -c
    counter of DATA transactions, CR-separated)."""
    counts = out.read_bytes().replace(b"\n", b"\r").split(b"\r")
    sent = next((int(c) for c in reversed(counts) if c.strip().isdigit()), 0)
    if code != 0 or sent != args.messages:
        text = " ".join(err.read_text(errors="replace").split())[-300:]
        raise BenchError(f"smtp-source exit {code}, {sent} accepted: {text}")


@contextlib.contextmanager
def profiling(pids: dict[str, int], out_dir: Path | None, run: int) -> Iterator[None]:
    """py-spy on each process of `pids` while the block runs (nothing if `out_dir` is None)."""
    spies: list[subprocess.Popen[bytes]] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for role, pid in pids.items():
            out = out_dir / f"run{run}-{role}.txt"
            argv = ["py-spy", "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out)]
            with (out_dir / f"run{run}-{role}.log").open("wb") as log:
                spies.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(1.0)  # py-spy attaches before the load starts
    try:
        yield
    finally:
        for spy in spies:  # SIGINT: py-spy writes its output and exits
            with contextlib.suppress(ProcessLookupError):
                spy.send_signal(signal.SIGINT)
        for spy in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30.0)
            stop_process(spy, 5.0)


def hot_spots(path: Path, top: int = 8) -> str:
    """The frames of a py-spy raw profile (collapsed stacks) with the most samples: on top
    of the stack ("self"), and the deepest frame of postbote's own code ("in")."""
    own: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames, n = stack.split(";"), int(count)
            total += n
            own[frames[-1]] += n
            ours[next((f for f in reversed(frames) if "postbote/" in f), "(not postbote)")] += n
    if not total:
        return f"    {path.name}: no samples"
    lines = [f"    {path.name}: {total} samples"]
    for kind, counter in (("self", own), ("in  ", ours)):
        lines += [f"      {kind} {100 * n / total:4.1f}% {f}" for f, n in counter.most_common(top)]
    return "\n".join(lines)


def run_postbote(args: argparse.Namespace, dns_port: int, run: int) -> Result:
    with temp_dir("bench-relay-postbote-") as work, CountingSink(work) as sink:
        server = RelayPostbote(work, dns_port=dns_port, sink_port=sink.port, sessions=args.sessions)
        with server:
            port = server.start()
            roles = server.roles()
            try:
                with profiling(roles, args.profile, run):
                    result = measure(port, sink, args, roles, work)
            except BenchError as exc:
                raise BenchError(f"{exc}\n{server.queue_summary()}{log_tail(server.log)}") from exc
    if args.profile is not None:
        print("\n".join(hot_spots(args.profile / f"run{run}-{role}.txt") for role in roles))
    return result


def run_postfix(args: argparse.Namespace) -> Result:
    with temp_dir("bench-relay-postfix-") as work, CountingSink(work) as sink:
        pf = RelayPostfix(sink.port)
        with pf:  # (its __enter__ is typed as returning the base class)
            cpu = {"Postfix": pf.master_pid()}
            return measure(pf.port, sink, args, cpu, work, tree=True)


def run_direct(args: argparse.Namespace) -> Result:
    """smtp-source straight to smtp-sink: the protocol ceiling of this load."""
    with temp_dir("bench-relay-sink-") as work, CountingSink(work) as sink:
        return measure(sink.port, sink, args, {}, work, host=SINK_HOST)


# --- runs and the table -------------------------------------------------------------------


def run_once(
    name: str, run: Callable[[], Result], args: argparse.Namespace, rows: tuple[Series, ...]
) -> None:
    """One run against one server, into `rows` (accepted, and relayed if given); a failure
    is recorded, printed, and not raised."""
    try:
        result = run()
    except BenchError as exc:
        rows[-1].errors.append(str(exc))
        print(f"  {name}: FAILED: {exc}", flush=True)
        return
    n = args.messages
    rows[0].rates.append(n / result.accepted)
    shown = f"  {name}: accepted {n / result.accepted:,.0f}/s"
    if len(rows) > 1:
        rows[1].rates.append(n / result.relayed)
        shown += f", relayed {n / result.relayed:,.0f}/s"
    if result.cpu:
        total = sum(result.cpu.values())
        rows[-1].cpu_ms.append(1000 * total / n)
        parts = ", ".join(f"{role} {s:.1f}" for role, s in result.cpu.items())
        shown += f"; CPU s: {parts} ({1000 * total / n:.2f} ms/msg)"
    print(shown, flush=True)


def run_all(args: argparse.Namespace, dns_port: int, anchors: bool) -> list[Series]:
    direct = Series("smtp-sink directly (smtp-source → smtp-sink: protocol ceiling)")
    pf_acc = Series("Postfix, accepted (smtp-source finished)")
    pf_rel = Series("Postfix, relayed (all at smtp-sink)")
    pb_acc = Series("postbote, accepted (smtp-source finished)")
    pb_rel = Series("postbote, relayed (all at smtp-sink)")
    postfix_ok = anchors
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}", flush=True)
        if anchors:
            run_once("smtp-sink", lambda: run_direct(args), args, (direct,))
        if postfix_ok:
            run_once("Postfix", lambda: run_postfix(args), args, (pf_acc, pf_rel))
            postfix_ok = bool(pf_rel.rates) or not pf_rel.errors  # else: postbote alone
        postbote = functools.partial(run_postbote, args, dns_port, i + 1)
        run_once("postbote", postbote, args, (pb_acc, pb_rel))
    return [direct, pf_acc, pf_rel, pb_acc, pb_rel] if anchors else [pb_acc, pb_rel]


def print_results(args: argparse.Namespace, series: list[Series]) -> None:
    def cell(values: list[float], fmt: str) -> str:
        return format(median(values), fmt) if values else ""

    print()
    print_table(
        ["server", "sessions", "msgs/s (median)", "runs (msgs/s each)", "CPU ms/msg (median)"],
        [
            [
                s.label,
                str(args.sessions),
                cell(s.rates, ",.0f") or "FAILED",
                ", ".join(f"{r:,.0f}" for r in s.rates)
                + (f" ({len(s.errors)} failed)" if s.errors else ""),
                cell(s.cpu_ms, ".2f"),
            ]
            for s in series
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_exit()
    raise_nofile(4 * args.sessions + 256)
    if not have_postfix_tools():
        print("smtp-source/smtp-sink not found: install the Debian package postfix (README)")
        return 2
    anchors = not args.no_anchors
    print(
        f"# smtp_relay: {args.messages} messages of {args.size} bytes, 1 recipient "
        f"({ALIAS} -> {REMOTE}), {args.sessions} sessions, new connection per message, "
        f"{args.runs} run(s)"
    )
    print(
        f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# load: {SMTP_SOURCE}, remote: {SMTP_SINK} on {SINK_HOST} (Postfix {postfix_version()})"
    )
    if anchors and os.geteuid() != 0:
        print("# the Postfix anchor needs root: it will fail and postbote runs alone")
    dns = start_dns()
    try:
        series = run_all(args, dns.port, anchors)
    finally:
        dns.stop()
    print_results(args, series)
    postbote = [s for s in series if s.label.startswith("postbote")]
    return 0 if all(s.rates and not s.errors for s in postbote) else 1


if __name__ == "__main__":
    sys.exit(main())
