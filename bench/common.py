"""Shared helpers for the benchmarks in bench/: starting and stopping server processes
(postbote and anchors) on loopback, reading their memory, waiting with a deadline, and
printing results.

Every wait here is bounded in time, and every process started here is stopped (SIGTERM,
then SIGKILL) by the context manager that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"  # loopback only
DOMAIN = "example.test"
SENDER = "bench@example.test"
RECIPIENT = "user@example.test"
CLIENT_NAME = "bench.example.test"
READY = re.compile(r"ready smtp=127\.0\.0\.1:(\d+)")


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def check_counts(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    names: Sequence[str],
    *,
    timeout_per_message: float,
) -> None:
    """Every ``--NAME`` in ``names`` at least 1; a ``--timeout`` of 0 (the default) becomes
    60 s plus ``timeout_per_message`` seconds per message."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.timeout <= 0:
        args.timeout = 60.0 + args.messages * timeout_per_message


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to `wanted` (and the hard limit too
    when we may); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def nofile_preexec(wanted: int) -> Callable[[], None]:
    """A preexec_fn that raises RLIMIT_NOFILE in the child before it execs the server."""

    def _raise() -> None:
        raise_nofile(wanted)

    return _raise


def free_port() -> int:
    """A currently free TCP port on loopback (for servers that cannot take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def is_listening(port: int) -> bool:
    """True when something accepts TCP connections on loopback `port`."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll `check` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def count_files(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except FileNotFoundError:
        return 0


def child_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/*/task/*/children)."""
    found = [pid]
    i = 0
    while i < len(found) and i < 100_000:
        task_dir = Path(f"/proc/{found[i]}/task")
        with contextlib.suppress(OSError):
            for task in task_dir.iterdir():
                with contextlib.suppress(OSError):
                    found.extend(int(c) for c in (task / "children").read_text().split())
        i += 1
    return found


def pss_kib(pid: int, *, tree: bool = True) -> int:
    """Proportional set size in KiB of `pid` (plus its descendants when `tree`)."""
    total = 0
    for p in child_pids(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Only this one process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """A server started with its stderr in a log file, ready when READY matches there."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, *, nofile: int = 0) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=nofile_preexec(self.nofile) if self.nofile else None,
                env=env,
            )
        found: list[int] = []

        def ready() -> bool:
            match = READY.search(self.log.read_text(errors="replace"))
            if match:
                found.append(int(match.group(1)))
            return bool(match) or self.proc is None or self.proc.poll() is not None

        wait_for(ready, timeout, 0.05)
        if not found:
            self.stop()
            raise BenchError(f"{self.name} did not start:\n{log_tail(self.log)}")
        self.port = found[0]
        return self.port

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


POSTBOTE_CONFIG = """\
hostname = "mx.example.test"
data_dir = "{data_dir}"
[limits]
max_connections = {max_connections}
max_connections_per_ip = {max_connections}
shutdown_grace = 5
[listen]
smtp = ["127.0.0.1:0"]
"""


class PostboteServer(ServerProcess):
    """postbote in its own fresh data_dir under `workdir`, with one domain and one user."""

    def __init__(self, workdir: Path, *, max_connections: int = 20_000, nofile: int = 0) -> None:
        self.workdir = workdir
        self.config = workdir / "postbote.toml"
        self.data_dir = workdir / "data"
        local, domain = RECIPIENT.split("@")
        self.maildir_new = self.data_dir / "mail" / domain / local / "new"
        self.config.write_text(
            POSTBOTE_CONFIG.format(data_dir=self.data_dir, max_connections=max_connections)
        )
        cli = [sys.executable, "-m", "postbote"]
        self._cli = cli
        super().__init__(
            "postbote",
            [*cli, "serve", "-c", str(self.config)],
            workdir / "postbote.log",
            nofile=nofile,
        )

    def start(self, timeout: float = 60.0, env: dict[str, str] | None = None) -> int:
        setup: list[tuple[list[str], bytes]] = [
            (["domain", "add", DOMAIN], b""),
            (["user", "add", RECIPIENT, "--password-stdin"], b"bench-password\n"),
        ]
        for args, stdin in setup:
            run = subprocess.run(
                [*self._cli, *args, "-c", str(self.config)],
                input=stdin,
                capture_output=True,
                timeout=60,
                check=False,
            )
            if run.returncode != 0:
                raise BenchError(f"postbote {' '.join(args)}: {run.stderr.decode().strip()}")
        return super().start(timeout, env)


_deferred: list[tempfile.TemporaryDirectory[str]] | None = None


@contextlib.contextmanager
def deferred_cleanup() -> Iterator[None]:
    """Keep every temp_dir() made inside until the end of this block.

    Deleting a run's 10,000 files just before the next run makes that run slower, on
    ext4: for a minute or more it skips freed inodes when it allocates new ones (its
    "recently deleted" check), which cost postbote's delivery worker up to 4x the kernel
    time per file, and with it about 10% of the accept rate on 2 cores. Runs ordered
    server by server would each pay for the one before (postbote came right after
    Postfix). Kept until the end, every run of every server starts alike.
    """
    global _deferred
    outer, _deferred = _deferred, []
    try:
        yield
    finally:
        held, _deferred = _deferred, outer
        for tmp in held:
            tmp.cleanup()


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory (world-traversable, for anchors that drop privileges).

    Deleted on leaving, or inside deferred_cleanup() when that block ends."""
    tmp = tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)
    try:
        path = Path(tmp.name)
        path.chmod(0o755)
        yield path
    finally:
        if _deferred is not None:
            _deferred.append(tmp)
        else:
            tmp.cleanup()


def sigterm_as_exit() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks stop our servers. Later
    SIGTERMs are ignored so they cannot cut that cleanup short (`timeout` sends two)."""

    def _exit(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    sys.stdout.flush()
