"""Local delivery: from the spool into Maildir mailboxes, or into the outbound queue.

Messages arrive from the SMTP backend right after the spool made them durable (and
from ``Spool.recover()`` after a restart). A single worker takes every message that
is waiting, resolves each recipient through the directory (aliases, +tags), writes
the local copies with one batched sync (store/maildir.py), hands remote recipients to
the queue store, and only then marks the messages done in the spool.

Exactly once: Maildir file names are derived from (spool id, mailbox), so a message
redelivered after a crash finds its earlier copy and is not written twice; queue
inserts are idempotent per (id, recipient). A message with a failed recipient stays in
the spool and is retried with backoff; the recipients that did succeed are not
written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from postbote.envelope import Envelope
from postbote.received import delivery_headers
from postbote.spool import Spool, SpooledMessage
from postbote.store.interfaces import Directory, QueueStore
from postbote.store.maildir import MaildirItem, deliver_batch, mailbox_root

log = logging.getLogger("postbote.delivery")

MAX_BATCH = 256
RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0)  # then every 10 minutes


@dataclass(slots=True)
class _Plan:
    """What one message needs: Maildir items and remote recipients."""

    message: SpooledMessage
    items: list[MaildirItem] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)


def unique_name(message_id: str, mailbox: str) -> str:
    """Deterministic Maildir unique part for (message, mailbox)."""
    digest = hashlib.blake2s(mailbox.encode(), digest_size=5).hexdigest()
    return f"{message_id}_{digest}"


class LocalDelivery:
    """Delivers spooled messages. Driven by ``submit()`` on the event loop; the file
    work runs in one worker thread so the loop keeps serving SMTP."""

    def __init__(
        self,
        *,
        spool: Spool,
        directory: Directory,
        queue: QueueStore,
        data_dir: Path,
        hostname: str,
    ) -> None:
        self.spool = spool
        self.directory = directory
        self.queue = queue
        self.data_dir = data_dir
        self.hostname = hostname
        self._pending: list[SpooledMessage] = []
        self._attempts: dict[str, int] = {}
        self._suspect: set[str] = set()  # ids that may have copies from an earlier attempt
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="postbote-delivery")
        self._task: asyncio.Task[None] | None = None
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self.delivered = 0  # messages completely handled (for tests and metrics)
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="delivery")

    def submit(self, message: SpooledMessage, *, fresh: bool = True) -> None:
        """Queue a message for delivery. ``fresh``: accepted by this process and never
        attempted, so no earlier copy can exist (saves listing mailboxes); recovered
        messages are submitted with fresh=False."""
        if not fresh:
            self._suspect.add(message.envelope.id)
        self._pending.append(message)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until nothing is pending or in progress (retries may still be scheduled)."""
        await self._idle.wait()

    async def close(self) -> None:
        for handle in self._retry_handles:
            handle.cancel()
        self._retry_handles.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                try:
                    done, failed = await loop.run_in_executor(
                        self._executor, self._deliver_batch, batch
                    )
                except Exception:
                    log.exception("delivery batch failed")
                    done, failed = [], batch
                if done:
                    self.spool.mark_done(m.envelope.id for m in done)
                    self.delivered += len(done)
                    for m in done:
                        self._attempts.pop(m.envelope.id, None)
                        self._suspect.discard(m.envelope.id)
                for m in failed:
                    self._schedule_retry(m)
            if not self._pending:
                self._idle.set()

    def _schedule_retry(self, message: SpooledMessage) -> None:
        n = self._attempts.get(message.envelope.id, 0)
        self._attempts[message.envelope.id] = n + 1
        delay = RETRY_DELAYS[min(n, len(RETRY_DELAYS) - 1)]
        loop = asyncio.get_running_loop()

        def retry() -> None:
            self._retry_handles.discard(handle)
            self.submit(message, fresh=False)

        handle = loop.call_later(delay, retry)
        self._retry_handles.add(handle)

    # -- worker thread -------------------------------------------------------------

    def _plan(self, message: SpooledMessage) -> _Plan:
        env = message.envelope
        plan = _Plan(message)
        fresh = env.id not in self._suspect
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
                data = delivery_headers(env.sender, mailbox) + message.body
                plan.items.append(
                    MaildirItem(
                        root=mailbox_root(self.data_dir, mailbox),
                        unique=unique_name(env.id, mailbox),
                        data=data,
                        timestamp=int(env.received_at),
                        fresh=fresh,
                    )
                )
            plan.remote.extend(r for r in res.remote if r not in plan.remote)
        return plan

    def _deliver_batch(
        self, batch: Sequence[SpooledMessage]
    ) -> tuple[list[SpooledMessage], list[SpooledMessage]]:
        plans = [self._plan(m) for m in batch]
        items = [item for p in plans for item in p.items]
        results = deliver_batch(items, self.hostname) if items else []
        errors = iter(results)
        done: list[SpooledMessage] = []
        failed: list[SpooledMessage] = []
        for plan in plans:
            ok = True
            for item in plan.items:
                err = next(errors)
                if err is not None:
                    ok = False
                    log.error("delivery to %s failed: %s", item.root, err)
            remote = plan.remote + plan.unresolved
            if ok and remote:
                ok = self._enqueue(plan.message.envelope, plan.message.body, remote)
            if plan.unresolved:
                # The recipient existed at RCPT time but not any more: keep the mail in
                # the queue for the operator (the outbound issue bounces it).
                log.warning("recipients no longer exist, queued: %s", plan.unresolved)
            (done if ok else failed).append(plan.message)
        return done, failed

    def _enqueue(self, envelope: Envelope, body: bytes, recipients: list[str]) -> bool:
        try:
            self.queue.enqueue(envelope, body, recipients)
        except Exception as exc:
            log.error("queueing %s failed: %s", envelope.id, exc)
            return False
        return True
