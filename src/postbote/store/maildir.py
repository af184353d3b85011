"""Maildir mailboxes: batched, idempotent, crash-safe delivery of message files.

Owns the on-disk layout of mailboxes (``DATA_DIR/mail/<domain>/<localpart>`` with
``tmp/ new/ cur/``) and the delivery protocol of https://cr.yp.to/proto/maildir.html:
write the file in ``tmp/``, make it durable, rename it into ``new/``. Many files are made
durable with one ``syncfs(2)`` instead of one fsync each, and each ``new/`` directory is
synced once per batch (or one more syncfs when a batch touches many). Names are
deterministic (``<time>.<unique>.<host>``), so a redelivery after a crash finds the
earlier copy in ``new/`` or ``cur/`` and skips it; ``DeliveredIndex`` remembers those
names across batches so a long-lived deliverer need not list big mailboxes every time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postbote.fsutil import SYNCFS, fsync_path, syncfs_path

_SUBDIRS = ("tmp", "new", "cur")
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-=")
_SYNCFS_MIN_ITEMS = 4  # above this many files, one syncfs beats one fsync per file
_FORBIDDEN_IN_UNIQUE = frozenset("./:\\\0")


@dataclass(frozen=True, slots=True)
class MaildirItem:
    """One message file to deliver into one mailbox."""

    root: Path  # mailbox root, contains tmp/ new/ cur/
    unique: str  # deterministic, derived by the caller from (spool id, recipient)
    data: bytes  # complete message bytes
    timestamp: int  # seconds, the <time> part of the name
    # True when no earlier copy can exist (first attempt of a message this process
    # accepted): the mailbox need not be listed to look for one.
    fresh: bool = False


def maildir_name(item: MaildirItem, hostname: str) -> str:
    """The file name ``<time>.<unique>.<host>`` (maildir.html, "How a message is delivered").

    In the host part "/" becomes "\\057" and ":" becomes "\\072" so the name stays one
    path component and ":" keeps marking the info suffix in cur/.
    """
    if not item.unique or _FORBIDDEN_IN_UNIQUE.intersection(item.unique):
        raise ValueError(f"invalid maildir unique part {item.unique!r}")
    host = hostname.replace("/", "\\057").replace(":", "\\072").replace("\0", "")
    return f"{item.timestamp}.{item.unique}.{host or 'localhost'}"


def _safe_component(text: str) -> str:
    """Lower-case and percent-encode everything outside [a-z0-9._+-=] and a leading "."."""
    out = []
    for i, ch in enumerate(text.lower()):
        if ch in _SAFE and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def mailbox_root(data_dir: Path, address: str) -> Path:
    """The Maildir root of a local mailbox: ``data_dir/mail/<domain>/<localpart>``.

    Both parts are lower-cased and made filesystem-safe; the result is always two path
    components below ``data_dir/mail``, whatever the address contains.
    """
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not a mailbox address: {address!r}")
    return Path(data_dir) / "mail" / _safe_component(domain) / _safe_component(local)


@dataclass(slots=True)
class _Write:
    index: int
    item: MaildirItem
    name: str
    tmp: Path
    dev: int  # st_dev of the mailbox: one syncfs per filesystem
    keys: set[str]  # the mailbox's delivered keys, which this write's key was added to
    duplicates: list[int] = field(default_factory=list)  # same key later in the batch
    fd: int = -1

    @property
    def key(self) -> str:
        return f"{self.item.timestamp}.{self.item.unique}"


@dataclass(slots=True)
class _Batch:
    """Per-batch state: results, listing caches and directories to sync."""

    results: list[OSError | None]
    # root -> (dev, delivered keys or None while the mailbox has not been listed)
    seen: dict[Path, tuple[int, set[str] | None]] = field(default_factory=dict)
    writing: dict[tuple[Path, str], _Write] = field(default_factory=dict)
    new_dirs: set[Path] = field(default_factory=set)  # parents of directories we created


class DeliveredIndex:
    """Remembers, across batches, the ``<time>.<unique>`` keys present in each mailbox.

    Optional: without it every batch lists new/ and cur/ of each mailbox it touches,
    which costs ~1 ms per 1,000 messages stored. With it a mailbox is listed once per
    process, then kept up to date with our own deliveries. That is exact as long as only
    this process delivers into these mailboxes (the spool lock makes sure): readers move
    or delete files but never create a key. Memory is bounded by ``max_keys``; the least
    recently used mailboxes are forgotten first and listed again when next needed.
    Thread-safe.
    """

    def __init__(self, max_keys: int = 1_000_000) -> None:
        self._max_keys = max_keys
        self._roots: OrderedDict[Path, set[str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, root: Path) -> set[str] | None:
        with self._lock:
            keys = self._roots.get(root)
            if keys is not None:
                self._roots.move_to_end(root)
            return keys

    def put(self, root: Path, keys: set[str]) -> None:
        with self._lock:
            self._roots[root] = keys
            self._roots.move_to_end(root)

    def trim(self) -> None:
        """Forget least recently used mailboxes until at most ``max_keys`` keys remain."""
        with self._lock:
            total = sum(len(k) for k in self._roots.values())
            while total > self._max_keys and len(self._roots) > 1:
                _, keys = self._roots.popitem(last=False)
                total -= len(keys)


def deliver_batch(
    items: Sequence[MaildirItem], hostname: str, *, index: DeliveredIndex | None = None
) -> list[OSError | None]:
    """Deliver every item; the result for each is None (delivered or already there) or
    the OSError that stopped it. Synchronous: run it in a worker thread.

    Returns only after every delivered file and its name in new/ are durable. ``index``
    (optional) saves listing each mailbox in every batch.
    """
    batch = _Batch(results=[None] * len(items))
    writes: list[_Write] = []
    for i, item in enumerate(items):
        try:
            name = maildir_name(item, hostname)
        except ValueError as exc:
            batch.results[i] = OSError(errno.EINVAL, str(exc))
            continue
        w = _prepare(batch, i, item, name, index)
        if w is not None:
            writes.append(w)
    per_file_sync = len(writes) <= _SYNCFS_MIN_ITEMS or _syncfs is None
    writes = _run(batch, writes, lambda w: _write_file(w, fsync=per_file_sync))
    if not per_file_sync:
        writes = _sync_filesystems(batch, writes)
    writes = _run(batch, writes, lambda w: os.rename(w.tmp, w.item.root / "new" / w.name))
    _sync_directories(batch, writes)
    if index is not None:
        index.trim()
    return batch.results


def _prepare(
    batch: _Batch, i: int, item: MaildirItem, name: str, index: DeliveredIndex | None
) -> _Write | None:
    """Create the mailbox if needed; None if the item is already delivered or failed."""
    key = f"{item.timestamp}.{item.unique}"
    try:
        cached = batch.seen.get(item.root)
        if cached is None:
            cached = batch.seen[item.root] = _open_mailbox(item.root, batch.new_dirs, index)
        dev, keys = cached
        if keys is None and not item.fresh:
            keys = _listed_keys(item.root, index)
            batch.seen[item.root] = (dev, keys)
    except OSError as exc:
        batch.results[i] = exc
        return None
    earlier = batch.writing.get((item.root, key))
    if earlier is not None:
        earlier.duplicates.append(i)  # shares the outcome of the first copy
        return None
    if keys is None:
        keys = set()  # fresh: nothing to look for, nothing to remember
    elif key in keys:
        return None  # delivered before (e.g. before a crash)
    keys.add(key)
    w = _Write(i, item, name, item.root / "tmp" / name, dev, keys)
    batch.writing[(item.root, key)] = w
    return w


def _open_mailbox(
    root: Path, new_dirs: set[Path], index: DeliveredIndex | None
) -> tuple[int, set[str] | None]:
    """Create missing directories; return the device and the delivered keys if known
    without listing (a new mailbox has none), else None."""
    created = _make_dirs(root, new_dirs)
    dev = os.stat(root).st_dev
    if not created:
        return dev, None
    keys: set[str] = set()
    if index is not None:
        index.put(root, keys)
    return dev, keys


def _listed_keys(root: Path, index: DeliveredIndex | None) -> set[str]:
    """The delivered keys of a mailbox, from the index or by listing it."""
    keys = None if index is None else index.get(root)
    if keys is None:
        keys = _delivered_keys(root)
        if index is not None:
            index.put(root, keys)
    return keys


def _make_dirs(root: Path, new_dirs: set[Path]) -> bool:
    """Create root and tmp/ new/ cur/ (0700) as needed; True if anything was created."""
    missing = [d for d in (root, *(root / s for s in _SUBDIRS)) if not d.is_dir()]
    if not missing:
        return False
    if not root.is_dir():
        for parent in reversed(root.parents):
            if not parent.is_dir():
                parent.mkdir(mode=0o700, exist_ok=True)
                new_dirs.add(parent.parent)
    for d in missing:
        d.mkdir(mode=0o700, exist_ok=True)
        new_dirs.add(d.parent)
    return True


def _delivered_keys(root: Path) -> set[str]:
    """ "<time>.<unique>" of every file in new/ and cur/ (cur/ names carry ":2,<flags>")."""
    keys: set[str] = set()
    for sub in ("new", "cur"):
        for name in os.listdir(root / sub):
            parts = name.split(".", 2)
            if len(parts) == 3:
                keys.add(f"{parts[0]}.{parts[1]}")
    return keys


def _run(batch: _Batch, writes: list[_Write], step: Callable[[_Write], None]) -> list[_Write]:
    """Apply one step to each write; a failure drops that item and removes its tmp file."""
    ok: list[_Write] = []
    for w in writes:
        try:
            step(w)
        except OSError as exc:
            _abandon(batch, w, exc)
        else:
            ok.append(w)
    return ok


def _abandon(batch: _Batch, w: _Write, exc: OSError) -> None:
    for i in (w.index, *w.duplicates):
        batch.results[i] = exc
    w.keys.discard(w.key)  # not delivered: a retry must not be skipped
    if w.fd >= 0:
        os.close(w.fd)
        w.fd = -1
    with contextlib.suppress(OSError):
        os.unlink(w.tmp)


def _write_file(w: _Write, *, fsync: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        w.fd = os.open(w.tmp, flags, 0o600)
    except FileExistsError:
        os.unlink(w.tmp)  # leftover of a delivery a crash interrupted
        w.fd = os.open(w.tmp, flags, 0o600)
    view = memoryview(w.item.data)
    while view:
        view = view[os.write(w.fd, view) :]
    if fsync:
        os.fsync(w.fd)
    os.close(w.fd)
    w.fd = -1


def _sync_filesystems(batch: _Batch, writes: list[_Write]) -> list[_Write]:
    """One syncfs per filesystem; if it fails, fall back to fsync per file."""
    by_dev: dict[int, list[_Write]] = {}
    for w in writes:
        by_dev.setdefault(w.dev, []).append(w)
    ok: list[_Write] = []
    for group in by_dev.values():
        try:
            _syncfs_path(group[0].item.root)
        except OSError:
            group = _run(batch, group, lambda w: fsync_path(w.tmp))
        ok.extend(group)
    ok.sort(key=lambda w: w.index)
    return ok


def _sync_directories(batch: _Batch, writes: list[_Write]) -> None:
    """Make the renames durable: fsync each distinct new/ once (and the parents of
    directories we created), or one syncfs per filesystem when there are many."""
    dirs: dict[int, set[Path]] = {}
    for w in writes:
        dirs.setdefault(w.dev, set()).add(w.item.root / "new")
    for d in batch.new_dirs:
        try:
            dev = os.stat(d).st_dev
        except OSError:
            dev = -1  # fsync below reports the error
        dirs.setdefault(dev, set()).add(d)
    failed: dict[Path, OSError] = {}
    for group in dirs.values():
        if len(group) > _SYNCFS_MIN_ITEMS and _syncfs is not None:
            with contextlib.suppress(OSError):
                _syncfs_path(next(iter(group)))
                continue
        for d in sorted(group):
            try:
                fsync_path(d)
            except OSError as exc:
                failed[d] = exc
    for w in writes:
        error = failed.get(w.item.root / "new")
        if error is not None:  # the name may not be durable: the caller retries
            for i in (w.index, *w.duplicates):
                batch.results[i] = error


_syncfs = SYNCFS  # module attribute: tests replace it


def _syncfs_path(path: Path) -> None:
    syncfs_path(path, _syncfs)


def clean_tmp(root: Path, older_than: float) -> int:
    """Remove files in ``root/tmp`` last modified more than ``older_than`` seconds ago.

    They are leftovers of deliveries a crash interrupted (maildir.html suggests 36 hours).
    Returns how many were removed.
    """
    cutoff = time.time() - older_than
    removed = 0
    try:
        entries = list(os.scandir(Path(root) / "tmp"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
