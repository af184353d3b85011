"""When to try again, when to give up, and what to report: the outbound retry policy.

Pure functions of the attempt's outcome and the clock the caller passes in; the
scheduler (queue/outbound.py) records what they decide.

The default schedule (issue 4 §1, documented in docs/configuration.md): the first
attempt at once, then 5 min, 10 min, 20 min, 40 min, 1 h 20 after each failure, then
every 2 h, until the message has been in the queue for ``max_lifetime`` (5 days, the
"give-up time" of RFC 5321 §4.5.4.1, which asks for at least 4-5 days). A last attempt
is made at the give-up time itself.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from postbote.queue.dsn import wants_report
from postbote.store.interfaces import RecipientResult

DEFAULT_INTERVALS = (300.0, 600.0, 1200.0, 2400.0, 4800.0, 7200.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    intervals: tuple[float, ...] = DEFAULT_INTERVALS  # the last one repeats
    max_lifetime: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0  # 0: never warn (RFC 3461 NOTIFY=DELAY)

    def delay_after(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt (1 = the first)."""
        return self.intervals[min(max(attempts, 1), len(self.intervals)) - 1]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt gave for one recipient, before the policy is applied."""

    recipient: str
    reply: str  # "250 2.0.0 ok", "550 5.1.1 ...", or our own "4.4.1 connection refused"
    outcome: str  # "delivered" | "temporary" | "permanent"
    remote_mta: str = ""
    relayed: bool = False  # handed to a server without DSN support (RFC 3461 §5.2.2)


def decide(
    policy: RetryPolicy,
    attempt: Attempt,
    *,
    notify: tuple[str, ...] | None,
    attempts: int,
    created: float,
    now: float,
    warned: Collection[str] = (),
    local: bool = False,
) -> RecipientResult:
    """The row's next state, next attempt time and pending report for one recipient."""
    rcpt, reply, mta = attempt.recipient, attempt.reply, attempt.remote_mta
    if attempt.outcome == "delivered":
        # RFC 3461 §5.2.2: a server that speaks DSN got NOTIFY passed on and reports success
        # itself; otherwise we report "relayed", or "delivered" for a local mailbox (§5.2.3).
        action = "delivered" if local else "relayed" if attempt.relayed else None
        report = action if action and wants_report(notify, action) else None
        return RecipientResult(rcpt, "delivered", reply, remote_mta=mta, report=report)
    give_up = created + policy.max_lifetime
    if attempt.outcome == "permanent" or now >= give_up:
        if attempt.outcome != "permanent":
            reply = f"{reply} (gave up after {_age(now - created)} in the queue)"
        report = "failed" if wants_report(notify, "failed") else None
        return RecipientResult(rcpt, "failed", reply, remote_mta=mta, report=report)
    next_attempt = min(now + policy.delay_after(attempts), give_up)
    warn = (
        policy.delay_warning > 0
        and now - created >= policy.delay_warning
        and rcpt not in warned
        and wants_report(notify, "delayed")
    )
    return RecipientResult(
        rcpt,
        "deferred",
        reply,
        next_attempt=next_attempt,
        remote_mta=mta,
        report="delayed" if warn else None,
    )


def _age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"
