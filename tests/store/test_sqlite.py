"""SqliteStore: schema, files, directory (domains, users, aliases, resolve), sender grants.

The queue part is tested in test_sqlite_queue.py.
"""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from postbote import passwords
from postbote.envelope import Envelope, Recipient
from postbote.errors import AlreadyExists, NotFound, StoreError
from postbote.store.interfaces import Directory, QueueStore, Resolution
from postbote.store.sqlite import (
    MAX_ALIAS_DEPTH,
    MIGRATIONS,
    SqliteStore,
    normalize_address,
    normalize_domain,
)

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2 at test strength: the real parameters cost ~0.1 s per hash."""
    monkeypatch.setattr(passwords, "_HASHER", CHEAP)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "postbote.db", tmp_path / "queue"


@pytest.fixture
def store(paths: tuple[Path, Path]) -> Iterator[SqliteStore]:
    s = SqliteStore(*paths)
    yield s
    s.close()


@pytest.fixture
def example(store: SqliteStore) -> SqliteStore:
    """A store with example.org, users alice and bob, and the remote domain untouched."""
    store.add_domain("example.org")
    store.add_user("alice@example.org", "alice-pw")
    store.add_user("bob@example.org", "bob-pw")
    return store


def mailboxes(*addrs: str) -> Resolution:
    return Resolution(mailboxes=addrs, remote=())


def test_implements_the_protocols(store: SqliteStore) -> None:
    directory: Directory = store
    queue: QueueStore = store
    assert directory.list_domains() == []
    assert queue.list_queue() == []


# --- opening, schema, files ----------------------------------------------------------------


def test_schema_created_once_and_kept(paths: tuple[Path, Path]) -> None:
    with SqliteStore(*paths) as s:
        s.add_domain("example.org")
    with SqliteStore(*paths) as s:  # reopening migrates nothing and keeps the data
        assert s.list_domains() == ["example.org"]
    conn = sqlite3.connect(paths[0])
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {
        "domains",
        "users",
        "aliases",
        "sender_grants",
        "queue_messages",
        "queue_recipients",
    } <= tables


def test_newer_schema_is_refused(paths: tuple[Path, Path]) -> None:
    SqliteStore(*paths).close()
    conn = sqlite3.connect(paths[0])
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(*paths)


def test_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    db.write_bytes(b"this is not a database file at all" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(db, tmp_path / "q")


def test_file_modes(paths: tuple[Path, Path], store: SqliteStore) -> None:
    db, queue_dir = paths
    store.add_domain("example.org")  # something in the WAL
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    wal = db.with_name(db.name + "-wal")
    assert wal.exists()
    assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(queue_dir.stat().st_mode) == 0o700
    store.enqueue(envelope("m1"), b"body", ["x@remote.test"])
    assert stat.S_IMODE((queue_dir / "m1.eml").stat().st_mode) == 0o600


def test_closed_store_raises(store: SqliteStore) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.list_domains()
    with pytest.raises(StoreError):
        store.resolve("a@example.org")


# --- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("bücher.example.", "xn--bcher-kva.example"),
    ],
)
def test_normalize_domain(given: str, expected: str) -> None:
    assert normalize_domain(given) == expected


@pytest.mark.parametrize(
    "bad",
    ["", ".", "a..b", ".a", "a b", "a\tb", "<a>", "a@b", "a/b", "a\\b", "a\x00", "a\udcff", "a／b"],
)
def test_invalid_domain(bad: str) -> None:
    with pytest.raises(StoreError, match="invalid domain"):
        normalize_domain(bad)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Alice@Example.ORG.", "alice@example.org"),
        ("ÜSER@bücher.example", "üser@xn--bcher-kva.example"),
        ("a+b.c/d=e@x.test", "a+b.c/d=e@x.test"),
    ],
)
def test_normalize_address(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "alice",
        "alice@",
        "@example.org",
        "a@b@example.org",
        "a b@example.org",
        "<alice@example.org>",
        "alice@example.org\r\nRCPT TO:<x@y>",
        "al\x00ice@example.org",
        "alice@exa mple.org",
        "alice@a..b",
        "x" * 65 + "@example.org",
    ],
)
def test_invalid_address(bad: str) -> None:
    with pytest.raises(StoreError, match="invalid address"):
        normalize_address(bad)


@given(st.text(max_size=40))
def test_normalize_address_is_idempotent(text: str) -> None:
    try:
        once = normalize_address(text)
    except StoreError:
        return
    assert normalize_address(once) == once


# --- domains -------------------------------------------------------------------------------


def test_domains(store: SqliteStore) -> None:
    store.add_domain("Example.ORG.")
    store.add_domain("b.example")
    store.add_domain("Bücher.example")
    assert store.list_domains() == ["b.example", "example.org", "xn--bcher-kva.example"]
    assert store.is_local_domain("EXAMPLE.org.")
    assert store.is_local_domain("bücher.EXAMPLE")
    assert store.is_local_domain("xn--bcher-kva.example")
    assert not store.is_local_domain("other.example")
    assert not store.is_local_domain("not a domain")
    with pytest.raises(AlreadyExists):
        store.add_domain("example.org.")
    store.remove_domain("EXAMPLE.ORG")
    assert store.list_domains() == ["b.example", "xn--bcher-kva.example"]
    assert not store.is_local_domain("example.org")
    with pytest.raises(NotFound):
        store.remove_domain("example.org")
    with pytest.raises(StoreError, match="invalid domain"):
        store.add_domain("bad domain")


def test_remove_domain_refuses_while_in_use(example: SqliteStore) -> None:
    example.add_alias("info@example.org", ["alice@example.org"])
    with pytest.raises(StoreError, match=r"2 users and 1 alias\b"):
        example.remove_domain("example.org")
    example.remove_user("alice@example.org")
    example.remove_user("bob@example.org")
    with pytest.raises(StoreError, match="0 users and 1 alias"):
        example.remove_domain("example.org")
    example.remove_alias("info@example.org")
    example.remove_domain("example.org")
    assert example.list_domains() == []


def test_remove_domain_counts_singular_and_plural(example: SqliteStore) -> None:
    example.remove_user("bob@example.org")
    example.add_alias("a@example.org", ["x@remote.test"])
    example.add_alias("b@example.org", ["x@remote.test"])
    with pytest.raises(StoreError, match="1 user and 2 aliases"):
        example.remove_domain("example.org")


# --- users ---------------------------------------------------------------------------------


def test_users(example: SqliteStore) -> None:
    example.add_domain("other.example")
    example.add_user("Carol@Other.Example", "pw")
    assert example.list_users() == [
        "alice@example.org",
        "bob@example.org",
        "carol@other.example",
    ]
    assert example.list_users("EXAMPLE.org.") == ["alice@example.org", "bob@example.org"]
    assert example.list_users("other.example") == ["carol@other.example"]
    with pytest.raises(NotFound):
        example.list_users("unknown.example")
    with pytest.raises(AlreadyExists):
        example.add_user("ALICE@example.org.", "x")
    with pytest.raises(StoreError, match="not a local domain"):
        example.add_user("dave@remote.test", "x")
    with pytest.raises(StoreError, match="empty password"):
        example.add_user("dave@example.org", "")
    with pytest.raises(StoreError, match="invalid address"):
        example.add_user("dave example.org", "x")
    example.remove_user("Bob@Example.org")
    assert example.list_users("example.org") == ["alice@example.org"]
    with pytest.raises(NotFound):
        example.remove_user("bob@example.org")


def test_user_cannot_shadow_alias(example: SqliteStore) -> None:
    example.add_alias("info@example.org", ["alice@example.org"])
    with pytest.raises(StoreError, match="is an alias"):
        example.add_user("info@example.org", "pw")


def test_verify_password(example: SqliteStore) -> None:
    assert example.verify_password("alice@example.org", "alice-pw")
    assert example.verify_password("ALICE@Example.ORG.", "alice-pw")
    assert not example.verify_password("alice@example.org", "bob-pw")
    assert not example.verify_password("alice@example.org", "")
    assert not example.verify_password("nobody@example.org", "alice-pw")
    assert not example.verify_password("not an address", "alice-pw")


def test_set_password(example: SqliteStore) -> None:
    before = example.scram_credentials("alice@example.org")
    example.set_password("Alice@example.org", "new-pw")
    assert example.verify_password("alice@example.org", "new-pw")
    assert not example.verify_password("alice@example.org", "alice-pw")
    after = example.scram_credentials("alice@example.org")
    assert after is not None and after != before
    assert after == passwords.scram_keys("new-pw", salt=after.salt, iterations=after.iterations)
    with pytest.raises(NotFound):
        example.set_password("nobody@example.org", "x")
    with pytest.raises(StoreError, match="empty password"):
        example.set_password("alice@example.org", "")


def test_scram_credentials(example: SqliteStore) -> None:
    keys = example.scram_credentials("ALICE@example.org")
    assert keys is not None
    assert keys.iterations == 4096
    assert keys == passwords.scram_keys("alice-pw", salt=keys.salt, iterations=4096)
    assert example.scram_credentials("nobody@example.org") is None
    assert example.scram_credentials("garbage") is None


def test_no_cleartext_password_in_files(paths: tuple[Path, Path], example: SqliteStore) -> None:
    example.add_user("carol@example.org", "Sekr3t-Cleartext-1")
    example.set_password("bob@example.org", "Sekr3t-Cleartext-2")
    db = paths[0]

    def check_files() -> None:
        # the database, its WAL and shared memory files, while open and after close
        data = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())
        assert b"carol@example.org" in data  # the files do hold the accounts ...
        for secret in ("Sekr3t-Cleartext-1", "Sekr3t-Cleartext-2", "alice-pw"):
            for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                assert secret.encode(encoding) not in data  # ... but no password

    check_files()
    example.close()
    check_files()


def test_unknown_user_is_checked_against_dummy_hash(
    example: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str]] = []
    real_verify = passwords.verify_password

    def recording_verify(hash: str, pw: str) -> bool:
        calls.append((hash, pw))
        return real_verify(hash, pw)

    monkeypatch.setattr(passwords, "verify_password", recording_verify)
    assert not example.verify_password("nobody@example.org", "guess")
    assert not example.verify_password("not-an-address", "guess2")
    assert calls == [(passwords.DUMMY_HASH, "guess"), (passwords.DUMMY_HASH, "guess2")]
    calls.clear()
    assert example.verify_password("alice@example.org", "alice-pw")
    assert len(calls) == 1 and calls[0][0] != passwords.DUMMY_HASH


def test_dummy_match_never_logs_in(example: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "verify_password", lambda hash, pw: True)
    assert not example.verify_password("nobody@example.org", "anything")


def test_old_hash_is_upgraded_on_login(
    example: SqliteStore, monkeypatch: pytest.MonkeyPatch, paths: tuple[Path, Path]
) -> None:
    def stored_hash() -> str:
        conn = sqlite3.connect(paths[0])
        try:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE address = 'alice@example.org'"
            ).fetchone()
        finally:
            conn.close()
        return str(row[0])

    old = stored_hash()
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", stronger)
    assert passwords.needs_rehash(old)
    assert not example.verify_password("alice@example.org", "wrong")
    assert stored_hash() == old  # a failed login changes nothing
    assert example.verify_password("alice@example.org", "alice-pw")
    new = stored_hash()
    assert new != old and not passwords.needs_rehash(new)
    assert example.verify_password("alice@example.org", "alice-pw")


# --- aliases -------------------------------------------------------------------------------


def test_aliases(example: SqliteStore) -> None:
    example.add_alias("Info@Example.org", ["bob@example.org", "Alice@EXAMPLE.org"])
    example.add_alias("info@example.org", ["Carol@Remote.TEST", "bob@example.org"])
    example.add_alias("abuse@example.org", "alice@example.org")  # a bare str is one target
    assert example.list_aliases() == [
        ("abuse@example.org", ["alice@example.org"]),
        # local targets lower-cased; remote local parts keep their case (RFC 5321 §2.4)
        ("info@example.org", ["Carol@remote.test", "alice@example.org", "bob@example.org"]),
    ]
    example.remove_alias("info@example.org", ["BOB@example.org"])
    assert example.list_aliases()[1] == (
        "info@example.org",
        ["Carol@remote.test", "alice@example.org"],
    )
    with pytest.raises(NotFound):
        example.remove_alias("info@example.org", ["bob@example.org"])
    example.remove_alias("INFO@example.org")
    assert example.list_aliases() == [("abuse@example.org", ["alice@example.org"])]
    with pytest.raises(NotFound):
        example.remove_alias("info@example.org")


@pytest.mark.parametrize(
    ("alias", "targets", "message"),
    [
        ("info@remote.test", ["alice@example.org"], "not a local domain"),
        ("alice@example.org", ["bob@example.org"], "is a user"),
        ("info@example.org", [], "at least one target"),
        ("info@example.org", ["Info@example.org"], "itself"),
        ("info@example.org", ["not an address"], "invalid address"),
        ("info example.org", ["alice@example.org"], "invalid address"),
    ],
)
def test_alias_errors(example: SqliteStore, alias: str, targets: list[str], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        example.add_alias(alias, targets)
    assert example.list_aliases() == []


# --- resolve -------------------------------------------------------------------------------


def test_resolve_user(example: SqliteStore) -> None:
    assert example.resolve("alice@example.org") == mailboxes("alice@example.org")
    assert example.resolve("ALICE@Example.Org.") == mailboxes("alice@example.org")
    assert example.resolve("carol@example.org") is None
    assert example.resolve("alice@remote.test") is None
    assert example.resolve("garbage") is None
    assert example.resolve("alice@example.org\r\n") is None


def test_resolve_idn(store: SqliteStore) -> None:
    store.add_domain("bücher.example")
    store.add_user("Jörg@BÜCHER.example", "pw")
    assert store.list_users() == ["jörg@xn--bcher-kva.example"]
    expected = mailboxes("jörg@xn--bcher-kva.example")
    assert store.resolve("JÖRG@bücher.example") == expected
    assert store.resolve("jörg@xn--bcher-kva.example.") == expected


def test_resolve_plus_addressing(example: SqliteStore) -> None:
    example.add_alias("team@example.org", ["alice@example.org", "bob@example.org"])
    example.add_user("bob+lists@example.org", "pw")
    assert example.resolve("alice+tag@example.org") == mailboxes("alice@example.org")
    assert example.resolve("Alice+Tag+More@example.org") == mailboxes("alice@example.org")
    assert example.resolve("team+x@example.org") == mailboxes(
        "alice@example.org", "bob@example.org"
    )
    # an exact user wins over the +detail rule
    assert example.resolve("bob+lists@example.org") == mailboxes("bob+lists@example.org")
    assert example.resolve("bob+other@example.org") == mailboxes("bob@example.org")
    assert example.resolve("+tag@example.org") is None
    assert example.resolve("carol+tag@example.org") is None


def test_resolve_alias_chain_and_remote(example: SqliteStore) -> None:
    example.add_alias("all@example.org", ["staff@example.org", "Ext@Partner.test"])
    example.add_alias("staff@example.org", ["bob@example.org", "alice+work@example.org"])
    # targets expand in sorted order: "Ext@..." < "staff@...", "alice+work@..." < "bob@..."
    assert example.resolve("all@example.org") == Resolution(
        mailboxes=("alice@example.org", "bob@example.org"), remote=("Ext@partner.test",)
    )


def test_resolve_alias_dedupes_preserving_order(example: SqliteStore) -> None:
    example.add_alias("a@example.org", ["b@example.org", "c@example.org", "x@remote.test"])
    example.add_alias("b@example.org", ["bob@example.org", "x@remote.test"])
    example.add_alias("c@example.org", ["bob@example.org", "alice@example.org"])
    assert example.resolve("a@example.org") == Resolution(
        mailboxes=("bob@example.org", "alice@example.org"), remote=("x@remote.test",)
    )


def test_resolve_alias_skips_unresolvable_targets(example: SqliteStore) -> None:
    example.add_alias("a@example.org", ["ghost@example.org", "bob@example.org"])
    example.add_alias("b@example.org", ["ghost@example.org", "ghost2@example.org"])
    assert example.resolve("a@example.org") == mailboxes("bob@example.org")
    assert example.resolve("b@example.org") is None


def test_resolve_alias_loops(example: SqliteStore) -> None:
    example.add_alias("a@example.org", ["b@example.org"])
    example.add_alias("b@example.org", ["a@example.org"])
    assert example.resolve("a@example.org") is None
    example.add_alias("b@example.org", ["alice@example.org"])
    assert example.resolve("a@example.org") == mailboxes("alice@example.org")
    assert example.resolve("b@example.org") == mailboxes("alice@example.org")


@pytest.mark.parametrize(
    ("hops", "resolves"), [(MAX_ALIAS_DEPTH, True), (MAX_ALIAS_DEPTH + 1, False)]
)
def test_resolve_alias_depth_limit(example: SqliteStore, hops: int, resolves: bool) -> None:
    # a0 -> a1 -> ... -> a{hops-1} -> alice: `hops` aliases in a row
    for i in range(hops):
        target = f"a{i + 1}@example.org" if i + 1 < hops else "alice@example.org"
        example.add_alias(f"a{i}@example.org", [target])
    expected = mailboxes("alice@example.org") if resolves else None
    assert example.resolve("a0@example.org") == expected


def test_resolve_postmaster(example: SqliteStore) -> None:
    example.add_domain("other.example")
    # RFC 5321 §4.5.1: postmaster resolves in every local domain, without any account
    assert example.resolve("postmaster@example.org") == mailboxes("postmaster@example.org")
    assert example.resolve("PostMaster@Other.Example") == mailboxes("postmaster@other.example")
    assert example.resolve("postmaster@remote.test") is None
    example.add_alias("postmaster@example.org", ["alice@example.org"])
    assert example.resolve("postmaster@example.org") == mailboxes("alice@example.org")
    example.add_user("postmaster@other.example", "pw")
    assert example.resolve("postmaster@other.example") == mailboxes("postmaster@other.example")


def test_postmaster_alias_to_nothing_still_resolves(example: SqliteStore) -> None:
    example.add_alias("postmaster@example.org", ["ghost@example.org"])
    assert example.resolve("postmaster@example.org") == mailboxes("postmaster@example.org")


def test_alias_target_in_local_domain_added_later(example: SqliteStore) -> None:
    example.add_alias("fwd@example.org", ["Carol@Later.example"])
    assert example.resolve("fwd@example.org") == Resolution((), ("Carol@later.example",))
    example.add_domain("later.example")
    example.add_user("carol@later.example", "pw")
    assert example.resolve("fwd@example.org") == mailboxes("carol@later.example")


# --- seeing changes from other connections and processes ------------------------------------


def test_second_store_sees_changes(paths: tuple[Path, Path], store: SqliteStore) -> None:
    # Changes by another connection are seen after refresh() (the server calls it at the
    # start of every transaction), and without it within RECHECK_AFTER seconds.
    with SqliteStore(*paths) as cli:
        assert not store.is_local_domain("example.org")
        cli.add_domain("example.org")
        store.refresh()
        assert store.is_local_domain("example.org")
        cli.add_user("alice@example.org", "pw")
        store.refresh()
        assert store.resolve("alice@example.org") == mailboxes("alice@example.org")
        assert store.verify_password("alice@example.org", "pw")
        cli.add_alias("info@example.org", ["alice@example.org"])
        store.refresh()
        assert store.resolve("info@example.org") == mailboxes("alice@example.org")
        cli.remove_alias("info@example.org")
        cli.remove_user("alice@example.org")
        store.refresh()
        assert store.resolve("info@example.org") is None
        assert store.resolve("alice@example.org") is None


def test_raw_sql_change_is_seen(paths: tuple[Path, Path], store: SqliteStore) -> None:
    assert not store.is_local_domain("example.org")
    conn = sqlite3.connect(paths[0])
    with conn:
        conn.execute("INSERT INTO domains (name, created) VALUES ('example.org', 0)")
    conn.close()
    store.refresh()
    assert store.is_local_domain("example.org")


def test_change_is_seen_without_refresh_after_a_moment(
    paths: tuple[Path, Path], store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import postbote.store.sqlite as sqlite_mod

    assert not store.is_local_domain("example.org")
    with SqliteStore(*paths) as cli:
        cli.add_domain("example.org")
    clock = time.monotonic() + sqlite_mod.RECHECK_AFTER + 0.01
    monkeypatch.setattr(sqlite_mod.time, "monotonic", lambda: clock)
    assert store.is_local_domain("example.org")


def test_other_process_change_is_seen(paths: tuple[Path, Path], store: SqliteStore) -> None:
    store.add_domain("example.org")
    assert store.resolve("alice@example.org") is None
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from postbote.store.sqlite import SqliteStore
        with SqliteStore(Path({str(paths[0])!r}), Path({str(paths[1])!r})) as s:
            s.add_user("alice@example.org", "pw")
            s.add_domain("second.example")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert store.resolve("alice@example.org") == mailboxes("alice@example.org")
    assert store.is_local_domain("second.example")


def test_queue_writes_do_not_reload_the_snapshot(
    paths: tuple[Path, Path], example: SqliteStore
) -> None:
    before = example._snapshot()
    with SqliteStore(*paths) as other:
        other.enqueue(envelope("m1"), b"x", ["x@remote.test"])
    example.enqueue(envelope("m2"), b"x", ["x@remote.test"])
    assert example._snapshot() is before
    example.add_domain("new.example")
    assert example._snapshot() is not before


def test_concurrent_threads(example: SqliteStore) -> None:
    def add(i: int) -> None:
        example.add_user(f"user{i}@example.org", f"pw{i}")
        example.enqueue(envelope(f"t{i}"), b"body", [f"r{i}@remote.test"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(add, i) for i in range(20)]
        for i in range(200):  # lookups on this thread meanwhile
            example.resolve(f"user{i % 20}@example.org")
        for f in futures:
            f.result()
    assert len(example.list_users()) == 22
    assert len(example.list_queue()) == 20
    assert example.resolve("user19@example.org") == mailboxes("user19@example.org")


# --- sender grants -------------------------------------------------------------------------


def test_sender_grants(example: SqliteStore) -> None:
    example.allow_sender("Alice@Example.org", "Boss@Remote.TEST.")
    example.allow_sender("alice@example.org", "*@Example.NET")
    example.allow_sender("alice@example.org", "@Bücher.example")
    example.allow_sender("bob@example.org", "@example.net")
    assert example.sender_grants("ALICE@example.org") == [
        "@example.net",
        "@xn--bcher-kva.example",
        "boss@remote.test",
    ]
    assert example.sender_grants("bob@example.org") == ["@example.net"]
    # the same grant in another spelling exists already
    for same in ("boss@remote.test", "@example.net", "*@EXAMPLE.net.", "@bücher.EXAMPLE"):
        with pytest.raises(AlreadyExists):
            example.allow_sender("alice@example.org", same)
    example.disallow_sender("alice@EXAMPLE.org", "*@example.net")
    assert example.sender_grants("alice@example.org") == [
        "@xn--bcher-kva.example",
        "boss@remote.test",
    ]
    assert example.sender_grants("bob@example.org") == ["@example.net"]
    with pytest.raises(NotFound):
        example.disallow_sender("alice@example.org", "@example.net")
    with pytest.raises(NotFound):
        example.disallow_sender("carol@example.org", "@example.net")


def test_sender_grants_of_nobody(example: SqliteStore) -> None:
    assert example.sender_grants("alice@example.org") == []
    assert example.sender_grants("carol@example.org") == []
    assert example.sender_grants("not an address") == []
    assert example.sender_grants("") == []


@pytest.mark.parametrize(
    ("address", "pattern", "error", "message"),
    [
        ("carol@example.org", "@example.net", NotFound, "no such user"),
        ("info@example.org", "@example.net", NotFound, "no such user"),  # an alias
        ("carol@remote.test", "@example.net", NotFound, "no such user"),
        ("alice example.org", "@example.net", StoreError, "invalid address"),
        ("alice@example.org", "", StoreError, "invalid sender pattern"),
        ("alice@example.org", "@", StoreError, "invalid sender pattern"),
        ("alice@example.org", "*@", StoreError, "invalid sender pattern"),
        ("alice@example.org", "*", StoreError, "invalid sender pattern"),
        ("alice@example.org", "example.net", StoreError, "invalid sender pattern"),
        ("alice@example.org", "@a..b", StoreError, "invalid sender pattern"),
        ("alice@example.org", "@a@b.example", StoreError, "invalid sender pattern"),
        ("alice@example.org", "boss@", StoreError, "invalid sender pattern"),
        ("alice@example.org", "bo ss@remote.test", StoreError, "invalid sender pattern"),
        ("alice@example.org", "boss@remote.test\r\nX: y", StoreError, "invalid sender pattern"),
    ],
)
def test_allow_sender_errors(
    example: SqliteStore, address: str, pattern: str, error: type[Exception], message: str
) -> None:
    example.add_alias("info@example.org", ["alice@example.org"])
    with pytest.raises(error, match=message):
        example.allow_sender(address, pattern)
    assert example.sender_grants("alice@example.org") == []
    assert example.sender_grants("info@example.org") == []


def test_sender_grants_go_with_their_user(paths: tuple[Path, Path], example: SqliteStore) -> None:
    example.allow_sender("alice@example.org", "@example.net")
    example.allow_sender("bob@example.org", "@example.net")
    example.remove_user("alice@example.org")
    assert example.sender_grants("alice@example.org") == []
    conn = sqlite3.connect(paths[0])
    try:
        rows = conn.execute("SELECT address, pattern FROM sender_grants").fetchall()
    finally:
        conn.close()
    assert rows == [("bob@example.org", "@example.net")]
    example.add_user("alice@example.org", "pw")  # a new alice starts without grants
    assert example.sender_grants("alice@example.org") == []


def test_sender_grants_changed_elsewhere_are_seen(
    paths: tuple[Path, Path], example: SqliteStore
) -> None:
    assert example.sender_grants("alice@example.org") == []
    with SqliteStore(*paths) as cli:
        cli.allow_sender("alice@example.org", "@example.net")
        example.refresh()
        assert example.sender_grants("alice@example.org") == ["@example.net"]
        cli.disallow_sender("alice@example.org", "@example.net")
    example.refresh()
    assert example.sender_grants("alice@example.org") == []
    conn = sqlite3.connect(paths[0])  # raw SQL: the triggers of migration 2 see it too
    with conn:
        conn.execute("INSERT INTO sender_grants VALUES ('bob@example.org', 'x@remote.test')")
    conn.close()
    example.refresh()
    assert example.sender_grants("bob@example.org") == ["x@remote.test"]


def test_sender_grants_answer_from_memory(example: SqliteStore) -> None:
    """Like resolve, sender_grants never waits for the connection a writer holds."""
    example.allow_sender("alice@example.org", "@example.net")
    assert example.sender_grants("alice@example.org") == ["@example.net"]
    with ThreadPoolExecutor(max_workers=1) as pool, example._lock:  # the lock is let go first
        future = pool.submit(example.sender_grants, "alice@example.org")
        assert future.result(timeout=10) == ["@example.net"]


def test_version_1_database_is_migrated(paths: tuple[Path, Path]) -> None:
    db = paths[0]
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO domains VALUES ('example.org', 0)")
    conn.close()
    with SqliteStore(*paths) as s:
        s.add_user("alice@example.org", "pw")
        assert s.sender_grants("alice@example.org") == []
        with SqliteStore(*paths) as other:
            other.allow_sender("alice@example.org", "@example.net")
        s.refresh()
        assert s.sender_grants("alice@example.org") == ["@example.net"]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 2
    finally:
        conn.close()


# --- helpers -------------------------------------------------------------------------------


def envelope(msg_id: str, received_at: float = 1000.0, sender: str = "a@example.org") -> Envelope:
    return Envelope(
        id=msg_id,
        sender=sender,
        recipients=(Recipient("x@remote.test"),),
        received_at=received_at,
    )
