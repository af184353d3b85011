"""The SMTP backend: policy decisions for MAIL and RCPT, and durable acceptance.

It implements ``smtp.server.SmtpBackend`` for every listener: recipients go through
the relay policy (policy/relay.py), accepted messages get a Received header and go to
the spool, which answers only once they are on stable storage; then they are handed
to local delivery.
"""

from __future__ import annotations

import logging
import time

from postbote.envelope import Envelope, Recipient
from postbote.errors import SpoolError, SpoolFull
from postbote.policy.relay import check_recipient
from postbote.queue.dispatch import LocalDelivery
from postbote.received import protocol_name, received_header
from postbote.smtp import replies as R
from postbote.smtp.events import MailFrom, RcptTo
from postbote.smtp.grammar import Address
from postbote.smtp.protocol import ServerConnection
from postbote.smtp.replies import Reply
from postbote.smtp.server import SessionInfo
from postbote.spool import Spool, SpooledMessage
from postbote.store.interfaces import Directory

log = logging.getLogger("postbote.inbound")


class InboundBackend:
    """Answers MAIL/RCPT/end-of-data for the SMTP sessions of all listeners."""

    def __init__(
        self, *, hostname: str, directory: Directory, spool: Spool, delivery: LocalDelivery
    ) -> None:
        self.hostname = hostname
        self.directory = directory
        self.spool = spool
        self.delivery = delivery
        self.accepted = 0

    def check_mail(self, info: SessionInfo, event: MailFrom) -> Reply | None:
        # RFC 1870 §6.1 / issue: a full disk refuses new mail with 452 4.3.1 up front.
        if not self.spool.has_space(event.params.size or 0):
            return R.C452_INSUFFICIENT_STORAGE
        self.directory.refresh()  # each transaction sees the directory as it is now
        return None

    def _postmaster_domain(self) -> str | None:
        if self.directory.is_local_domain(self.hostname):
            return self.hostname
        domains = self.directory.list_domains()
        return domains[0] if domains else None

    def check_rcpt(self, info: SessionInfo, event: RcptTo) -> Reply | None:
        rcpt = event.recipient
        pm = self._postmaster_domain() if rcpt.domain == "" else None
        decision = check_recipient(
            rcpt,
            self.directory,
            may_relay=info.authenticated is not None,
            postmaster_domain=pm,
        )
        if decision.kind is None:
            log.info(
                "rcpt refused client=%s rcpt=%s reply=%s",
                info.client_ip,
                decision.address,
                decision.reply and decision.reply.code,
            )
            return decision.reply
        return None

    async def deliver(self, info: SessionInfo, conn: ServerConnection, body: bytes) -> Reply:
        spool = self.spool
        queue_id = spool.new_id()
        now = time.time()
        recipients = tuple(
            Recipient(address=_recipient_key(a, self), notify=p.notify, orcpt=p.orcpt)
            for a, p in conn.recipients
        )
        params = conn.mail_params
        envelope = Envelope(
            id=queue_id,
            sender=str(conn.sender) if conn.sender is not None else "",
            recipients=recipients,
            received_at=now,
            body_type=params.body,
            smtputf8=params.smtputf8,
            ret=params.ret,
            envid=params.envid,
            client_ip=info.client_ip,
            helo=info.helo,
            tls=info.tls,
            auth=info.authenticated,
        )
        header = received_header(
            helo=info.helo,
            client_ip=info.client_ip,
            hostname=self.hostname,
            protocol=protocol_name(
                esmtp=info.esmtp,
                tls=info.tls,
                authenticated=info.authenticated is not None,
                smtputf8=params.smtputf8,
            ),
            queue_id=queue_id,
            recipient=recipients[0].address if len(recipients) == 1 else None,
            now=now,
        )
        message = header + body
        try:
            await spool.accept(envelope, message)
        except SpoolFull:
            log.warning("spool full, refused message from %s", info.client_ip)
            return R.C452_INSUFFICIENT_STORAGE
        except SpoolError as exc:
            log.error("spool error: %s", exc)
            return R.C451_LOCAL_ERROR
        self.accepted += 1
        self.delivery.submit(SpooledMessage(envelope, message))
        return Reply.make(250, "2.0.0", f"Ok: queued as {queue_id}")


def _recipient_key(address: Address, backend: InboundBackend) -> str:
    """The address recorded in the envelope: local recipients by their lookup key."""
    if address.domain == "":
        return f"postmaster@{backend._postmaster_domain() or backend.hostname}"
    if backend.directory.is_local_domain(address.domain):
        return address.key()
    return str(address)
