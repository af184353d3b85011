"""Crash and full-disk behaviour of a real postbote process.

The promise under test is RFC 5321 §6.1: once the server answered "250" to the end of
DATA it is responsible for the message, so it must end up in every recipient's Maildir
exactly once, whatever happens to the process (SIGKILL, SIGTERM) or the disk (full,
below ``spool.min_free_space``). Messages whose sender saw no "250" may or may not be
delivered, but never twice and never to only some of their recipients.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import smtplib
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postbote.envelope import Envelope, Recipient
from postbote.spool import MAGIC, MESSAGE, Spool, encode_record
from postbote.store.sqlite import SqliteStore

from .conftest import ServerProcess, child_processes, wait_for
from .crashload import (
    ALICE,
    BOB,
    SENDER,
    SOCKET_TIMEOUT,
    TEAM,
    Ledger,
    LoadRun,
    MailboxAudit,
    MailboxScanner,
    all_acked_delivered,
    message_of,
    send_one,
)

pytestmark = pytest.mark.timeout(60)

MakeServer = Callable[..., ServerProcess]
ACK_DEADLINE = 30.0  # generous bounds; the normal case takes well under a second
DELIVERY_DEADLINE = 30.0
ORPHAN_DEADLINE = 10.0
PROMPT_EXIT = 5.0  # a graceful stop with nothing to drain takes well under a second
SMALL_SEGMENT = 256 * 1024  # some 50 messages of the load: rotation every few batches
RECOVERED_RE = re.compile(r"recovered (\d+) spooled messages")


def _with_team(server: ServerProcess) -> ServerProcess:
    assert server.cli("alias", "add", TEAM, ALICE, BOB) == 0
    return server


def _wait_delivered(server: ServerProcess, ledger: Ledger, timeout: float) -> None:
    scanners = {box: MailboxScanner(server.maildir(box)) for box in (ALICE, BOB)}
    try:
        wait_for(lambda: all_acked_delivered(scanners, ledger), timeout, "delivery")
    except AssertionError as exc:
        problems = MailboxAudit.of(server.data_dir, ledger).problems
        raise AssertionError("not delivered:\n" + "\n".join(problems[:20])) from exc


def _assert_clean(server: ServerProcess, ledger: Ledger) -> MailboxAudit:
    audit = MailboxAudit.of(server.data_dir, ledger)
    assert not audit.problems, "\n".join(audit.problems[:40])
    return audit


def _undone_in_spool(data_dir: Path) -> list[str]:
    """Ids the spool would hand out again (the server must be stopped)."""
    spool = Spool(data_dir / "spool", min_free_space=0)
    try:
        return [m.envelope.id for m in spool.recover()]
    finally:
        asyncio.run(spool.close())


def _recovered_total(server: ServerProcess) -> int:
    return sum(int(m.group(1)) for line in server.log if (m := RECOVERED_RE.search(line)))


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # an orphan nobody reaped yet has exited too


def _sigkill(server: ServerProcess, *, worker: bool = False) -> None:
    """SIGKILL the server, and with ``worker`` its delivery worker process at the same
    moment (a host crash, the OOM killer). A worker left alone must exit by itself: it
    must not go on as a second deliverer next to the restarted server's own."""
    assert server.proc is not None
    workers = child_processes(server.proc.pid, "postbote.queue.worker")
    assert len(workers) == 1, f"expected one delivery worker, found {workers}"
    helpers = child_processes(server.proc.pid)  # worker, outbound, spool sync helper
    if worker:
        os.kill(workers[0], signal.SIGKILL)
    server.kill()
    wait_for(
        lambda: not any(_running(p) for p in helpers),
        ORPHAN_DEADLINE,
        "the child processes of a killed server to exit",
    )


