"""Outbound delivery end to end (issue 4 §5): a postbote node sends mail by MX to other
servers on loopback — other postbote nodes on 127.0.0.2, Postfix's smtp-sink on
127.0.0.3+, a socket that never answers — with MX records served by a DNS server on
127.0.0.1 (the only fake: the internet's DNS cannot run here).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from postbote.store.interfaces import QueueEntry
from postbote.store.sqlite import SqliteStore
from tests.dnsserver import TestDnsServer
from tests.integration.conftest import (
    DOMAIN,
    PASSWORD,
    ServerProcess,
    child_processes,
    require_tool,
    tls_client_context,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

ALICE = f"alice@{DOMAIN}"
DEST = "127.0.0.2"  # the postbote destination
SINKS = ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
DEAD = "127.0.0.9"  # nothing listens here: connection refused
BROKEN_TLS = "127.0.0.8"  # offers STARTTLS, then fails every handshake


def _port_free_everywhere() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((DEST, 0))
            port = int(s.getsockname()[1])
        try:
            for host in (*SINKS, DEAD, BROKEN_TLS):
                with socket.socket() as t:
                    t.bind((host, port))
            with socket.socket(socket.AF_INET6) as t6:  # the IPv6 destination
                t6.bind(("::1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on every test address")


class Zone(TestDnsServer):
    """The test zones, with a TTL of 0: the sender caches answers for their TTL, and
    these tests change records between attempts."""

    def add(self, name: str, rdtype: str, value: str | bytes, ttl: int = 0) -> None:
        super().add(name, rdtype, value, ttl)


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDnsServer]:
    with Zone() as server:
        yield server


@pytest.fixture(scope="module")
def port() -> int:
    return _port_free_everywhere()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _sender_config(dns: TestDnsServer, port: int, ca: trustme.CA, ca_path: Path, extra: str) -> str:
    ca.cert_pem.write_to_path(str(ca_path))
    return (
        f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\ntimeout = 1\n'
        f"[delivery]\nport = {port}\nretry = [1]\nconnect_timeout = 2\n"
        f'command_timeout = 4\ndata_timeout = 4\nca_file = "{ca_path}"\n'
        f'require_tls = ["secure.test", "plain-required.test"]\n{extra}\n'
    )


def _make_sender(
    root: Path, dns: TestDnsServer, port: int, ca: trustme.CA, extra: str = ""
) -> ServerProcess:
    root.mkdir(parents=True)
    config = _sender_config(dns, port, ca, root / "ca.pem", extra)
    server = ServerProcess(root, extra_config=config)
    assert server.cli("domain", "add", DOMAIN) == 0
    server.add_user(ALICE)
    return server


@pytest.fixture(scope="module")
def sender(
    tmp_path_factory: pytest.TempPathFactory, dns: TestDnsServer, port: int, ca: trustme.CA
) -> Iterator[ServerProcess]:
    server = _make_sender(tmp_path_factory.mktemp("out") / "a", dns, port, ca)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def dest(
    tmp_path_factory: pytest.TempPathFactory, port: int, ca: trustme.CA
) -> Iterator[ServerProcess]:
    """postbote on 127.0.0.2, the MX of several test domains, with a certificate for its
    MX names signed by the test CA (so required TLS can be verified)."""
    root = tmp_path_factory.mktemp("dest") / "b"
    root.mkdir()
    cert = ca.issue_cert("mx1.remote.test", "mx.secure.test", "127.0.0.2")
    cert.private_key_and_cert_chain_pem.write_to_path(str(root / "chain.pem"))
    tls = f'[tls]\ncert = "{root / "chain.pem"}"\nkey = "{root / "chain.pem"}"\n'
    server = ServerProcess(
        root, extra_config=tls, listen={"smtp": f"{DEST}:{port}"}, hostname="mx1.remote.test"
    )
    domains = (
        "remote.test",
        "implicit.test",
        "secure.test",
        "retry.test",
        "kill.test",
        "held.test",
    )
    for domain in domains:
        assert server.cli("domain", "add", domain) == 0
        server.add_user(f"carol@{domain}")
    server.start()
    yield server
    server.kill()


class Sink:
    """Postfix's smtp-sink on one loopback address; ``options`` make it refuse or stall."""

    def __init__(self, host: str, port: int, *options: str) -> None:
        # smtp-sink drops root privileges: its dump folder must be reachable by "nobody"
        # (pytest's tmp_path is not), so it lives in a folder of its own under /tmp.
        self.dump = Path(tempfile.mkdtemp(prefix="postbote-sink-"))
        os.chmod(self.dump, 0o777)
        argv = [require_tool("smtp-sink", "/usr/sbin/smtp-sink")]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += [*options, "-c", "-d", f"{self.dump}/%H%M%S.", f"{host}:{port}", "50"]
        self.counters = open(self.dump / "counters", "w+b")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.counters, stderr=subprocess.DEVNULL)
        wait_for(lambda: _listening(host, port), 10, f"smtp-sink on {host}:{port}")

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dump.iterdir()) if p.name != "counters"]

    def sessions(self) -> int:
        """Sessions that ended so far (smtp-sink -c prints "sess=N quit=N mesg=N")."""
        found = re.findall(rb"sess=(\d+)", (self.dump / "counters").read_bytes())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.counters.close()
        shutil.rmtree(self.dump, ignore_errors=True)


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def sinks(tmp_path: Path, port: int) -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started
    for sink in started:
        sink.stop()


