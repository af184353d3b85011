"""Tests for the login brute-force limiter (RFC 4954 §9). Time is passed in; no sleeps."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postbote.policy.ratelimit import AuthLimiter, LimiterSettings, Verdict, client_key

IP = "192.0.2.1"
OTHER_IP = "198.51.100.7"


def fail_n(
    lim: AuthLimiter, n: int, ip: str = IP, account: str | None = "bob", t: float = 0.0
) -> None:
    for _ in range(n):
        lim.failure(ip, account, t)


# -- client_key ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::abcd", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::1", "::/64"),
        ("not an address", "not an address"),
        ("", ""),
    ],
)
def test_client_key(ip, key):
    assert client_key(ip) == key


# -- per-IP lockout --------------------------------------------------------------------


def test_trips_after_n_failures_and_refuses():
    s = LimiterSettings(max_failures_per_ip=5, max_failures_per_account=100)
    lim = AuthLimiter(s)
    fail_n(lim, 4, t=10.0)
    assert not lim.check(IP, 10.0).refuse
    lim.failure(IP, "bob", 10.0)
    v = lim.check(IP, 10.0)
    assert v.refuse
    assert v.reason == "ip locked"
    assert not lim.check(OTHER_IP, 10.0).refuse


def test_failures_without_account_count_for_the_ip():
    lim = AuthLimiter(LimiterSettings(max_failures_per_ip=3))
    fail_n(lim, 3, account=None)
    assert lim.check(IP, 0.0) == Verdict(True, 0.0, "ip locked")


def test_recovers_after_lockout():
    s = LimiterSettings(max_failures_per_ip=3, window=60.0, lockout=300.0)
    lim = AuthLimiter(s)
    fail_n(lim, 3, t=1000.0)
    assert lim.check(IP, 1000.0).refuse
    assert lim.check(IP, 1299.9).refuse
    assert lim.check(IP, 1300.0) == Verdict(refuse=False, delay=0.0)


def test_recovered_ip_starts_a_fresh_count():
    s = LimiterSettings(max_failures_per_ip=3, window=900.0, lockout=60.0, delay_after=100)
    lim = AuthLimiter(s)
    fail_n(lim, 3, t=0.0)
    assert lim.check(IP, 60.0) == Verdict(False, 0.0)
    fail_n(lim, 2, t=61.0)
    assert not lim.check(IP, 61.0).refuse
    lim.failure(IP, "bob", 62.0)
    assert lim.check(IP, 62.0).refuse


def test_failures_during_lockout_extend_it_only_when_they_trip_again():
    s = LimiterSettings(max_failures_per_ip=2, max_failures_per_account=100, lockout=100.0)
    lim = AuthLimiter(s)
    fail_n(lim, 2, t=0.0)  # locked until 100
    lim.failure(IP, "bob", 50.0)
    assert not lim.check(IP, 100.0).refuse
    lim.failure(IP, "bob", 100.0)  # second failure since the trip: locked until 200
    assert lim.check(IP, 199.0).refuse
    assert not lim.check(IP, 200.0).refuse


def test_failures_older_than_window_no_longer_count():
    s = LimiterSettings(max_failures_per_ip=3, window=100.0, delay_after=100)
    lim = AuthLimiter(s)
    lim.failure(IP, "bob", 0.0)
    lim.failure(IP, "bob", 50.0)
    lim.failure(IP, "bob", 100.0)  # the one at 0 has expired: count is 2
    assert not lim.check(IP, 100.0).refuse
    lim.failure(IP, "bob", 149.0)  # 50, 100, 149 within 100 s: trips
    assert lim.check(IP, 149.0).refuse


def test_expired_entries_are_dropped():
    lim = AuthLimiter(LimiterSettings(window=10.0))
    lim.failure(IP, "bob", 0.0)
    assert len(lim) == 2  # the client key and the account
    lim.check(IP, 10.0)
    lim.check_account("bob", 10.0)
    assert len(lim) == 0


# -- delays ----------------------------------------------------------------------------


def test_delays_grow_after_delay_after_and_cap_at_max_delay():
    s = LimiterSettings(
        max_failures_per_ip=100,
        max_failures_per_account=100,
        delay_after=3,
        delay_step=1.5,
        max_delay=4.0,
    )
    lim = AuthLimiter(s)
    delays = []
    for _ in range(8):
        delays.append(lim.check(IP, 0.0).delay)
        lim.failure(IP, "bob", 0.0)
    assert delays == [0.0, 0.0, 0.0, 0.0, 1.5, 3.0, 4.0, 4.0]
    assert not lim.check(OTHER_IP, 0.0).delay


def test_default_delays():
    lim = AuthLimiter()
    fail_n(lim, 5, account=None)
    assert lim.check(IP, 0.0) == Verdict(refuse=False, delay=2.0)


# -- accounts --------------------------------------------------------------------------


def test_account_lockout_applies_from_every_ip():
    s = LimiterSettings(max_failures_per_ip=100, max_failures_per_account=4)
    lim = AuthLimiter(s)
    for i in range(4):  # a distributed attack: one failure per client
        assert not lim.check_account("alice", 0.0).refuse
        lim.failure(f"203.0.113.{i}", "alice", 0.0)
    for ip in ("203.0.113.200", "2001:db8::1", IP):
        assert not lim.check(ip, 1.0).refuse
        v = lim.check_account("alice", 1.0)
        assert v.refuse
        assert v.reason == "account locked"
    assert not lim.check_account("carol", 1.0).refuse
    assert not lim.check_account("alice", 0.0 + s.lockout).refuse


def test_accounts_compare_case_insensitively():
    lim = AuthLimiter(LimiterSettings(max_failures_per_account=3))
    lim.failure(IP, "Alice", 0.0)
    lim.failure(OTHER_IP, "ALICE", 0.0)
    lim.failure("203.0.113.9", "alice", 0.0)
    assert lim.check_account("aLiCe", 0.0).refuse


def test_success_does_not_reset_ip_failures_for_other_accounts():
    # The attacker owns mallory's password and guesses others from one address, logging
    # in as mallory between guesses to try to reset his budget.
    s = LimiterSettings(max_failures_per_ip=5, max_failures_per_account=100, delay_after=2)
    lim = AuthLimiter(s)
    for i in range(4):
        lim.failure(IP, f"victim{i}", 0.0)
        lim.success(IP, "mallory", 0.0)
    assert lim.check(IP, 0.0).delay == 2.0  # the 4 failures still count
    lim.failure(IP, "victim4", 0.0)
    lim.success(IP, "mallory", 0.0)
    assert lim.check(IP, 0.0).refuse


def test_success_clears_that_accounts_failures_from_this_ip():
    s = LimiterSettings(max_failures_per_ip=4, max_failures_per_account=3, delay_after=0)
    lim = AuthLimiter(s)
    lim.failure(IP, "Bob", 0.0)  # typos, then the right password
    lim.failure(IP, "bob", 0.0)
    lim.failure(IP, None, 0.0)
    assert lim.check(IP, 0.0).delay == 3.0
    lim.success(IP, "BOB", 0.0)
    assert lim.check(IP, 0.0).delay == 1.0  # the unnamed failure stays
    fail_n(lim, 2, account="bob")  # the account starts from 0: 2 of 3
    assert not lim.check_account("bob", 0.0).refuse
    lim.failure(IP, "bob", 0.0)  # 4 for the ip, 3 for the account: both trip
    assert lim.check(IP, 0.0).refuse
    assert lim.check_account("bob", 0.0).refuse


def test_success_keeps_the_accounts_failures_from_other_ips():
    s = LimiterSettings(max_failures_per_ip=100, max_failures_per_account=3)
    lim = AuthLimiter(s)
    lim.failure(OTHER_IP, "bob", 0.0)
    lim.failure("203.0.113.5", "bob", 0.0)
    lim.failure(IP, "bob", 0.0)  # trips: the last failure is the third
    assert lim.check_account("bob", 0.0).refuse
    lim = AuthLimiter(s)
    lim.failure(OTHER_IP, "bob", 0.0)
    lim.failure("203.0.113.5", "bob", 0.0)
    lim.success(IP, "bob", 0.0)  # bob himself logs in from elsewhere
    lim.failure(OTHER_IP, "bob", 0.0)
    assert lim.check_account("bob", 0.0).refuse


def test_success_does_not_lift_a_lockout():
    lim = AuthLimiter(LimiterSettings(max_failures_per_ip=2, max_failures_per_account=2))
    fail_n(lim, 2)
    lim.success(IP, "bob", 0.0)
    assert lim.check(IP, 1.0).refuse
    assert lim.check_account("bob", 1.0).refuse


# -- IPv6 and IPv4-mapped --------------------------------------------------------------


def test_ipv6_same_slash64_shares_a_key():
    lim = AuthLimiter(LimiterSettings(max_failures_per_ip=3, max_failures_per_account=100))
    for ip in ("2001:db8:aa:bb::1", "2001:db8:aa:bb::2", "2001:db8:aa:bb:dead:beef:0:1"):
        lim.failure(ip, "bob", 0.0)
    assert lim.check("2001:db8:aa:bb:ffff::9", 0.0).refuse
    assert not lim.check("2001:db8:aa:bc::1", 0.0).refuse  # a different /64
    assert not lim.check("2001:db8:aa::1", 0.0).refuse


def test_ipv4_mapped_ipv6_is_the_ipv4_address():
    lim = AuthLimiter(LimiterSettings(max_failures_per_ip=2, max_failures_per_account=100))
    lim.failure("::ffff:192.0.2.1", "bob", 0.0)
    lim.failure("192.0.2.1", "bob", 0.0)
    assert lim.check("192.0.2.1", 0.0).refuse
    assert lim.check("::ffff:192.0.2.1", 0.0).refuse
    assert not lim.check("::ffff:192.0.2.2", 0.0).refuse


# -- memory bound ----------------------------------------------------------------------


def test_memory_bound_under_200k_distinct_ips():
    s = LimiterSettings(max_entries=50_000)
    lim = AuthLimiter(s)
    for i in range(200_000):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        lim.failure(ip, None if i % 2 else f"user{i}", float(i) / 1000)
        assert len(lim) <= s.max_entries
    assert len(lim) == s.max_entries


def test_checks_of_unknown_ips_create_nothing():
    lim = AuthLimiter()
    for i in range(1000):
        lim.check(f"2001:db8:{i:x}::1", 0.0)
        lim.check_account(f"user{i}", 0.0)
    assert len(lim) == 0


def test_eviction_takes_the_least_recently_touched_first():
    lim = AuthLimiter(LimiterSettings(max_entries=3, max_failures_per_ip=2))
    lim.failure("192.0.2.1", None, 0.0)
    lim.failure("192.0.2.2", None, 0.0)
    lim.failure("192.0.2.3", None, 0.0)
    lim.check("192.0.2.1", 1.0)  # touched: now .2 is the oldest
    lim.failure("192.0.2.4", None, 1.0)
    assert len(lim) == 3
    lim.failure("192.0.2.1", None, 2.0)  # remembered: second failure trips
    assert lim.check("192.0.2.1", 2.0).refuse
    lim.failure("192.0.2.2", None, 2.0)  # forgotten: first failure again
    assert not lim.check("192.0.2.2", 2.0).refuse


@pytest.mark.parametrize(
    "bad",
    [
        {"max_failures_per_ip": 0},
        {"max_failures_per_account": 0},
        {"window": 0.0},
        {"lockout": -1.0},
        {"delay_after": -1},
        {"delay_step": -1.0},
        {"max_delay": -1.0},
        {"max_entries": 0},
    ],
)
def test_settings_are_validated(bad):
    with pytest.raises(ValueError):
        LimiterSettings(**bad)


# -- property: a reference model -------------------------------------------------------


class Model:
    """Straightforward reference: every failure kept in a list, counts recomputed."""

    def __init__(self, s: LimiterSettings) -> None:
        self.s = s
        # per key: [time, other side, alive, forgiven]; alive=False once forgiven by a
        # success or consumed by a trip; forgiven=True only for the former
        self.failures: dict[tuple[str, str], list[list[Any]]] = {}
        self.locked_until: dict[tuple[str, str], float] = {}

    def recent(self, key: tuple[str, str], now: float) -> list[list[Any]]:
        w = self.s.window
        return [f for f in self.failures.get(key, []) if f[2] and now - f[0] < w]

    def record(self, key: tuple[str, str], other: str | None, limit: int, now: float) -> None:
        self.failures.setdefault(key, []).append([now, other, True, False])
        recent = self.recent(key, now)
        if len(recent) >= limit:
            until = max(self.locked_until.get(key, -1.0), now + self.s.lockout)
            self.locked_until[key] = until
            for f in recent:
                f[2] = False

    def forget(self, key: tuple[str, str], other: str | None) -> None:
        for f in self.failures.get(key, []):
            if f[1] == other:
                f[2] = False
                f[3] = True

    def locked(self, key: tuple[str, str], now: float) -> bool:
        return now < self.locked_until.get(key, -1.0)

    def may_refuse(self, key: tuple[str, str], limit: int, now: float) -> bool:
        """The property's bound, which eviction cannot break: a refusal needs a lockout
        from an earlier trip or ``limit`` unforgiven failures within the window. (After
        an eviction the limiter may have lost a trip, and with it the reset of the
        count, so it can trip later than the model: that is allowed.)"""
        w = self.s.window
        unforgiven = [f for f in self.failures.get(key, []) if not f[3] and now - f[0] < w]
        return self.locked(key, now) or len(unforgiven) >= limit


def ip_strategy() -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            "192.0.2.1",
            "192.0.2.2",
            "::ffff:192.0.2.1",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8:1::1",
        ]
    )


EVENTS = st.lists(
    st.tuples(
        ip_strategy(),
        st.sampled_from(["alice", "Alice", "bob", "mallory", None]),
        st.booleans(),
        st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 10.0, 29.9, 30.0, 100.0]),
    ),
    max_size=80,
)
SETTINGS = st.builds(
    LimiterSettings,
    max_failures_per_ip=st.integers(1, 5),
    max_failures_per_account=st.integers(1, 5),
    window=st.sampled_from([1.0, 10.0, 30.0, 100.0]),
    lockout=st.sampled_from([0.0, 5.0, 30.0, 100.0]),
    delay_after=st.integers(0, 3),
    delay_step=st.sampled_from([0.0, 1.0, 2.5]),
    max_delay=st.sampled_from([0.0, 3.0, 8.0]),
    max_entries=st.sampled_from([1, 2, 3, 5, 1000]),
)


@settings(max_examples=400, deadline=None)
@given(s=SETTINGS, events=EVENTS)
def test_property_never_refuses_wrongly_and_stays_bounded(s, events):
    """check() never refuses a client with fewer than max_failures_per_ip failures in the
    window unless it is in a lockout from an earlier trip (nor check_account an account);
    len() <= max_entries. Without eviction the limiter matches the model exactly."""
    lim = AuthLimiter(s)
    model = Model(s)
    exact = s.max_entries >= 1000  # nothing is ever evicted
    now = 0.0
    for ip, account, ok, dt in events:
        now += dt
        ckey = ("ip", client_key(ip))
        v = lim.check(ip, now)
        model_locked = model.locked(ckey, now)
        assert not v.refuse or model.may_refuse(ckey, s.max_failures_per_ip, now)
        if exact:
            assert v.refuse == model_locked
            n = len(model.recent(ckey, now))
            if not model_locked:
                want = min(s.max_delay, max(0, n - s.delay_after) * s.delay_step)
                assert v.delay == pytest.approx(want)
        assert v.delay <= s.max_delay
        if v.refuse:
            continue
        aname = None if account is None else account.lower()
        akey = None if aname is None else ("account", aname)
        if account is not None and akey is not None:
            va = lim.check_account(account, now)
            assert not va.refuse or model.may_refuse(akey, s.max_failures_per_account, now)
            if exact:
                assert va.refuse == model.locked(akey, now)
            if va.refuse:
                continue
        if ok and account is not None and akey is not None:
            lim.success(ip, account, now)
            model.forget(ckey, aname)
            model.forget(akey, ckey[1])
        else:
            lim.failure(ip, account, now)
            model.record(ckey, aname, s.max_failures_per_ip, now)
            if akey is not None:
                model.record(akey, ckey[1], s.max_failures_per_account, now)
        assert len(lim) <= s.max_entries


def test_account_named_like_an_address_is_not_that_client():
    s = LimiterSettings(max_failures_per_ip=100, max_failures_per_account=2)
    lim = AuthLimiter(s)
    lim.failure(IP, IP, 0.0)
    lim.failure(OTHER_IP, IP, 0.0)
    assert lim.check_account(IP, 0.0).refuse
    assert not lim.check(IP, 0.0).refuse
