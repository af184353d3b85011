"""The maildrop of one POP3 session: the snapshot taken at login and its marks.

Owns RFC 1939 §5-6 bookkeeping: messages keep the numbers (1-based) they had at login,
DELE only marks a message (it vanishes from STAT, LIST and UIDL and every command that
names it), RSET unmarks all, and the marks are handed to the UPDATE state on QUIT.
No I/O: the glue builds the snapshot from the mailbox store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """One message of the snapshot the glue gives the core at login."""

    size: int  # exact octets with CRLF line endings (RFC 1939 §5 LIST)
    uidl: str  # RFC 1939 §7: 1..70 characters in the range 0x21-0x7E

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"negative message size: {self.size}")
        u = self.uidl
        if not 1 <= len(u) <= 70 or not all("\x21" <= c <= "\x7e" for c in u):
            raise ValueError(f"bad UIDL: {u!r}")


class Maildrop:
    """The messages of a session with their deletion and retrieval marks.

    ``count`` and ``octets`` are the undeleted totals (RFC 1939 §5 STAT)."""

    __slots__ = ("_deleted", "_retrieved", "_sizes", "_uidls", "count", "octets")

    def __init__(self, messages: Sequence[MessageEntry] = ()) -> None:
        self._sizes = [m.size for m in messages]
        self._uidls = [m.uidl for m in messages]
        self._deleted = bytearray(len(messages))  # 1 = marked by DELE
        self._retrieved: set[int] = set()
        self.count = len(messages)
        self.octets = sum(self._sizes)

    def exists(self, n: int) -> bool:
        """Message ``n`` is in the snapshot and not marked deleted (RFC 1939 §5)."""
        return 1 <= n <= len(self._sizes) and not self._deleted[n - 1]

    def size(self, n: int) -> int:
        return self._sizes[n - 1]

    def uidl(self, n: int) -> str:
        return self._uidls[n - 1]

    def numbers(self) -> Iterator[int]:
        """The undeleted message numbers, ascending."""
        return (n for n, gone in enumerate(self._deleted, 1) if not gone)

    def delete(self, n: int) -> None:
        """DELE: mark only; the glue removes the message in UPDATE (RFC 1939 §6)."""
        if self.exists(n):
            self._deleted[n - 1] = 1
            self.count -= 1
            self.octets -= self._sizes[n - 1]

    def reset(self) -> None:
        """RSET: unmark every deleted message (RFC 1939 §5)."""
        self._deleted = bytearray(len(self._sizes))
        self.count = len(self._sizes)
        self.octets = sum(self._sizes)

    def mark_retrieved(self, n: int) -> None:
        self._retrieved.add(n)

    def update_marks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(deleted, retrieved and not deleted) message numbers, sorted, for UPDATE."""
        deleted = tuple(n for n, gone in enumerate(self._deleted, 1) if gone)
        retrieved = tuple(sorted(n for n in self._retrieved if not self._deleted[n - 1]))
        return deleted, retrieved
