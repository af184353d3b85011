"""The delivery worker process may die; the server restarts it and loses nothing."""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path

from postbote.process import BACKGROUND_NICE
from tests.integration.conftest import ServerProcess, child_processes, wait_for


def children(pid: int) -> list[int]:
    return child_processes(pid, "postbote.queue.worker")


def send(port: int, n: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=15) as c:
        for i in range(n):
            c.sendmail("s@remote.test", ["alice@example.test"], f"Subject: {tag}{i}\r\n\r\nx\r\n")


def test_killed_delivery_worker_is_restarted_and_nothing_is_lost(server: ServerProcess) -> None:
    assert server.proc is not None
    send(server.smtp_port, 3, "before")
    server.wait_messages("alice@example.test", 3)
    (worker,) = children(server.proc.pid)
    os.kill(worker, signal.SIGKILL)
    send(server.smtp_port, 5, "after")  # accepted (spooled) while no worker runs
    wait_for(
        lambda: [p for p in children(server.proc.pid) if p != worker] != [],  # type: ignore[union-attr]
        what="a new delivery worker",
    )
    msgs = server.wait_messages("alice@example.test", 8)
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in msgs)
    assert subjects == sorted(
        [f"before{i}".encode() for i in range(3)] + [f"after{i}".encode() for i in range(5)]
    )
    assert server.stop() == 0
    assert len(server.messages("alice@example.test")) == 8  # nothing twice


def _nice(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[16])  # field 19 of proc(5), counted after the command name


def test_delivery_runs_at_a_lower_priority_than_the_smtp_sessions(server: ServerProcess) -> None:
    """Background work yields to clients waiting for a reply (process.BACKGROUND_NICE);
    the spool's sync helper is on their path and keeps the server's priority."""
    assert server.proc is not None
    pid = server.proc.pid
    wait_for(lambda: len(child_processes(pid)) == 3, what="three child processes")
    expected = min(_nice(pid) + BACKGROUND_NICE, 19)
    for module in ("postbote.queue.worker", "postbote.queue.runner"):
        (child,) = child_processes(pid, module)
        wait_for(lambda c=child: _nice(c) == expected, what=f"{module} reniced")
    (helper,) = child_processes(pid, "postbote.spool_syncd")
    assert _nice(helper) == _nice(pid)
