"""POP3 end to end (issue 5): mail sent through postbote's SMTP is fetched over STLS and
POP3S by Python's poplib, fetchmail and getmail6, in keep and delete mode, and arrives
byte for byte as stored.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    DOMAIN,
    PASSWORD,
    ServerProcess,
    require_tool,
    tls_client_context,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
POP3_LISTENERS: dict[str, int | str] = {"smtp": 0, "pop3": 0, "pop3s": 0}


def make_pop3_server(root: Path, extra_config: str = "") -> ServerProcess:
    root.mkdir(parents=True)
    server = ServerProcess(root, extra_config=extra_config, listen=dict(POP3_LISTENERS))
    assert server.cli("domain", "add", DOMAIN) == 0
    server.add_user(ALICE)
    server.add_user(BOB)
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = make_pop3_server(tmp_path / "node")
    srv.start()
    yield srv
    srv.kill()


def send(server: ServerProcess, rcpt: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    data = (f"From: sender@remote.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n{body}").encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=15) as client:
        client.sendmail("sender@remote.test", [rcpt], data)
    return data


def stored(server: ServerProcess, rcpt: str) -> list[bytes]:
    """The messages as stored in the Maildir (what POP3 must hand out, byte for byte)."""
    return server.messages(rcpt)


def login_stls(server: ServerProcess, user: str = ALICE) -> poplib.POP3:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    client.stls(context=tls_client_context(server))
    client.user(user)
    client.pass_(PASSWORD)
    return client


def retr(client: poplib.POP3, n: int) -> bytes:
    _, lines, _ = client.retr(n)
    return b"\r\n".join(lines) + b"\r\n"


# --- poplib ---------------------------------------------------------------------------------


def test_poplib_over_stls_reads_messages_byte_for_byte(server: ServerProcess) -> None:
    sent = [send(server, ALICE, f"m{i}", body=f".dot {i}\r\nline\r\n") for i in range(3)]
    server.wait_messages(ALICE, 3)
    client = login_stls(server)
    count, octets = client.stat()
    files = stored(server, ALICE)
    assert count == 3 and octets == sum(len(m) for m in files)
    got = [retr(client, n) for n in (1, 2, 3)]
    client.quit()
    assert sorted(got) == sorted(files)  # byte for byte as stored
    for message, original in zip(sorted(got), sorted(sent), strict=True):
        assert message.endswith(original)  # what was sent, after postbote's trace headers


def test_poplib_over_pop3s_with_uidl_and_top(server: ServerProcess) -> None:
    send(server, ALICE, "top test", body="one\r\ntwo\r\nthree\r\n")
    server.wait_messages(ALICE, 1)
    client = poplib.POP3_SSL(
        "127.0.0.1", server.ports["pop3s"], context=tls_client_context(server), timeout=15
    )
    client.user(ALICE)
    client.pass_(PASSWORD)
    _, uidls, _ = client.uidl()
    assert len(uidls) == 1 and len(uidls[0].split()[1]) <= 70
    _, lines, _ = client.top(1, 1)
    assert lines[-1] == b"one" and b"Subject: top test" in lines
    client.quit()


def test_read_messages_move_to_cur_with_the_seen_flag(server: ServerProcess) -> None:
    send(server, ALICE, "seen")
    server.wait_messages(ALICE, 1)
    client = login_stls(server)
    retr(client, 1)
    client.quit()
    cur = list((server.maildir(ALICE) / "cur").iterdir())
    assert len(cur) == 1 and cur[0].name.endswith(":2,S")
    assert list((server.maildir(ALICE) / "new").iterdir()) == []


def test_dele_removes_only_after_quit(server: ServerProcess) -> None:
    for i in range(2):
        send(server, ALICE, f"d{i}")
    server.wait_messages(ALICE, 2)
    client = login_stls(server)
    client.dele(1)
    assert client.stat()[0] == 1
    assert len(stored(server, ALICE)) == 2  # not before UPDATE
    client.quit()
    assert len(stored(server, ALICE)) == 1


def test_dropped_connection_deletes_nothing(server: ServerProcess) -> None:
    send(server, ALICE, "keep me")
    server.wait_messages(ALICE, 1)
    client = login_stls(server)
    client.dele(1)
    client.sock.shutdown(socket.SHUT_RDWR)  # the connection drops: no QUIT, no UPDATE
    client.close()
    wait_for(lambda: _can_login(server), 10, "the mailbox lock to be released")
    assert len(stored(server, ALICE)) == 1


def _can_login(server: ServerProcess) -> bool:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    try:
        client.stls(context=tls_client_context(server))
        client.user(ALICE)
        client.pass_(PASSWORD)
    except poplib.error_proto:
        client.close()
        return False
    client.quit()
    return True


def test_second_session_gets_in_use(server: ServerProcess) -> None:
    first = login_stls(server)
    second = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    second.stls(context=tls_client_context(server))
    second.user(ALICE)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    second.quit()
    first.quit()
    login_stls(server).quit()  # free again after the first session ended


def test_mail_arriving_during_a_session_is_seen_at_the_next_login(server: ServerProcess) -> None:
    client = login_stls(server)
    assert client.stat()[0] == 0
    send(server, ALICE, "late")
    server.wait_messages(ALICE, 1)
    assert client.stat()[0] == 0  # the snapshot of this session
    client.quit()
    again = login_stls(server)
    assert again.stat()[0] == 1
    again.quit()


def test_uidl_is_stable_across_a_server_restart(tmp_path: Path) -> None:
    server = make_pop3_server(tmp_path / "node")
    server.start()
    try:
        for i in range(3):
            send(server, ALICE, f"u{i}")
        server.wait_messages(ALICE, 3)
        client = login_stls(server)
        before = client.uidl()[1]
        retr(client, 2)  # moves to cur/: the identifier must not change
        client.quit()
        assert server.stop() == 0
        server.start()
        client = login_stls(server)
        after = client.uidl()[1]
        client.quit()
        assert after == before
    finally:
        server.kill()


def test_user_pass_refused_without_tls(server: ServerProcess) -> None:
    client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
    assert "USER" not in client.capa()
    with pytest.raises(poplib.error_proto, match=r"TLS"):
        client.user(ALICE)
    with pytest.raises(poplib.error_proto):
        client.pass_(PASSWORD)
    client.quit()


def test_plaintext_allowed_on_loopback_when_configured(tmp_path: Path) -> None:
    server = make_pop3_server(tmp_path / "node", "[pop3]\nplaintext_on_loopback = true\n")
    server.start()
    try:
        client = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
        client.user(ALICE)
        assert client.pass_(PASSWORD).startswith(b"+OK")
        client.quit()
    finally:
        server.kill()


def test_login_delay_is_announced_and_enforced(tmp_path: Path) -> None:
    server = make_pop3_server(tmp_path / "node", "[pop3]\nlogin_delay = 300\n")
    server.start()
    try:
        client = login_stls(server)
        assert client.capa()["LOGIN-DELAY"] == ["300"]  # RFC 2449 §6.5
        client.quit()
        again = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=15)
        again.stls(context=tls_client_context(server))
        again.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
            again.pass_(PASSWORD)
        again.quit()
        login_stls(server, BOB).quit()  # per user
    finally:
        server.kill()


def test_stls_injection_is_discarded(server: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10)
    with sock:
        assert _line(sock).startswith(b"+OK")
        # A man in the middle appends a command to the plaintext STLS (CVE-2011-0411).
        sock.sendall(b"STLS\r\nUSER alice@example.test\r\n")
        assert _line(sock).startswith(b"+OK")
        with tls_client_context(server).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
            answer = _line(tls)
            assert answer.startswith(b"-ERR"), answer  # USER was dropped: PASS out of order
            tls.sendall(b"QUIT\r\n")
            assert _line(tls).startswith(b"+OK")


def _line(sock: socket.socket) -> bytes:
    """One reply line, read a byte at a time (nothing beyond it is consumed)."""
    out = b""
    while not out.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError(out)
        out += byte
    return out


def test_wrong_password_gets_auth_code_and_the_limiter_applies(tmp_path: Path) -> None:
    server = make_pop3_server(
        tmp_path / "node", "[auth]\nmax_failures_per_ip = 3\nlockout = 60\ndelay_after = 100\n"
    )
    server.start()
    try:
        for _ in range(3):
            client = poplib.POP3_SSL(
                "127.0.0.1", server.ports["pop3s"], context=tls_client_context(server)
            )
            client.user(ALICE)
            with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
                client.pass_("wrong")
            client.close()
        client = poplib.POP3_SSL(
            "127.0.0.1", server.ports["pop3s"], context=tls_client_context(server)
        )
        client.user(ALICE)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(PASSWORD)  # right password, but locked out
        client.close()
    finally:
        server.kill()


# --- fetchmail and getmail6 ------------------------------------------------------------------


def _deliver_script(tmp: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    script = tmp / "deliver.sh"
    script.write_text(f'#!/bin/sh\nexec cat > "{out}/$(date +%s%N).$$"\n')
    script.chmod(0o755)
    return script


def _fetchmail(server: ServerProcess, tmp: Path, out: Path, *, keep: bool, pop3s: bool) -> None:
    fetchmail = require_tool("fetchmail")
    script = _deliver_script(tmp, out)
    cert = server.data_dir / "tls" / "cert.pem"
    port = server.ports["pop3s" if pop3s else "pop3"]
    tls = "ssl" if pop3s else "sslproto 'TLS1.2+'"
    rc = tmp / "fetchmailrc"
    rc.write_text(
        f"set no syslog\nset invisible\n"
        f"poll 127.0.0.1 service {port} protocol POP3 uidl\n"
        f'  user "{ALICE}" there with password "{PASSWORD}" is "root" here\n'
        f'  {tls} sslcertck sslcertfile "{cert}" sslcommonname "mx.{DOMAIN}"\n'
        f"  {'keep' if keep else 'nokeep'} fetchall\n"
        f'  mda "{script}"\n'
    )
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp), FETCHMAILHOME=str(tmp))
    result = subprocess.run(
        [fetchmail, "-f", str(rc), "--nodetach", "-v"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _getmail(server: ServerProcess, tmp: Path, out: Path, *, keep: bool) -> None:
    getmail = require_tool("getmail")
    script = _deliver_script(tmp, out)  # getmail's own Maildir delivery refuses root
    rc = tmp / "getmailrc"
    rc.write_text(
        "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\n"
        f"port = {server.ports['pop3s']}\nusername = {ALICE}\npassword = {PASSWORD}\n"
        f"ca_certs = {server.data_dir / 'tls' / 'cert.pem'}\n"
        f"[destination]\ntype = MDA_external\npath = {script}\nallow_root_commands = true\n"
        f"[options]\ndelete = {'false' if keep else 'true'}\nread_all = true\n"
        "received = false\ndelivered_to = false\n"
    )
    result = subprocess.run(
        [getmail, f"--getmaildir={tmp}", f"--rcfile={rc}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _fetched(out: Path) -> list[bytes]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return sorted(p.read_bytes().replace(b"\r\n", b"\n") for p in files)


def _expected(server: ServerProcess) -> list[bytes]:
    # Mail programs store messages with the local line ending (LF); the content is the same.
    return sorted(m.replace(b"\r\n", b"\n") for m in stored(server, ALICE))


@pytest.mark.parametrize("pop3s", [False, True], ids=["stls", "pop3s"])
@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
def test_fetchmail(server: ServerProcess, tmp_path: Path, keep: bool, pop3s: bool) -> None:
    for i in range(3):
        send(server, ALICE, f"fetchmail {i}", body=f".leading dot {i}\r\n")
    server.wait_messages(ALICE, 3)
    expected = _expected(server)
    out = tmp_path / "fetched"
    _fetchmail(server, tmp_path, out, keep=keep, pop3s=pop3s)
    assert _fetched(out) == expected
    assert len(stored(server, ALICE)) == (3 if keep else 0)


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "delete"])
def test_getmail6(server: ServerProcess, tmp_path: Path, keep: bool) -> None:
    for i in range(3):
        send(server, ALICE, f"getmail {i}", body=f".leading dot {i}\r\nend\r\n")
    server.wait_messages(ALICE, 3)
    expected = _expected(server)
    out = tmp_path / "fetched"
    _getmail(server, tmp_path, out, keep=keep)
    assert _fetched(out) == expected
    assert len(stored(server, ALICE)) == (3 if keep else 0)
