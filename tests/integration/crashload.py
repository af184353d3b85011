"""Load generation and mailbox auditing for the crash tests in test_reliability.py.

``Ledger`` records, per token, which mailboxes a message should reach and whether its
sender saw the "250" after DATA (RFC 5321 §4.1.1.4: only then is the server
responsible for it, §6.1). ``LoadRun`` drives several smtplib clients in threads until
told to stop or until the server dies. ``MailboxAudit`` reads the Maildirs and lists
everything that breaks "acknowledged means delivered exactly once".
"""

from __future__ import annotations

import email
import smtplib
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
TEAM = f"team@{DOMAIN}"  # an alias: alice and bob
SENDER = "load@client.example"
MAILBOXES = (ALICE, BOB)
SOCKET_TIMEOUT = 10.0

# (RCPT TO arguments, the mailboxes they expand to). The last one names alice twice,
# once through the alias: she must still get one copy.
RECIPIENT_SETS: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    ((ALICE,), frozenset({ALICE})),
    ((BOB,), frozenset({BOB})),
    ((ALICE, BOB), frozenset({ALICE, BOB})),
    ((TEAM,), frozenset({ALICE, BOB})),
    ((TEAM, ALICE), frozenset({ALICE, BOB})),
)


def body_of(token: str, lines: int | None = None) -> bytes:
    """The body of the message carrying ``token``; derived from the token alone, so an
    audit can tell a complete file from a truncated one. Lines stay below 998 octets
    (RFC 5321 §4.5.3.1.6)."""
    n = lines if lines is not None else zlib.crc32(token.encode()) % 120
    filler = [f"{token} line {i:05d} ".ljust(76, "x") for i in range(n)]
    return "\r\n".join([*filler, f"END {token}", ""]).encode()


def message_of(token: str, rcpts: Iterable[str], lines: int | None = None) -> bytes:
    head = (
        f"From: <{SENDER}>\r\n"
        f"To: {', '.join(rcpts)}\r\n"
        f"Subject: {token}\r\n"
        f"Message-ID: <{token}@client.example>\r\n"
        f"X-Token: {token}\r\n"
        "\r\n"
    )
    return head.encode() + body_of(token, lines)


