"""The SMTP backend: policy decisions for MAIL and RCPT, and durable acceptance.

It implements ``smtp.server.SmtpBackend`` for every listener: recipients go through
the relay policy (policy/relay.py), accepted messages get a Received header and go to
the spool, which answers only once they are on stable storage; then they are handed
to local delivery.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from postbote.auth import Authenticator, Outcome
from postbote.envelope import Envelope, Recipient
from postbote.errors import SpoolError, SpoolFull
from postbote.policy import authresults
from postbote.policy.checks import MailChecks
from postbote.policy.dkimkeys import DkimKeys, sign_message
from postbote.policy.relay import check_recipient
from postbote.policy.senders import may_send_as
from postbote.policy.submission import add_missing_headers, check_from, header_section
from postbote.queue.dispatch import LocalDelivery
from postbote.received import protocol_name, received_header
from postbote.smtp import replies as R
from postbote.smtp.events import AuthRequested, AuthResponse, MailFrom, RcptTo
from postbote.smtp.grammar import Address
from postbote.smtp.protocol import ServerConnection
from postbote.smtp.replies import Reply
from postbote.smtp.server import SessionInfo
from postbote.spool import Spool, SpooledMessage
from postbote.store.interfaces import Directory

log = logging.getLogger("postbote.inbound")

C553_SENDER_NOT_OWNED = Reply.make(553, "5.7.1", "Sender address not allowed for this user")


class InboundBackend:
    """Answers MAIL/RCPT/end-of-data for the SMTP sessions of all listeners."""

    def __init__(
        self,
        *,
        hostname: str,
        directory: Directory,
        spool: Spool,
        delivery: LocalDelivery,
        authenticator: Authenticator | None = None,
        privacy: bool = True,
        checks: MailChecks | None = None,
        dkim_keys: DkimKeys | None = None,
        authserv_id: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.directory = directory
        self.spool = spool
        self.delivery = delivery
        self.authenticator = authenticator
        self.privacy = privacy
        self.checks = checks  # SPF/DKIM/DMARC for mail from the internet
        self.dkim_keys = dkim_keys  # signing for logged-in users
        self.authserv_id = authserv_id or hostname
        self.accepted = 0

    async def auth(self, info: SessionInfo, event: AuthRequested | AuthResponse) -> Outcome:
        """RFC 4954: run one step of the client's SASL exchange."""
        if self.authenticator is None:
            return Outcome(reply=R.C502_NOT_IMPLEMENTED)
        if isinstance(event, AuthRequested):
            exchange, refusal = self.authenticator.begin(info.client_ip, event.mechanism)
            if refusal is not None:
                return refusal
            assert exchange is not None
            info.sasl = exchange
            outcome = await self.authenticator.step(
                info.client_ip, exchange, event.initial_response, first=True
            )
        else:
            if info.sasl is None:
                return Outcome(reply=R.C503_BAD_SEQUENCE)
            outcome = await self.authenticator.step(
                info.client_ip, info.sasl, event.data, first=False
            )
        if outcome.challenge is None:
            info.sasl = None  # the exchange is over
        return outcome

    def check_mail(self, info: SessionInfo, event: MailFrom) -> Reply | None:
        # RFC 1870 §6.1 / issue: a full disk refuses new mail with 452 4.3.1 up front.
        if not self.spool.has_space(event.params.size or 0):
            return R.C452_INSUFFICIENT_STORAGE
        self.directory.refresh()  # each transaction sees the directory as it is now
        user = info.authenticated
        # RFC 6409 §6.1: a user sends only as an address that is theirs.
        if (
            user is not None
            and event.sender is not None
            and not may_send_as(user, str(event.sender), self.directory)
        ):
            log.warning("sender refused user=%s sender=%s", user, event.sender)
            return C553_SENDER_NOT_OWNED
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
        user = info.authenticated
        if _AUTHRES.search(body, 0, len(header_section(body))):
            # RFC 8601 §5: a field claiming to be ours was forged (or is a leftover).
            body = authresults.remove_ours(body, self.authserv_id)
        results = b""
        checks = self.checks
        if checks is not None and checks.applies(info.listener, info.client_ip, user):
            sender = str(conn.sender) if conn.sender is not None else ""
            outcome = await checks.run(
                ip=info.client_ip, helo=info.helo, sender=sender, message=body
            )
            if outcome.reply is not None:
                return outcome.reply
            results = outcome.header
        if user is not None:
            refusal = check_from(body, lambda a: may_send_as(user, a, self.directory))
            if refusal is not None:
                log.warning("From: refused user=%s", user)
                return refusal
            body = add_missing_headers(  # RFC 6409 §8.2 (Date), §8.3 (Message-ID)
                body, now=now, hostname=self.hostname, unique=queue_id
            )
            body = await self._sign(body)
        header = received_header(
            helo=info.helo,
            client_ip=info.client_ip,
            hostname=self.hostname,
            protocol=protocol_name(
                esmtp=info.esmtp,
                tls=info.tls,
                authenticated=user is not None,
                smtputf8=params.smtputf8,
            ),
            queue_id=queue_id,
            recipient=recipients[0].address if len(recipients) == 1 else None,
            now=now,
            hide_client=self.privacy and user is not None,  # a user's IP is private
        )
        message = header + results + body
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

    async def _sign(self, body: bytes) -> bytes:
        """DKIM-sign a user's message for its From: domain, if it has keys (issue 6 §2)."""
        if self.dkim_keys is None:
            return body
        return await asyncio.to_thread(sign_message, self.dkim_keys, body)


_AUTHRES = re.compile(rb"^authentication-results[ \t]*:", re.IGNORECASE | re.MULTILINE)


def _recipient_key(address: Address, backend: InboundBackend) -> str:
    """The address recorded in the envelope: local recipients by their lookup key."""
    if address.domain == "":
        return f"postmaster@{backend._postmaster_domain() or backend.hostname}"
    if backend.directory.is_local_domain(address.domain):
        return address.key()
    return str(address)
