"""Submission (RFC 6409) with SMTP AUTH (RFC 4954) against a real server process:
smtplib, swaks, msmtp and scramp's SCRAM client; the sender rules; the limiter."""

from __future__ import annotations

import base64
import json
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp

from tests.integration.conftest import (
    DOMAIN,
    PASSWORD,
    RawSmtp,
    ServerProcess,
    new_server,
    require_tool,
    tls_client_context,
    wait_for,
)

ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = new_server(tmp_path_factory.mktemp("submission") / "node")
    assert server.cli("alias", "add", f"info@{DOMAIN}", ALICE) == 0
    server.start()
    yield server
    server.kill()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def login(server: ServerProcess, *, implicit: bool = False) -> smtplib.SMTP:
    ctx = tls_client_context(server)
    if implicit:
        c: smtplib.SMTP = smtplib.SMTP_SSL(
            "127.0.0.1", server.ports["submissions"], context=ctx, timeout=15
        )
    else:
        c = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15)
        c.starttls(context=ctx)
    c.login(ALICE, PASSWORD)
    return c


def tls_session(server: ServerProcess) -> RawSmtp:
    s = RawSmtp(server.ports["submission"])
    assert s.reply().code == 220
    assert s.cmd("EHLO client.test").code == 250
    assert s.cmd("STARTTLS").code == 220
    s.wrap_tls(tls_client_context(server))
    ehlo = s.cmd("EHLO client.test")
    assert "AUTH PLAIN LOGIN SCRAM-SHA-256" in str(ehlo)
    return s


def message(sender: str, rcpt: str, subject: str, extra: str = "") -> str:
    return f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n{extra}\r\nbody {subject}\r\n"


def delivered_with(server: ServerProcess, box: str, token: str) -> bytes:
    wait_for(
        lambda: any(token.encode() in m for m in server.messages(box)), what=f"{token} in {box}"
    )
    return next(m for m in server.messages(box) if token.encode() in m)


# --- AUTH only over TLS -------------------------------------------------------------------


def test_auth_before_tls_is_not_offered_and_refused(srv: ServerProcess) -> None:
    with RawSmtp(srv.ports["submission"]) as s:
        assert s.reply().code == 220
        ehlo = s.cmd("EHLO client.test")
        assert "STARTTLS" in str(ehlo) and "AUTH" not in str(ehlo)
        r = s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}".encode()))
        assert (r.code, r.text[:6]) == (538, "5.7.11")
        r = s.cmd(f"MAIL FROM:<{ALICE}>")
        assert (r.code, r.text[:5]) == (530, "5.7.0")  # RFC 4954 §6: AUTH required first


def test_mx_port_offers_no_auth(srv: ServerProcess) -> None:
    with RawSmtp(srv.smtp_port) as s:
        assert s.reply().code == 220
        assert "AUTH" not in str(s.cmd("EHLO client.test"))
        assert s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}".encode())).code == 502


# --- mechanisms with real clients ----------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls-587", "implicit-465"])
def test_smtplib_login_and_send_to_local_and_remote(srv: ServerProcess, implicit: bool) -> None:
    token = f"smtplib-{implicit}"
    with login(srv, implicit=implicit) as c:
        refused = c.sendmail(
            ALICE, [BOB, "friend@remote.test"], message(ALICE, BOB, token).encode()
        )
        assert refused == {}
    delivered_with(srv, BOB, token)
    # The remote recipient waits in the outbound queue (issue: outbound delivery).
    wait_for(
        lambda: any(e["recipient"] == "friend@remote.test" for e in queue(srv)),
        what="remote recipient queued",
    )


