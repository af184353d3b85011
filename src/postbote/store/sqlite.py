"""The embedded store: domains, users, aliases, sender grants and the outbound queue in one
SQLite file.

Owns the schema and its migrations, the normal form of addresses and domains in the
directory, and the in-memory snapshot that answers ``is_local_domain``/``resolve`` on the
event loop. The queue rows and their body files in ``queue_dir`` are sqlite_queue.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from postbote import passwords
from postbote.errors import AlreadyExists, NotFound, StoreError
from postbote.passwords import ScramKeys
from postbote.store.addresses import (
    MAX_ALIAS_DEPTH,
    POSTMASTER,
    Expansion,
    Snapshot,
    domain_of,
    normalize_address,
    normalize_domain,
    resolve_local,
    split_address,
)
from postbote.store.interfaces import Resolution
from postbote.store.sqlite_queue import SqliteQueueMixin

_log = logging.getLogger(__name__)

# Lookups within RECHECK_AFTER seconds of the last check answer from the snapshot as it
# is; later ones look for a sign of change (file stats), and ask SQLite itself when there
# is one or REFRESH_INTERVAL has passed. refresh() always looks for that sign, and asks
# SQLite when it shows or RECHECK_AFTER has passed: the SMTP backend calls it at the start
# of every transaction, so a change is seen by the next one (at worst RECHECK_AFTER late).
RECHECK_AFTER = 0.1
REFRESH_INTERVAL = 1.0

__all__ = [
    "MAX_ALIAS_DEPTH",
    "POSTMASTER",
    "SqliteStore",
    "normalize_address",
    "normalize_domain",
    "normalize_sender_pattern",
]


# --- schema ----------------------------------------------------------------------------------


_DIRECTORY_TABLES = {
    "domains": "name",
    "users": "address, domain",
    "aliases": "alias, domain, target",
}


def _version_triggers(watched: Mapping[str, str] = _DIRECTORY_TABLES) -> tuple[str, ...]:
    """Triggers that bump directory_version on every change the snapshot depends on.

    ``PRAGMA data_version`` changes on any commit, queue writes included; this counter says
    whether the directory itself changed, so the snapshot is reloaded only then.
    ``watched`` maps each table to the columns whose update counts as a change.
    """
    return tuple(
        f"CREATE TRIGGER {table}_{event.split()[0].lower()}_bump AFTER {event} ON {table} "
        "BEGIN UPDATE directory_version SET version = version + 1; END"
        for table, columns in watched.items()
        for event in ("INSERT", "DELETE", f"UPDATE OF {columns}")
    )


# Migration n (1-based) brings PRAGMA user_version from n-1 to n. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE domains (name TEXT PRIMARY KEY, created REAL NOT NULL)",
        # Deleting a domain that still has users or aliases is refused by remove_domain;
        # RESTRICT makes the database refuse it too.
        """CREATE TABLE users (
            address TEXT PRIMARY KEY,
            domain TEXT NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            password_hash TEXT NOT NULL,
            scram_salt BLOB NOT NULL,
            scram_iterations INTEGER NOT NULL,
            scram_stored_key BLOB NOT NULL,
            scram_server_key BLOB NOT NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX users_by_domain ON users(domain)",
        """CREATE TABLE aliases (
            alias TEXT NOT NULL,
            domain TEXT NOT NULL REFERENCES domains(name) ON DELETE RESTRICT,
            target TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (alias, target))""",
        "CREATE INDEX aliases_by_domain ON aliases(domain)",
        """CREATE TABLE sender_grants (
            address TEXT NOT NULL REFERENCES users(address) ON DELETE CASCADE,
            pattern TEXT NOT NULL,
            PRIMARY KEY (address, pattern))""",
        """CREATE TABLE queue_messages (
            id TEXT PRIMARY KEY,
            sender TEXT NOT NULL,
            envelope_json TEXT NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            body_path TEXT NOT NULL)""",
        """CREATE TABLE queue_recipients (
            message_id TEXT NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
            recipient TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL,
            last_reply TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (message_id, recipient))""",
        "CREATE INDEX queue_recipients_due ON queue_recipients(state, next_attempt)",
        """CREATE TABLE directory_version (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            version INTEGER NOT NULL)""",
        "INSERT INTO directory_version (id, version) VALUES (1, 0)",
        *_version_triggers(),
    ),
    # 2: sender grants are answered from memory too (sender_grants), so changing them
    # bumps directory_version like any other directory change.
    _version_triggers({"sender_grants": "address, pattern"}),
    # 3: the outbound queue of issue 4 (sqlite_queue.py): claims under a lease, the last
    # attempt and the host that answered, the pending DSN report (RFC 3464) and whether a
    # delay warning went out; states and reports checked on every write.
    (
        "ALTER TABLE queue_recipients ADD COLUMN claimed_by TEXT",
        "ALTER TABLE queue_recipients ADD COLUMN lease_until REAL",
        "ALTER TABLE queue_recipients ADD COLUMN last_attempt REAL",
        "ALTER TABLE queue_recipients ADD COLUMN remote_mta TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE queue_recipients ADD COLUMN report TEXT",
        "ALTER TABLE queue_recipients ADD COLUMN warned INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX queue_recipients_reports ON queue_recipients(message_id)"
        " WHERE report IS NOT NULL",
        "CREATE INDEX queue_messages_by_age ON queue_messages(created, id)",
        *(
            f"CREATE TRIGGER queue_recipients_check_{event.split()[0].lower()} BEFORE {event}"
            " ON queue_recipients WHEN NEW.state NOT IN"
            " ('queued', 'inflight', 'deferred', 'delivered', 'failed', 'held')"
            " OR NEW.report NOT IN ('failed', 'delayed', 'delivered', 'relayed', 'expanded')"
            " BEGIN SELECT RAISE(ABORT, 'invalid queue state or report'); END"
            for event in ("INSERT", "UPDATE OF state, report")
        ),
    ),
)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("s") else f"{n} {word}s"


