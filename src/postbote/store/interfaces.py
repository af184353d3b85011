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


# Recipient states in the outbound queue (issue 4 §1). "queued": never attempted;
# "inflight": claimed by one node for one attempt; "deferred": waits for next_attempt;
# "delivered" / "failed": final; "held": parked by the operator until released.
QUEUE_STATES = ("queued", "inflight", "deferred", "delivered", "failed", "held")
# What a delivery status notification reports (RFC 3464 §2.3.3 Action).
REPORT_ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One (message, recipient) in the outbound queue."""

    message_id: str
    recipient: str
    sender: str
    state: str  # one of QUEUE_STATES
    attempts: int
    next_attempt: float
    last_reply: str
    size: int
    created: float
    last_attempt: float | None = None
    remote_mta: str = ""  # the host that gave last_reply, if any
    report: str | None = None  # a REPORT_ACTIONS value whose DSN is still to be sent


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """``queue show``: one message with its envelope and every recipient row."""

    message_id: str
    envelope: Envelope
    size: int
    created: float
    entries: tuple[QueueEntry, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """One message's recipients at one domain, claimed for one delivery attempt.

    ``attempts`` already counts this attempt (the attempt is recorded before it is made).
    ``warned``: the recipients of ``recipients`` that already had a delay warning."""

    message_id: str
    envelope: Envelope
    domain: str  # lowercase; the part after the last "@" of every recipient
    recipients: tuple[str, ...]
    attempts: int
    created: float
    size: int
    warned: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one attempt for one claimed recipient.

    ``state``: "delivered", "deferred" or "failed". ``reply``: the SMTP reply or our own
    diagnosis, e.g. "550 5.1.1 <a@b>: no such user" or "4.4.1 connection refused".
    ``next_attempt``: when to try again (deferred only). ``report``: a REPORT_ACTIONS
    value if a DSN is to be sent for this result ("delayed" also marks it warned), else
    None."""

    recipient: str
    state: str
    reply: str
    next_attempt: float = 0.0
    remote_mta: str = ""
    report: str | None = None


@dataclass(frozen=True, slots=True)
class ReportWork:
    """A message with recipients whose DSN is still to be sent."""

    message_id: str
    envelope: Envelope
    entries: tuple[QueueEntry, ...]  # only the rows with a pending ``report``


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
    """The outbound queue: messages for remote recipients, one row per recipient.

    Every method is synchronous and safe to call from several processes (and nodes of a
    cluster) at once. ``enqueue`` returns only once the message and its recipients are
    durable, and is idempotent for the same (envelope.id, recipient): a redelivery from
    the spool after a crash adds nothing twice. A recipient is delivered by at most one
    node at a time: ``claim`` hands each due row to one caller, under a lease.
    """

    def enqueue(self, envelope: Envelope, body: bytes, recipients: Sequence[str]) -> None: ...

    def enqueue_batch(self, items: Sequence[tuple[Envelope, bytes, Sequence[str]]]) -> None:
        """``enqueue`` for many messages with a constant number of syncs."""
        ...

    def claim(self, now: float, *, node: str, lease: float, limit: int) -> list[Claim]:
        """Take up to ``limit`` due (message, domain) groups: rows "queued" or "deferred"
        with next_attempt <= now become "inflight" for ``node`` until now + lease, with
        attempts + 1 and last_attempt = now, committed before this returns. Oldest first."""
        ...

    def record(self, node: str, message_id: str, results: Sequence[RecipientResult]) -> None:
        """Store the outcome of an attempt for rows this node holds inflight (rows it no
        longer holds, e.g. deleted by the operator, are ignored)."""
        ...

    def record_batch(
        self, node: str, attempts: Sequence[tuple[str, Sequence[RecipientResult]]]
    ) -> None:
        """``record`` for several (message id, results) at once, with one sync."""
        ...

    def recover(self, node: str, now: float) -> int:
        """At start-up: rows left inflight by ``node`` (a crash mid-delivery), and rows of
        any node whose lease expired before ``now``, become "deferred", due now.
        Returns how many."""
        ...

    def next_due(self) -> float | None:
        """The earliest next_attempt of a "queued" or "deferred" row, or None."""
        ...

    def pending_reports(self, limit: int) -> list[ReportWork]: ...

    def reports_sent(self, message_id: str, recipients: Sequence[str]) -> None:
        """Clear the pending ``report`` of these rows (their DSN is queued)."""
        ...

    def purge(self) -> list[str]:
        """Delete messages whose rows are all "delivered" or "failed" with no pending
        report, with their bodies. Returns their ids."""
        ...

    # -- the operator (postbote queue ...); NotFound for an unknown message id --------------
    def list_queue(self) -> list[QueueEntry]: ...
    def show(self, message_id: str) -> QueuedMessage: ...
    def queued_body(self, message_id: str) -> bytes: ...

    def flush(self, now: float) -> int:
        """Every "deferred" row becomes due now. Returns how many."""
        ...

    def retry(self, message_id: str, now: float) -> int:
        """The message's "deferred" rows become due now. Returns how many."""
        ...

    def hold(self, message_id: str) -> int:
        """ "queued" and "deferred" rows become "held". Returns how many."""
        ...

    def release(self, message_id: str, now: float) -> int:
        """ "held" rows become "deferred", due now. Returns how many."""
        ...

    def delete(self, message_id: str) -> None:
        """Remove the message and its body; no DSN is sent."""
        ...