def queue(server: ServerProcess) -> list[dict[str, object]]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "postbote",
            "queue",
            "list",
            "--json",
            "-c",
            str(server.config_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_each_mechanism(srv: ServerProcess, mechanism: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=15) as c:
        c.starttls(context=tls_client_context(srv))
        c.ehlo()
        c.user, c.password = ALICE, PASSWORD
        auth = c.auth_plain if mechanism == "PLAIN" else c.auth_login
        code, _ = c.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")
        assert code == 235


def test_scram_sha256_with_scramp_client(srv: ServerProcess) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], ALICE, PASSWORD)
    with tls_session(srv) as s:
        r = s.cmd("AUTH SCRAM-SHA-256 " + b64(client.get_client_first().encode()))
        assert r.code == 334
        client.set_server_first(base64.b64decode(r.text).decode())
        r = s.cmd(b64(client.get_client_final().encode()))
        assert r.code == 334  # server-final "v=..." as additional data (RFC 4954 §4)
        client.set_server_final(base64.b64decode(r.text).decode())  # verifies the server
        r = s.cmd("")
        assert (r.code, r.text[:5]) == (235, "2.7.0")
        assert s.cmd(f"MAIL FROM:<{ALICE}>").code == 250


def test_scram_wrong_password_fails(srv: ServerProcess) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], ALICE, "wrong")
    with tls_session(srv) as s:
        r = s.cmd("AUTH SCRAM-SHA-256 " + b64(client.get_client_first().encode()))
        client.set_server_first(base64.b64decode(r.text).decode())
        r = s.cmd(b64(client.get_client_final().encode()))
        assert (r.code, r.text[:5]) == (535, "5.7.8")