# --- the snapshot used by lookups ---------------------------------------------------------


def _load_snapshot(conn: sqlite3.Connection, old: Snapshot | None) -> Snapshot:
    conn.execute("BEGIN")  # one read transaction: a consistent picture
    try:
        (version,) = conn.execute("SELECT version FROM directory_version").fetchone()
        if old is not None and old.version == version:
            return old
        aliases: dict[str, list[str]] = {}
        for alias, target in conn.execute("SELECT alias, target FROM aliases ORDER BY 1, 2"):
            aliases.setdefault(alias, []).append(target)
        return Snapshot(
            version=version,
            domains=frozenset(r[0] for r in conn.execute("SELECT name FROM domains")),
            users=frozenset(r[0] for r in conn.execute("SELECT address FROM users")),
            aliases={alias: tuple(targets) for alias, targets in aliases.items()},
        )
    finally:
        conn.execute("COMMIT")


# --- the store -------------------------------------------------------------------------------


class SqliteStore(SqliteQueueMixin):
    """Directory and QueueStore on one SQLite file (WAL mode) plus body files in ``queue_dir``.

    Driven by: lookups on the event loop (``is_local_domain``, ``resolve``), answered from an
    in-memory snapshot; mutations, password checks and queue calls from executor threads and
    the CLI; and commits by other processes on the same file, noticed through
    ``PRAGMA data_version`` on the next lookup. It holds two connections, each behind its own
    lock: one for everything but the snapshot, one only to refresh the snapshot, so a slow
    commit never holds up a lookup. Slow password hashing runs outside both locks.
    """

    def __init__(self, db_path: Path, queue_dir: Path) -> None:
        self._db_path = Path(db_path)
        self._db_str = str(self._db_path)
        self._wal_path = self._db_str + "-wal"
        self._queue_dir = Path(queue_dir)
        self._lock = threading.Lock()  # guards self._conn
        self._snap_lock = threading.Lock()  # guards self._snap_conn, self._snap, _data_version
        # Sender grants by user, loaded (under _snap_lock) for the snapshot version they
        # were read at; see sender_grants.
        self._grants: dict[str, tuple[str, ...]] = {}
        self._grants_version = -1
        try:
            _make_private_dir(self._db_path.parent)
            _make_private_dir(self._queue_dir)
            # The file holds password hashes: create it 0600 before SQLite opens it; SQLite
            # gives the -wal and -shm files the same mode.
            os.close(os.open(self._db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            with contextlib.ExitStack() as undo:
                self._conn = self._connect()
                undo.callback(self._conn.close)
                self._migrate()
                self._snap_conn = self._connect()
                undo.callback(self._snap_conn.close)
                self._snap_conn.execute("PRAGMA query_only = ON")
                row = self._snap_conn.execute("PRAGMA data_version").fetchone()
                self._data_version: int = row[0]
                self._snap = _load_snapshot(self._snap_conn, None)
                self._hint = self._change_hint()
                self._checked = self._verified = time.monotonic()
                undo.pop_all()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {self._db_path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._db_path, timeout=5.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _migrate(self) -> None:
        with self._transaction() as conn:
            (current,) = conn.execute("PRAGMA user_version").fetchone()
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"database schema version {current} is newer than this postbote "
                    f"({len(MIGRATIONS)})"
                )
            for number, statements in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        with self._lock, self._snap_lock:
            self._conn.close()
            self._snap_conn.close()
        self._checked = self._verified = float("-inf")  # lookups now fail: closed

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _query(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; BEGIN IMMEDIATE takes the write lock up front (no upgrade
        deadlock between processes; busy_timeout waits for the other writer)."""
        with self._query() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
                self._checked = self._verified = float("-inf")  # our own change: look again
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    # --- lookups (hot path) ------------------------------------------------------------------

    def _change_hint(self) -> tuple[tuple[int, int, int] | None, ...]:
        """A cheap sign that another connection may have committed: the WAL and database
        files' identity, size and mtime (a commit appends to the WAL; a checkpoint writes
        the database). Two stat() calls instead of a locked query on every lookup."""
        out: list[tuple[int, int, int] | None] = []
        for path in (self._wal_path, self._db_str):
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def refresh(self) -> None:
        """Make changes committed by other connections and processes visible now."""
        self._snapshot(force=True)

    def _snapshot(self, force: bool = False) -> Snapshot:
        with self._snap_lock:
            now = time.monotonic()
            if not force and now - self._checked < RECHECK_AFTER:
                return self._snap  # checked a moment ago (a burst of lookups)
            hint = self._change_hint()
            # PRAGMA data_version is authoritative; ask it when the files changed, and at
            # least every REFRESH_INTERVAL seconds (RECHECK_AFTER when forced): a commit
            # in the same timestamp tick that leaves the WAL's size unchanged (only after
            # a checkpoint) shows in no stat, so the interval bounds how stale it can be.
            interval = RECHECK_AFTER if force else REFRESH_INTERVAL
            if hint == self._hint and now - self._verified < interval:
                self._checked = now
                return self._snap
            try:
                (version,) = self._snap_conn.execute("PRAGMA data_version").fetchone()
                if version != self._data_version:
                    self._snap = _load_snapshot(self._snap_conn, self._snap)
                    self._data_version = version
                self._hint, self._checked, self._verified = hint, now, now
            except sqlite3.ProgrammingError as exc:
                raise StoreError(f"store is closed: {exc}") from exc
            except sqlite3.Error as exc:
                # Keep answering from the last snapshot; the next call tries again.
                _log.warning("directory refresh failed, using the previous snapshot: %s", exc)
            return self._snap

    def is_local_domain(self, domain: str) -> bool:
        try:
            name = normalize_domain(domain)
        except StoreError:
            return False
        return name in self._snapshot().domains

    def resolve(self, address: str) -> Resolution | None:
        """Where mail for ``address`` goes: user, alias expansion, +tag, postmaster."""
        try:
            addr = normalize_address(address)
        except StoreError:
            return None
        snap = self._snapshot()
        if domain_of(addr) not in snap.domains:
            return None
        out = Expansion()
        if not resolve_local(snap, addr, 0, set(), out):
            return None
        return Resolution(mailboxes=tuple(out.mailboxes), remote=tuple(out.remote))

    # --- domains -----------------------------------------------------------------------------

    def add_domain(self, domain: str) -> None:
        name = normalize_domain(domain)
        with self._transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO domains (name, created) VALUES (?, ?)", (name, time.time())
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"domain {name} exists already") from None

    def remove_domain(self, domain: str) -> None:
        name = normalize_domain(domain)
        with self._transaction() as conn:
            if _first(conn, _DOMAIN, name) is None:
                raise NotFound(f"no such domain: {name}")
            users = _first(conn, "SELECT count(*) FROM users WHERE domain = ?", name)
            aliases = _first(conn, "SELECT count(DISTINCT alias) FROM aliases WHERE domain=?", name)
            if users or aliases:
                raise StoreError(
                    f"domain {name} still has {_plural(users, 'user')} and "
                    f"{_plural(aliases, 'alias')}; remove them first"
                )
            conn.execute("DELETE FROM domains WHERE name = ?", (name,))

    def list_domains(self) -> list[str]:
        with self._query() as conn:
            return sorted(r[0] for r in conn.execute("SELECT name FROM domains"))

    # --- users -------------------------------------------------------------------------------

    def _check_new_user(self, conn: sqlite3.Connection, addr: str) -> None:
        domain = domain_of(addr)
        if _first(conn, _DOMAIN, domain) is None:
            raise StoreError(f"{domain} is not a local domain")
        if _first(conn, _USER, addr):
            raise AlreadyExists(f"user {addr} exists already")
        if _first(conn, _ALIAS, addr):
            raise StoreError(f"{addr} is an alias; remove the alias first")

    def add_user(self, address: str, password: str) -> None:
        addr = normalize_address(address)
        with self._query() as conn:  # fail fast, before the slow hashing
            self._check_new_user(conn, addr)
        pw_hash, keys = _credentials(password)
        with self._transaction() as conn:
            self._check_new_user(conn, addr)
            conn.execute(
                "INSERT INTO users (address, domain, password_hash, scram_salt, scram_iterations,"
                " scram_stored_key, scram_server_key, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    addr,
                    domain_of(addr),
                    pw_hash,
                    keys.salt,
                    keys.iterations,
                    keys.stored_key,
                    keys.server_key,
                    time.time(),
                ),
            )

    def remove_user(self, address: str) -> None:
        addr = normalize_address(address)
        with self._transaction() as conn:
            if conn.execute("DELETE FROM users WHERE address = ?", (addr,)).rowcount == 0:
                raise NotFound(f"no such user: {addr}")

    def set_password(self, address: str, password: str) -> None:
        addr = normalize_address(address)
        with self._query() as conn:
            if _first(conn, _USER, addr) is None:
                raise NotFound(f"no such user: {addr}")
        pw_hash, keys = _credentials(password)
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE users SET password_hash = ?, scram_salt = ?, scram_iterations = ?,"
                " scram_stored_key = ?, scram_server_key = ? WHERE address = ?",
                (pw_hash, keys.salt, keys.iterations, keys.stored_key, keys.server_key, addr),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no such user: {addr}")

    def list_users(self, domain: str | None = None) -> list[str]:
        name = None if domain is None else normalize_domain(domain)
        with self._query() as conn:
            if name is None:
                rows = conn.execute("SELECT address FROM users").fetchall()
            else:
                if _first(conn, _DOMAIN, name) is None:
                    raise NotFound(f"no such domain: {name}")
                rows = conn.execute(
                    "SELECT address FROM users WHERE domain = ?", (name,)
                ).fetchall()
        return sorted(r[0] for r in rows)

    def _password_hash(self, address: str) -> tuple[str, str] | None:
        try:
            addr = normalize_address(address)
        except StoreError:
            return None
        with self._query() as conn:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE address = ?", (addr,)
            ).fetchone()
        return None if row is None else (addr, row[0])

    def verify_password(self, address: str, password: str) -> bool:
        """Check a login. An unknown user costs one Argon2 verification too (DUMMY_HASH), so
        the time taken does not reveal whether the account exists."""
        found = self._password_hash(address)
        if found is None:
            passwords.verify_password(passwords.DUMMY_HASH, password)
            return False
        addr, stored = found
        if not passwords.verify_password(stored, password):
            return False
        if passwords.needs_rehash(stored):
            self._rehash(addr, stored, password)
        return True

    def _rehash(self, addr: str, old_hash: str, password: str) -> None:
        """Upgrade a hash made with older parameters, unless the password changed meanwhile."""
        new_hash = passwords.hash_password(password)
        try:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE users SET password_hash = ? WHERE address = ? AND password_hash = ?",
                    (new_hash, addr, old_hash),
                )
        except StoreError as exc:
            _log.warning("could not upgrade the password hash of %s: %s", addr, exc)

    def scram_credentials(self, address: str) -> ScramKeys | None:
        """The stored SCRAM-SHA-256 keys of a user (RFC 5802 §3), or None if no such user."""
        try:
            addr = normalize_address(address)
        except StoreError:
            return None
        with self._query() as conn:
            row = conn.execute(
                "SELECT scram_salt, scram_iterations, scram_stored_key, scram_server_key"
                " FROM users WHERE address = ?",
                (addr,),
            ).fetchone()
        return None if row is None else ScramKeys(*row)

    # --- aliases -----------------------------------------------------------------------------

    def _target_form(self, conn: sqlite3.Connection, target: str) -> str:
        """Targets keep their local part's case unless their domain is ours (RFC 5321 §2.4:
        only the destination host may treat a local part as case-insensitive)."""
        local, domain = split_address(target)
        if _first(conn, _DOMAIN, domain):
            local = local.lower()
        return f"{local}@{domain}"

    def add_alias(self, alias: str, targets: Sequence[str]) -> None:
        name = normalize_address(alias)
        domain = domain_of(name)
        targets = _as_tuple(targets)
        if not targets:
            raise StoreError(f"alias {name} needs at least one target")
        with self._transaction() as conn:
            if _first(conn, _DOMAIN, domain) is None:
                raise StoreError(f"{domain} is not a local domain")
            if _first(conn, _USER, name):
                raise StoreError(f"{name} is a user; an alias cannot have the same address")
            forms = [self._target_form(conn, t) for t in targets]
            if name in forms:
                raise StoreError(f"alias {name} cannot point to itself")
            now = time.time()
            conn.executemany(
                "INSERT OR IGNORE INTO aliases (alias, domain, target, created) VALUES (?,?,?,?)",
                [(name, domain, form, now) for form in forms],
            )

    def remove_alias(self, alias: str, targets: Sequence[str] = ()) -> None:
        name = normalize_address(alias)
        targets = _as_tuple(targets)
        with self._transaction() as conn:
            if not targets:
                cur = conn.execute("DELETE FROM aliases WHERE alias = ?", (name,))
            else:
                forms = [(name, self._target_form(conn, t)) for t in targets]
                cur = conn.executemany("DELETE FROM aliases WHERE alias = ? AND target = ?", forms)
            if cur.rowcount <= 0:
                what = "alias" if not targets else "target of alias"
                raise NotFound(f"no such {what}: {name}")

    def list_aliases(self) -> list[tuple[str, list[str]]]:
        with self._query() as conn:
            rows = conn.execute("SELECT alias, target FROM aliases").fetchall()
        grouped: dict[str, list[str]] = {}
        for alias, target in rows:
            grouped.setdefault(alias, []).append(target)
        return [(alias, sorted(grouped[alias])) for alias in sorted(grouped)]

    # --- sender grants -----------------------------------------------------------------------

    def allow_sender(self, address: str, pattern: str) -> None:
        """Let the user ``address`` also send as ``pattern`` (RFC 6409 §6.1): an address
        (any domain) or a whole domain written ``@domain`` (``*@domain`` is the same)."""
        addr = normalize_address(address)
        form = normalize_sender_pattern(pattern)
        with self._transaction() as conn:
            if _first(conn, _USER, addr) is None:
                raise NotFound(f"no such user: {addr}")
            try:
                conn.execute(
                    "INSERT INTO sender_grants (address, pattern) VALUES (?, ?)", (addr, form)
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"{addr} may send as {form} already") from None

    def disallow_sender(self, address: str, pattern: str) -> None:
        addr = normalize_address(address)
        form = normalize_sender_pattern(pattern)
        with self._transaction() as conn:
            cur = conn.execute(
                "DELETE FROM sender_grants WHERE address = ? AND pattern = ?", (addr, form)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no grant for {addr} to send as {form}")

    def sender_grants(self, address: str) -> list[str]:
        """The patterns ``address`` may send as besides its own addresses, sorted; [] for an
        unknown user or a malformed address. Answered from memory like ``resolve``: grants
        are reloaded only when the directory changed (migration 2 makes them count)."""
        try:
            addr = normalize_address(address)
        except StoreError:
            return []
        version = self._snapshot().version
        with self._snap_lock:
            if self._grants_version != version:
                self._load_grants(version)
            return list(self._grants.get(addr, ()))

    def _load_grants(self, version: int) -> None:
        """Read all grants on the snapshot connection (a reader: it never waits for a
        writer). Rows read after the snapshot are at least as new as ``version``; a newer
        directory version loads them again."""
        try:
            rows = self._snap_conn.execute(
                "SELECT address, pattern FROM sender_grants ORDER BY address, pattern"
            ).fetchall()
        except sqlite3.ProgrammingError as exc:
            raise StoreError(f"store is closed: {exc}") from exc
        except sqlite3.Error as exc:
            _log.warning("loading sender grants failed, using the previous ones: %s", exc)
            return
        grants: dict[str, list[str]] = {}
        for addr, pattern in rows:
            grants.setdefault(addr, []).append(pattern)
        self._grants = {addr: tuple(patterns) for addr, patterns in grants.items()}
        self._grants_version = version


# --- helpers ---------------------------------------------------------------------------------


_DOMAIN = "SELECT 1 FROM domains WHERE name = ?"
_USER = "SELECT 1 FROM users WHERE address = ?"
_ALIAS = "SELECT 1 FROM aliases WHERE alias = ?"


def _first(conn: sqlite3.Connection, sql: str, *args: object) -> Any:
    """The first column of the first row, or None if there is no row."""
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _credentials(password: str) -> tuple[str, ScramKeys]:
    """Argon2id hash and SCRAM keys of a new password (slow: call outside the locks)."""
    if not password:
        raise StoreError("empty password")
    try:
        return passwords.hash_password(password), passwords.scram_keys(password)
    except UnicodeError:
        raise StoreError("password is not valid Unicode text") from None


def normalize_sender_pattern(pattern: str) -> str:
    """The stored form of a sender grant: a normalised address, or ``@domain`` for every
    address in a domain (``*@domain`` is accepted for it); StoreError if invalid."""
    try:
        if pattern.startswith(("@", "*@")):
            return "@" + normalize_domain(pattern.partition("@")[2])
        return normalize_address(pattern)
    except StoreError:
        raise StoreError(
            f"invalid sender pattern: {pattern!r} (an address, or @domain for a whole domain)"
        ) from None


def _as_tuple(addresses: Sequence[str]) -> tuple[str, ...]:
    """A bare str is one address, not a sequence of one-character addresses."""
    return (addresses,) if isinstance(addresses, str) else tuple(addresses)


def _make_private_dir(path: Path) -> None:
    """Create ``path`` (0700) if it is missing; an existing directory is left as it is."""
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