def queue_of(server: ServerProcess) -> list[QueueEntry]:
    with SqliteStore(server.data_dir / "postbote.db", server.data_dir / "queue") as store:
        return store.list_queue()


def submit(
    server: ServerProcess,
    rcpts: list[str],
    *,
    sender: str = ALICE,
    subject: str = "hello",
    body: str = "Hello from the outbound tests.\n",
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> bytes:
    """Send as alice through submission (587, STARTTLS, AUTH), like a mail client."""
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = subject
    msg.set_content(body)
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15) as client:
        client.starttls(context=tls_client_context(server))
        client.login(ALICE, PASSWORD)
        data = msg.as_bytes(policy=email.policy.SMTP)  # CRLF line endings
        client.sendmail(sender, rcpts, data, list(mail_options), list(rcpt_options))
    return data


def dsn_parts(raw: bytes) -> tuple[EmailMessage, list[EmailMessage], EmailMessage | None]:
    """(the report, its per-recipient delivery-status blocks, the returned content part)."""
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(report, EmailMessage)
    assert report.get_content_type() == "multipart/report"
    # RFC 6522 §3 / RFC 6533: the subtype of the status part
    assert report.get_param("report-type") in ("delivery-status", "global-delivery-status")
    parts = list(report.iter_parts())
    status = parts[1]
    assert status.get_content_type() in (
        "message/delivery-status",
        "message/global-delivery-status",
    )
    if status.get_content_type() == "message/delivery-status":  # the stdlib splits blocks
        blocks = [b for b in status.get_payload() if isinstance(b, EmailMessage)]
    else:  # message/global-delivery-status (RFC 6533): UTF-8 blocks the stdlib leaves whole
        text = status.as_bytes().decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        body = text.split("\n\n", 1)[1]  # after the part's own header fields
        blocks = [
            email.message_from_string(b + "\n", policy=email.policy.default)  # type: ignore[misc]
            for b in body.strip().split("\n\n")
        ]
    return report, blocks[1:], parts[2] if len(parts) > 2 else None


def wait_queue_empty(server: ServerProcess, domain: str = "", timeout: float = 30) -> None:
    """Until no queued recipient (in ``domain``, if given) is left: delivered or bounced,
    and removed from the queue."""

    def gone() -> bool:
        return not [e for e in queue_of(server) if e.recipient.endswith(domain)]

    try:
        wait_for(gone, timeout, "the queue to empty")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {queue_of(server)}\n{''.join(server.log[-20:])}") from None


# --- routing ---------------------------------------------------------------------------------


def test_delivers_to_the_preferred_mx(
    dns: TestDnsServer,
    sender: ServerProcess,
    dest: ServerProcess,
    sinks: list[Sink],
    tmp_path: Path,
    port: int,
) -> None:
    sink = Sink(SINKS[0], port)
    sinks.append(sink)
    dns.add("remote.test", "MX", "20 mx2.remote.test.")
    dns.add("remote.test", "MX", "10 mx1.remote.test.")
    dns.add("mx1.remote.test", "A", DEST)
    dns.add("mx2.remote.test", "A", SINKS[0])
    submit(sender, ["carol@remote.test"], subject="preferred")
    [got] = dest.wait_messages("carol@remote.test", 1)
    assert b"Subject: preferred" in got
    assert b"by mx1.remote.test" in got  # B's own Received line
    wait_queue_empty(sender, "@remote.test")
    assert sink.messages() == []


