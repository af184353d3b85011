"""SMTP AUTH for the server glue: runs SASL exchanges (sasl.py) against the account
store, behind the brute-force limiter (policy/ratelimit.py).

Password checks cost tens of milliseconds of Argon2, so each exchange step runs in a
worker thread. Failures are answered the same way whether the account exists or not
(RFC 4954 §9: 535 5.7.8), and only after a delay that grows with the client's recent
failures; past the limits the client is refused with 421 4.7.0 and disconnected for a
cool-down period. Logs name the client IP and the account tried, never a password.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from postbote import sasl
from postbote.errors import StoreError
from postbote.policy.ratelimit import AuthLimiter, LimiterSettings
from postbote.smtp.replies import Reply
from postbote.store.addresses import normalize_address

log = logging.getLogger("postbote.auth")

C421_LOCKED = Reply.make(421, "4.7.0", "Too many failed logins, try again later")
C501_MALFORMED = Reply.make(501, "5.5.2", "Malformed authentication data")
C535_BAD_CREDENTIALS = Reply.make(535, "5.7.8", "Authentication credentials invalid")


def _normal(user: str | None) -> str | None:
    """The account name as the directory spells it (case, IDN), for the limiter and as
    the session's identity; client text that is no address is just lower-cased."""
    if user is None:
        return None
    try:
        return normalize_address(user)
    except StoreError:
        return user.lower()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the glue does next: send a challenge, record success, or reply (and maybe
    close the connection)."""

    challenge: bytes | None = None
    identity: str | None = None
    reply: Reply | None = None
    close: bool = False


class Authenticator:
    """Shared by every session of a node (one limiter for SMTP, later POP3/IMAP)."""

    def __init__(
        self,
        credentials: sasl.Credentials,
        settings: LimiterSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self.limiter = AuthLimiter(settings)
        self.clock = clock

    def begin(self, ip: str, mechanism: str) -> tuple[sasl.Exchange | None, Outcome | None]:
        """Start an exchange, or refuse at once when the client is locked out."""
        verdict = self.limiter.check(ip, self.clock())
        if verdict.refuse:
            log.warning("auth refused ip=%s: %s", ip, verdict.reason)
            return None, Outcome(reply=C421_LOCKED, close=True)
        return sasl.new_exchange(mechanism, self.credentials), None

    async def step(
        self, ip: str, exchange: sasl.Exchange, data: bytes | None, first: bool
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        if first:
            result = await loop.run_in_executor(None, exchange.start, data)
        else:
            result = await loop.run_in_executor(None, exchange.step, data or b"")
        if isinstance(result, sasl.Challenge):
            return Outcome(challenge=result.data)
        account = _normal(exchange.attempted)
        now = self.clock()
        if isinstance(result, sasl.Success):
            identity = _normal(result.identity) or result.identity
            verdict = self.limiter.check_account(identity, now)
            if verdict.refuse:
                log.warning("auth refused ip=%s user=%r: %s", ip, identity, verdict.reason)
                return Outcome(reply=C421_LOCKED, close=True)
            self.limiter.success(ip, identity, now)
            log.info("auth ok ip=%s user=%r mechanism=%s", ip, identity, exchange.mechanism)
            return Outcome(identity=identity)
        if result.malformed:
            log.info("auth malformed ip=%s: %s", ip, result.reason)
            self.limiter.failure(ip, account, now)
            return Outcome(reply=C501_MALFORMED)
        log.warning("auth failed ip=%s user=%r: %s", ip, account, result.reason)
        self.limiter.failure(ip, account, now)
        verdict = self.limiter.check(ip, now)
        if account is not None and not verdict.refuse:
            account_verdict = self.limiter.check_account(account, now)
            if account_verdict.refuse:
                verdict = account_verdict
        if verdict.delay:
            await asyncio.sleep(verdict.delay)  # slow down guessing (RFC 4954 §9)
        if verdict.refuse:
            return Outcome(reply=C421_LOCKED, close=True)
        return Outcome(reply=C535_BAD_CREDENTIALS)
