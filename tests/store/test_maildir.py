"""Tests for Maildir delivery: layout, idempotence, isolation of failures, safe names."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from postbote.store import maildir
from postbote.store.maildir import (
    MaildirItem,
    clean_tmp,
    deliver_batch,
    mailbox_root,
    maildir_name,
)

HOST = "mx1.example.org"


def item(root: Path, unique: str, data: bytes = b"Subject: hi\r\n\r\nbody\r\n") -> MaildirItem:
    return MaildirItem(root=root, unique=unique, data=data, timestamp=1_700_000_000)


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_delivery_creates_maildir_and_exact_file(tmp_path: Path) -> None:
    root = mailbox_root(tmp_path, "Alice@Example.ORG")
    data = bytes(range(256)) * 10
    assert deliver_batch([item(root, "SPOOLID_0", data)], HOST) == [None]
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE((root / sub).stat().st_mode) == 0o700
    assert files(root / "tmp") == [] and files(root / "cur") == []
    (name,) = files(root / "new")
    assert name == "1700000000.SPOOLID_0.mx1.example.org"
    path = root / "new" / name
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("count", [1, 3, 40])  # per-file fsync and syncfs paths
def test_batch_delivers_every_item(tmp_path: Path, count: int) -> None:
    roots = [tmp_path / "mail" / "d" / f"u{i % 3}" for i in range(count)]
    items = [item(r, f"id_{i}", f"message {i}".encode()) for i, r in enumerate(roots)]
    assert deliver_batch(items, HOST) == [None] * count
    for it in items:
        assert (it.root / "new" / maildir_name(it, HOST)).read_bytes() == it.data


def test_redelivery_is_skipped_in_new_and_in_cur(tmp_path: Path) -> None:
    root = tmp_path / "box"
    first = item(root, "X1", b"original")
    assert deliver_batch([first], HOST) == [None]
    assert deliver_batch([item(root, "X1", b"again")], HOST) == [None]
    assert files(root / "new") == [maildir_name(first, HOST)]
    # An IMAP client moved it to cur/ and set \\Seen; a different host name must not matter.
    (root / "new" / maildir_name(first, HOST)).rename(
        root / "cur" / (maildir_name(first, HOST) + ":2,S")
    )
    assert deliver_batch([item(root, "X1", b"again")], "other.host") == [None]
    assert files(root / "new") == []
    assert (root / "cur" / (maildir_name(first, HOST) + ":2,S")).read_bytes() == b"original"


def test_duplicate_within_one_batch_is_written_once(tmp_path: Path) -> None:
    root = tmp_path / "box"
    assert deliver_batch([item(root, "D", b"1"), item(root, "D", b"2")], HOST) == [None, None]
    (name,) = files(root / "new")
    assert (root / "new" / name).read_bytes() == b"1"


def test_stale_tmp_file_does_not_block_redelivery(tmp_path: Path) -> None:
    root = tmp_path / "box"
    it = item(root, "T", b"complete")
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    (root / "tmp" / maildir_name(it, HOST)).write_bytes(b"half")  # crash before rename
    assert deliver_batch([it], HOST) == [None]
    assert (root / "new" / maildir_name(it, HOST)).read_bytes() == b"complete"
    assert files(root / "tmp") == []


@pytest.mark.parametrize("count", [2, 20])
def test_failing_item_does_not_affect_others(tmp_path: Path, count: int) -> None:
    bad_root = tmp_path / "mail" / "d" / "bad"
    bad_root.parent.mkdir(parents=True)
    bad_root.write_bytes(b"a file, not a directory")
    good = [item(tmp_path / "mail" / "d" / f"ok{i}", f"G{i}") for i in range(count)]
    items = [*good[: count // 2], item(bad_root, "B"), *good[count // 2 :]]
    results = deliver_batch(items, HOST)
    assert isinstance(results[count // 2], OSError)
    assert [r for i, r in enumerate(results) if i != count // 2] == [None] * count
    for it in good:
        assert (it.root / "new" / maildir_name(it, HOST)).read_bytes() == it.data


def test_write_error_removes_tmp_file_and_leaves_nothing_in_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def enospc_for_big(fd: int, data: bytes) -> int:
        if len(data) > 1000:
            real_write(fd, memoryview(data)[:10])  # a partial file in tmp/
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", enospc_for_big)
    root = tmp_path / "box"
    items = [item(root, "S1"), item(root, "BIG", b"x" * 5000), item(root, "S2")]
    results = deliver_batch(items, HOST)
    monkeypatch.undo()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], OSError) and results[1].errno == 28
    assert files(root / "tmp") == []
    assert files(root / "new") == sorted(maildir_name(items[i], HOST) for i in (0, 2))


def test_syncfs_failure_falls_back_to_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def failing_syncfs(fd: int) -> int:
        calls.append(fd)
        return -1

    monkeypatch.setattr(maildir, "_syncfs", failing_syncfs)
    items = [item(tmp_path / "box", f"F{i}") for i in range(10)]
    assert deliver_batch(items, HOST) == [None] * 10
    assert len(calls) == 1
    assert len(files(tmp_path / "box" / "new")) == 10


def test_maildir_name_escapes_host_and_rejects_bad_unique(tmp_path: Path) -> None:
    it = item(tmp_path, "U")
    assert maildir_name(it, "a/b:c") == "1700000000.U.a\\057b\\072c"
    for bad in ("", "a.b", "a/b", "a:b", "a\0b"):
        with pytest.raises(ValueError):
            maildir_name(item(tmp_path, bad), HOST)
    results = deliver_batch([item(tmp_path / "box", "../evil")], HOST)
    assert isinstance(results[0], OSError)


def test_mailbox_root_is_safe_and_lower_case(tmp_path: Path) -> None:
    base = tmp_path / "mail"
    assert mailbox_root(tmp_path, "Alice+Tag@Example.ORG") == base / "example.org" / "alice+tag"
    assert mailbox_root(tmp_path, "../x@example.org") == base / "example.org" / "%2E.%2Fx"
    assert mailbox_root(tmp_path, "a@..") == base / "%2E." / "a"
    assert mailbox_root(tmp_path, '"a@b"@example.org').name == "%22a%40b%22"
    assert mailbox_root(tmp_path, "jürgen@bücher.de").name == "j%C3%BCrgen"
    for bad in ("nobody", "@example.org", "x@"):
        with pytest.raises(ValueError):
            mailbox_root(tmp_path, bad)


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_mailbox_root_never_escapes(local: str, domain: str) -> None:
    data_dir = Path("/srv/postbote")
    assume("@" not in domain)  # the domain is what follows the last "@"
    root = mailbox_root(data_dir, f"{local}@{domain}")
    assert root.parent.parent == data_dir / "mail"
    for part in (root.name, root.parent.name):
        assert part not in (".", "..") and not part.startswith(".")
        assert "/" not in part and "\0" not in part


def test_clean_tmp_removes_only_old_files(tmp_path: Path) -> None:
    root = tmp_path / "box"
    assert clean_tmp(root, 3600) == 0  # no tmp/ yet
    (root / "tmp").mkdir(parents=True)
    old, fresh = root / "tmp" / "old", root / "tmp" / "fresh"
    old.write_bytes(b"o")
    fresh.write_bytes(b"f")
    past = time.time() - 40 * 3600
    os.utime(old, (past, past))
    assert clean_tmp(root, 36 * 3600) == 1
    assert files(root / "tmp") == ["fresh"]


def test_index_skips_listing_and_still_detects_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "box"
    assert deliver_batch([item(root, "OLD")], HOST) == [None]  # before this "process"
    index = maildir.DeliveredIndex()
    listings: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: Path) -> list[str]:
        listings.append(str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    assert deliver_batch([item(root, "OLD"), item(root, "N1")], HOST, index=index) == [None] * 2
    assert len(listings) == 2  # new/ and cur/, once
    batch = [item(root, "N1"), item(root, "N2"), item(root, "OLD")]
    assert deliver_batch(batch, HOST, index=index) == [None] * 3
    assert len(listings) == 2
    assert files(root / "new") == sorted(
        maildir_name(item(root, u), HOST) for u in ("N1", "N2", "OLD")
    )


def test_failed_item_is_not_remembered_as_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "box"
    index = maildir.DeliveredIndex()
    real_rename = os.rename

    def failing_rename(src: Path, dst: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "rename", failing_rename)
    results = deliver_batch([item(root, "R"), item(root, "R")], HOST, index=index)
    assert [getattr(r, "errno", None) for r in results] == [5, 5]  # the duplicate too
    monkeypatch.setattr(os, "rename", real_rename)
    assert files(root / "tmp") == [] and files(root / "new") == []
    assert deliver_batch([item(root, "R")], HOST, index=index) == [None]
    assert len(files(root / "new")) == 1


def test_index_forgets_least_recently_used_mailboxes(tmp_path: Path) -> None:
    index = maildir.DeliveredIndex(max_keys=3)
    a, b = tmp_path / "a", tmp_path / "b"
    deliver_batch([item(a, "A1"), item(a, "A2")], HOST, index=index)
    deliver_batch([item(b, "B1"), item(b, "B2")], HOST, index=index)
    assert index.get(a) is None and index.get(b) == {"1700000000.B1", "1700000000.B2"}
    assert deliver_batch([item(a, "A1")], HOST, index=index) == [None]  # listed again
    assert files(a / "new") == sorted(maildir_name(item(a, u), HOST) for u in ("A1", "A2"))


def test_fresh_item_skips_listing_the_mailbox(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "box"
    deliver_batch([item(root, "OLD")], HOST)  # the mailbox exists and holds a message

    def no_listing(path: Path) -> set[str]:
        raise AssertionError("a fresh delivery must not list the mailbox")

    monkeypatch.setattr(maildir, "_delivered_keys", no_listing)
    fresh = MaildirItem(root=root, unique="NEW", data=b"x\r\n", timestamp=1700000000, fresh=True)
    assert deliver_batch([fresh], HOST) == [None]
    assert maildir_name(fresh, HOST) in files(root / "new")
    with pytest.raises(AssertionError):
        deliver_batch([item(root, "OTHER")], HOST)  # a non-fresh one does list
