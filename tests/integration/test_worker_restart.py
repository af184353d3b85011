"""The delivery worker process may die; the server restarts it and loses nothing."""

from __future__ import annotations

import os
import signal
import smtplib

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