def test_falls_back_to_the_next_mx(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("implicit.test", "MX", "10 dead.implicit.test.")
    dns.add("implicit.test", "MX", "20 mx1.remote.test.")
    dns.add("dead.implicit.test", "A", DEAD)
    submit(sender, ["carol@implicit.test"], subject="fallback")
    [got] = dest.wait_messages("carol@implicit.test", 1)
    assert b"Subject: fallback" in got
    wait_queue_empty(sender, "@implicit.test")
    dns.remove("implicit.test", "MX")


def test_implicit_mx_when_the_domain_has_no_mx(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("implicit.test", "A", DEST)  # RFC 5321 §5.1: no MX, so the domain's address
    before = len(dest.messages("carol@implicit.test"))
    submit(sender, ["carol@implicit.test"], subject="implicit")
    got = dest.wait_messages("carol@implicit.test", before + 1)
    assert any(b"Subject: implicit" in m for m in got)
    wait_queue_empty(sender, "@implicit.test")


def test_delivers_over_ipv6_to_an_aaaa_only_mx(
    tmp_path: Path, dns: TestDnsServer, sender: ServerProcess, port: int
) -> None:
    root = tmp_path / "v6"
    root.mkdir()
    v6 = ServerProcess(root, listen={"smtp": f"[::1]:{port}"}, hostname="mx6.v6.test")
    assert v6.cli("domain", "add", "v6.test") == 0
    v6.add_user("carol@v6.test")
    v6.start()
    try:
        dns.add("v6.test", "MX", "10 mx6.v6.test.")
        dns.add("mx6.v6.test", "AAAA", "::1")
        submit(sender, ["carol@v6.test"], subject="over IPv6")
        [got] = v6.wait_messages("carol@v6.test", 1)
        assert b"Subject: over IPv6" in got
        assert b"[IPv6:::1]" in got  # B's Received: line names the IPv6 client
        wait_queue_empty(sender, "@v6.test")
    finally:
        v6.kill()


def test_null_mx_bounces_at_once_with_5_1_10(dns: TestDnsServer, sender: ServerProcess) -> None:
    dns.add("nullmx.test", "MX", "0 .")
    before = len(sender.messages(ALICE))
    submit(sender, ["someone@nullmx.test"], subject="null mx")
    dsns = sender.wait_messages(ALICE, before + 1)
    _, [block], _ = dsn_parts(dsns[-1])
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.10"
    assert "someone@nullmx.test" in block["Final-Recipient"]
    wait_queue_empty(sender, "@nullmx.test")


def test_one_connection_carries_several_messages_to_a_server(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], port: int
) -> None:
    sink = Sink(SINKS[1], port)
    sinks.append(sink)
    dns.add("reuse.test", "MX", "10 mx.reuse.test.")
    dns.add("mx.reuse.test", "A", SINKS[1])
    for i in range(3):  # one after the other, each while the last connection idles
        submit(sender, [f"r{i}@reuse.test"], subject=f"reuse {i}")
        wait_for(lambda n=i: len(sink.messages()) == n + 1, 20, f"message {i} at smtp-sink")
    wait_queue_empty(sender, "@reuse.test")
    wait_for(lambda: sink.sessions() >= 1, 20, "the idle connection to close")
    assert sink.sessions() < 3  # reused (a slow machine may need a second connection)


def test_nxdomain_bounces_with_5_1_2(dns: TestDnsServer, sender: ServerProcess) -> None:
    before = len(sender.messages(ALICE))
    submit(sender, ["x@does-not-exist.test"], subject="nowhere")
    dsns = sender.wait_messages(ALICE, before + 1)
    _, [block], _ = dsn_parts(dsns[-1])
    assert (block["Action"], block["Status"]) == ("failed", "5.1.2")
    wait_queue_empty(sender, "@does-not-exist.test")


def test_success_dsn_for_a_local_mailbox(sender: ServerProcess) -> None:
    before = len(sender.messages(ALICE))
    submit(sender, [ALICE], subject="to myself", rcpt_options=("NOTIFY=SUCCESS",))
    got = sender.wait_messages(ALICE, before + 2)
    reports = [m for m in got[before:] if b"multipart/report" in m]
    assert len(reports) == 1
    _, [block], _ = dsn_parts(reports[0])
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")
    wait_queue_empty(sender, f"@{DOMAIN}")


def test_hold_flush_and_release(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("held.test", "MX", "10 mx.held.test.")
    dns.add("mx.held.test", "A", DEAD)
    submit(sender, ["carol@held.test"], subject="parked")
    wait_for(lambda: _deferred(sender, "carol@held.test") is not None, 20, "a deferral")
    entry = _deferred(sender, "carol@held.test")
    assert entry is not None
    assert sender.cli("queue", "hold", entry.message_id) == 0
    dns.remove("mx.held.test", "A")
    dns.add("mx.held.test", "A", DEST)
    assert sender.cli("queue", "flush") == 0
    [row] = [e for e in queue_of(sender) if e.recipient == "carol@held.test"]
    assert row.state == "held"  # not tried while held, flush or not
    assert dest.messages("carol@held.test") == []
    assert sender.cli("queue", "release", entry.message_id) == 0
    [got] = dest.wait_messages("carol@held.test", 1)
    assert b"Subject: parked" in got
    wait_queue_empty(sender, "@held.test")


# --- failures, retries, reports ------------------------------------------------------------


def test_retry_after_a_4xx_until_a_250(
    dns: TestDnsServer,
    sender: ServerProcess,
    dest: ServerProcess,
    sinks: list[Sink],
    tmp_path: Path,
    port: int,
) -> None:
    sinks.append(Sink(SINKS[1], port, "-r", "RCPT"))  # 450 to every RCPT
    dns.add("retry.test", "MX", "10 mx.retry.test.")
    dns.add("mx.retry.test", "A", SINKS[1])
    submit(sender, ["carol@retry.test"], subject="patience")

    def deferred_with_4xx() -> bool:
        rows = [e for e in queue_of(sender) if e.recipient == "carol@retry.test"]
        return bool(rows) and rows[0].state == "deferred" and rows[0].last_reply.startswith("4")

    wait_for(deferred_with_4xx, 20, "a deferral")
    dns.remove("mx.retry.test", "A")
    dns.add("mx.retry.test", "A", DEST)  # the destination recovers
    [got] = dest.wait_messages("carol@retry.test", 1, timeout=30)
    assert b"Subject: patience" in got
    wait_queue_empty(sender, "@retry.test")


def _deferred(server: ServerProcess, rcpt: str) -> QueueEntry | None:
    rows = [e for e in queue_of(server) if e.recipient == rcpt]
    return rows[0] if rows and rows[0].state == "deferred" and rows[0].attempts >= 1 else None


def test_connection_dropped_mid_transaction_is_deferred(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], port: int
) -> None:
    sink = Sink(SINKS[2], port, "-q", "DATA")  # hangs up on DATA, without a reply
    sinks.append(sink)
    dns.add("drop.test", "MX", "10 mx.drop.test.")
    dns.add("mx.drop.test", "A", SINKS[2])
    submit(sender, ["x@drop.test"], subject="dropped")
    wait_for(lambda: _deferred(sender, "x@drop.test") is not None, 20, "a deferral")
    entry = _deferred(sender, "x@drop.test")
    assert entry is not None and entry.last_reply.startswith("4.4.2")
    assert sink.messages() == []
    assert sender.cli("queue", "delete", entry.message_id) == 0


def test_a_server_that_never_answers_times_out_and_is_deferred(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], port: int
) -> None:
    sink = Sink(SINKS[3], port, "-w", "30")  # no answer to DATA for 30 s; our limit is 4
    sinks.append(sink)
    dns.add("hang.test", "MX", "10 mx.hang.test.")
    dns.add("mx.hang.test", "A", SINKS[3])
    submit(sender, ["x@hang.test"], subject="hanging")
    wait_for(lambda: _deferred(sender, "x@hang.test") is not None, 20, "a deferral")
    entry = _deferred(sender, "x@hang.test")
    assert entry is not None and "timed out" in entry.last_reply
    assert sender.cli("queue", "delete", entry.message_id) == 0


