"""No open relay: every disguise of a remote recipient is refused with 554 5.7.1 for an
unauthenticated client, on the MX port and on the submission port after STARTTLS, and
nothing is delivered or queued. Local recipients in any spelling are still accepted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    DOMAIN,
    OPTIONAL_AUTH,
    RawSmtp,
    ServerProcess,
    running_module_server,
    tls_client_context,
    wait_for,
)

ALICE = f"alice@{DOMAIN}"

# RFC 5321 §3.6, §4.1.3, Appendix C; RFC 1123 §5.2.16 (the %-hack); RFC 976 (bang paths).
DISGUISES = [
    "user@remote.test",
    "user%remote.test@example.test",
    '"user@remote.test"@example.test',
    "remote.test!user@example.test",
    "@example.test:user@remote.test",
    "user@[192.0.2.1]",
    "user@[IPv6:2001:db8::1]",
    "USER@REMOTE.TEST",
    "user@remote.test.",
    "user@example.test.remote.test",
    "user@sub.example.test",
]


# With AUTH optional on the submission ports, an unauthenticated client there must be
# treated like one on the MX port: "optional" never opens a relay.
@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from running_module_server(tmp_path_factory, OPTIONAL_AUTH)


def mail_files(server: ServerProcess) -> list[Path]:
    root = server.data_dir / "mail"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def queue_entries(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> list[object]:
    """What ``postbote queue list --json`` prints for the server's data_dir."""
    capsys.readouterr()
    assert server.cli("queue", "list", "--json") == 0
    entries = json.loads(capsys.readouterr().out)
    assert isinstance(entries, list)
    return entries


def connect(server: ServerProcess, listener: str) -> RawSmtp:
    """A client that has said EHLO: in plaintext on smtp, after STARTTLS on submission."""
    client = RawSmtp(server.ports[listener])
    assert client.reply().code == 220
    assert client.cmd("EHLO client.test").code == 250
    if listener == "submission":
        assert client.cmd("STARTTLS").code == 220
        client.wrap_tls(tls_client_context(server))
        answer = client.cmd("EHLO client.test")
        assert answer.code == 250
        assert any("AUTH" in line for line in answer.lines)  # offered, but not used here
    return client


@pytest.mark.parametrize("listener", ["smtp", "submission"])
@pytest.mark.parametrize("rcpt", DISGUISES)
def test_remote_recipient_is_refused(
    module_server: ServerProcess, capsys: pytest.CaptureFixture[str], listener: str, rcpt: str
) -> None:
    before = mail_files(module_server)
    with connect(module_server, listener) as c:
        assert c.cmd("MAIL FROM:<spammer@remote.test>").code == 250
        answer = c.cmd(f"RCPT TO:<{rcpt}>")
        assert (answer.code, answer.text[:5]) == (554, "5.7.1"), str(answer)
        answer = c.cmd("DATA")
        assert answer.code >= 500, str(answer)  # no recipient, no transaction
        assert c.cmd("QUIT").code == 221
    assert mail_files(module_server) == before
    assert queue_entries(module_server, capsys) == []


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_mixed_transaction_delivers_only_to_local(
    module_server: ServerProcess, capsys: pytest.CaptureFixture[str], listener: str
) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    before = set(mail_files(module_server))
    with connect(module_server, listener) as c:
        assert c.cmd("MAIL FROM:<sender@remote.test>").code == 250
        assert c.cmd(f"RCPT TO:<{ALICE}>").code == 250
        for rcpt in DISGUISES[:5]:  # each refusal counts against max_errors (10)
            answer = c.cmd(f"RCPT TO:<{rcpt}>")
            assert answer.code == 554, (rcpt, str(answer))
        assert c.cmd("DATA").code == 354
        answer = c.cmd(f"Subject: {marker}\r\n\r\nhi\r\n.".encode())
        assert answer.code == 250, str(answer)
    wait_for(
        lambda: any(marker.encode() in m for m in module_server.messages(ALICE)), what="delivery"
    )
    new = set(mail_files(module_server)) - before
    assert len(new) == 1, new
    assert new.pop().parent.parent == module_server.maildir(ALICE)
    assert queue_entries(module_server, capsys) == []


@pytest.mark.parametrize("rcpt", ["alice@example.test.", "ALICE@Example.Test"])
def test_local_recipient_spellings_are_accepted(
    module_server: ServerProcess, capsys: pytest.CaptureFixture[str], rcpt: str
) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    with connect(module_server, "smtp") as c:
        assert c.cmd("MAIL FROM:<sender@remote.test>").code == 250
        answer = c.cmd(f"RCPT TO:<{rcpt}>")
        assert answer.code == 250, str(answer)
        assert c.cmd("DATA").code == 354
        assert c.cmd(f"Subject: {marker}\r\n\r\nhi\r\n.".encode()).code == 250
    wait_for(
        lambda: any(marker.encode() in m for m in module_server.messages(ALICE)), what="delivery"
    )
    (message,) = [m for m in module_server.messages(ALICE) if marker.encode() in m]
    assert f"Delivered-To: {ALICE}\r\n".encode() in message
    assert queue_entries(module_server, capsys) == []
