"""Local delivery: one batch of spooled messages into Maildir mailboxes, or into the
outbound queue for remote recipients. Synchronous; it runs in the delivery worker
process (queue/worker.py), driven by queue/dispatch.py.

Each recipient is resolved through the directory (aliases, +tags, postmaster); the
local copies of a whole batch are made durable with one batched sync
(store/maildir.py); remote recipients go to the queue store. A message counts as done
only when every copy and queue entry is durable.

Exactly once: Maildir file names are derived from (spool id, mailbox), so a message
redelivered after a crash finds its earlier copy and is not written twice; queue
inserts are idempotent per (id, recipient).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from postbote.envelope import Envelope, Recipient
from postbote.policy.dkimkeys import DkimKeys, sign_message
from postbote.queue.dsn import DsnRecipient, build_dsn, report_envelope
from postbote.received import delivery_headers
from postbote.spool import SpooledMessage
from postbote.store.interfaces import Directory, QueueStore
from postbote.store.maildir import MaildirItem, deliver_batch, mailbox_root

log = logging.getLogger("postbote.delivery")

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class _Plan:
    """What one message needs: Maildir items and remote recipients."""

    message: SpooledMessage
    items: list[MaildirItem] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    # Asked for NOTIFY=SUCCESS: the recipient and the report's action ("delivered" into
    # mailboxes, "expanded" when an alias also forwards elsewhere).
    success: list[tuple[Recipient, str]] = field(default_factory=list)
    mailboxes: list[str] = field(default_factory=list)  # the mailbox of each item
    stuck: list[str] = field(default_factory=list)  # mailboxes whose delivery failed
    # Addresses an alias expanded to, with the envelope recipient they came from.
    origin: dict[str, Recipient] = field(default_factory=dict)


_mailbox_root = functools.lru_cache(maxsize=4096)(mailbox_root)


def unique_name(message_id: str, mailbox: str) -> str:
    """Deterministic Maildir unique part for (message, mailbox)."""
    digest = hashlib.blake2s(mailbox.encode(), digest_size=5).hexdigest()
    return f"{message_id}_{digest}"


class Deliverer:
    """Delivers batches of spooled messages; returns which are done and which failed."""

    def __init__(
        self, *, directory: Directory, queue: QueueStore, data_dir: Path, hostname: str
    ) -> None:
        self.directory = directory
        self.queue = queue
        self.data_dir = data_dir
        self.hostname = hostname
        self.queued = 0  # messages handed to the outbound queue (for the worker's Q frame)
        self.dkim_keys = DkimKeys(data_dir)

    def deliver(self, batch: Sequence[tuple[SpooledMessage, bool]]) -> tuple[list[str], list[str]]:
        """Deliver (message, fresh) pairs. ``fresh``: accepted by this node and never
        attempted, so no earlier copy can exist and mailboxes need not be listed.
        Returns (done ids, failed ids); a failed message is to be retried later."""
        self.directory.refresh()
        plans = [self._plan(m, fresh) for m, fresh in batch]
        items = [item for p in plans for item in p.items]
        errors = iter(deliver_batch(items, self.hostname) if items else [])
        done: list[str] = []
        failed: list[str] = []
        queued: list[_Plan] = []
        for plan in plans:
            ok = True
            for item, mailbox in zip(plan.items, plan.mailboxes, strict=True):
                err = next(errors)
                if err is None:
                    continue
                log.error("delivery to %s failed: %s", item.root, err)
                if err.errno in _OUT_OF_SPACE:
                    ok = False  # the queue is on the same disk: retry the whole message
                else:
                    plan.stuck.append(mailbox)
            if plan.stuck:
                plan.success.clear()  # no success report while a copy is missing
            if not ok:
                failed.append(plan.message.envelope.id)
            elif plan.remote or plan.unresolved or plan.success or plan.stuck:
                queued.append(plan)
            else:
                done.append(plan.message.envelope.id)
        if queued and self._enqueue(queued):
            done.extend(p.message.envelope.id for p in queued)
        else:
            failed.extend(p.message.envelope.id for p in queued)
        return done, failed

    def _plan(self, message: SpooledMessage, fresh: bool) -> _Plan:
        env = message.envelope
        plan = _Plan(message)
        seen: set[str] = set()
        for rcpt in env.recipients:
            res = self.directory.resolve(rcpt.address)
            if res is None:
                if self.directory.is_local_domain(rcpt.address.rpartition("@")[2]):
                    plan.unresolved.append(rcpt.address)
                else:
                    plan.remote.append(rcpt.address)
                continue
            for mailbox in res.mailboxes:
                if mailbox in seen:
                    continue
                seen.add(mailbox)
                if mailbox != rcpt.address:
                    plan.origin.setdefault(mailbox, rcpt)
                plan.mailboxes.append(mailbox)
                plan.items.append(
                    MaildirItem(
                        root=_mailbox_root(self.data_dir, mailbox),
                        unique=unique_name(env.id, mailbox),
                        data=delivery_headers(env.sender, mailbox) + message.body,
                        timestamp=int(env.received_at),
                        fresh=fresh,
                    )
                )
            for address in res.remote:
                if address not in plan.remote:
                    plan.remote.append(address)
                    plan.origin.setdefault(address, rcpt)
            # RFC 3461 §5.2.3: delivered to a mailbox, reported if the sender asked; an
            # alias that also forwards elsewhere is "expanded" (RFC 3464 §2.3.3).
            wants = env.sender and rcpt.notify and "SUCCESS" in rcpt.notify
            if wants and (res.mailboxes or res.remote):
                plan.success.append((rcpt, "expanded" if res.remote else "delivered"))
        return plan

    def _enqueue(self, plans: list[_Plan]) -> bool:
        """Queue the remote recipients of many messages with one sync. Two kinds of local
        recipients go to the queue too, where the outbound scheduler delivers local
        domains itself: those that existed at RCPT time but not any more (it bounces them,
        550 5.1.1), and mailboxes whose delivery failed (a broken folder: it retries them
        on the queue's schedule and bounces them when the queue lifetime ends)."""
        for plan in plans:
            if plan.unresolved:
                log.warning("recipients no longer exist: %s", ", ".join(plan.unresolved))
        items: list[tuple[Envelope, bytes, Sequence[str]]] = []
        for p in plans:
            if p.remote or p.unresolved or p.stuck:
                rcpts = p.remote + p.unresolved + p.stuck
                items.append((_queued_envelope(p, rcpts), p.message.body, rcpts))
            if p.success:
                items.append(self._success_report(p.message, p.success))
        try:
            self.queue.enqueue_batch(items)
            self.queued += len(items)
        except Exception as exc:
            log.error("queueing %d messages failed: %s", len(plans), exc)
            return False
        return True

    def _success_report(
        self, message: SpooledMessage, rcpts: list[tuple[Recipient, str]]
    ) -> tuple[Envelope, bytes, Sequence[str]]:
        """A "delivered" or "expanded" DSN (RFC 3464) to the sender, queued like any mail
        from <>. Its id derives from the message's, so a redelivery after a crash queues
        it once."""
        env, now = message.envelope, time.time()
        text = " ".join(f"{action} {r.address}" for r, action in rcpts)
        dsn_id = f"{env.id}-{hashlib.blake2s(text.encode(), digest_size=6).hexdigest()}"
        report = build_dsn(
            envelope=env,
            original=message.body,
            recipients=[
                DsnRecipient(
                    recipient=r.address,
                    action=action,
                    status="2.0.0",
                    diagnostic=_SUCCESS_DIAGNOSTIC[action],
                    orcpt=r.orcpt,
                    last_attempt=now,
                )
                for r, action in rcpts
            ],
            reporting_mta=self.hostname,
            now=now,
            message_id=dsn_id,
        )
        report = sign_message(self.dkim_keys, report)  # issue 6 §2: DSNs are signed too
        dsn_env = report_envelope(dsn_id=dsn_id, to=env.sender, report=report, now=now)
        return dsn_env, report, [env.sender]


_SUCCESS_DIAGNOSTIC = {
    "delivered": "250 2.0.0 delivered to the mailbox",
    "expanded": "250 2.0.0 alias expanded; its addresses are reported on their own",
}


def _queued_envelope(plan: _Plan, queued: Sequence[str]) -> Envelope:
    """The envelope stored with queued recipients. An address an alias expanded to gets
    DSN parameters from the recipient it came from, as RFC 3461 allows for aliases with
    several targets (Postfix does the same): its NOTIFY without SUCCESS (that one is
    answered here with an "expanded" report), and its ORCPT, or its address as one, so
    that a bounce names the address the sender used."""
    env = plan.message.envelope
    known = {r.address for r in env.recipients}
    extra = tuple(
        _forwarded(plan.origin[address], address)
        for address in queued
        if address not in known and address in plan.origin
    )
    return replace(env, recipients=env.recipients + extra) if extra else env


def _forwarded(rcpt: Recipient, address: str) -> Recipient:
    notify = rcpt.notify
    if notify is not None and notify != ("NEVER",):
        notify = tuple(k for k in notify if k != "SUCCESS") or ("NEVER",)
    orcpt = rcpt.orcpt or ("rfc822;" if rcpt.address.isascii() else "utf-8;") + rcpt.address
    return Recipient(address, notify=notify, orcpt=orcpt)
