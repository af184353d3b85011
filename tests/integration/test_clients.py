"""Real SMTP peers against a real ``postbote serve`` process on loopback.

Python's smtplib, raw sockets (pipelining, BDAT), swaks, msmtp and Postfix's smtp-source
talk to the three listeners; the tests then read the Maildir the server wrote. Most tests
share one server (``module_server``); limits, shutdown and bad configurations get their own.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    DOMAIN,
    OPTIONAL_AUTH,
    RawSmtp,
    ServerProcess,
    new_server,
    require_tool,
    running_module_server,
    tls_client_context,
    wait_for,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
TOOL_TIMEOUT = 60.0


# These tests exercise the TLS transports of every listener with unauthenticated clients;
# logins are tested in test_submission.py. So AUTH is optional on the submission ports here.
@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_module_server(tmp_path_factory, OPTIONAL_AUTH)


# --- helpers ---------------------------------------------------------------------------------


def new_marker() -> str:
    return f"m-{uuid.uuid4().hex}"


def sample_message(marker: str, *, to: str = ALICE, extra: bytes = b"") -> bytes:
    return (
        f"From: Sender <sender@x.test>\r\nTo: {to}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@x.test>\r\n\r\nHello {marker}.\r\n"
    ).encode() + extra


def delivered(server: ServerProcess, address: str, marker: str, count: int = 1) -> list[bytes]:
    """The messages in ``address``'s Maildir that contain ``marker`` (waits for ``count``)."""
    token = marker.encode()

    def found() -> list[bytes]:
        return [m for m in server.messages(address) if token in m]

    wait_for(lambda: len(found()) >= count, what=f"{marker} in {address}")
    return found()


def only_copy(server: ServerProcess, address: str, marker: str) -> bytes:
    copies = delivered(server, address, marker)
    assert len(copies) == 1, f"{address} has {len(copies)} copies"
    return copies[0]


_FIELD = re.compile(rb"[^\r\n]+\r\n(?:[ \t][^\r\n]*\r\n)*")


def prepended_fields(stored: bytes, sent: bytes) -> list[bytes]:
    """The header fields postbote put in front of ``sent``; fails unless ``stored`` is
    exactly those fields followed by ``sent``, byte for byte."""
    assert stored.endswith(sent), "the stored message does not end with what was sent"
    prefix = stored[: len(stored) - len(sent)]
    fields = _FIELD.findall(prefix)
    assert b"".join(fields) == prefix, f"prefix is not a sequence of header fields: {prefix!r}"
    return fields


def queue_id(reply_text: str) -> str:
    m = re.search(r"queued as (\S+)", reply_text)
    assert m, reply_text
    return m.group(1)


def ehlo(client: RawSmtp) -> list[str]:
    assert client.reply().code == 220
    answer = client.cmd("EHLO client.test")
    assert answer.code == 250, answer
    return [line[4:] for line in answer.lines[1:]]


def run_tool(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT)