def _kill_under_load(
    server: ServerProcess, run: LoadRun, acked: int, *, worker: bool = False
) -> None:
    run.start()
    try:
        run.wait_acked(acked, ACK_DEADLINE)
    finally:
        run.server_gone.set()  # set before the kill: later errors are expected
        _sigkill(server, worker=worker)
        run.join()
    assert not run.errors, run.errors[:5]
    _read_all(server, ALICE)


def _read_all(server: ServerProcess, address: str) -> None:
    """What a mail reader does: move new/ files to cur/ and flag them seen (maildir.html).
    A redelivery must find these copies too, not only the ones still in new/."""
    root = server.maildir(address)
    for path in (root / "new").iterdir():
        path.rename(root / "cur" / f"{path.name}:2,S")


# -- SIGKILL ------------------------------------------------------------------------------


def test_sigkill_loses_nothing_acknowledged(make_server: MakeServer) -> None:
    """Three kills under load at different counts: the first of the server alone (its
    delivery worker finishes its batch and exits), the others of the server and its
    worker together. Small spool segments, so kills also land during segment rotation
    and deletion. After the second kill the server is killed again as soon as it is
    ready, while it redelivers what it recovered, and restarted at once."""
    server = _with_team(make_server(extra_config=f"[spool]\nsegment_size = {SMALL_SEGMENT}\n"))
    ledger = Ledger()
    server.start()
    for cycle, kill_at in enumerate((120, 420, 260)):
        run = LoadRun(server.smtp_port, ledger, prefix=f"c{cycle}-")
        _kill_under_load(server, run, kill_at, worker=cycle != 0)
        if cycle == 1:  # killed again while redelivering; restarted at once, like a
            server.start()  # supervisor would, while its worker may still finish a batch
            server.kill()
        server.start()  # same data_dir, new ports
        _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    audit = _assert_clean(server, ledger)
    assert len(ledger.acked) >= 120 + 420 + 260
    assert audit.total() >= len(ledger.acked)
    assert _undone_in_spool(server.data_dir) == []


def test_sigkill_during_delivery_no_duplicates(make_server: MakeServer) -> None:
    """Kill server and delivery worker right after the last "250" of a burst, while
    delivery still lags behind: the restart redelivers what was not marked done, and
    nothing twice. A burst whose kill came too late (nothing left to recover) is
    repeated, at most three times."""
    server = _with_team(make_server())
    ledger = Ledger()
    server.start()
    hit = False
    for burst in range(3):
        run = LoadRun(server.smtp_port, ledger, prefix=f"burst{burst}-", per_worker=40)
        _kill_under_load(server, run, run.workers * 40, worker=True)
        assert ledger.acked_count(run.prefix) == run.workers * 40
        recovered = _recovered_total(server)
        server.start()
        _wait_delivered(server, ledger, DELIVERY_DEADLINE)
        if _recovered_total(server) > recovered:
            hit = True
            break
    assert hit, "the kill never came while delivery was in progress"
    assert server.stop() == 0
    _assert_clean(server, ledger)
    assert _undone_in_spool(server.data_dir) == []


# -- full disk ----------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        proc = subprocess.CompletedProcess([], 1, "", "mount(8) is not installed")
    if proc.returncode != 0:
        reason = f"cannot mount a tmpfs: {proc.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def small_disk_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose data_dir is a 32 MiB tmpfs; min_free_space 0 lets it fill up."""
    root = tmp_path / "node"
    root.mkdir()
    server = ServerProcess(root, extra_config="[spool]\nmin_free_space = 0\n")
    _mount_tmpfs(server.data_dir, "32m")
    try:
        assert server.cli("domain", "add", "example.test") == 0
        server.add_user(ALICE)
        server.add_user(BOB)
        yield server
    finally:
        server.kill()
        if subprocess.run(["umount", str(server.data_dir)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(server.data_dir)], capture_output=True)


