"""The outbound queue of the embedded store: one SQLite row per (message, recipient), the
message itself in ``queue_dir/<id>.eml``.

Owns the life of a queue row: "queued" → "inflight" (claimed by one node under a lease)
→ "deferred" / "delivered" / "failed", or "held" by the operator; the pending DSN report
of each row; and the body files, written tmp → rename with one sync per batch before
their rows commit, and moved aside in the transaction that deletes their rows. The
schema is in sqlite.py (MIGRATIONS); ``SqliteStore`` inherits ``SqliteQueueMixin``. Every
write is one BEGIN IMMEDIATE transaction, so processes and nodes sharing the file never
claim the same row.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from postbote.envelope import Envelope
from postbote.errors import NotFound, StoreError
from postbote.fsutil import SYNCFS, fsync_path, syncfs_path
from postbote.store.interfaces import (
    REPORT_ACTIONS,
    Claim,
    QueuedMessage,
    QueueEntry,
    RecipientResult,
    ReportWork,
)

_log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Queue ids become file names in queue_dir: no separators, no leading dot.
_QUEUE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")
# Up to this many new bodies, one fsync each; more share one syncfs(2) of the filesystem.
_SYNCFS_MIN_FILES = 4
_RESULT_STATES = ("delivered", "deferred", "failed")

# A row is due when it waits and its time has come, or when the lease of the node that
# claimed it ran out (that node died or hangs: another may take the row over).
_DUE = (
    "(state IN ('queued', 'deferred') AND next_attempt <= :now"
    " OR state = 'inflight' AND lease_until < :now)"
)
_ENTRIES = (
    "SELECT r.message_id, r.recipient, m.sender, r.state, r.attempts, r.next_attempt,"
    " r.last_reply, m.size, m.created, r.last_attempt, r.remote_mta, r.report"
    " FROM queue_recipients AS r JOIN queue_messages AS m ON m.id = r.message_id"
)
_QUEUED_ID = "SELECT 1 FROM queue_messages WHERE id = ?"
_MESSAGE = "SELECT envelope_json, size, created, body_path FROM queue_messages WHERE id = ?"
# A message is done when every row is final and no report is pending.
_DONE = (
    "SELECT id, body_path FROM queue_messages AS m WHERE NOT EXISTS (SELECT 1"
    " FROM queue_recipients AS r WHERE r.message_id = m.id"
    " AND (r.state NOT IN ('delivered', 'failed') OR r.report IS NOT NULL))"
    " ORDER BY created, id"
)
_RECORD = (
    "UPDATE queue_recipients SET state = :state, last_reply = :reply, remote_mta = :mta,"
    " next_attempt = CASE WHEN :state = 'deferred' THEN :next ELSE next_attempt END,"
    # A new report replaces the pending one; a final state makes a pending delay
    # warning moot (RFC 3464 §2.3.3: "delayed" is for mail still being tried).
    " report = CASE WHEN :report IS NOT NULL THEN :report"
    " WHEN :state != 'deferred' AND report = 'delayed' THEN NULL ELSE report END,"
    " warned = CASE WHEN :report = 'delayed' THEN 1 ELSE warned END,"
    " claimed_by = NULL, lease_until = NULL"
    " WHERE message_id = :id AND recipient = :rcpt AND state = 'inflight' AND claimed_by = :node"
)


@dataclass(slots=True)
class _Item:
    """One message of an enqueue batch, validated; recipients without duplicates."""

    envelope: Envelope
    body: bytes
    recipients: dict[str, None] = field(default_factory=dict)


class SqliteQueueMixin:
    """QueueStore for SqliteStore, on its connection helpers and ``queue_dir``.

    Driven by the delivery scheduler (``claim``/``record``/``recover``/``next_due``, DSN
    ``pending_reports``/``reports_sent``, ``purge``), by local delivery (``enqueue``,
    ``enqueue_batch``) and by the operator (``postbote queue ...``), in any number of
    processes on one file. A claim holds rows under a lease: rows are handed out again
    only once it expired (``claim``) or at the start-up of the node (``recover``).
    """

    _queue_dir: Path

    if TYPE_CHECKING:

        def _query(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...
        def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    # --- enqueue -----------------------------------------------------------------------------

    def enqueue(self, envelope: Envelope, body: bytes, recipients: Sequence[str]) -> None:
        """Queue ``body`` for ``recipients``; durable on return, idempotent per (id, recipient).

        The body file is durable before its row commits, so a row always has its body; a
        known id does not get its body rewritten. Creation time and first attempt are
        ``envelope.received_at``. Empty ``recipients`` queue nothing.
        """
        self.enqueue_batch([(envelope, body, recipients)])

    def enqueue_batch(self, items: Sequence[tuple[Envelope, bytes, Sequence[str]]]) -> None:
        """``enqueue`` for many messages: the new bodies are written, made durable with one
        syncfs (or an fsync each, for a few), their directory fsynced once, then every row
        inserted in one transaction. Nothing is written if any item is invalid."""
        batch = _validated(items)
        with self._query() as conn:
            new = [item for msg_id, item in batch.items() if not _exists(conn, msg_id)]
        while batch:
            self._write_bodies(new)
            written = {item.envelope.id for item in new}
            with self._transaction() as conn:
                # Checked again under the write lock: a row may have gone meanwhile (purged
                # or deleted), and its body with it. Those get their body written again.
                gone = {i for i in batch if i not in written and not _exists(conn, i)}
                for msg_id, item in batch.items():
                    if msg_id not in gone:
                        _insert(conn, item)
            batch = {msg_id: batch[msg_id] for msg_id in gone}
            new = list(batch.values())

    def _write_bodies(self, items: Sequence[_Item]) -> None:
        """Write each body to a tmp file, make the data durable, rename each tmp file to its
        final name and fsync the directory once: every file is whole or absent."""
        per_file = len(items) <= _SYNCFS_MIN_FILES or _syncfs is None
        moves: list[tuple[Path, Path]] = []
        final = self._queue_dir
        try:
            for item in items:
                final = self._queue_dir / _body_name(item.envelope.id)
                tmp = self._queue_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
                moves.append((tmp, final))
                _write_file(tmp, item.body, fsync=per_file)
            if not per_file:
                _sync_files(self._queue_dir, [tmp for tmp, _ in moves])
            for tmp, final in moves:
                os.replace(tmp, final)
            if moves:
                fsync_path(self._queue_dir)
        except OSError as exc:
            for tmp, _ in moves:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write queue file {final}: {exc.strerror}") from exc

    # --- delivery ----------------------------------------------------------------------------

    def claim(self, now: float, *, node: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due (message, domain) groups, oldest message first, and
        mark their rows "inflight" for ``node`` until ``now + lease`` before returning.
        A row "inflight" under an expired lease is due again (its node is gone)."""
        if not node:
            raise StoreError("claim needs a node name")
        if limit <= 0:
            return []
        claims: list[Claim] = []
        with self._transaction() as conn:
            due = conn.execute(
                "SELECT id, envelope_json, created, size FROM queue_messages WHERE id IN"
                f" (SELECT message_id FROM queue_recipients WHERE {_DUE})"
                " ORDER BY created, id LIMIT :limit",
                {"now": now, "limit": limit},
            ).fetchall()
            for msg_id, raw, created, size in due:
                if len(claims) == limit:
                    break
                envelope = _envelope(msg_id, raw)
                if envelope is None:
                    _park(conn, msg_id, "held: the stored envelope is unreadable")
                    continue
                for domain, rows in _due_by_domain(conn, msg_id, now):
                    if len(claims) == limit:
                        break
                    claims.append(
                        Claim(
                            message_id=msg_id,
                            envelope=envelope,
                            domain=domain,
                            recipients=tuple(rcpt for rcpt, _, _ in rows),
                            attempts=max(attempts for _, attempts, _ in rows) + 1,
                            created=created,
                            size=size,
                            warned=frozenset(rcpt for rcpt, _, warned in rows if warned),
                        )
                    )
            conn.executemany(
                "UPDATE queue_recipients SET state = 'inflight', claimed_by = ?,"
                " lease_until = ?, attempts = attempts + 1, last_attempt = ?"
                " WHERE message_id = ? AND recipient = ?",
                [
                    (node, now + lease, now, c.message_id, rcpt)
                    for c in claims
                    for rcpt in c.recipients
                ],
            )
        return claims

    def record(self, node: str, message_id: str, results: Sequence[RecipientResult]) -> None:
        """Store the outcome of an attempt for the rows ``node`` holds inflight; others are
        ignored. A deferred row waits for ``next_attempt``; a "delayed" report also marks
        the row warned; the lease ends."""
        self.record_batch(node, [(message_id, results)])

    def record_batch(
        self, node: str, attempts: Sequence[tuple[str, Sequence[RecipientResult]]]
    ) -> None:
        """``record`` for several messages in one transaction (one sync)."""
        params: list[dict[str, object]] = []
        for message_id, results in attempts:
            params.extend(_record_params(node, message_id, results))
        with self._transaction() as conn:
            conn.executemany(_RECORD, params)

    def recover(self, node: str, now: float) -> int:
        """Rows inflight for ``node`` (it crashed mid-delivery) or under a lease that expired
        before ``now`` become "deferred", due now. Returns how many."""
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE queue_recipients SET state = 'deferred', next_attempt = :now,"
                " claimed_by = NULL, lease_until = NULL"
                " WHERE state = 'inflight' AND (claimed_by = :node OR lease_until < :now)",
                {"node": node, "now": now},
            )
            return cur.rowcount

    def next_due(self) -> float | None:
        with self._query() as conn:
            row = conn.execute(
                "SELECT min(next_attempt) FROM queue_recipients"
                " WHERE state IN ('queued', 'deferred')"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    # --- delivery status notifications -------------------------------------------------------

    def pending_reports(self, limit: int) -> list[ReportWork]:
        """Up to ``limit`` messages with rows whose report is pending, oldest first; each
        with only those rows."""
        out: list[ReportWork] = []
        with self._read_transaction() as conn:
            messages = conn.execute(
                "SELECT id, envelope_json FROM queue_messages WHERE id IN"
                " (SELECT message_id FROM queue_recipients WHERE report IS NOT NULL)"
                " ORDER BY created, id LIMIT ?",
                (max(limit, 0),),
            ).fetchall()
            for msg_id, raw in messages:
                envelope = _envelope(msg_id, raw)
                if envelope is None:
                    continue
                rows = conn.execute(
                    f"{_ENTRIES} WHERE r.message_id = ? AND r.report IS NOT NULL"
                    " ORDER BY r.recipient",
                    (msg_id,),
                ).fetchall()
                out.append(ReportWork(msg_id, envelope, tuple(QueueEntry(*r) for r in rows)))
        return out

    def reports_sent(self, message_id: str, recipients: Sequence[str]) -> None:
        rcpts = (recipients,) if isinstance(recipients, str) else tuple(recipients)
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE queue_recipients SET report = NULL WHERE message_id = ? AND recipient = ?",
                [(message_id, rcpt) for rcpt in rcpts],
            )

    def purge(self) -> list[str]:
        """Delete the messages that are done (every row final, no report pending) with their
        bodies. Returns their ids."""
        moved: list[tuple[Path, Path]] = []
        try:
            with self._transaction() as conn:
                done = conn.execute(_DONE).fetchall()
                conn.executemany("DELETE FROM queue_messages WHERE id = ?", [(i,) for i, _ in done])
                moved = self._move_aside([name for _, name in done])
        except BaseException:
            _put_back(moved)
            raise
        _remove(moved)
        return [msg_id for msg_id, _ in done]

    # --- the operator ------------------------------------------------------------------------

    def list_queue(self) -> list[QueueEntry]:
        with self._query() as conn:
            rows = conn.execute(
                f"{_ENTRIES} ORDER BY m.created, m.id, r.recipient",
            ).fetchall()
        return [QueueEntry(*row) for row in rows]

    def show(self, message_id: str) -> QueuedMessage:
        with self._read_transaction() as conn:
            row = conn.execute(_MESSAGE, (message_id,)).fetchone()
            if row is None:
                raise _not_found(message_id)
            rows = conn.execute(
                f"{_ENTRIES} WHERE r.message_id = ? ORDER BY r.recipient", (message_id,)
            ).fetchall()
        raw, size, created, _ = row
        envelope = _envelope(message_id, raw)
        if envelope is None:
            raise StoreError(f"the envelope of queued message {message_id} is unreadable")
        return QueuedMessage(
            message_id, envelope, size, created, tuple(QueueEntry(*r) for r in rows)
        )

    def queued_body(self, message_id: str) -> bytes:
        # The body's name follows from the id (_body_name), so this needs no query, and
        # no wait behind a commit: it runs once per delivery attempt.
        try:
            return (self._queue_dir / _body_name(_check_queue_id(message_id))).read_bytes()
        except StoreError:
            raise _not_found(message_id) from None
        except FileNotFoundError:
            with self._query() as conn:
                known = conn.execute(_QUEUED_ID, (message_id,)).fetchone() is not None
            if not known:
                raise _not_found(message_id) from None
            raise StoreError(f"cannot read body of queued message {message_id}: missing") from None
        except OSError as exc:
            raise StoreError(f"cannot read body of queued message {message_id}: {exc}") from exc

    def flush(self, now: float) -> int:
        """Every "deferred" row becomes due now. Returns how many."""
        with self._transaction() as conn:
            return conn.execute(
                "UPDATE queue_recipients SET next_attempt = min(next_attempt, ?)"
                " WHERE state = 'deferred'",
                (now,),
            ).rowcount

    def retry(self, message_id: str, now: float) -> int:
        """The message's "deferred" rows become due now. Returns how many."""
        return self._change(
            message_id,
            "UPDATE queue_recipients SET next_attempt = min(next_attempt, :now)"
            " WHERE message_id = :id AND state = 'deferred'",
            now,
        )

    def hold(self, message_id: str) -> int:
        """The message's "queued" and "deferred" rows become "held". Returns how many."""
        return self._change(
            message_id,
            "UPDATE queue_recipients SET state = 'held'"
            " WHERE message_id = :id AND state IN ('queued', 'deferred')",
        )

    def release(self, message_id: str, now: float) -> int:
        """The message's "held" rows become "deferred", due now. Returns how many."""
        return self._change(
            message_id,
            "UPDATE queue_recipients SET state = 'deferred', next_attempt = :now"
            " WHERE message_id = :id AND state = 'held'",
            now,
        )

    def delete(self, message_id: str) -> None:
        """Remove the message, its rows and its body; no DSN is sent. A node delivering it
        right now has its ``record`` ignored."""
        moved: list[tuple[Path, Path]] = []
        try:
            with self._transaction() as conn:
                row = conn.execute(_MESSAGE, (message_id,)).fetchone()
                if row is None:
                    raise _not_found(message_id)
                conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
                moved = self._move_aside([row[3]])
        except BaseException:
            _put_back(moved)
            raise
        _remove(moved)

    def _change(self, message_id: str, sql: str, now: float = 0.0) -> int:
        """Run an UPDATE of one message's rows; NotFound if there is no such message."""
        with self._transaction() as conn:
            if not _exists(conn, message_id):
                raise _not_found(message_id)
            return conn.execute(sql, {"id": message_id, "now": now}).rowcount

    # --- helpers on the store ----------------------------------------------------------------

    @contextlib.contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Several SELECTs that see one consistent state of the database."""
        with self._query() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # nothing was written: the same as COMMIT

    def _move_aside(self, names: Sequence[str]) -> list[tuple[Path, Path]]:
        """Rename body files out of the way, inside the transaction deleting their rows: an
        ``enqueue`` of the same id after the commit writes a new body that the deletion
        cannot take. Returns (original, aside) pairs; a missing body is skipped."""
        moved: list[tuple[Path, Path]] = []
        try:
            for name in names:
                path = self._queue_dir / name
                aside = self._queue_dir / f".{name}.{uuid.uuid4().hex}.del"
                try:
                    os.rename(path, aside)
                except FileNotFoundError:
                    continue
                moved.append((path, aside))
        except OSError as exc:
            _put_back(moved)
            raise StoreError(f"cannot remove queue file {name}: {exc.strerror}") from exc
        return moved


# --- helpers -----------------------------------------------------------------------------------


def _validated(items: Sequence[tuple[Envelope, bytes, Sequence[str]]]) -> dict[str, _Item]:
    """The batch by message id (a repeated id adds its recipients to the first); messages
    without recipients are left out. StoreError for an unsafe id or recipient."""
    batch: dict[str, _Item] = {}
    for envelope, body, recipients in items:
        msg_id = _check_queue_id(envelope.id)
        rcpts = (recipients,) if isinstance(recipients, str) else tuple(recipients)
        for rcpt in rcpts:
            if not rcpt or _CONTROL.search(rcpt):  # CR/LF would let a recipient smuggle commands
                raise StoreError(f"invalid recipient: {rcpt!r}")
        if rcpts:
            item = batch.setdefault(msg_id, _Item(envelope, body))
            item.recipients.update(dict.fromkeys(rcpts))
    return batch


def _insert(conn: sqlite3.Connection, item: _Item) -> None:
    env = item.envelope
    conn.execute(
        "INSERT OR IGNORE INTO queue_messages (id, sender, envelope_json, size, created,"
        " body_path) VALUES (?, ?, ?, ?, ?, ?)",
        (
            env.id,
            env.sender,
            env.to_json().decode(),
            len(item.body),
            env.received_at,
            _body_name(env.id),
        ),
    )
    conn.executemany(
        "INSERT OR IGNORE INTO queue_recipients (message_id, recipient, state, attempts,"
        " next_attempt, last_reply) VALUES (?, ?, 'queued', 0, ?, '')",
        [(env.id, rcpt, env.received_at) for rcpt in item.recipients],
    )


def _due_by_domain(
    conn: sqlite3.Connection, message_id: str, now: float
) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """The due rows (recipient, attempts, warned) of a message, grouped by domain, sorted."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for rcpt, attempts, warned in conn.execute(
        f"SELECT recipient, attempts, warned FROM queue_recipients"
        f" WHERE message_id = :id AND {_DUE} ORDER BY recipient",
        {"id": message_id, "now": now},
    ):
        groups.setdefault(domain_of_recipient(rcpt), []).append((rcpt, attempts, warned))
    return sorted(groups.items())


