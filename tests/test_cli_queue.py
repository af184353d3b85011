"""``postbote queue ...`` through cli.main on a temporary config: human and --json output,
what each command changes in the store, and one-line errors."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postbote.app import open_store
from postbote.cli import main
from postbote.config import load_config
from postbote.envelope import Envelope, Recipient
from postbote.store.interfaces import RecipientResult
from postbote.store.sqlite import SqliteStore

BODY = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: hello \x1b[31mred\r\n"  # an escape sequence must not reach the terminal
    b"\r\n"
    b"Secret body text\r\n"
)
LIST_KEYS = {
    "message_id",
    "recipient",
    "sender",
    "state",
    "attempts",
    "next_attempt",
    "last_reply",
    "size",
    "created",
    "last_attempt",
    "remote_mta",
    "report",
}


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "postbote.toml"
    path.write_text(
        'hostname = "mx.example.test"\ndata_dir = "data"\n[listen]\nsmtp = ["127.0.0.1:0"]\n'
    )
    return path


Runner = Callable[..., Run]


@pytest.fixture
def run(config: Path, capsys: pytest.CaptureFixture[str]) -> Runner:
    """``postbote queue -c CONFIG ARGS...``: exit code, stdout, stderr."""

    def run(*args: str) -> Run:
        capsys.readouterr()
        code = main(["queue", "-c", str(config), *args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def store(config: Path) -> Iterator[SqliteStore]:
    s = open_store(load_config(config))
    yield s
    s.close()


@pytest.fixture
def queued(store: SqliteStore) -> float:
    """Message M1 (bob deferred for 5 minutes with a delay report, carol inflight, dave
    delivered) and M2 from <> (queued, due); returns the time it was made at."""
    now = time.time()
    env = Envelope(
        id="M1",
        sender="alice@example.test",
        recipients=(Recipient("bob@remote.test", notify=("FAILURE", "DELAY")),),
        received_at=now - 3600,
        client_ip="192.0.2.1",
        helo="client.example",
        tls=True,
        auth="alice@example.test",
        ret="HDRS",
    )
    store.enqueue(env, BODY, ["bob@remote.test", "carol@other.test", "dave@remote.test"])
    store.claim(now, node="n1", lease=600.0, limit=10)
    store.record(
        "n1",
        "M1",
        [
            RecipientResult(
                "bob@remote.test",
                "deferred",
                "451 4.7.1 greylisted,\r\n try again later",
                next_attempt=now + 300,
                remote_mta="mx.remote.test",
                report="delayed",
            ),
            RecipientResult("dave@remote.test", "delivered", "250 2.0.0 ok", 0.0, "mx.remote.test"),
        ],
    )
    bounce = Envelope(id="M2", sender="", recipients=(), received_at=now - 60)
    store.enqueue(bounce, b"Subject: bounce\r\n\r\n" + b"x" * 5000, ["x@far.test"])
    return now


def one_line_error(result: Run) -> str:
    assert result.code == 1
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


# --- list --------------------------------------------------------------------------------------


def test_list_empty(run: Runner) -> None:
    assert run("list").out == "queue is empty\n"
    assert json.loads(run("list", "--json").out) == []


def test_list(run: Runner, queued: float) -> None:
    result = run("list")
    assert result.code == 0
    header, *rows, blank, summary = result.out.splitlines()
    assert header.split() == [
        "ID",
        "STATE",
        "TRIES",
        "NEXT",
        "ATTEMPT",
        "SIZE",
        "SENDER",
        "RECIPIENT",
    ]
    assert [row.split()[:3] for row in rows] == [
        ["M1", "deferred", "1"],
        ["M1", "inflight", "1"],
        ["M1", "delivered", "1"],
        ["M2", "queued", "0"],
    ]
    assert "in 5 min" in rows[0] and "now" in rows[3]
    assert re.search(r"  <> +x@far.test$", rows[3])
    assert "4.9 KiB" in rows[3]
    # aligned: every column starts at the same offset in every line
    for column in ("STATE", "SENDER", "RECIPIENT"):
        start = header.index(column)
        assert all(row[start - 2 : start] == "  " and row[start] != " " for row in rows)
    assert blank == ""
    assert summary == "2 messages, 4 recipients: 1 queued, 1 inflight, 1 deferred, 1 delivered"


def test_list_json(run: Runner, queued: float) -> None:
    entries = json.loads(run("list", "--json").out)
    assert [set(e) for e in entries] == [LIST_KEYS] * 4
    bob = entries[0]
    assert (bob["message_id"], bob["recipient"], bob["state"]) == (
        "M1",
        "bob@remote.test",
        "deferred",
    )
    assert bob["next_attempt"] == pytest.approx(queued + 300)
    assert bob["last_attempt"] == pytest.approx(queued)
    assert (bob["remote_mta"], bob["report"]) == ("mx.remote.test", "delayed")
    assert entries[3]["last_attempt"] is None
    assert entries[3]["sender"] == ""


# --- show --------------------------------------------------------------------------------------


def test_show(run: Runner, queued: float) -> None:
    result = run("show", "M1")
    assert result.code == 0
    out = result.out
    assert "\x1b" not in out and "\r" not in out
    assert re.search(r"^Message +M1$", out, re.M)
    assert re.search(r"^Sender +alice@example.test$", out, re.M)
    received = re.search(
        r"^Received +(\S+ \S+) from client.example \[192.0.2.1\] with TLS", out, re.M
    )
    assert received is not None
    assert (
        abs(time.mktime(time.strptime(received[1][:19], "%Y-%m-%d %H:%M:%S")) - (queued - 3600)) < 2
    )
    assert "authenticated as alice@example.test" in out
    assert re.search(r"^Options +RET=HDRS$", out, re.M)
    bob = out[out.index("Recipient bob@remote.test") : out.index("Recipient carol@other.test")]
    assert re.search(r"state +deferred, 1 attempt\n", bob)
    assert re.search(r"notify +FAILURE,DELAY\n", bob)
    assert re.search(r"last attempt +\S+ \S+ \(mx.remote.test\)\n", bob)
    assert re.search(r"last reply +451 4.7.1 greylisted, try again later\n", bob)
    assert re.search(r"next attempt +\S+ \S+ \(in 5 min\)\n", bob)
    assert re.search(r"report +delayed", bob)
    assert "Recipient dave@remote.test\n  state         delivered, 1 attempt" in out
    head = out[out.index("Header section:") :].splitlines()
    assert head == [
        "Header section:",
        "  From: Alice <alice@example.test>",
        "  To: bob@remote.test",
        "  Subject: hello \\x1b[31mred",
    ]
    assert "Secret body text" not in out


def test_show_json(run: Runner, queued: float) -> None:
    data = json.loads(run("show", "M1", "--json").out)
    assert set(data) == {"message_id", "size", "created", "envelope", "entries", "headers"}
    assert (data["message_id"], data["size"]) == ("M1", len(BODY))
    assert data["envelope"]["sender"] == "alice@example.test"
    assert data["envelope"]["recipients"][0] == {
        "address": "bob@remote.test",
        "notify": ["FAILURE", "DELAY"],
        "orcpt": None,
    }
    assert [e["recipient"] for e in data["entries"]] == [
        "bob@remote.test",
        "carol@other.test",
        "dave@remote.test",
    ]
    assert all(set(e) == LIST_KEYS for e in data["entries"])
    assert data["headers"] == BODY.split(b"\r\n\r\n")[0].decode()


def test_show_without_body_file(run: Runner, queued: float, config: Path) -> None:
    (config.parent / "data" / "queue" / "M2.eml").unlink()
    result = run("show", "M2")
    assert result.code == 0
    assert "Header section:\n  unavailable: cannot read body of queued message M2" in result.out
    assert json.loads(run("show", "M2", "--json").out)["headers"] is None


# --- commands that change the queue ------------------------------------------------------------


def test_hold_release_retry_flush(run: Runner, store: SqliteStore, queued: float) -> None:
    assert run("hold", "M1").out == "M1: 1 recipient held\n"
    assert store.show("M1").entries[0].state == "held"
    assert run("hold", "M1").out == "M1: 0 recipients held\n"
    assert run("release", "M1").out == "M1: 1 recipient released, due now\n"
    bob = store.show("M1").entries[0]
    assert bob.state == "deferred" and bob.next_attempt <= time.time()
    store.claim(time.time(), node="n1", lease=600.0, limit=10)
    store.record(
        "n1", "M1", [RecipientResult("bob@remote.test", "deferred", "451", time.time() + 999)]
    )
    assert run("retry", "M1").out == "M1: 1 recipient due now\n"
    assert store.show("M1").entries[0].next_attempt <= time.time()
    store.claim(time.time(), node="n1", lease=600.0, limit=10)
    store.record(
        "n1", "M1", [RecipientResult("bob@remote.test", "deferred", "451", time.time() + 999)]
    )
    assert run("flush").out == "1 recipient due now\n"
    due = store.next_due()
    assert due is not None and due <= time.time()


def test_delete(run: Runner, store: SqliteStore, queued: float, config: Path) -> None:
    assert run("delete", "M1").out == "M1: deleted\n"
    assert {e.message_id for e in store.list_queue()} == {"M2"}
    assert sorted(p.name for p in (config.parent / "data" / "queue").iterdir()) == ["M2.eml"]


@pytest.mark.parametrize("action", ["show", "retry", "hold", "release", "delete"])
def test_unknown_id_is_one_line_naming_it(run: Runner, queued: float, action: str) -> None:
    line = one_line_error(run(action, "NOSUCHID"))
    assert line.startswith("postbote: error:") and "NOSUCHID" in line
    assert len(json.loads(run("list", "--json").out)) == 4  # nothing changed


@pytest.mark.parametrize("args", [["show"], ["retry"], ["list", "extra"], ["bogus"], []])
def test_usage_errors(run: Runner, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(*args)
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_config_after_the_action(
    config: Path, capsys: pytest.CaptureFixture[str], queued: float
) -> None:
    assert main(["queue", "show", "M2", "--json", "-c", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["message_id"] == "M2"
    assert main(["queue", "list", "--config", str(config)]) == 0
    assert "M2" in capsys.readouterr().out