class Ledger:
    """What was sent and what was acknowledged; shared by all client threads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.attempted: dict[str, frozenset[str]] = {}  # DATA sent, reply unknown
        self.acked: dict[str, frozenset[str]] = {}  # "250" seen after the final dot
        self.body_lines: dict[str, int | None] = {}

    def attempt(self, token: str, boxes: frozenset[str], lines: int | None = None) -> None:
        with self.cond:
            self.attempted[token] = boxes
            self.body_lines[token] = lines

    def ack(self, token: str) -> None:
        with self.cond:
            self.acked[token] = self.attempted[token]
            self.cond.notify_all()

    def acked_count(self, prefix: str) -> int:
        with self.cond:
            return sum(1 for t in self.acked if t.startswith(prefix))

    def expected_in(self, box: str) -> set[str]:
        with self.cond:
            return {t for t, boxes in self.acked.items() if box in boxes}


@dataclass
class LoadRun:
    """``workers`` smtplib clients sending to ``port`` until stopped, killed or done.

    Tokens are ``<prefix>-w<worker>-<n>``. Errors after ``server_gone`` is set are the
    expected consequence of a kill; any other error is a finding (``errors``).
    """

    port: int
    ledger: Ledger
    prefix: str
    workers: int = 8
    per_worker: int | None = None  # None: until stopped
    lines: int | None = None  # body lines of every message; None: 0 to 119 by token
    allow_full: bool = False  # a 452 4.3.1 (disk full) is counted in ``full``, not an error
    full: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    server_gone: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> LoadRun:
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def wait_acked(self, count: int, timeout: float) -> None:
        """Until ``count`` messages of this run were acknowledged; fails early on errors."""
        ledger = self.ledger
        with ledger.cond:
            ledger.cond.wait_for(
                lambda: self.errors or ledger.acked_count(self.prefix) >= count, timeout
            )
            acked = ledger.acked_count(self.prefix)
        assert acked >= count, f"{acked} of {count} acknowledged; errors: {self.errors[:5]}"

    def join(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = sum(t.is_alive() for t in self._threads)
        assert alive == 0, f"{alive} client threads still running"

    def _worker(self, w: int) -> None:
        client: smtplib.SMTP | None = None
        try:
            client = smtplib.SMTP(
                "127.0.0.1", self.port, local_hostname="client.example", timeout=SOCKET_TIMEOUT
            )
            client.ehlo()
            n = 0
            while not self.stop.is_set() and (self.per_worker is None or n < self.per_worker):
                self._send(client, f"{self.prefix}-w{w}-{n}", n + w)
                n += 1
            client.quit()
            client = None
        except (OSError, AssertionError) as exc:  # smtplib.SMTPException is an OSError
            if not self.server_gone.is_set():
                with self.ledger.cond:
                    self.errors.append(f"worker {w}: {exc!r}")
                    self.ledger.cond.notify_all()
        finally:
            if client is not None:
                client.close()

    def _send(self, client: smtplib.SMTP, token: str, choice: int) -> None:
        rcpts, boxes = RECIPIENT_SETS[choice % len(RECIPIENT_SETS)]
        code, reply = client.mail(SENDER)
        if code == 250:
            for rcpt in rcpts:
                code, reply = client.rcpt(rcpt)
                assert code == 250, f"RCPT {rcpt}: {code} {reply!r}"
            self.ledger.attempt(token, boxes, self.lines)
            code, reply = client.data(message_of(token, rcpts, self.lines))
            if code == 250:
                self.ledger.ack(token)
                return
        # RFC 3463 §3.4: X.3.1 "mail system full"
        if self.allow_full and code == 452 and reply.startswith(b"4.3.1"):
            self.full.append(token)
            return
        raise AssertionError(f"{token}: {code} {reply!r}")


def send_one(
    port: int,
    ledger: Ledger,
    token: str,
    rcpts: tuple[str, ...],
    boxes: frozenset[str],
    *,
    lines: int | None = None,
) -> tuple[int, bytes]:
    """One message on its own connection; returns the reply to the final dot."""
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname="client.example", timeout=SOCKET_TIMEOUT
    ) as client:
        client.ehlo()
        code, reply = client.mail(SENDER)
        if code != 250:
            return code, reply
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt)
            assert code == 250, f"RCPT {rcpt}: {code} {reply!r}"
        ledger.attempt(token, boxes, lines)
        code, reply = client.data(message_of(token, rcpts, lines))
        if code == 250:
            ledger.ack(token)
        return code, reply


class MailboxScanner:
    """Tokens in the new/ and cur/ of a mailbox; each file is parsed once (names of
    delivered files never change while only the server writes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tokens: dict[Path, str] = {}

    def tokens(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for sub in ("new", "cur"):
            d = self.root / sub
            if not d.is_dir():
                continue
            for path in d.iterdir():
                token = self._tokens.get(path)
                if token is None:
                    msg = email.message_from_bytes(path.read_bytes())
                    token = self._tokens[path] = str(msg.get("X-Token", ""))
                found[token] += 1
        return found


def all_acked_delivered(scanners: dict[str, MailboxScanner], ledger: Ledger) -> bool:
    for box, scanner in scanners.items():
        present = scanner.tokens()
        if any(present[t] == 0 for t in ledger.expected_in(box)):
            return False
    return True


@dataclass
class MailboxAudit:
    """Everything wrong with the mailboxes of ``MAILBOXES`` given what the ledger knows."""

    problems: list[str] = field(default_factory=list)
    counts: dict[str, Counter[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, data_dir: Path, ledger: Ledger) -> MailboxAudit:
        audit = cls()
        for box in MAILBOXES:
            audit.counts[box] = audit._scan(data_dir / "mail" / DOMAIN / box.split("@")[0], ledger)
        audit._check_counts(ledger)
        return audit

    def _scan(self, root: Path, ledger: Ledger) -> Counter[str]:
        counts: Counter[str] = Counter()
        tmp = root / "tmp"
        if tmp.is_dir():
            self.problems.extend(f"left in tmp/: {p}" for p in sorted(tmp.iterdir()))
        for sub in ("new", "cur"):
            d = root / sub
            for path in sorted(d.iterdir()) if d.is_dir() else []:
                data = path.read_bytes()
                token = str(email.message_from_bytes(data).get("X-Token", ""))
                counts[token] += 1
                if token not in ledger.attempted:
                    self.problems.append(f"{path}: unknown token {token!r}")
                elif not data.endswith(body_of(token, ledger.body_lines.get(token))):
                    self.problems.append(f"{path}: incomplete ({len(data)} bytes)")
        return counts

    def _check_counts(self, ledger: Ledger) -> None:
        for box, counts in self.counts.items():
            for token, n in counts.items():
                if n > 1:
                    self.problems.append(f"{box}: {token} delivered {n} times")
                boxes = ledger.attempted.get(token)
                if boxes is not None and box not in boxes:
                    self.problems.append(f"{box}: {token} was not addressed to it")
        for token, boxes in ledger.attempted.items():
            have = {b for b in boxes if self.counts[b][token]}
            if token in ledger.acked and have != boxes:
                self.problems.append(f"acknowledged {token} missing in {sorted(boxes - have)}")
            elif have and have != boxes:  # accepted but unacknowledged: all or nothing
                self.problems.append(f"unacknowledged {token} only in {sorted(have)}")

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())
