"""[limits] max_message_memory: many large messages at once cannot exhaust memory.

Message bodies are held in memory while they arrive; the total over all sessions is
bounded. The message whose growth would pass the bound is read to its end and refused
with 452 4.3.1 (RFC 5321 §4.2.3: insufficient system storage, try again later); the
others go on, and the refused one is accepted when tried again.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import DOMAIN, RawSmtp, ServerProcess

pytestmark = pytest.mark.timeout(60)

ALICE = f"alice@{DOMAIN}"
SIZE = 190_000  # two of them do not fit in the budget below, one does
CONFIG = "[limits]\nmax_message_size = 200000\nmax_message_memory = 300000\n"


def _body(tag: str, size: int) -> bytes:
    head = f"Subject: {tag}\r\n\r\n".encode()
    line = (tag + " " + "x" * 70)[:70].encode() + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


def _open(port: int) -> RawSmtp:
    client = RawSmtp(port)
    assert client.reply().code == 220
    assert client.cmd("EHLO client.example").code == 250
    assert client.cmd("MAIL FROM:<sender@remote.example>").code == 250
    assert client.cmd(f"RCPT TO:<{ALICE}>").code == 250
    return client


def _send_data(client: RawSmtp, body: bytes) -> tuple[int, str]:
    assert client.cmd("DATA").code == 354
    client.send(body + b".\r\n")
    answer = client.reply()
    return answer.code, answer.lines[-1][4:]


def test_a_message_beyond_the_memory_bound_is_refused_452_then_accepted(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(extra_config=CONFIG)
    server.start()
    held, second = _open(server.smtp_port), _open(server.smtp_port)
    try:
        _exchange(held, second)
    finally:
        held.close()
        second.close()
    stored = server.wait_messages(ALICE, 2)
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in stored)
    assert subjects == [b"first", b"retry"]
    assert any("dropped: bodies in memory over 300000 bytes" in line for line in server.log)


def _exchange(held: RawSmtp, second: RawSmtp) -> None:
    # BDAT: the server's "250 chunk received" proves the first body is held in memory.
    first = _body("first", SIZE)
    held.send(f"BDAT {len(first)}\r\n".encode() + first)
    assert held.reply().code == 250
    # The second message takes the total over the bound: read to its end, refused.
    code, text = _send_data(second, _body("second", SIZE))
    assert (code, text[:5]) == (452, "4.3.1")
    assert second.cmd("NOOP").code == 250  # the session goes on
    # The first one is not affected.
    answer = held.cmd("BDAT 0 LAST")
    assert answer.code == 250, answer.lines
    # Once that one is on disk, there is room again: the retry is accepted.
    assert second.cmd("MAIL FROM:<sender@remote.example>").code == 250
    assert second.cmd(f"RCPT TO:<{ALICE}>").code == 250
    assert _send_data(second, _body("retry", SIZE))[0] == 250
    for client in (held, second):
        assert client.cmd("QUIT").code == 221
