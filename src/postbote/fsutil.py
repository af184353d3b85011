"""Small file-system helpers shared by the spool, the stores and the TLS setup."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory by name (a directory's fsync makes the names in it
    durable: created, renamed and unlinked entries)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return fn


# syncfs(2), Linux: write every dirty file of one filesystem with one call (the batched
# sync of Maildir delivery and of the outbound queue). None where it does not exist.
SYNCFS = _load_syncfs()


def syncfs_path(path: Path | str, syncfs: Callable[[int], int] | None = SYNCFS) -> None:
    """syncfs on the filesystem holding ``path``; OSError if it fails or is missing."""
    if syncfs is None:
        raise OSError("syncfs is not available")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)