def test_dsn_after_a_5xx_has_the_rfc_3464_fields(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("remote.test", "MX", "10 mx1.remote.test.")
    dns.add("mx1.remote.test", "A", DEST)
    before = len(sender.messages(ALICE))
    submit(
        sender,
        ["nobody@remote.test"],
        subject="to nobody",
        mail_options=("RET=HDRS", "ENVID=env-42"),
        rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;nobody@remote.test"),
    )
    dsns = sender.wait_messages(ALICE, before + 1)
    report, [block], returned = dsn_parts(dsns[-1])
    assert report["From"].addresses[0].username.upper() == "MAILER-DAEMON"
    assert report["Auto-Submitted"] == "auto-replied"
    assert "Undelivered" in report["Subject"]
    status = list(report.iter_parts())[1].get_payload()[0]
    assert status["Reporting-MTA"] == "dns; mx.example.test"
    assert status["Original-Envelope-Id"] == "env-42"
    assert block["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert "nobody@remote.test" in block["Original-Recipient"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Remote-MTA"] == "dns; mx1.remote.test"
    assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert returned is not None and returned.get_content_type() == "text/rfc822-headers"
    assert "Subject: to nobody" in returned.get_content()
    wait_queue_empty(sender, "@remote.test")


def test_no_bounce_to_the_null_sender(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("remote.test", "MX", "10 mx1.remote.test.")
    dns.add("mx1.remote.test", "A", DEST)
    before = len(sender.messages(ALICE))
    submit(sender, ["nobody@remote.test"], sender="", subject="from <>")
    wait_for(lambda: any("no DSN" in line for line in sender.log), 20, "the no-DSN log line")
    wait_queue_empty(sender, "@remote.test")
    assert len(sender.messages(ALICE)) == before


def test_smtputf8_message_to_a_server_without_it_fails_with_5_6_7(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], tmp_path: Path, port: int
) -> None:
    sink = Sink(SINKS[2], port)  # smtp-sink does not offer SMTPUTF8
    sinks.append(sink)
    dns.add("ascii.test", "MX", "10 mx.ascii.test.")
    dns.add("mx.ascii.test", "A", SINKS[2])
    before = len(sender.messages(ALICE))
    submit(sender, ["jörg@ascii.test"], subject="utf8", mail_options=("SMTPUTF8",))
    dsns = sender.wait_messages(ALICE, before + 1)
    _, [block], _ = dsn_parts(dsns[-1])
    assert block["Status"] == "5.6.7"
    assert sink.messages() == []


def test_real_postfix_smtp_sink_receives_the_message(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], tmp_path: Path, port: int
) -> None:
    sink = Sink(SINKS[3], port)
    sinks.append(sink)
    dns.add("sink.test", "MX", "10 mx.sink.test.")
    dns.add("mx.sink.test", "A", SINKS[3])
    submit(sender, ["a@sink.test", "b@sink.test"], subject="to postfix", body=".dot\n..two\n")
    try:
        wait_for(lambda: len(sink.messages()) == 1, 20, "smtp-sink to get the message")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {queue_of(sender)}\n{''.join(sender.log[-20:])}") from None
    [dumped] = sink.messages()
    assert b"Subject: to postfix" in dumped
    assert b"\r\n..dot" not in dumped and b".dot" in dumped  # unstuffed by smtp-sink
    wait_queue_empty(sender, "@sink.test")