def domain_of_recipient(recipient: str) -> str:
    """The lowercase part after the last "@" ("" if there is none): where the recipient's
    mail goes (RFC 5321 §5.1: the domain part names the destination)."""
    _, at, domain = recipient.rpartition("@")
    return domain.lower() if at else ""


def _park(conn: sqlite3.Connection, message_id: str, reason: str) -> None:
    """Hold the waiting rows of a message that cannot be delivered as stored, for the
    operator to see (``queue show``) instead of blocking every claim."""
    _log.error("queued message %s: %s", message_id, reason)
    conn.execute(
        "UPDATE queue_recipients SET state = 'held', last_reply = ?, claimed_by = NULL,"
        " lease_until = NULL WHERE message_id = ? AND state IN ('queued', 'deferred', 'inflight')",
        (reason, message_id),
    )


def _envelope(message_id: str, raw: str) -> Envelope | None:
    try:
        return Envelope.from_json(raw)
    except (ValueError, KeyError, TypeError) as exc:
        _log.error("queued message %s has an unreadable envelope: %s", message_id, exc)
        return None


def _exists(conn: sqlite3.Connection, message_id: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM queue_messages WHERE id = ?", (message_id,)).fetchone()
        is not None
    )


def _not_found(message_id: str) -> NotFound:
    return NotFound(f"no queued message {message_id!r}")