def _fill(directory: Path, leave: int) -> Path:
    """A file that leaves about ``leave`` bytes free on the filesystem of ``directory``."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    size = st.f_bavail * st.f_frsize - leave
    assert size > 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return filler


def _command(client: smtplib.SMTP, line: str) -> tuple[int, bytes]:
    client.putcmd(line)
    return client.getreply()


def _size_refused(client: smtplib.SMTP, size: int) -> bool:
    code, reply = _command(client, f"MAIL FROM:<{SENDER}> SIZE={size}")
    if code == 250:
        assert _command(client, "RSET")[0] == 250
        return False
    assert (code, reply[:5]) == (452, b"4.3.1"), (code, reply)
    return True


def _accepted(port: int, ledger: Ledger, token: str) -> bool:
    """Send ``token`` to alice and bob: True on "250", False on 452 4.3.1 (the server
    may go on using a free-space measurement for a moment after space was freed)."""
    code, reply = send_one(port, ledger, token, (ALICE, BOB), frozenset({ALICE, BOB}))
    assert code in (250, 452), (code, reply)
    return code == 250


def test_full_disk_gets_452_and_loses_nothing(small_disk_server: ServerProcess) -> None:
    """A full disk refuses new mail with 452 4.3.1 (never 451, never a crash); once
    space is freed mail is accepted again, and every "250" is delivered exactly once."""
    server = small_disk_server
    ledger = Ledger()
    server.start()
    lines = 2700  # ~210 KB a message
    port = server.smtp_port
    for n in range(3):
        assert send_one(port, ledger, f"before-{n}", (ALICE,), frozenset({ALICE}))[0] == 250
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    # About 1 MiB stays free. The spool may have preallocated more than that for its
    # journal: it goes on accepting into that space while delivery fails for lack of it.
    filler = _fill(server.data_dir, leave=2**20)

    refusal: tuple[int, bytes] | None = None
    with smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo("client.example")
        for n in range(100):
            token = f"full-{n}"
            code, reply = _command(client, f"MAIL FROM:<{SENDER}>")
            if code == 250:
                # Two Maildir copies per spooled copy: delivery runs out of space too.
                assert _command(client, f"RCPT TO:<{ALICE}>")[0] == 250
                assert _command(client, f"RCPT TO:<{BOB}>")[0] == 250
                ledger.attempt(token, frozenset({ALICE, BOB}), lines)
                code, reply = client.data(message_of(token, (ALICE, BOB), lines))
                if code == 250:
                    ledger.ack(token)
                    continue
            refusal = (code, reply)
            break
        assert refusal is not None, "the disk never filled up"
        # RFC 3463 §3.4 X.3.1: "mail system full" is a transient 452, not 451 or 5xx.
        assert refusal[0] == 452 and refusal[1].startswith(b"4.3.1"), refusal
        assert server.proc is not None and server.proc.poll() is None
        assert client.noop()[0] == 250
        # Declaring a SIZE that cannot fit is refused up front (RFC 1870 §6.1), once the
        # server measured the free space again (it may reuse a measurement briefly).
        wait_for(lambda: _size_refused(client, 4_000_000), 5.0, "452 at MAIL for its SIZE")
        assert client.noop()[0] == 250
    with smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT) as other:
        assert other.ehlo("client.example")[0] == 250

    filler.unlink()
    for n in range(3):
        token = f"after-{n}"
        wait_for(functools.partial(_accepted, port, ledger, token), 5.0, f"{token} accepted")
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    _assert_clean(server, ledger)
    assert _undone_in_spool(server.data_dir) == []


def test_full_disk_under_load_then_sigkill(small_disk_server: ServerProcess) -> None:
    """Eight clients on a nearly full disk: the spool refuses with 452 while Maildir
    writes of accepted messages fail with ENOSPC. Then SIGKILL, free the space, restart:
    every "250" is delivered exactly once and the journal is consistent."""
    server = small_disk_server
    server.cli("alias", "add", TEAM, ALICE, BOB)
    ledger = Ledger()
    server.start()
    assert send_one(server.smtp_port, ledger, "first", (ALICE,), frozenset({ALICE}))[0] == 250
    filler = _fill(server.data_dir, leave=2 * 2**20)
    run = LoadRun(server.smtp_port, ledger, prefix="crowd-", allow_full=True).start()
    try:
        wait_for(lambda: len(run.full) >= 40 or bool(run.errors), ACK_DEADLINE, "refusals")
    finally:
        run.server_gone.set()
        _sigkill(server)
        run.join()
    assert not run.errors, run.errors[:5]
    assert len(ledger.acked) > 0
    filler.unlink()
    server.start()
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    _assert_clean(server, ledger)
    assert _undone_in_spool(server.data_dir) == []


def test_min_free_space_refuses_at_mail(make_server: MakeServer) -> None:
    """Below ``spool.min_free_space`` MAIL itself is refused, before any data is sent."""
    server = make_server(extra_config=f"[spool]\nmin_free_space = {10**18}\n")
    server.start()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=SOCKET_TIMEOUT) as client:
        client.ehlo("client.example")
        code, reply = client.mail(SENDER)
        assert (code, reply[:5]) == (452, b"4.3.1"), (code, reply)
        assert client.noop()[0] == 250
    assert server.stop() == 0
    assert server.messages(ALICE) == []


# -- restarts -----------------------------------------------------------------------------


def _block_mailbox(server: ServerProcess, address: str) -> Path:
    """Make delivery to ``address`` fail (root ignores permissions): a file where its
    Maildir directory belongs."""
    path = server.maildir(address)
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a maildir\n")
    return path


def _wait_log(server: ServerProcess, needle: str, count: int = 1) -> None:
    wait_for(
        lambda: sum(needle in line for line in server.log) >= count,
        DELIVERY_DEADLINE,
        f"{count} log lines with {needle!r}",
    )


def test_failed_mailbox_waits_in_the_queue_across_a_sigkill(make_server: MakeServer) -> None:
    """A mailbox that cannot be written: its copies go to the outbound queue (not lost,
    not left in the spool), survive a SIGKILL, and are delivered once it works again;
    a recipient already served is not served again."""
    server = make_server(extra_config="[delivery]\nretry = [1]\n")
    ledger = Ledger()
    blocker = _block_mailbox(server, ALICE)
    server.start()
    port = server.smtp_port
    assert send_one(port, ledger, "solo", (ALICE,), frozenset({ALICE}))[0] == 250
    assert send_one(port, ledger, "pair", (ALICE, BOB), frozenset({ALICE, BOB}))[0] == 250
    wait_for(lambda: len(server.messages(BOB)) == 1, DELIVERY_DEADLINE, "bob's copy")
    _read_all(server, BOB)

    def alice_waits() -> bool:
        with SqliteStore(server.data_dir / "postbote.db", server.data_dir / "queue") as store:
            rows = [e for e in store.list_queue() if e.recipient == ALICE]
        return len(rows) == 2 and all(e.attempts >= 1 for e in rows)

    wait_for(alice_waits, DELIVERY_DEADLINE, "alice's copies to wait in the queue")
    _sigkill(server)

    blocker.unlink()
    server.start()
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    _assert_clean(server, ledger)  # bob's copy of "pair" was not written again
    assert _undone_in_spool(server.data_dir) == []


def test_sigterm_drains_delivery(make_server: MakeServer) -> None:
    """SIGTERM right after the last of 200 "250"s: exit code 0, all 200 delivered once
    before the process ends, nothing left in the spool."""
    server = _with_team(make_server())
    ledger = Ledger()
    server.start()
    run = LoadRun(server.smtp_port, ledger, prefix="drain-", per_worker=25).start()
    proc = server.proc
    assert proc is not None
    try:
        run.wait_acked(200, ACK_DEADLINE)
    finally:
        run.server_gone.set()  # idle sessions may be closed by the shutdown
        proc.send_signal(signal.SIGTERM)
        run.join()
    assert not run.errors, run.errors[:5]
    assert proc.wait(DELIVERY_DEADLINE) == 0
    assert len(ledger.acked) == 200
    _assert_clean(server, ledger)  # no restart: everything was delivered before exit
    assert _undone_in_spool(server.data_dir) == []


def test_sigterm_with_delivery_in_backoff_exits_promptly(make_server: MakeServer) -> None:
    """A message whose delivery failed waits for its retry in the spool; SIGTERM must not
    wait for that retry (minutes, design: RETRY_DELAYS) but exit, and the next start
    delivers the message exactly once."""
    server = make_server()  # shutdown_grace: the default 30 s
    ledger = Ledger()
    blocker = _block_mailbox(server, ALICE)
    server.start()
    assert send_one(server.smtp_port, ledger, "stuck", (ALICE,), frozenset({ALICE}))[0] == 250
    _wait_log(server, f"delivery to {server.maildir(ALICE)} failed")
    proc = server.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    try:
        rc: int | None = proc.wait(PROMPT_EXIT)
    except subprocess.TimeoutExpired:
        rc = None
    assert rc == 0, f"still running {PROMPT_EXIT} s after SIGTERM"
    blocker.unlink()
    server.start()
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    _assert_clean(server, ledger)


def _journal_end(data: bytes) -> int:
    """Offset after the last valid record of a spool segment (format: spool.py)."""
    head = struct.Struct("<BBII")
    end = 0
    while end + head.size <= len(data):
        magic, _kind, length, crc = head.unpack_from(data, end)
        payload = data[end + head.size : end + head.size + length]
        if magic != MAGIC or len(payload) < length:
            break
        if zlib.crc32(payload, zlib.crc32(data[end : end + 6])) != crc:
            break
        end += head.size + length
    return end


def test_journal_torn_tail_recovery_end_to_end(make_server: MakeServer) -> None:
    """A crash in the middle of writing a batch leaves a torn record at the end of the
    newest segment. Recovery must cut it off (its sender never saw "250"), deliver the
    acknowledged messages before it exactly once, and keep the journal usable."""
    server = make_server()
    ledger = Ledger()
    blocker = _block_mailbox(server, ALICE)
    server.start()
    assert send_one(server.smtp_port, ledger, "kept", (ALICE,), frozenset({ALICE}))[0] == 250
    _wait_log(server, f"delivery to {server.maildir(ALICE)} failed")
    _sigkill(server)

    segment = max((server.data_dir / "spool").glob("seg-*.log"))
    good_end = _journal_end(segment.read_bytes())
    assert good_end > 0
    torn = Envelope(
        id="0" * 11 + "TORNTORN00",
        sender=SENDER,
        recipients=(Recipient(ALICE),),
        received_at=time.time(),
    )
    env = torn.to_json()
    ledger.attempt("torn", frozenset({ALICE}))
    record = encode_record(MESSAGE, struct.pack("<I", len(env)), env, message_of("torn", [ALICE]))
    with segment.open("r+b") as f:  # where the next batch goes, over any preallocated zeros
        f.seek(good_end)
        f.write(record[:-7])

    blocker.unlink()
    server.start()
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert any("truncating torn tail" in line for line in server.log), server.log[-10:]
    if segment.exists():  # not deleted yet: nothing of the torn record may remain
        assert segment.read_bytes()[good_end:].strip(b"\0") == b""
    # The journal still works: a message accepted now survives the next crash.
    assert send_one(server.smtp_port, ledger, "later", (BOB,), frozenset({BOB}))[0] == 250
    _sigkill(server)
    server.start()
    _wait_delivered(server, ledger, DELIVERY_DEADLINE)
    assert server.stop() == 0
    audit = _assert_clean(server, ledger)
    assert audit.counts[ALICE]["torn"] == 0
    assert _undone_in_spool(server.data_dir) == []
