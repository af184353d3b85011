"""The mail authentication pipeline for mail from the internet (issue 6 §1).

At the end of DATA on the MX listener, for clients outside ``checks.trusted_networks``:
SPF (RFC 7208) and DKIM (RFC 6376) run concurrently, then DMARC (RFC 7489) on their
results; one Authentication-Results field (RFC 8601) records all three. What a failure
does is configurable per check: "reject" (a 5xx), "tag" (the header only), "off" (not
checked); for DMARC, "policy" follows the sending domain's published policy. DNS
trouble never rejects: it gives 451 where a failure would have rejected, else a tag.
The whole pipeline is bounded by ``checks.timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from postbote.config import ChecksConfig
from postbote.dns import Resolver
from postbote.policy import authresults
from postbote.policy.dkim import DkimResult, verify
from postbote.policy.dmarc import DmarcResult, evaluate, from_domain
from postbote.policy.spf import SpfResult, check_sender
from postbote.smtp.replies import Reply

log = logging.getLogger("postbote.checks")

# RFC 7372 §3.2 codes for authentication failures; RFC 7489 §10.3 for DMARC.
C550_SPF_FAIL = Reply.make(550, "5.7.23", "SPF validation failed")
C550_DKIM_FAIL = Reply.make(550, "5.7.20", "No passing DKIM signature found")
C550_DMARC_REJECT = Reply.make(550, "5.7.1", "Rejected by the sender domain's DMARC policy")
C451_DNS = Reply.make(451, "4.4.3", "Temporary DNS failure checking the sender, try again later")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    reply: Reply | None  # a refusal, or None to accept
    header: bytes  # Authentication-Results (and a quarantine mark), to add at the top


class MailChecks:
    def __init__(self, config: ChecksConfig, resolver: Resolver, authserv_id: str) -> None:
        self.config = config
        self.resolver = resolver
        self.authserv_id = authserv_id
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_networks]
        self._seen: dict[str, bool] = {}  # client address -> in a trusted network

    def applies(self, kind: str, client_ip: str, authenticated: str | None) -> bool:
        """Mail from the internet: the MX listener, no login, not a trusted network."""
        if kind != "smtp" or authenticated is not None:
            return False
        trusted = self._seen.get(client_ip)
        if trusted is None:  # parsed once per address: this runs for every message
            try:
                ip = ipaddress.ip_address(client_ip)
            except ValueError:
                trusted = False
            else:
                trusted = any(ip in net for net in self._trusted)
            if len(self._seen) >= 4096:
                self._seen.clear()
            self._seen[client_ip] = trusted
        return not trusted

    async def run(self, *, ip: str, helo: str, sender: str, message: bytes) -> CheckOutcome:
        c = self.config
        try:
            spf, dkim = await asyncio.wait_for(
                self._spf_and_dkim(ip, helo, sender, message), c.timeout
            )
        except TimeoutError:
            spf = _spf_timeout(sender, helo)
            dkim = []
        dmarc = None
        header_from = from_domain(message) if c.dmarc != "off" else None
        if isinstance(header_from, str):
            try:
                dmarc = await asyncio.wait_for(
                    evaluate(
                        header_from,
                        spf_result=spf.result if spf is not None else "none",
                        spf_domain=spf.domain if spf is not None else "",
                        dkim=[(d.result, d.domain) for d in dkim],
                        resolver=self.resolver,
                    ),
                    c.timeout,
                )
            except TimeoutError:
                dmarc = DmarcResult("temperror", header_from, "none", "none", "DNS time-out")
        checked_dkim = c.dkim != "off" or c.dmarc != "off"
        header = authresults.authentication_results(
            self.authserv_id, spf=spf, dkim=dkim if checked_dkim else None, dmarc=dmarc
        )
        reply = self._decide(spf, dkim, dmarc)
        if reply is None and _quarantined(dmarc, c.dmarc):
            assert dmarc is not None
            # RFC 7489 §6.3: deliver, but as suspicious (a Junk folder once IMAP has one).
            header += f"X-Postbote-Quarantine: dmarc=fail header.from={dmarc.domain}\r\n".encode()
        log.info(
            "checks ip=%s from=%s spf=%s dkim=%s dmarc=%s -> %s",
            ip,
            sender or "<>",
            spf.result if spf else "off",
            ",".join(d.result for d in dkim) or "none",
            dmarc.result if dmarc else "off",
            reply.code if reply else "accept",
        )
        return CheckOutcome(reply, header)

    async def _spf_and_dkim(
        self, ip: str, helo: str, sender: str, message: bytes
    ) -> tuple[SpfResult | None, list[DkimResult]]:
        """Both at once (independent DNS lookups); DMARC needs both, so a check that is
        "off" still runs when DMARC is on."""
        c = self.config

        async def spf() -> SpfResult | None:
            if c.spf == "off" and c.dmarc == "off":
                return None
            return await check_sender(
                ip, sender, helo, resolver=self.resolver, receiver=self.authserv_id
            )

        async def dkim() -> list[DkimResult]:
            if c.dkim == "off" and c.dmarc == "off":
                return []
            return await verify(message, self.resolver)

        spf_result, dkim_results = await asyncio.gather(spf(), dkim())
        return spf_result, dkim_results

    def _decide(
        self, spf: SpfResult | None, dkim: Sequence[DkimResult], dmarc: DmarcResult | None
    ) -> Reply | None:
        c = self.config
        if dmarc is not None and c.dmarc == "policy":
            if dmarc.result == "fail" and dmarc.disposition == "reject":
                return C550_DMARC_REJECT
            if dmarc.result == "temperror":
                # The domain's policy could not be read: ask the sender to try again
                # rather than guess (a reject could lose good mail, a pass let a forgery in).
                return C451_DNS
        if spf is not None and c.spf == "reject":
            if spf.result == "fail":
                return C550_SPF_FAIL
            if spf.result == "temperror":
                return C451_DNS  # RFC 7208 §8.6
        if c.dkim == "reject" and dkim and not any(d.result == "pass" for d in dkim):
            if any(d.result == "temperror" for d in dkim):
                return C451_DNS
            if any(d.result == "fail" for d in dkim):
                return C550_DKIM_FAIL
        return None


def _quarantined(dmarc: DmarcResult | None, mode: str) -> bool:
    return (
        dmarc is not None
        and mode == "policy"
        and dmarc.result == "fail"
        and dmarc.disposition == "quarantine"
    )


def _spf_timeout(sender: str, helo: str) -> SpfResult:
    domain = sender.rpartition("@")[2] if sender else helo
    return SpfResult("temperror", domain, "mailfrom" if sender else "helo", problem="DNS time-out")