def test_wrong_password_and_unknown_user_get_the_same_reply(srv: ServerProcess) -> None:
    answers = []
    for user, password in ((ALICE, "wrong"), (f"nobody@{DOMAIN}", PASSWORD)):
        with tls_session(srv) as s:
            answers.append(str(s.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}".encode()))))
    assert answers[0] == answers[1]
    assert answers[0].startswith("535 5.7.8")


def test_authzid_trick_is_refused(srv: ServerProcess) -> None:
    """maddy CVE-2023-27582 class: log in as bob, ask to act as alice."""
    with tls_session(srv) as s:
        r = s.cmd("AUTH PLAIN " + b64(f"{ALICE}\0{BOB}\0{PASSWORD}".encode()))
        assert r.code == 535
        assert s.cmd(f"MAIL FROM:<{ALICE}>").code == 530


def test_auth_cancelled_with_star(srv: ServerProcess) -> None:
    with tls_session(srv) as s:
        assert s.cmd("AUTH LOGIN").code == 334
        assert s.cmd("*").code == 501


# --- the sender rule ---------------------------------------------------------------------


def test_forged_mail_from_is_refused(srv: ServerProcess) -> None:
    with login(srv) as c:
        code, text = c.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1")


def test_forged_from_header_is_refused(srv: ServerProcess) -> None:
    with login(srv) as c, pytest.raises(smtplib.SMTPDataError) as exc:
        c.sendmail(ALICE, [BOB], message(BOB, BOB, "forged-from").encode())
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (550, b"5.7.1")


@pytest.mark.parametrize(
    "headers",
    [
        f"To: {BOB}\r\nSubject: no-from\r\n",
        f"From: {ALICE}\r\nFrom: {ALICE}\r\nTo: {BOB}\r\nSubject: two-from\r\n",
        f"From: {ALICE}, info@{DOMAIN}\r\nTo: {BOB}\r\nSubject: two-mailboxes\r\n",
    ],
    ids=["none", "two-fields", "two-mailboxes"],
)
def test_from_header_must_be_one_mailbox(srv: ServerProcess, headers: str) -> None:
    with login(srv) as c, pytest.raises(smtplib.SMTPDataError) as exc:
        c.sendmail(ALICE, [BOB], (headers + "\r\nbody\r\n").encode())
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (550, b"5.6.0")


def test_plus_address_alias_and_granted_sender_are_accepted(srv: ServerProcess) -> None:
    assert srv.cli("user", "allow-sender", ALICE, "boss@partner.test") == 0
    with login(srv) as c:
        for sender in (f"alice+news@{DOMAIN}", f"info@{DOMAIN}", "boss@partner.test"):
            token = f"sender-{sender}"
            assert c.sendmail(sender, [BOB], message(sender, BOB, token).encode()) == {}
            delivered_with(srv, BOB, token)


def test_submission_adds_date_and_message_id_and_hides_client_ip(srv: ServerProcess) -> None:
    token = "fixes-token"
    raw = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: {token}\r\n\r\nbody\r\n"
    with login(srv) as c:
        c.sendmail(ALICE, [BOB], raw.encode())
    got = delivered_with(srv, BOB, token)
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head
    received = head.split(b"Received: ", 1)[1].split(b"\r\n\t")[0]
    # config submission.privacy (default on): no "(client IP)" after the HELO name.
    assert received.startswith(b"from ") and b"(" not in received
    assert b"with ESMTPSA" in head


# --- Debian's clients ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "tls"),
    [("PLAIN", "starttls"), ("LOGIN", "starttls"), ("PLAIN", "implicit"), ("LOGIN", "implicit")],
)
def test_swaks_auth(srv: ServerProcess, mechanism: str, tls: str) -> None:
    swaks = require_tool("swaks")
    token = f"swaks-{mechanism}-{tls}"
    port = srv.ports["submission" if tls == "starttls" else "submissions"]
    args = [swaks, "--server", f"127.0.0.1:{port}", "--from", ALICE, "--to", BOB]
    args += ["--auth", mechanism, "--auth-user", ALICE, "--auth-password", PASSWORD]
    args += ["--tls" if tls == "starttls" else "--tlsc", "--header", f"Subject: {token}"]
    args += ["--h-From", ALICE]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    delivered_with(srv, BOB, token)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_msmtp_auth(srv: ServerProcess, tmp_path: Path, mechanism: str, tls: str) -> None:
    msmtp = require_tool("msmtp")
    port = srv.ports["submission" if tls == "starttls" else "submissions"]
    rc = tmp_path / "msmtprc"
    rc.write_text(
        "account default\n"
        f"host 127.0.0.1\nport {port}\nfrom {ALICE}\n"
        "tls on\n"
        f"tls_starttls {'on' if tls == 'starttls' else 'off'}\n"
        f"tls_trust_file {srv.data_dir / 'tls' / 'cert.pem'}\n"
        f"auth {mechanism}\nuser {ALICE}\npassword {PASSWORD}\n"
    )
    rc.chmod(0o600)
    token = f"msmtp-{mechanism}-{tls}"
    out = subprocess.run(
        [msmtp, "-C", str(rc), BOB],
        input=message(ALICE, BOB, token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    delivered_with(srv, BOB, token)


# --- brute force --------------------------------------------------------------------------


def test_bruteforce_limiter_trips_and_recovers(tmp_path: Path) -> None:
    server = new_server(
        tmp_path / "node",
        extra_config="[auth]\nmax_failures_per_ip = 3\nlockout = 1.0\ndelay_after = 100\n",
    )
    server.start()
    try:
        bad = "AUTH PLAIN " + b64(f"\0{ALICE}\0wrong".encode())
        for _ in range(2):
            with tls_session(server) as s:
                assert s.cmd(bad).code == 535
        with tls_session(server) as s:
            r = s.cmd(bad)  # the third failure trips the lockout
            assert (r.code, r.text[:5]) == (421, "4.7.0")
            assert s.closed_by_peer()
        with tls_session(server) as s:  # even the right password is refused now
            r = s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}".encode()))
            assert r.code == 421

        def recovered() -> bool:
            with tls_session(server) as s:
                return s.cmd("AUTH PLAIN " + b64(f"\0{ALICE}\0{PASSWORD}".encode())).code == 235

        wait_for(recovered, timeout=10, what="the lockout to end")
    finally:
        server.kill()
