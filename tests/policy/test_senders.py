"""may_send_as: own address, +tags, aliases, grants; against the real SqliteStore."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st

from postbote import passwords
from postbote.policy.senders import may_send_as
from postbote.store.sqlite import SqliteStore

ALICE = "alice@example.org"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteStore]:
    """example.org with alice and bob; aliases team (both), sales (bob), alice+x (bob),
    fwd (remote only); alice may also send as boss@remote.test and anything @grant.test."""
    cheap = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", cheap)
    s = SqliteStore(tmp_path / "postbote.db", tmp_path / "queue")
    s.add_domain("example.org")
    s.add_domain("bücher.example")
    s.add_user(ALICE, "pw")
    s.add_user("bob@example.org", "pw")
    s.add_alias("team@example.org", [ALICE, "bob@example.org"])
    s.add_alias("sales@example.org", ["bob@example.org"])
    s.add_alias("alice+x@example.org", ["bob@example.org"])
    s.add_alias("fwd@example.org", ["alice@remote.test"])
    s.allow_sender(ALICE, "boss@remote.test")
    s.allow_sender(ALICE, "*@grant.test")
    yield s
    s.close()


ALLOWED = [
    "alice@example.org",
    "ALICE@Example.ORG.",
    '"alice"@example.org',  # RFC 5322 §3.4.1: a quoted local part means its content
    '"Alice"@EXAMPLE.org',
    "alice+tag@example.org",  # RFC 5233 subaddress
    "Alice+Tag+More@example.org",
    "alice+@example.org",
    "team@example.org",  # an alias that delivers to alice (among others)
    "Team+list@example.org",
    "boss@remote.test",  # granted address
    "BOSS@Remote.Test.",
    "anyone@grant.test",  # granted domain
    "Any.One+x@GRANT.test.",
]

REFUSED = [
    "bob@example.org",  # another user
    "bob+alice@example.org",
    "sales@example.org",  # an alias that does not deliver to alice
    "alice+x@example.org",  # looks like alice's +tag, but delivers to bob
    "fwd@example.org",  # an alias delivering only to a remote address
    "postmaster@example.org",  # accepted as a recipient, but not alice's
    "nobody@example.org",
    "alice@remote.test",  # same local part, other domain
    "alice@example.org.evil.test",
    "alice@sub.example.org",
    "boss2@remote.test",  # an address grant is exact
    "boss+x@remote.test",
    "x@sub.grant.test",  # a domain grant is that domain only
    "x@grant.test.evil",
    # malformed
    "",
    "alice",
    "alice@",
    "@example.org",
    "alice@example.org\r\n",
    "alice@example.org\r\nRCPT TO:<x@y>",
    "a lice@example.org",
    "alice@example.org@evil.test",
    '"alice@evil.test"@example.org',
    '"alice@example.org',
    "<alice@example.org>",
]


@pytest.mark.parametrize("sender", ALLOWED)
def test_allowed(store: SqliteStore, sender: str) -> None:
    assert may_send_as(ALICE, sender, store)


@pytest.mark.parametrize("sender", REFUSED)
def test_refused(store: SqliteStore, sender: str) -> None:
    assert not may_send_as(ALICE, sender, store)


def test_user_in_any_spelling(store: SqliteStore) -> None:
    assert may_send_as("ALICE@Example.Org.", "alice+tag@example.org", store)
    assert may_send_as("Alice@example.org", "anyone@grant.test", store)
    assert not may_send_as("not an address", ALICE, store)
    assert not may_send_as("", "", store)


def test_each_user_has_their_own_grants(store: SqliteStore) -> None:
    assert may_send_as("bob@example.org", "sales@example.org", store)
    assert may_send_as("bob@example.org", "alice+x@example.org", store)
    assert may_send_as("bob@example.org", "team@example.org", store)
    assert not may_send_as("bob@example.org", "boss@remote.test", store)
    assert not may_send_as("bob@example.org", "anyone@grant.test", store)
    assert not may_send_as("bob@example.org", ALICE, store)


def test_idn_domain_grant(store: SqliteStore) -> None:
    store.allow_sender("bob@example.org", "@BÜCHER.example")
    for sender in ("x@bücher.example", "X@xn--bcher-kva.example.", "jörg@Bücher.Example"):
        assert may_send_as("bob@example.org", sender, store), sender
    assert not may_send_as("bob@example.org", "x@bucher.example", store)


def test_grant_changes_are_seen(store: SqliteStore) -> None:
    store.disallow_sender(ALICE, "@grant.test")
    assert not may_send_as(ALICE, "anyone@grant.test", store)
    store.add_alias("sales@example.org", [ALICE])
    assert may_send_as(ALICE, "sales@example.org", store)


def test_removed_user_keeps_own_address_and_tags(store: SqliteStore) -> None:
    """Authenticated, then removed: the directory no longer knows alice."""
    store.remove_user(ALICE)
    assert may_send_as(ALICE, ALICE, store)
    assert may_send_as(ALICE, "alice+tag@example.org", store)
    assert not may_send_as(ALICE, "alice+x@example.org", store)  # still bob's
    assert not may_send_as(ALICE, "team@example.org", store)  # delivers to bob only now
    assert not may_send_as(ALICE, "boss@remote.test", store)  # grants went with the user
    assert not may_send_as(ALICE, "alicex@example.org", store)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    root = tmp_path_factory.mktemp("senders")
    with SqliteStore(root / "postbote.db", root / "queue") as s:
        s.add_domain("example.org")
        yield s


@given(sender=st.text(max_size=60) | st.from_regex(r"[\w\"+.@ ]{0,12}@Example\.org\.?"))
def test_never_raises(empty_store: SqliteStore, sender: str) -> None:
    """Any text gives a bool; with no users, aliases or grants only alice's own address
    and its +tags are hers."""
    result = may_send_as(ALICE, sender, empty_store)
    assert isinstance(result, bool)
    if result:
        local, _, domain = sender.rpartition("@")
        assert domain.lower().rstrip(".") == "example.org"
        assert local.strip('"').lower() == "alice" or local.lower().startswith(
            ("alice+", '"alice+')
        )
