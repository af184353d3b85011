"""SPF, DKIM and DMARC end to end (issue 6 §3): postbote A (sender.test) signs what its
user submits and delivers it to postbote B (receiver.test) on 127.0.0.2, which checks
it; the DNS records both need come from a DNS server on 127.0.0.1.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import stat
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from postbote.policy.dkim import public_record
from postbote.policy.dkimkeys import DkimKeys
from tests.dnsserver import TestDnsServer
from tests.integration.conftest import PASSWORD, ServerProcess, tls_client_context
from tests.integration.test_outbound import Zone, _port_free_everywhere

pytestmark = pytest.mark.timeout(120)

ALICE = "alice@sender.test"
BOB = "bob@receiver.test"
B_HOST = "127.0.0.2"


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDnsServer]:
    with Zone() as server:
        server.add("receiver.test", "MX", "10 mx.receiver.test.")
        server.add("mx.receiver.test", "A", B_HOST)
        server.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.0/8 -all")
        server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
        server.add("strict.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject")
        server.add("careful.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.careful.test", "TXT", "v=DMARC1; p=quarantine")
        server.add("attacker.test", "TXT", "v=spf1 ip4:127.0.0.0/8 ~all")
        yield server


@pytest.fixture(scope="module")
def port() -> int:
    return _port_free_everywhere()


def _dns_config(dns: TestDnsServer) -> str:
    return f'[dns]\nnameservers = ["127.0.0.1:{dns.port}"]\ntimeout = 1\n'


@pytest.fixture(scope="module")
def receiver(
    tmp_path_factory: pytest.TempPathFactory, dns: TestDnsServer, port: int
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("receiver") / "b"
    root.mkdir()
    config = _dns_config(dns) + "[checks]\ntrusted_networks = []\n"  # loopback is "internet"
    server = ServerProcess(
        root, extra_config=config, listen={"smtp": f"{B_HOST}:{port}"}, hostname="mx.receiver.test"
    )
    assert server.cli("domain", "add", "receiver.test") == 0
    server.add_user(BOB)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def sender(
    tmp_path_factory: pytest.TempPathFactory, dns: TestDnsServer, port: int
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("sender") / "a"
    root.mkdir()
    config = _dns_config(dns) + f"[delivery]\nport = {port}\nretry = [1]\n"
    server = ServerProcess(root, extra_config=config, hostname="mx.sender.test")
    assert server.cli("domain", "add", "sender.test") == 0
    server.add_user(ALICE)
    assert server.cli("dkim", "keygen", "sender.test", "--selector", "s1") == 0
    assert (
        server.cli("dkim", "keygen", "sender.test", "--selector", "e1", "--algorithm", "ed25519")
        == 0
    )
    for key in DkimKeys(server.data_dir).all()["sender.test"]:
        algorithm = "ed25519" if key.algorithm.startswith("ed25519") else "rsa"
        dns.add(
            f"{key.selector}._domainkey.sender.test",
            "TXT",
            public_record(key.private_key, algorithm),
        )
    server.start()
    yield server
    server.kill()


def submit(server: ServerProcess, rcpt: str, subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = ALICE
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content("Signed, sealed, delivered.\n")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=15) as client:
        client.starttls(context=tls_client_context(server))
        client.login(ALICE, PASSWORD)
        client.sendmail(ALICE, [rcpt], msg.as_bytes(policy=email.policy.SMTP))


def send_to_receiver(receiver: ServerProcess, sender: str, data: bytes) -> None:
    with smtplib.SMTP(
        B_HOST, receiver.smtp_port, timeout=15, local_hostname="client.attacker.test"
    ) as c:
        c.sendmail(sender, [BOB], data)


def results_of(message: bytes) -> list[str]:
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    return [str(v) for v in parsed.get_all("Authentication-Results", [])]


def _latest(receiver: ServerProcess, subject: bytes, count: int) -> bytes:
    got = receiver.wait_messages(BOB, count)
    [match] = [m for m in got if subject in m]
    return match


def test_signed_mail_passes_spf_dkim_and_dmarc_at_the_receiver(
    sender: ServerProcess, receiver: ServerProcess
) -> None:
    before = len(receiver.messages(BOB))
    submit(sender, BOB, "hello across the internet")
    message = _latest(receiver, b"Subject: hello across the internet", before + 1)
    assert message.count(b"DKIM-Signature:") == 2  # RSA and ed25519 (dual signing)
    [results] = results_of(message)
    assert results.startswith("mx.receiver.test;")
    assert "spf=pass" in results
    assert "dkim=pass" in results and "header.d=sender.test" in results
    assert "dmarc=pass" in results


def _signed_part(message: bytes) -> bytes:
    """The message as A sent it, from its first DKIM-Signature on (B's trace removed)."""
    return message[message.index(b"DKIM-Signature:") :]


def test_a_message_altered_in_transit_fails_dkim(
    sender: ServerProcess, receiver: ServerProcess
) -> None:
    before = len(receiver.messages(BOB))
    submit(sender, BOB, "do not touch")
    original = _latest(receiver, b"Subject: do not touch", before + 1)
    tampered = _signed_part(original).replace(b"Signed, sealed", b"Signed, forged")
    tampered = tampered.replace(b"Subject: do not touch", b"Subject: touched")
    send_to_receiver(receiver, ALICE, tampered)
    message = _latest(receiver, b"Subject: touched", before + 2)
    [results] = results_of(message)
    assert "dkim=fail" in results and "dkim=pass" not in results


def test_a_forged_from_of_a_p_reject_domain_is_refused(receiver: ServerProcess) -> None:
    forged = (
        b"From: The CEO <ceo@strict.test>\r\nTo: bob@receiver.test\r\n"
        b"Subject: wire the money\r\n\r\nNow.\r\n"
    )
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send_to_receiver(receiver, "someone@attacker.test", forged)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1")
    assert not any(b"wire the money" in m for m in receiver.messages(BOB))


def test_p_quarantine_is_delivered_marked(receiver: ServerProcess) -> None:
    before = len(receiver.messages(BOB))
    suspicious = (
        b"From: billing@careful.test\r\nTo: bob@receiver.test\r\n"
        b"Subject: your invoice\r\n\r\nPay here.\r\n"
    )
    send_to_receiver(receiver, "someone@attacker.test", suspicious)
    message = _latest(receiver, b"Subject: your invoice", before + 1)
    assert b"X-Postbote-Quarantine: dmarc=fail" in message
    [results] = results_of(message)
    assert "dmarc=fail" in results


def test_a_forged_authentication_results_is_removed(receiver: ServerProcess) -> None:
    before = len(receiver.messages(BOB))
    forged = (
        b"Authentication-Results: mx.receiver.test; dkim=pass header.d=bank.test\r\n"
        b"authentication-results:  MX.RECEIVER.TEST (trust me);\r\n\tdmarc=pass\r\n"
        b"Authentication-Results: other.example; spf=none\r\n"
        b"From: friend@attacker.test\r\nTo: bob@receiver.test\r\nSubject: trust me\r\n\r\nHi.\r\n"
    )
    send_to_receiver(receiver, "friend@attacker.test", forged)
    message = _latest(receiver, b"Subject: trust me", before + 1)
    results = results_of(message)
    ours = [r for r in results if r.lower().startswith("mx.receiver.test")]
    assert len(ours) == 1 and "bank.test" not in ours[0] and "(trust me)" not in ours[0]
    assert any(r.startswith("other.example") for r in results)  # not ours: kept


def test_dsns_are_signed(sender: ServerProcess, dns: TestDnsServer) -> None:
    dns.add("nowhere.test", "MX", "0 .")  # null MX: an immediate bounce to alice
    before = len(sender.messages(ALICE))
    submit(sender, "x@nowhere.test", "bounce me")
    report = sender.wait_messages(ALICE, before + 1)[-1]
    assert b"multipart/report" in report
    assert b"DKIM-Signature:" in report and b"d=sender.test" in report


def test_dkim_keys_are_private_and_dns_records_are_printed(sender: ServerProcess) -> None:
    for key in (sender.data_dir / "dkim" / "sender.test").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "postbote",
            "dns-records",
            "sender.test",
            "-c",
            str(sender.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "sender.test.\t3600\tIN\tMX\t10 mx.sender.test." in text
    assert '"v=spf1 mx -all"' in text
    assert "s1._domainkey.sender.test." in text and "e1._domainkey.sender.test." in text
    assert "_dmarc.sender.test." in text and "v=DMARC1" in text
    assert "_mta-sts" in text and "_smtp._tls" in text


def test_the_signature_verifies_with_a_verifier_that_is_not_ours(
    sender: ServerProcess, receiver: ServerProcess, tmp_path: Path, dns: TestDnsServer
) -> None:
    """dkimpy's own verifier (its command-line logic), fed the records of the test zone."""
    before = len(receiver.messages(BOB))
    submit(sender, BOB, "independent check")
    message = _signed_part(_latest(receiver, b"Subject: independent check", before + 1))
    records = {
        f"{k.selector}._domainkey.sender.test.": public_record(
            k.private_key, "ed25519" if k.algorithm.startswith("ed25519") else "rsa"
        )
        for k in DkimKeys(sender.data_dir).all()["sender.test"]
    }
    (tmp_path / "message.eml").write_bytes(message)
    script = (
        "import dkim, json, sys\n"
        "records = json.loads(sys.argv[2])\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "def dnsfunc(name, timeout=5):\n"
        "    return records.get(name.decode() if isinstance(name, bytes) else name, '').encode()\n"
        "d = dkim.DKIM(data)\n"
        "ok = [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(2)]\n"
        "print(ok)\n"
        "sys.exit(0 if all(ok) else 1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "message.eml"), json.dumps(records)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
