"""Property tests of the SMTP client core (hypothesis).

* ``encode_body`` never puts a bare CR or LF or an early ``CRLF.CRLF`` on the wire, and
  un-stuffing its output gives back the CRLF-normalised body (RFC 5321 §4.5.2).
* An address with CR or LF is always refused before anything is sent.
* Any server byte stream is handled without an exception, never makes the client send a
  bare CR or LF, and gives the same bytes and events however it is chunked.
* Against postbote's own server core (sans-IO, in memory), every transaction is
  delivered exactly as normalised, and every recipient gets the right outcome, with and
  without PIPELINING and across reused connections.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.smtp.client import (
    NEED_DATA,
    ClientConnection,
    Closed,
    Event,
    NeedData,
    OutgoingRecipient,
    Ready,
    SessionFailed,
    Transaction,
    TransactionDone,
    encode_body,
)
from postbote.smtp.client_data import normalize_body
from postbote.smtp.events import MessageComplete
from tests.smtp.helpers import Policy, Session
from tests.smtp.helpers import settings as server_settings
from tests.smtp.test_client import (
    BOB,
    HELO,
    OPEN_FULL,
    S_354,
    S_BYE,
    S_EHLO_BASIC,
    S_EHLO_FULL,
    S_GREET,
    S_MAIL_OK,
    S_QUEUED,
    S_RCPT_OK,
    TX1,
    TX3,
    Action,
    assert_clean_wire,
    drive,
)

# Bodies made of the octets that matter for transparency, plus anything.
BODY_BYTES = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"..", b"x", b"\xc3\xa9", b"\x00"])
    | st.binary(max_size=8),
    max_size=40,
).map(b"".join)


def unstuff(wire: bytes) -> bytes:
    """Undo RFC 5321 §4.5.2 on a DATA text ending in the ".\\r\\n" terminator line."""
    assert wire.endswith(b".\r\n")
    text = wire[:-3]
    lines = text.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(BODY_BYTES)
def test_encode_body_is_transparent(body: bytes) -> None:
    wire = encode_body(body)
    assert_clean_wire(wire)
    message = normalize_body(body)
    if message:
        # The only CRLF "." CRLF is the terminator, and the text does not start with one.
        assert wire.find(b"\r\n.\r\n") == len(wire) - 5
        assert not wire.startswith(b".\r\n")
    else:
        assert wire == b".\r\n"
    assert unstuff(wire) == message
    assert normalize_body(message) == message  # normalising is idempotent


@given(BODY_BYTES)
def test_normalized_body_has_only_crlf_line_ends(body: bytes) -> None:
    message = normalize_body(body)
    assert_clean_wire(message)
    assert not message or message.endswith(b"\r\n")
    assert message.replace(b"\r\n", b"") == body.replace(b"\r", b"").replace(b"\n", b"")


ADDRESS_TEXT = st.text(st.characters(codec="utf-8"), min_size=0, max_size=30)


@given(
    ADDRESS_TEXT,
    ADDRESS_TEXT,
    st.sampled_from(["\r", "\n", "\r\n"]),
    st.booleans(),
)
def test_addresses_with_cr_or_lf_are_refused(
    head: str, tail: str, newline: str, as_sender: bool
) -> None:
    address = f"{head}{newline}{tail}@example.net"
    conn = ClientConnection(helo_name=HELO)
    conn.receive_data(OPEN_FULL)
    assert isinstance(conn.next_event(), Ready)
    conn.data_to_send()
    if as_sender:
        tx = Transaction(address, (OutgoingRecipient(BOB),), b"x\r\n")
    else:
        tx = Transaction("", (OutgoingRecipient(BOB), OutgoingRecipient(address)), b"x\r\n")
    try:
        conn.start_transaction(tx)
    except ValueError:
        pass
    else:
        raise AssertionError(f"accepted {address!r}")
    assert conn.data_to_send() == b""


REPLY_PIECES = st.sampled_from(
    [
        S_GREET,
        S_EHLO_FULL,
        S_EHLO_BASIC,
        S_MAIL_OK,
        S_RCPT_OK,
        S_354,
        S_QUEUED,
        S_BYE,
        b"220 2.0.0 go\r\n",
        b"250-x\r\n",
        b"250 STARTTLS\r\n",
        b"421 4.3.2 bye\r\n",
        b"450 4.2.0 busy\r\n",
        b"550 5.1.1 no\r\n",
        b"334 VXNlcm5hbWU6\r\n",
        b"\n",
        b"\r",
    ]
) | st.binary(max_size=12)
PREFIXES = st.sampled_from([b"", S_GREET, S_GREET + S_EHLO_FULL, S_GREET + S_EHLO_BASIC])
SERVER_STREAMS = st.tuples(PREFIXES, st.lists(REPLY_PIECES, max_size=25).map(b"".join)).map(
    b"".join
)
ACTIONS: list[Action] = [TX1, TX3, TX1, "quit"]


@settings(max_examples=300)
@given(
    SERVER_STREAMS,
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
    st.sampled_from(["opportunistic", "required", "none"]),
    st.booleans(),
)
def test_any_server_stream_chunked_any_way_gives_the_same_result(
    stream: bytes, sizes: list[int], tls: str, eof: bool
) -> None:
    ref = drive(stream, ACTIONS, None, eof=eof, tls=tls)
    got = drive(stream, ACTIONS, sizes, eof=eof, tls=tls)
    assert (got.client, got.events) == (ref.client, ref.events)
    # Nothing follows the end of a session, and every transaction has full results.
    for i, ev in enumerate(ref.events):
        if isinstance(ev, SessionFailed | Closed):
            assert i == len(ref.events) - 1
        if isinstance(ev, TransactionDone):
            assert len(ev.result.outcomes) in (len(TX1.recipients), len(TX3.recipients))


# -- against the server core ----------------------------------------------------------

POOL = ["bob@example.net", "carol@example.net", "nobody@example.net"]
LINES = st.lists(
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=12,
)
SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r"])


@st.composite
def transactions(draw: st.DrawFn) -> Transaction:
    rcpts = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=4))
    lines = draw(LINES)
    sep = draw(SEPARATORS)
    body = sep.join(lines) + draw(st.sampled_from([b"", sep]))
    sender = draw(st.sampled_from(["", "alice@example.org"]))
    return Transaction(sender, tuple(OutgoingRecipient(r) for r in rcpts), body)


def converse(txs: list[Transaction], pipelining: bool) -> tuple[list[Event], list[MessageComplete]]:
    """Run the client against ServerConnection over an in-memory link until QUIT."""
    # Up to 4 transactions of up to 4 refused recipients each: more refusals than the
    # default error budget (10), which is not what this test is about.
    config = server_settings(max_errors=100)
    server = Session(config, Policy(reject_rcpts=frozenset({"nobody@example.net"})))
    client = ClientConnection(helo_name=HELO)
    to_client = server.output()
    todo = list(txs)
    events: list[Event] = []
    while True:
        if not pipelining:
            to_client = to_client.replace(b"250-PIPELINING\r\n", b"")
        if to_client:
            client.receive_data(to_client)
            to_client = b""
        ev = client.next_event()
        if ev is NEED_DATA:
            data = client.data_to_send()
            assert data, "both sides wait"
            to_client = server.feed(data)
            continue
        assert not isinstance(ev, NeedData)
        events.append(ev)
        if isinstance(ev, Ready | TransactionDone):
            client.start_transaction(todo.pop(0)) if todo else client.quit()
        else:
            assert isinstance(ev, Closed), ev
            break
    messages = [e for e in server.events if isinstance(e, MessageComplete)]
    return events, messages


@settings(max_examples=60, deadline=None)
@given(st.lists(transactions(), min_size=1, max_size=4), st.booleans())
def test_against_the_server_core(txs: list[Transaction], pipelining: bool) -> None:
    events, messages = converse(txs, pipelining)
    assert isinstance(events[0], Ready)
    assert ("PIPELINING" in events[0].extensions) is pipelining
    assert isinstance(events[-1], Closed)
    dones = events[1:-1]
    assert len(dones) == len(txs)
    expected_messages = []
    for tx, done in zip(txs, dones, strict=True):
        assert isinstance(done, TransactionDone)
        codes = [(o.address, o.reply.code) for o in done.result.outcomes]
        assert codes == [(r.address, 550 if r.address == POOL[2] else 250) for r in tx.recipients]
        if any(r.address != POOL[2] for r in tx.recipients):
            expected_messages.append(normalize_body(tx.body))
    assert [m.body for m in messages] == expected_messages
