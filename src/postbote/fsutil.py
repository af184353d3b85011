"""Small file-system helpers shared by the spool, the stores and the TLS setup."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory by name (a directory's fsync makes the names in it
    durable: created, renamed and unlinked entries)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