# --- TLS -----------------------------------------------------------------------------------


class BrokenTlsServer:
    """A mail host with a broken TLS stack: it offers STARTTLS, answers the client's
    handshake with garbage, and takes mail fine in plaintext (a fake remote host: no
    real server can be made to fail like this on purpose)."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: list[bytes] = []
        self.handshakes = 0
        self.sock = socket.create_server((host, port))
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        conn.sendall(b"220 broken.test ESMTP\r\n")
        for line in reader:
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                conn.sendall(b"250-broken.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
            elif line.upper().startswith(b"STARTTLS"):
                conn.sendall(b"220 go ahead\r\n")
                conn.recv(4096)  # the ClientHello
                self.handshakes += 1
                conn.sendall(b"this is not TLS\r\n")
                return
            elif verb == b"DATA":
                conn.sendall(b"354 go on\r\n")
                data = b""
                for body_line in reader:
                    if body_line == b".\r\n":
                        break
                    data += body_line
                self.messages.append(data)
                conn.sendall(b"250 2.0.0 taken\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:  # MAIL, RCPT, RSET, NOOP
                conn.sendall(b"250 2.0.0 ok\r\n")

    def close(self) -> None:
        self.sock.close()


def test_opportunistic_tls_falls_back_to_plaintext_when_the_handshake_fails(
    dns: TestDnsServer, sender: ServerProcess, port: int
) -> None:
    server = BrokenTlsServer(BROKEN_TLS, port)
    try:
        dns.add("brokentls.test", "MX", "10 mx.brokentls.test.")
        dns.add("mx.brokentls.test", "A", BROKEN_TLS)
        submit(sender, ["x@brokentls.test"], subject="despite TLS")
        wait_for(lambda: len(server.messages) == 1, 20, "the plaintext delivery")
        assert server.handshakes >= 1  # TLS was tried first (RFC 7435)
        assert b"Subject: despite TLS" in server.messages[0]
        wait_queue_empty(sender, "@brokentls.test")
    finally:
        server.close()


def test_required_tls_is_verified_and_used(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    dns.add("secure.test", "MX", "10 mx.secure.test.")
    dns.add("mx.secure.test", "A", DEST)
    submit(sender, ["carol@secure.test"], subject="secret")
    [got] = dest.wait_messages("carol@secure.test", 1)
    assert b"with ESMTPS" in got  # B saw TLS
    wait_queue_empty(sender, "@secure.test")


def test_required_tls_defers_when_the_server_has_none(
    dns: TestDnsServer, sender: ServerProcess, sinks: list[Sink], tmp_path: Path, port: int
) -> None:
    sink = Sink(SINKS[0], port)  # no STARTTLS
    sinks.append(sink)
    dns.add("plain-required.test", "MX", "10 mx.plain-required.test.")
    dns.add("mx.plain-required.test", "A", SINKS[0])
    submit(sender, ["x@plain-required.test"], subject="must be secret")

    def deferred() -> bool:
        rows = [e for e in queue_of(sender) if e.recipient == "x@plain-required.test"]
        return bool(rows) and rows[0].state == "deferred" and rows[0].attempts >= 1

    wait_for(deferred, 20, "a deferral for lack of TLS")
    assert sink.messages() == []
    [entry] = [e for e in queue_of(sender) if e.recipient == "x@plain-required.test"]
    assert "TLS" in entry.last_reply or "STARTTLS" in entry.last_reply
    assert sender.cli("queue", "delete", entry.message_id) == 0


# --- crashes and expiry --------------------------------------------------------------------


def test_no_double_delivery_across_a_sigkill_mid_transaction(
    tmp_path: Path,
    dns: TestDnsServer,
    port: int,
    ca: trustme.CA,
    dest: ServerProcess,
    sinks: list[Sink],
) -> None:
    # The first destination stalls before answering DATA; the sender is killed meanwhile.
    stall = Sink(SINKS[1], port, "-w", "60")
    sinks.append(stall)
    dns.add("kill.test", "MX", "10 mx.kill.test.")
    dns.add("mx.kill.test", "A", SINKS[1])
    node = _make_sender(tmp_path / "killed", dns, port, ca)
    node.start()
    try:
        submit(node, ["carol@kill.test"], subject="exactly once")
        wait_for(
            lambda: any(e.state == "inflight" for e in queue_of(node)), 20, "an attempt under way"
        )
        node.kill()  # SIGKILL: the server and, with it, its delivery processes
        dns.remove("mx.kill.test", "A")
        dns.add("mx.kill.test", "A", DEST)
        node.start()
        [got] = dest.wait_messages("carol@kill.test", 1, timeout=30)
        assert b"Subject: exactly once" in got
        wait_queue_empty(node)
        node.stop()
        node.start()  # nothing is left to send again
        assert queue_of(node) == []
        assert len(dest.messages("carol@kill.test")) == 1
        # smtp-sink may have opened its dump file; no complete message got there
        assert not any(b"exactly once" in m for m in stall.messages())
    finally:
        node.kill()


def test_a_killed_outbound_process_is_restarted_and_delivers(
    dns: TestDnsServer, sender: ServerProcess, dest: ServerProcess
) -> None:
    assert sender.proc is not None
    [old] = child_processes(sender.proc.pid, "postbote.queue.runner")
    os.kill(old, signal.SIGKILL)
    wait_for(
        lambda: child_processes(sender.proc.pid, "postbote.queue.runner") not in ([], [old]),  # type: ignore[union-attr]
        20,
        "a new outbound process",
    )
    dns.add("remote.test", "MX", "10 mx1.remote.test.")
    dns.add("mx1.remote.test", "A", DEST)
    before = len(dest.messages("carol@remote.test"))
    submit(sender, ["carol@remote.test"], subject="after a restart")
    got = dest.wait_messages("carol@remote.test", before + 1)
    assert any(b"Subject: after a restart" in m for m in got)
    wait_queue_empty(sender, "@remote.test")


def test_delay_warning_then_expiry_bounce(
    tmp_path: Path, dns: TestDnsServer, port: int, ca: trustme.CA
) -> None:
    node = _make_sender(
        tmp_path / "impatient", dns, port, ca, extra="max_lifetime = 6\ndelay_warning = 2\n"
    )
    node.start()
    try:
        dns.add("never.test", "MX", "10 mx.never.test.")
        dns.add("mx.never.test", "A", DEAD)  # connection refused, again and again
        submit(node, ["x@never.test"], subject="doomed", rcpt_options=("NOTIFY=FAILURE,DELAY",))
        warning, bounce = node.wait_messages(ALICE, 2, timeout=40)
        _, [w], _ = dsn_parts(warning)
        assert w["Action"] == "delayed"
        assert w["Status"].startswith("4.")
        assert w["Will-Retry-Until"]
        _, [b], returned = dsn_parts(bounce)
        assert b["Action"] == "failed"
        assert returned is not None  # failures return the whole message by default
        wait_queue_empty(node)
    finally:
        node.kill()


def test_a_broken_local_mailbox_is_retried_from_the_queue_then_bounced(
    tmp_path: Path, dns: TestDnsServer, port: int, ca: trustme.CA
) -> None:
    node = _make_sender(tmp_path / "broken", dns, port, ca, extra="max_lifetime = 4\n")
    node.add_user(f"bob@{DOMAIN}")
    bob = node.maildir(f"bob@{DOMAIN}")
    bob.parent.mkdir(parents=True, exist_ok=True)
    bob.write_text("not a folder")  # every delivery to bob fails (ENOTDIR)
    node.start()
    try:
        with smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=15) as client:
            client.sendmail(ALICE, [f"bob@{DOMAIN}"], b"Subject: to bob\r\n\r\nhi\r\n")
        [bounce] = node.wait_messages(ALICE, 1, timeout=40)
        _, [block], _ = dsn_parts(bounce)
        assert block["Action"] == "failed"
        assert block["Status"].startswith("4.3")  # the mailbox error, after 4 s of retries
        assert f"bob@{DOMAIN}" in block["Final-Recipient"]
        wait_queue_empty(node)
    finally:
        node.kill()


# --- smarthost -----------------------------------------------------------------------------


def test_smarthost_relays_everything_with_auth_over_tls(
    tmp_path: Path, dns: TestDnsServer, port: int, ca: trustme.CA
) -> None:
    # The "provider" is another postbote with submission on 127.0.0.2 and a user account.
    relay_root = tmp_path / "provider"
    relay_root.mkdir()
    cert = ca.issue_cert("127.0.0.2")
    cert.private_key_and_cert_chain_pem.write_to_path(str(relay_root / "chain.pem"))
    tls = f'[tls]\ncert = "{relay_root / "chain.pem"}"\nkey = "{relay_root / "chain.pem"}"\n'
    provider = ServerProcess(
        relay_root,
        extra_config=tls,
        listen={"submission": f"{DEST}:0"},
        hostname="smtp.provider.test",
    )
    assert provider.cli("domain", "add", "provider.test") == 0
    assert provider.cli("domain", "add", "far.test") == 0
    provider.add_user("me@provider.test")
    provider.add_user("dave@far.test")
    assert provider.cli("user", "allow-sender", "me@provider.test", "@example.test") == 0
    provider.start()
    node: ServerProcess | None = None
    try:
        sub_port = provider.ports["submission"]
        extra = (
            f'[delivery.smarthost]\nhost = "127.0.0.2:{sub_port}"\n'
            f'username = "me@provider.test"\npassword = "{PASSWORD}"\n'
        )
        node = _make_sender(tmp_path / "behind-nat", dns, port, ca, extra=extra)
        node.start()
        submit(node, ["dave@far.test"], subject="via smarthost")  # no DNS for far.test
        [got] = provider.wait_messages("dave@far.test", 1)
        assert b"Subject: via smarthost" in got
        assert b"ESMTPSA" in got  # TLS and AUTH
        wait_queue_empty(node)
    finally:
        if node is not None:
            node.kill()
        provider.kill()
