"""The retry policy: next attempt times, giving up, and which reports are due."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postbote.queue.schedule import DEFAULT_INTERVALS, Attempt, RetryPolicy, decide

POLICY = RetryPolicy()
T0 = 1_000_000.0


def temp(rcpt: str = "a@b.test", reply: str = "451 4.3.0 try later") -> Attempt:
    return Attempt(rcpt, reply, "temporary", remote_mta="mx.b.test")


def test_documented_schedule() -> None:
    # 5m, 10m, 20m, 40m, 1h20 after the 1st..5th failure, then every 2h.
    assert [POLICY.delay_after(n) for n in range(1, 9)] == [
        300,
        600,
        1200,
        2400,
        4800,
        7200,
        7200,
        7200,
    ]
    assert DEFAULT_INTERVALS[-1] == 7200


def test_temporary_failure_is_deferred_by_the_schedule() -> None:
    r = decide(POLICY, temp(), notify=None, attempts=2, created=T0, now=T0 + 400)
    assert (r.state, r.next_attempt, r.report) == ("deferred", T0 + 400 + 600, None)
    assert r.reply == "451 4.3.0 try later" and r.remote_mta == "mx.b.test"


def test_last_attempt_is_made_at_the_give_up_time() -> None:
    near_end = T0 + POLICY.max_lifetime - 10
    r = decide(POLICY, temp(), notify=None, attempts=30, created=T0, now=near_end)
    assert r.state == "deferred" and r.next_attempt == T0 + POLICY.max_lifetime


def test_expiry_fails_with_the_last_reply_and_reports() -> None:
    r = decide(POLICY, temp(), notify=None, attempts=40, created=T0, now=T0 + POLICY.max_lifetime)
    assert r.state == "failed" and r.report == "failed"
    assert r.reply.startswith("451 4.3.0 try later (gave up after 5.0 days")


def test_permanent_failure_reports_unless_notify_never() -> None:
    perm = Attempt("a@b.test", "550 5.1.1 no such user", "permanent")
    assert decide(POLICY, perm, notify=None, attempts=1, created=T0, now=T0).report == "failed"
    never = decide(POLICY, perm, notify=("NEVER",), attempts=1, created=T0, now=T0)
    assert never.state == "failed" and never.report is None
    success_only = decide(POLICY, perm, notify=("SUCCESS",), attempts=1, created=T0, now=T0)
    assert success_only.report is None


def test_delay_warning_once_after_the_threshold() -> None:
    early = decide(POLICY, temp(), notify=None, attempts=3, created=T0, now=T0 + 3600)
    assert early.report is None
    late = decide(POLICY, temp(), notify=None, attempts=6, created=T0, now=T0 + 4 * 3600)
    assert late.report == "delayed"
    again = decide(
        POLICY, temp(), notify=None, attempts=7, created=T0, now=T0 + 6 * 3600, warned={"a@b.test"}
    )
    assert again.report is None
    off = RetryPolicy(delay_warning=0)
    assert decide(off, temp(), notify=None, attempts=9, created=T0, now=T0 + 9e4).report is None
    no_delay = decide(POLICY, temp(), notify=("FAILURE",), attempts=6, created=T0, now=T0 + 5e4)
    assert no_delay.report is None


@pytest.mark.parametrize(
    ("relayed", "local", "notify", "report"),
    [
        (False, False, ("SUCCESS",), None),  # the next server got NOTIFY and reports itself
        (True, False, ("SUCCESS",), "relayed"),  # RFC 3461 §5.2.2: it cannot, so we say so
        (False, True, ("SUCCESS",), "delivered"),
        (True, False, None, None),
        (False, True, ("FAILURE",), None),
    ],
)
def test_success_reports(
    relayed: bool, local: bool, notify: tuple[str, ...] | None, report: str | None
) -> None:
    ok = Attempt("a@b.test", "250 2.0.0 ok", "delivered", relayed=relayed)
    r = decide(POLICY, ok, notify=notify, attempts=1, created=T0, now=T0, local=local)
    assert r.state == "delivered" and r.report == report


@given(
    attempts=st.integers(min_value=1, max_value=500),
    age=st.floats(min_value=0, max_value=10 * 86400),
)
def test_a_deferral_never_outlives_the_queue_lifetime(attempts: int, age: float) -> None:
    r = decide(POLICY, temp(), notify=None, attempts=attempts, created=T0, now=T0 + age)
    if r.state == "deferred":
        assert T0 + age < r.next_attempt <= T0 + POLICY.max_lifetime
    else:
        assert r.state == "failed" and age >= POLICY.max_lifetime
