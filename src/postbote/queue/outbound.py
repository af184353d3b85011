"""The outbound scheduler: claims due queue rows, delivers them, records the outcome.

It runs in its own process (``python -m postbote.queue.outbound``, started by the
server, see queue/runner.py) with its own event loop, so remote deliveries use the
machine's other core. Each claim is one message's recipients at one domain: one SMTP
transaction (issue 4 §1). The attempt is recorded (``QueueStore.claim``) before it is
made; a crash leaves the rows "inflight" and ``recover`` makes them due again at the
next start, so nothing is lost (at worst a message whose 250 was not yet recorded is
sent twice, the duplicate RFC 5321 §6.1 accepts over a loss).

Concurrency: at most ``delivery.concurrency`` attempts at once and
``delivery.per_domain_concurrency`` per destination domain; idle connections are kept
a moment and reused for the next message to the same domain (queue/remote.py).
Recipients in local domains never leave the machine: they go to their Maildir here
(delivery status notifications to local senders take that path).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from postbote.config import Config, parse_hostport
from postbote.dns import Resolver
from postbote.envelope import Envelope
from postbote.policy.dkimkeys import DkimKeys, sign_message
from postbote.queue.dsn import DsnRecipient, build_dsn, report_envelope, status_of
from postbote.queue.local import unique_name
from postbote.queue.remote import (
    Connector,
    Session,
    SessionError,
    SessionPool,
    Timeouts,
    TlsPolicy,
)
from postbote.queue.routing import Host, RouteError, resolve_route
from postbote.queue.schedule import Attempt, RetryPolicy, decide
from postbote.received import delivery_headers
from postbote.smtp.client import OutgoingRecipient, Transaction, TransactionResult
from postbote.store.interfaces import Claim, Directory, QueueStore, RecipientResult, ReportWork
from postbote.store.maildir import MaildirItem, deliver_batch, mailbox_root

log = logging.getLogger("postbote.outbound")

LEASE = 3600.0  # seconds a claim is ours; a crash is recovered at restart, sooner
MAX_SLEEP = 1.0  # look for due work (other nodes, the CLI) at least this often
REPORT_BATCH = 100


class Store(Directory, QueueStore, Protocol):
    """The outbound side needs both: the directory for local domains, the queue."""


def tls_policy_for(config: Config, domain: str, mx_host: str) -> TlsPolicy:
    """The TLS requirement for one destination host. MTA-STS (RFC 8461) and DANE
    (RFC 7672) will add their verdicts here."""
    if domain in _lower(config.delivery.require_tls):
        return TlsPolicy("required", verify=True, server_name=mx_host)
    if config.delivery.tls == "none":
        return TlsPolicy("none")
    return TlsPolicy("opportunistic", server_name=mx_host)


class Outbound:
    def __init__(
        self,
        config: Config,
        store: Store,
        resolver: Resolver,
        *,
        node: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        d = config.delivery
        self.config, self.store, self.resolver, self.node = config, store, resolver, node
        self.clock = clock
        self.policy = RetryPolicy(d.retry, d.max_lifetime, d.delay_warning)
        timeouts = Timeouts(d.connect_timeout, d.command_timeout, d.data_timeout)
        self.direct = Connector(helo_name=config.hostname, timeouts=timeouts)
        sh = d.smarthost
        creds = (sh.username, sh.password) if sh.username else None
        self.relay = Connector(helo_name=config.hostname, timeouts=timeouts, credentials=creds)
        self.pool = SessionPool()
        self.dkim_keys = DkimKeys(config.data_dir)
        self.attempted = 0  # for tests and metrics
        self._wake = asyncio.Event()
        self._stopping = False
        self._active: set[asyncio.Task[None]] = set()
        self._busy: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[Claim]] = {}
        self._reports_due = True
        # Results wait here to be written together, one transaction (and sync) for all
        # the attempts that ended while the previous write ran: a group commit.
        self._records: list[tuple[str, Sequence[RecipientResult], asyncio.Future[None]]] = []
        self._recorder: asyncio.Task[None] | None = None

    # -- the loop ---------------------------------------------------------------------------

    def nudge(self) -> None:
        """New mail may be due (the server queued some, or the operator flushed)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        n = await asyncio.to_thread(self.store.recover, self.node, self.clock())
        if n:
            log.info("recovered %d deliveries interrupted by a stop or crash", n)
        while not self._stopping:
            self._wake.clear()
            try:
                await self._fill()
                if self._reports_due:
                    self._reports_due = False
                    await self._send_reports()
                # Busy: the next finished attempt wakes us anyway; idle: sleep until due.
                due = None if self._active else await asyncio.to_thread(self.store.next_due)
            except Exception:
                log.exception("outbound queue scan failed")
                due = None
            sleep = MAX_SLEEP if due is None else max(0.0, min(MAX_SLEEP, due - self.clock()))
            if sleep > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep)

    async def drain(self, grace: float) -> None:
        """After stop(): let attempts under way finish within ``grace`` seconds. What is
        cut short stays inflight and is retried after the next start."""
        if self._active:
            _, pending = await asyncio.wait(self._active, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.pool.close()

    async def _fill(self) -> None:
        waiting = sum(len(q) for q in self._waiting.values())
        free = self.config.delivery.concurrency - len(self._active) - waiting
        if free <= 0:
            return
        claims = await asyncio.to_thread(
            self.store.claim, self.clock(), node=self.node, lease=LEASE, limit=free
        )
        for claim in claims:
            self._waiting.setdefault(claim.domain, collections.deque()).append(claim)
        self._dispatch()

    def _dispatch(self) -> None:
        limit = self.config.delivery.per_domain_concurrency
        for domain, queue in list(self._waiting.items()):
            while queue and self._busy[domain] < limit and not self._stopping:
                claim = queue.popleft()
                self._busy[domain] += 1
                task = asyncio.get_running_loop().create_task(self._deliver(claim))
                self._active.add(task)
                task.add_done_callback(self._finished)
            if not queue:
                del self._waiting[domain]

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        self._wake.set()

    # -- one attempt -----------------------------------------------------------------------

    async def _deliver(self, claim: Claim) -> None:
        try:
            local = self.store.is_local_domain(claim.domain)
            if local:
                attempts = await self._attempt_local(claim)
            else:
                attempts = await self._attempt_remote(claim)
            now = self.clock()
            notify = _notify_by_address(claim.envelope)
            results = [
                decide(
                    self.policy,
                    a,
                    notify=notify.get(a.recipient),
                    attempts=claim.attempts,
                    created=claim.created,
                    now=now,
                    warned=claim.warned,
                    local=local,
                )
                for a in attempts
            ]
            await self._record(claim.message_id, results)
            self.attempted += 1
            for r in results:
                log.info(
                    "id=%s to=%s state=%s reply=%s", claim.message_id, r.recipient, r.state, r.reply
                )
            if any(r.report for r in results) or any(r.state != "deferred" for r in results):
                self._reports_due = True
        except Exception:
            log.exception("delivery of %s failed internally", claim.message_id)
            await self._defer_after_error(claim)
        finally:
            self._busy[claim.domain] -= 1
            if self._busy[claim.domain] <= 0:
                del self._busy[claim.domain]
            self._dispatch()

    async def _record(self, message_id: str, results: Sequence[RecipientResult]) -> None:
        future = asyncio.get_running_loop().create_future()
        self._records.append((message_id, results, future))
        if self._recorder is None:
            self._recorder = asyncio.get_running_loop().create_task(self._write_records())
        await future

    async def _write_records(self) -> None:
        try:
            while self._records:
                batch, self._records = self._records, []
                attempts = [(message_id, results) for message_id, results, _ in batch]
                try:
                    await asyncio.to_thread(self.store.record_batch, self.node, attempts)
                except Exception as exc:
                    for _, _, future in batch:
                        future.set_exception(exc)
                else:
                    for _, _, future in batch:
                        future.set_result(None)
        finally:
            self._recorder = None

    async def _defer_after_error(self, claim: Claim) -> None:
        """A bug or a store error must not strand the claim until its lease runs out."""
        later = self.clock() + self.policy.delay_after(claim.attempts)
        results = [
            RecipientResult(r, "deferred", "4.3.0 internal error, see the log", next_attempt=later)
            for r in claim.recipients
        ]
        try:
            await asyncio.to_thread(self.store.record, self.node, claim.message_id, results)
        except Exception:
            log.exception("cannot record the failed attempt of %s", claim.message_id)

    async def _attempt_remote(self, claim: Claim) -> list[Attempt]:
        body = await asyncio.to_thread(self.store.queued_body, claim.message_id)
        env = claim.envelope
        params = {r.address: r for r in env.recipients}
        tx = Transaction(
            sender=env.sender,
            recipients=tuple(
                OutgoingRecipient(
                    r,
                    notify=params[r].notify if r in params else None,
                    orcpt=params[r].orcpt if r in params else None,
                )
                for r in claim.recipients
            ),
            body=body,
            smtputf8=env.smtputf8,
            body_type=env.body_type,
            ret=env.ret,
            envid=env.envid,
        )
        try:
            hosts, port, connector, key = await self._targets(claim.domain)
        except RouteError as err:
            outcome = "permanent" if err.permanent else "temporary"
            return [Attempt(r, err.reply, outcome) for r in claim.recipients]
        last = f"4.4.1 no server for {claim.domain} could be reached"
        for host in hosts:
            policy = self._policy(claim.domain, host.name)
            for address in host.addresses:
                slot = f"{key} {address}"  # reuse only a connection to this very server
                try:
                    session = self.pool.take(slot) or await self._open(
                        connector, host.name, address, port, policy
                    )
                except SessionError as err:
                    log.info("id=%s %s", claim.message_id, err.reply)
                    last = err.reply
                    continue
                try:
                    result = await session.send(tx)
                except ValueError as err:  # an address that must not reach the wire
                    self.pool.give(slot, session)
                    reply = f"501 5.1.3 invalid address: {err}"
                    return [Attempt(r, reply, "permanent") for r in claim.recipients]
                except SessionError as err:
                    await session.close()
                    last = err.reply
                    continue
                self.pool.give(slot, session)
                relayed = "DSN" not in session.extensions
                return _attempts_of(result, host.name, relayed)
        return [Attempt(r, last, "temporary") for r in claim.recipients]

    async def _open(
        self, connector: Connector, host: str, address: str, port: int, policy: TlsPolicy
    ) -> Session:
        try:
            return await connector.open(host, address, port, policy)
        except SessionError as err:
            if not (err.tls and policy.mode == "opportunistic"):
                raise
        # RFC 7435 §3: opportunistic TLS must not stop mail that plaintext would deliver:
        # a server whose TLS handshake fails gets the message without TLS, at once.
        log.info("%s[%s]: TLS handshake failed, delivering without TLS", host, address)
        return await connector.open(host, address, port, TlsPolicy("none"))

    async def _targets(self, domain: str) -> tuple[Sequence[Host], int, Connector, str]:
        """Where mail for ``domain`` goes: the smarthost, or the domain's MX hosts."""
        sh = self.config.delivery.smarthost
        if sh.host and (not sh.domains or domain in _lower(sh.domains)):
            name, port = parse_hostport(sh.host, 587)
            try:
                hosts = [Host(name, 0, (str(ipaddress.ip_address(name)),))]
            except ValueError:  # a host name: its own addresses, never its MX
                route = await resolve_route(name, _NoMx(self.resolver))
                hosts = [Host(name, 0, h.addresses) for h in route.hosts]
            return hosts, port, self.relay, "smarthost"
        route = await resolve_route(domain, self.resolver, local_names=(self.config.hostname,))
        return route.hosts, self.config.delivery.port, self.direct, domain

    def _policy(self, domain: str, mx_host: str) -> TlsPolicy:
        sh = self.config.delivery.smarthost
        if sh.host and (not sh.domains or domain in _lower(sh.domains)):
            name, _ = parse_hostport(sh.host, 587)
            # A smarthost gets our password: always TLS with a verified certificate.
            return TlsPolicy("implicit" if sh.tls == "implicit" else "required", True, name)
        return tls_policy_for(self.config, domain, mx_host)

    async def _attempt_local(self, claim: Claim) -> list[Attempt]:
        body = await asyncio.to_thread(self.store.queued_body, claim.message_id)
        return await asyncio.to_thread(self._deliver_local, claim, body)

    def _deliver_local(self, claim: Claim, body: bytes) -> list[Attempt]:
        """Worker thread: Maildir delivery of queued mail for local recipients."""
        env, data_dir = claim.envelope, self.config.data_dir
        self.store.refresh()
        out: list[Attempt] = []
        items: list[tuple[str, MaildirItem]] = []
        for rcpt in claim.recipients:
            res = self.store.resolve(rcpt)
            if res is None:
                out.append(Attempt(rcpt, f"550 5.1.1 <{rcpt}>: no such user here", "permanent"))
                continue
            if res.remote:  # an alias that now points elsewhere: new rows, same message
                self.store.enqueue(env, body, list(res.remote))
            for mailbox in res.mailboxes:
                item = MaildirItem(
                    root=mailbox_root(data_dir, mailbox),
                    unique=unique_name(claim.message_id, mailbox),
                    data=delivery_headers(env.sender, mailbox) + body,
                    timestamp=int(claim.created),
                    fresh=False,
                )
                items.append((rcpt, item))
            if not res.mailboxes:
                out.append(Attempt(rcpt, "250 2.1.5 forwarded", "delivered"))
        errors = deliver_batch([i for _, i in items], self.config.hostname) if items else []
        failed: dict[str, str] = {}
        for (rcpt, _), err in zip(items, errors, strict=True):
            if err is not None:
                failed[rcpt] = f"4.3.0 mailbox unavailable: {err}"
        for rcpt in dict.fromkeys(r for r, _ in items):
            if rcpt in failed:
                out.append(Attempt(rcpt, failed[rcpt], "temporary"))
            else:
                out.append(Attempt(rcpt, "250 2.0.0 delivered to mailbox", "delivered"))
        return out

    # -- delivery status notifications -------------------------------------------------------

    async def _send_reports(self) -> None:
        works = await asyncio.to_thread(self.store.pending_reports, REPORT_BATCH)
        for work in works:
            try:
                await asyncio.to_thread(self._report, work)
            except Exception:
                log.exception("cannot queue the DSN for %s", work.message_id)
        purged = await asyncio.to_thread(self.store.purge)
        if purged:
            log.info("removed %d finished messages from the queue", len(purged))
        if len(works) >= REPORT_BATCH:
            self._reports_due = True

    def _report(self, work: ReportWork) -> None:
        """Worker thread: queue one DSN (RFC 3464) for a message's pending reports."""
        env, store = work.envelope, self.store
        rcpts = [e.recipient for e in work.entries]
        if not env.sender:  # RFC 5321 §6.2 / RFC 3464 §2: never a report about a report
            log.warning("id=%s from <>: no DSN for %s", work.message_id, ", ".join(rcpts))
            store.reports_sent(work.message_id, rcpts)
            return
        now = self.clock()
        orcpt = {r.address: r.orcpt for r in env.recipients}
        report = [
            DsnRecipient(
                recipient=e.recipient,
                action=e.report or "failed",
                status=_status(e.last_reply, e.report or "failed"),
                diagnostic=e.last_reply or None,
                remote_mta=e.remote_mta or None,
                orcpt=orcpt.get(e.recipient),
                last_attempt=e.last_attempt,
                will_retry_until=e.created + self.policy.max_lifetime,
            )
            for e in work.entries
        ]
        digest = hashlib.blake2s(
            "\n".join(f"{e.recipient} {e.report} {e.attempts}" for e in work.entries).encode(),
            digest_size=6,
        ).hexdigest()
        dsn_id = f"{work.message_id}-{digest}"  # the same report twice has the same id
        original = store.queued_body(work.message_id)
        message = build_dsn(
            envelope=env,
            original=original,
            recipients=report,
            reporting_mta=self.config.hostname,
            now=now,
            message_id=dsn_id,
        )
        message = sign_message(self.dkim_keys, message)  # issue 6 §2: DSNs are signed too
        dsn_env = report_envelope(dsn_id=dsn_id, to=env.sender, report=message, now=now)
        store.enqueue(dsn_env, message, [env.sender])  # idempotent per (id, recipient)
        store.reports_sent(work.message_id, rcpts)
        log.info("id=%s DSN %s queued for %s", work.message_id, dsn_id, env.sender)


@functools.lru_cache(maxsize=8)
def _lower(domains: tuple[str, ...]) -> frozenset[str]:
    """Configured domain lists compared the way claims spell domains: lowercase."""
    return frozenset(d.lower().rstrip(".") for d in domains)


def _status(reply: str, action: str) -> str:
    """The RFC 3463 status for a DSN recipient from its last reply."""
    try:
        return status_of(reply)
    except ValueError:  # no code in the reply at all
        return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _notify_by_address(env: Envelope) -> dict[str, tuple[str, ...] | None]:
    return {r.address: r.notify for r in env.recipients}


def _attempts_of(result: TransactionResult, mta: str, relayed: bool) -> list[Attempt]:
    out: list[Attempt] = []
    for o in result.outcomes:
        code = o.reply.code
        outcome = "delivered" if code < 400 else "temporary" if code < 500 else "permanent"
        out.append(Attempt(o.address, str(o.reply), outcome, remote_mta=mta, relayed=relayed))
    return out


class _NoMx:
    """A resolver that knows no MX records: resolve_route then uses the name's own
    addresses (the implicit MX), which is what a smarthost name means."""

    def __init__(self, inner: Resolver) -> None:
        self.inner = inner

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return []

    async def a(self, name: str) -> list[str]:
        return await self.inner.a(name)

    async def aaaa(self, name: str) -> list[str]:
        return await self.inner.aaaa(name)

    async def txt(self, name: str) -> list[bytes]:
        return await self.inner.txt(name)

    async def ptr(self, address: str) -> list[str]:
        return await self.inner.ptr(address)