def cert_path(server: ServerProcess) -> Path:
    return server.data_dir / "tls" / "cert.pem"


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for servers of a single test (own config, killed at teardown)."""
    made: list[ServerProcess] = []

    def factory(users: tuple[str, ...] = ("alice",), extra_config: str = "") -> ServerProcess:
        server = new_server(tmp_path / f"node{len(made)}", users=users, extra_config=extra_config)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.kill()


@pytest.fixture(scope="module")
def srv(module_server: ServerProcess) -> ServerProcess:
    """The shared server, with an alias for alice and bob and a UTF-8 alias for alice."""
    assert module_server.cli("alias", "add", f"team@{DOMAIN}", ALICE, BOB) == 0
    assert module_server.cli("alias", "add", f"jörg@{DOMAIN}", ALICE) == 0
    return module_server


# --- smtplib ---------------------------------------------------------------------------------


def test_smtplib_plain_on_smtp_port(srv: ServerProcess) -> None:
    marker = new_marker()
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], local_hostname="client.test") as c:
        assert c.sendmail("sender@x.test", [ALICE], sample_message(marker)) == {}
    message = only_copy(srv, ALICE, marker)
    assert b"with ESMTP id" in message


def test_smtplib_starttls_on_submission_port(srv: ServerProcess) -> None:
    marker = new_marker()
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], local_hostname="client.test") as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, _ = c.starttls(context=tls_client_context(srv))  # verifies the certificate
        assert code == 220
        c.ehlo()
        assert not c.has_extn("starttls"), "STARTTLS offered again inside TLS (RFC 3207 §4)"
        assert c.sendmail("sender@x.test", [ALICE], sample_message(marker)) == {}
    assert b"with ESMTPS id" in only_copy(srv, ALICE, marker)


def test_smtplib_implicit_tls_on_submissions_port(srv: ServerProcess) -> None:
    marker = new_marker()
    port = srv.ports["submissions"]
    context = tls_client_context(srv)
    with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", context=context) as c:
        c.ehlo()
        assert not c.has_extn("starttls")
        assert c.sendmail("sender@x.test", [ALICE], sample_message(marker)) == {}
    assert b"with ESMTPS id" in only_copy(srv, ALICE, marker)


def test_delivered_message_is_byte_identical_after_trace_headers(srv: ServerProcess) -> None:
    marker = new_marker()
    body = (
        b"\r\n.a line starting with a dot\r\n..two dots\r\n.\r\n"
        b"trailing spaces   \r\n\ttab-indented\r\n8-bit: \xc3\xa4\xc3\xb6\xc3\xbc \xe4\xf6\r\n"
        + b"x" * 998
        + b"\r\n\r\n\r\n"
    )
    sent = (
        f"From: sender@x.test\r\nTo: {ALICE}\r\nSubject: {marker}\r\nX-Folded: one\r\n two\r\n"
    ).encode() + body
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], local_hostname="client.test") as c:
        c.ehlo()
        code, _ = c.mail("bounce+x@x.test", ["BODY=8BITMIME"])
        assert code == 250
        assert c.rcpt(ALICE)[0] == 250
        code, text = c.data(sent)  # smtplib dot-stuffs, the server must undo it
        assert code == 250
    qid = queue_id(text.decode())
    fields = prepended_fields(only_copy(srv, ALICE, marker), sent)
    names = [f.split(b":", 1)[0] for f in fields]
    assert names == [b"Return-Path", b"Delivered-To", b"Received"]
    assert fields[0] == b"Return-Path: <bounce+x@x.test>\r\n"
    assert fields[1] == f"Delivered-To: {ALICE}\r\n".encode()
    assert re.search(rb"\bid " + re.escape(qid.encode()) + rb"\b", fields[2]), fields[2]
    assert f"for <{ALICE}>".encode() in fields[2]


def test_8bitmime_body_kept(srv: ServerProcess) -> None:
    marker = new_marker()
    sent = sample_message(marker, extra=b"Gr\xc3\xbc\xc3\x9fe, raw latin-1 \xfc\xdf\r\n")
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as c:
        c.ehlo()
        assert c.has_extn("8bitmime")
        assert c.sendmail("s@x.test", [ALICE], sent, mail_options=["BODY=8BITMIME"]) == {}
    prepended_fields(only_copy(srv, ALICE, marker), sent)


def test_smtputf8_utf8_local_part_to_utf8_alias(srv: ServerProcess) -> None:
    marker = new_marker()
    sent = (
        f"From: Jürgen <jürgen@x.test>\r\nTo: jörg@{DOMAIN}\r\nSubject: Grüße {marker}\r\n\r\n"
        "Schöne Grüße\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as c:
        c.ehlo()
        assert c.has_extn("smtputf8")
        refused = c.sendmail(
            "jürgen@x.test", [f"jörg@{DOMAIN}"], sent, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
        assert refused == {}
    fields = prepended_fields(only_copy(srv, ALICE, marker), sent)
    assert fields[0] == "Return-Path: <jürgen@x.test>\r\n".encode()
    assert fields[1] == f"Delivered-To: {ALICE}\r\n".encode()
    assert b"with UTF8SMTP id" in fields[2]


def test_utf8_address_without_smtputf8_is_refused(srv: ServerProcess) -> None:
    with RawSmtp(srv.ports["smtp"]) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        answer = c.cmd(f"RCPT TO:<jörg@{DOMAIN}>".encode())
        assert (answer.code, answer.text[:5]) == (553, "5.6.7"), answer


def test_dsn_parameters_are_accepted(srv: ServerProcess) -> None:
    marker = new_marker()
    with RawSmtp(srv.ports["smtp"]) as c:
        assert "DSN" in ehlo(c)
        answer = c.cmd("MAIL FROM:<dsn@x.test> RET=HDRS ENVID=QQ314159+2Bx")
        assert answer.code == 250, answer
        answer = c.cmd(f"RCPT TO:<{ALICE}> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Alice+2Btag@{DOMAIN}")
        assert answer.code == 250, answer
        answer = c.cmd(f"RCPT TO:<{BOB}> NOTIFY=NEVER")
        assert answer.code == 250, answer
        assert c.cmd("DATA").code == 354
        answer = c.cmd(sample_message(marker) + b".")
        assert answer.code == 250, answer
    only_copy(srv, ALICE, marker)
    only_copy(srv, BOB, marker)


# --- raw sockets: pipelining and chunking ----------------------------------------------------


def test_pipelined_transaction(srv: ServerProcess) -> None:
    """RFC 2920: one write with MAIL, RCPTs and DATA; the replies come back in order."""
    marker = new_marker()
    with RawSmtp(srv.ports["smtp"]) as c:
        assert "PIPELINING" in ehlo(c)
        c.send(
            "MAIL FROM:<pipe@x.test>\r\n"
            f"RCPT TO:<{ALICE}>\r\n"
            f"RCPT TO:<nobody@{DOMAIN}>\r\n"
            f"RCPT TO:<{BOB}>\r\n"
            "DATA\r\n"
        )
        replies = [c.reply() for _ in range(5)]
        assert [r.code for r in replies] == [250, 250, 550, 250, 354], [str(r) for r in replies]
        assert replies[2].text.startswith("5.1.1")
        c.send(sample_message(marker) + b".\r\nQUIT\r\n")  # end of data and QUIT in one write
        answer = c.reply()
        assert answer.code == 250 and "queued as" in answer.text, answer
        assert c.reply().code == 221
        assert c.closed_by_peer()
    only_copy(srv, ALICE, marker)
    only_copy(srv, BOB, marker)
    assert not srv.maildir(f"nobody@{DOMAIN}").exists()


def test_bdat_chunks(srv: ServerProcess) -> None:
    """RFC 3030: chunks are taken verbatim (no dot-stuffing, a lone dot ends nothing)."""
    marker = new_marker()
    chunk1 = f"Subject: {marker}\r\n\r\nline one\r\n.\r\n".encode()
    chunk2 = b"..two dots stay two\r\n.\r\nlast line\r\n"
    with RawSmtp(srv.ports["smtp"]) as c:
        assert "CHUNKING" in ehlo(c)
        c.send(
            f"MAIL FROM:<chunk@x.test>\r\nRCPT TO:<{ALICE}>\r\nBDAT {len(chunk1)}\r\n".encode()
            + chunk1
            + f"BDAT {len(chunk2)} LAST\r\n".encode()
            + chunk2
        )
        replies = [c.reply() for _ in range(4)]
        assert [r.code for r in replies] == [250, 250, 250, 250], [str(r) for r in replies]
        assert "queued as" in replies[3].text
    prepended_fields(only_copy(srv, ALICE, marker), chunk1 + chunk2)


# --- recipients ------------------------------------------------------------------------------


def test_multiple_recipients_get_one_copy_each(srv: ServerProcess) -> None:
    marker = new_marker()
    rcpts = [ALICE, BOB, f"team@{DOMAIN}", f"alice+tag@{DOMAIN}"]
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as c:
        assert c.sendmail("many@x.test", rcpts, sample_message(marker)) == {}
    alice = only_copy(srv, ALICE, marker)
    bob = only_copy(srv, BOB, marker)
    assert f"Delivered-To: {ALICE}\r\n".encode() in alice
    assert f"Delivered-To: {BOB}\r\n".encode() in bob
    # RFC 5321 §4.4: no "for" clause that would show one recipient to the others.
    assert b"for <" not in alice
    assert not srv.maildir(f"team@{DOMAIN}").exists()
    assert not srv.maildir(f"alice+tag@{DOMAIN}").exists()


def test_postmaster_is_always_accepted(srv: ServerProcess) -> None:
    """RFC 5321 §4.5.1: postmaster@domain and bare <Postmaster>, without a user or alias."""
    marker = new_marker()
    with RawSmtp(srv.ports["smtp"]) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<>").code == 250
        for rcpt in (f"postmaster@{DOMAIN}", "Postmaster", "PostMaster@Example.Test"):
            answer = c.cmd(f"RCPT TO:<{rcpt}>")
            assert answer.code == 250, (rcpt, str(answer))
        assert c.cmd("DATA").code == 354
        assert c.cmd(sample_message(marker) + b".").code == 250
    only_copy(srv, f"postmaster@{DOMAIN}", marker)


def test_unknown_local_user_is_refused(srv: ServerProcess) -> None:
    with RawSmtp(srv.ports["smtp"]) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        answer = c.cmd(f"RCPT TO:<nobody@{DOMAIN}>")
        assert (answer.code, answer.text[:5]) == (550, "5.1.1"), answer
        answer = c.cmd("DATA")
        assert answer.code == 554, answer  # RFC 5321 §3.3: no valid recipients


def test_vrfy_does_not_enumerate_users(srv: ServerProcess) -> None:
    with RawSmtp(srv.ports["smtp"]) as c:
        ehlo(c)
        known = c.cmd(f"VRFY {ALICE}")
        unknown = c.cmd(f"VRFY nobody@{DOMAIN}")
    assert known.code == unknown.code == 252, (str(known), str(unknown))
    assert known.lines == unknown.lines


def test_running_server_sees_cli_changes(srv: ServerProcess) -> None:
    carol = f"carol@{DOMAIN}"
    marker = new_marker()
    with RawSmtp(srv.ports["smtp"]) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        assert c.cmd(f"RCPT TO:<{carol}>").code == 550
        assert c.cmd("RSET").code == 250
        srv.add_user(carol)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        answer = c.cmd(f"RCPT TO:<{carol}>")
        assert answer.code == 250, answer
        assert c.cmd("DATA").code == 354
        assert c.cmd(sample_message(marker, to=carol) + b".").code == 250
        only_copy(srv, carol, marker)
        assert srv.cli("user", "remove", carol) == 0
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        answer = c.cmd(f"RCPT TO:<{carol}>")
        assert (answer.code, answer.text[:5]) == (550, "5.1.1"), answer


# --- swaks, msmtp, smtp-source ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "flags"),
    [
        ("smtp", []),
        ("submission", ["-tls"]),
        ("submissions", ["--tlsc"]),
        ("smtp", ["--pipeline"]),
    ],
    ids=["plain", "starttls", "implicit-tls", "pipeline"],
)
def test_swaks(srv: ServerProcess, listener: str, flags: list[str]) -> None:
    swaks = require_tool("swaks")
    marker = new_marker()
    args = [swaks, "--server", "127.0.0.1", "--port", str(srv.ports[listener])]
    args += ["--from", "sender@x.test", "--to", ALICE, "--helo", "client.test"]
    args += ["--header", f"Subject: {marker}", "--timeout", "30", *flags]
    if listener != "smtp":
        args += ["--tls-verify", "--tls-ca-path", str(cert_path(srv))]
    result = run_tool(args)
    assert result.returncode == 0, result.stdout.decode(errors="replace")
    message = only_copy(srv, ALICE, marker)
    assert (b"with ESMTPS id" in message) == (listener != "smtp")


@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit-tls"])
def test_msmtp(srv: ServerProcess, tmp_path: Path, mode: str) -> None:
    msmtp = require_tool("msmtp")
    marker = new_marker()
    listener = {"plain": "smtp", "starttls": "submission", "implicit-tls": "submissions"}[mode]
    rc = tmp_path / "msmtprc"
    rc.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {srv.ports[listener]}\n"
        "from sender@x.test\n"
        "domain client.test\n"
        "auth off\n"
        "timeout 30\n"
        f"tls {'off' if mode == 'plain' else 'on'}\n"
        f"tls_starttls {'on' if mode == 'starttls' else 'off'}\n"
        f"tls_trust_file {cert_path(srv)}\n"
    )
    rc.chmod(0o600)
    result = run_tool([msmtp, "-C", str(rc), "-t"], stdin=sample_message(marker))
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    message = only_copy(srv, ALICE, marker)
    assert (b"with ESMTPS id" in message) == (mode != "plain")


def test_smtp_source_50_messages(fresh_server: Callable[..., ServerProcess]) -> None:
    smtp_source = require_tool("smtp-source", "/usr/sbin/smtp-source")
    server = fresh_server()
    server.start()
    target = f"127.0.0.1:{server.smtp_port}"
    args = [smtp_source, "-s", "5", "-m", "50", "-l", "1024", "-f", "sender@x.test"]
    result = run_tool([*args, "-t", ALICE, target])
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    server.wait_messages(ALICE, 50)
    assert server.stop() == 0
    assert len(server.messages(ALICE)) == 50


# --- limits ----------------------------------------------------------------------------------

SIZE_LIMIT = 4096


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = new_server(
        tmp_path_factory.mktemp("limited") / "node",
        users=("alice",),
        extra_config=f"[limits]\nmax_connections_per_ip = 2\nmax_message_size = {SIZE_LIMIT}\n",
    )
    server.start()
    yield server
    server.kill()


def test_max_connections_per_ip(limited: ServerProcess) -> None:
    source = "127.0.0.3"  # an address of its own: other tests' connections do not count
    port = limited.smtp_port
    with RawSmtp(port, source=source) as first, RawSmtp(port, source=source) as second:
        assert first.reply().code == 220
        assert second.reply().code == 220
        with RawSmtp(port, source=source) as third:
            answer = third.reply()
            assert (answer.code, answer.text[:5]) == (421, "4.7.0"), answer
            assert third.closed_by_peer()
        with RawSmtp(port, source="127.0.0.4") as other_ip:
            assert other_ip.reply().code == 220
        assert first.cmd("QUIT").code == 221

    def slot_free() -> bool:
        with RawSmtp(port, source=source) as again:
            return again.reply().code == 220

    wait_for(slot_free, what="a free connection slot after QUIT")


def test_size_parameter_over_limit_is_refused(limited: ServerProcess) -> None:
    with RawSmtp(limited.smtp_port) as c:
        assert f"SIZE {SIZE_LIMIT}" in ehlo(c)
        answer = c.cmd(f"MAIL FROM:<s@x.test> SIZE={SIZE_LIMIT + 1}")
        assert (answer.code, answer.text[:5]) == (552, "5.3.4"), answer
        assert c.cmd(f"MAIL FROM:<s@x.test> SIZE={SIZE_LIMIT // 2}").code == 250


def test_oversized_message_is_refused(limited: ServerProcess) -> None:
    marker = new_marker()
    big = sample_message(marker, extra=b"y" * 70 + b"\r\n") * (SIZE_LIMIT // 50)
    with RawSmtp(limited.smtp_port) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        assert c.cmd(f"RCPT TO:<{ALICE}>").code == 250
        assert c.cmd("DATA").code == 354
        answer = c.cmd(big + b".")
        assert (answer.code, answer.text[:5]) == (552, "5.3.4"), answer
        # The same with BDAT, and the session still works afterwards.
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        assert c.cmd(f"RCPT TO:<{ALICE}>").code == 250
        answer = c.cmd(f"BDAT {len(big)} LAST\r\n".encode() + big[:-2])
        assert (answer.code, answer.text[:5]) == (552, "5.3.4"), answer
        small = new_marker()
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        assert c.cmd(f"RCPT TO:<{ALICE}>").code == 250
        assert c.cmd("DATA").code == 354
        assert c.cmd(sample_message(small) + b".").code == 250
    only_copy(limited, ALICE, small)
    assert not any(marker.encode() in m for m in limited.messages(ALICE))


def test_idle_client_times_out(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(users=(), extra_config="[limits]\ncommand_timeout = 1\n")
    server.start()
    with RawSmtp(server.smtp_port, timeout=10) as c:
        assert c.reply().code == 220
        started = time.monotonic()
        answer = c.reply()  # waits for the server's own timer
        assert (answer.code, answer.text[:5]) == (421, "4.4.2"), answer
        assert time.monotonic() - started > 0.5
        assert c.closed_by_peer()


# --- shutdown --------------------------------------------------------------------------------


def listener_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_closes_idle_connection(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(extra_config="[limits]\nshutdown_grace = 10\n")
    server.start()
    with RawSmtp(server.smtp_port) as c:
        ehlo(c)
        assert server.stop() == 0
        answer = c.reply()
        assert (answer.code, answer.text[:5]) == (421, "4.3.2"), answer
        assert c.closed_by_peer()


def test_sigterm_lets_data_transaction_finish(fresh_server: Callable[..., ServerProcess]) -> None:
    server = fresh_server(extra_config="[limits]\nshutdown_grace = 10\n")
    server.start()
    assert server.proc is not None
    marker = new_marker()
    message = sample_message(marker, extra=b"z" * 500 + b"\r\n")
    with RawSmtp(server.smtp_port) as c:
        ehlo(c)
        assert c.cmd("MAIL FROM:<s@x.test>").code == 250
        assert c.cmd(f"RCPT TO:<{ALICE}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(message[:100])
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: listener_closed(server.smtp_port), what="the listener to close")
        c.send(message[100:] + b".\r\n")
        answer = c.reply()
        assert answer.code == 250 and "queued as" in answer.text, answer
        answer = c.reply()
        assert (answer.code, answer.text[:5]) == (421, "4.3.2"), answer
        assert c.closed_by_peer()
    assert server.proc.wait(30) == 0
    # Delivery was drained before the process exited.
    assert len([m for m in server.messages(ALICE) if marker.encode() in m]) == 1


# --- bad configuration -----------------------------------------------------------------------


def _bad_config(tmp_path: Path, case: str, busy_port: int) -> tuple[str, str]:
    """(config text, the key its error must name) for one broken configuration."""
    top, port, tables = "", 0, ""
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    if case == "unknown-key":
        top, key = "smtp_banner = 1\n", "smtp_banner"
    elif case == "wrong-type":
        tables, key = '[limits]\nmax_message_size = "big"\n', "limits.max_message_size"
    elif case == "port-in-use":
        port, key = busy_port, "listen.smtp"
    elif case == "unreadable-cert":
        tables, key = f'[tls]\ncert = "{missing}"\nkey = "{missing}"\n', "tls.cert"
    else:  # "not-a-cert"
        tables, key = f'[tls]\ncert = "{garbage}"\nkey = "{garbage}"\n', "tls.cert"
    text = (
        f'hostname = "mx.{DOMAIN}"\ndata_dir = "{tmp_path / "data"}"\n{top}'
        f'[listen]\nsmtp = ["127.0.0.1:{port}"]\n{tables}'
    )
    return text, key


@pytest.mark.parametrize(
    "case",
    [
        "unknown-key",
        "wrong-type",
        pytest.param("port-in-use"),
        "unreadable-cert",
        "not-a-cert",
    ],
)
def test_bad_config_fails_with_one_line(tmp_path: Path, case: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        text, key = _bad_config(tmp_path, case, busy.getsockname()[1])
        config = tmp_path / "postbote.toml"
        config.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "postbote", "serve", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0], lines[0]