def _check_queue_id(message_id: str) -> str:
    if not _QUEUE_ID.fullmatch(message_id):
        raise StoreError(f"invalid queue id: {message_id!r}")
    return message_id


def _body_name(message_id: str) -> str:
    return f"{message_id}.eml"


def _put_back(moved: Sequence[tuple[Path, Path]]) -> None:
    """Undo ``_move_aside`` after the deleting transaction failed."""
    for path, aside in moved:
        try:
            os.rename(aside, path)
        except OSError as exc:
            _log.error("cannot restore queue file %s from %s: %s", path, aside, exc)


def _remove(moved: Sequence[tuple[Path, Path]]) -> None:
    """Delete bodies moved aside, once their rows are gone for good."""
    for _, aside in moved:
        try:
            aside.unlink(missing_ok=True)
        except OSError as exc:  # only space is lost; the rows are gone
            _log.warning("cannot remove queue file %s: %s", aside, exc)


def _write_file(path: Path, data: bytes, *, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _sync_files(directory: Path, paths: Sequence[Path]) -> None:
    """Make the data of ``paths`` (all in ``directory``) durable: one syncfs of their
    filesystem, or an fsync each if syncfs fails."""
    try:
        _syncfs_path(directory)
    except OSError:
        for path in paths:
            fsync_path(path)


_syncfs = SYNCFS  # module attribute: tests replace it


def _syncfs_path(path: Path) -> None:
    syncfs_path(path, _syncfs)


def _record_params(
    node: str, message_id: str, results: Sequence[RecipientResult]
) -> list[dict[str, object]]:
    params: list[dict[str, object]] = []
    for result in results:
        if result.state not in _RESULT_STATES:
            raise StoreError(f"invalid delivery result state: {result.state!r}")
        if result.report is not None and result.report not in REPORT_ACTIONS:
            raise StoreError(f"invalid report action: {result.report!r}")
        params.append(
            {
                "state": result.state,
                "reply": result.reply,
                "mta": result.remote_mta,
                "next": result.next_attempt,
                "report": result.report,
                "id": message_id,
                "rcpt": result.recipient,
                "node": node,
            }
        )
    return params
