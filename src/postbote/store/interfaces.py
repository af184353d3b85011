"""The storage interfaces every backend implements (typing.Protocol).

Implementations never import each other; the composition root (app.py) picks one.
All methods are synchronous: the hot-path lookups (``is_local_domain``, ``resolve``)
answer from memory, and everything else is called from the CLI or an executor thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from postbote.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where mail for one address goes after aliases and +tags are applied."""

    mailboxes: tuple[str, ...]  # local users, canonical 'local@domain' (lowercase)
    remote: tuple[str, ...]  # addresses outside the local domains


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One (message, recipient) waiting in the outbound queue."""

    message_id: str
    recipient: str
    sender: str
    state: str  # queued | inflight | deferred | delivered | failed | held
    attempts: int
    next_attempt: float
    last_reply: str
    size: int
    created: float


class Directory(Protocol):
    """Domains, users and aliases.

    Lookups are called on the event loop for every RCPT and must not block on I/O for
    long: implementations keep a snapshot in memory and refresh it when the backing
    store changes (a running server sees CLI changes without a restart).
    Mutations raise NotFound / AlreadyExists / StoreError.
    """

    def refresh(self) -> None:
        """Make changes committed elsewhere (the CLI, another node) visible now. Called at
        the start of every SMTP transaction and every delivery batch; in between,
        lookups may answer from a snapshot up to a fraction of a second old."""
        ...

    def is_local_domain(self, domain: str) -> bool: ...

    def resolve(self, address: str) -> Resolution | None:
        """Resolve a recipient in a local domain; None if no such user or alias."""
        ...

    def add_domain(self, domain: str) -> None: ...
    def remove_domain(self, domain: str) -> None: ...
    def list_domains(self) -> list[str]: ...

    def add_user(self, address: str, password: str) -> None: ...
    def remove_user(self, address: str) -> None: ...
    def set_password(self, address: str, password: str) -> None: ...
    def list_users(self, domain: str | None = None) -> list[str]: ...
    def verify_password(self, address: str, password: str) -> bool: ...

    def add_alias(self, alias: str, targets: Sequence[str]) -> None: ...
    def remove_alias(self, alias: str, targets: Sequence[str] = ()) -> None: ...
    def list_aliases(self) -> list[tuple[str, list[str]]]: ...

    def sender_grants(self, address: str) -> list[str]:
        """What the user ``address`` may send as besides its own addresses and the aliases
        that deliver to it (RFC 6409 §6.1): normalised addresses ('local@domain', any
        domain) and whole domains ('@domain'), sorted. [] for a user without grants, an
        unknown user or a malformed address. Called on the event loop for every submitted
        message: answered from memory, like ``resolve``."""
        ...

    def allow_sender(self, address: str, pattern: str) -> None:
        """Grant the user ``address`` the ``pattern``: an address, or '@domain' (also
        written '*@domain') for every address in a domain. NotFound if no such user,
        AlreadyExists if granted already, StoreError if the pattern is invalid. Grants go
        with their user when it is removed."""
        ...

    def disallow_sender(self, address: str, pattern: str) -> None:
        """Take back a grant; NotFound if there is no such grant."""
        ...


class QueueStore(Protocol):
    """The outbound queue: messages for remote recipients.

    ``enqueue`` returns only once the message and its recipients are durable, and is
    idempotent for the same (envelope.id, recipient): a redelivery from the spool after
    a crash adds nothing twice.
    """

    def enqueue(self, envelope: Envelope, body: bytes, recipients: Sequence[str]) -> None: ...
    def list_queue(self) -> list[QueueEntry]: ...
    def queued_body(self, message_id: str) -> bytes: ...
