"""Brute-force defence for password logins (SMTP AUTH now; POP3 and IMAP later).

RFC 4954 §9 (Security Considerations): servers should limit the rate of failed
authentication attempts, and the OWASP Authentication and Credential Stuffing Cheat
Sheets recommend counting failures both per client and per account, answering ever
more slowly, and locking out for a cool-down period. This module owns that
bookkeeping and nothing else: it is sans-IO (the caller passes ``now`` in seconds,
any monotonic clock), never sleeps and logs nothing (the caller logs IP and account,
never the password).

How the caller drives it, per login attempt::

    v = limiter.check(ip, now)                  # before the attempt: refuse or delay
    ...client names the account...
    v = limiter.check_account(account, now)     # refuse if the account is locked
    ...verify the password...
    limiter.failure(ip, account, now) / limiter.success(ip, account, now)

Design:

- Counting: a sliding window, not a fixed-window counter. Each key (client key or
  account) keeps a deque of its recent failure timestamps, pruned from the left when
  older than ``window``. A fixed window would let an attacker spend two budgets
  straddling a window boundary; the deque costs at most ``max_failures`` entries per
  key because it is cleared when it trips (below).
- Lockout: when a key's count reaches its maximum within the window, the key is
  refused until ``now + lockout`` and its count starts afresh; failures recorded
  during the lockout count towards the next trip. With ``lockout >= window`` (the
  default) this is a strict budget of ``max_failures`` per window.
- Client key: an IPv4 address, or the /64 of an IPv6 address (one subscriber
  usually holds a whole /64, so per-address counting would be free to evade).
- Each failure remembers the account it was for (per client key) and the client key
  it came from (per account), so that a success removes exactly the failures of that
  (client, account) pair: an attacker who owns one valid account cannot reset the
  budget he spends guessing others, and a user's login does not forgive failures
  other clients caused against his account. A success never lifts a lockout.
- Account lockout is global (applies to every client). This stops distributed
  guessing of one password; the price is that anyone can lock an account out for
  ``lockout`` seconds, which the delay and the per-client lockout make expensive.
- Memory: one ordered dict holds every client and account entry, least recently
  touched first; past ``max_entries`` the oldest are evicted. ``check`` on an unknown
  client creates nothing; entries that no longer hold failures or a lockout are
  dropped when next touched. Eviction forgets, so it can only make the limiter more
  lenient, never refuse someone wrongly.
- Cost: O(1) amortised per call, plus at most ``max_failures`` steps in ``success``.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["AuthLimiter", "LimiterSettings", "Verdict", "client_key"]


@dataclass(frozen=True, slots=True)
class LimiterSettings:
    max_failures_per_ip: int = 10  # per client key within `window` before lockout
    max_failures_per_account: int = 10  # per account within `window`; locks it for everyone
    window: float = 900.0  # seconds a failure counts
    lockout: float = 900.0  # cool-down: how long a tripped client/account stays refused
    delay_after: int = 3  # failures (per client key) after which answers are delayed
    delay_step: float = 1.0  # seconds added per failure beyond delay_after
    max_delay: float = 8.0
    max_entries: int = 100_000  # memory bound: least recently touched entries go first

    def __post_init__(self) -> None:
        if self.max_failures_per_ip < 1 or self.max_failures_per_account < 1:
            raise ValueError("max_failures_per_ip/account must be >= 1")
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if self.lockout < 0 or self.delay_step < 0 or self.max_delay < 0:
            raise ValueError("lockout, delay_step and max_delay must be >= 0")
        if self.delay_after < 0:
            raise ValueError("delay_after must be >= 0")
        if self.max_entries < 1:
            raise ValueError("max_entries must be >= 1")


@dataclass(frozen=True, slots=True)
class Verdict:
    refuse: bool  # True: answer 421 4.7.0 and close (locked out)
    delay: float  # seconds to wait before answering this attempt (0 if none)
    reason: str = ""  # for the log: "ip locked", "account locked", ""


ALLOW = Verdict(refuse=False, delay=0.0)
IP_LOCKED = Verdict(refuse=True, delay=0.0, reason="ip locked")
ACCOUNT_LOCKED = Verdict(refuse=True, delay=0.0, reason="account locked")


def client_key(ip: str) -> str:
    """The key failures are counted under: the IPv4 address itself, the /64 network of an
    IPv6 address ("2001:db8:1:2::/64"), the IPv4 address inside an IPv4-mapped IPv6
    address, or ``ip`` unchanged if it is not an address."""
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv4Address):
        return str(addr)
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return f"{ipaddress.IPv6Address(int(addr) & _PREFIX64)}/64"


_PREFIX64 = ((1 << 64) - 1) << 64

_Kind = Literal["ip", "account"]


@dataclass(slots=True)
class _Entry:
    """Failures of one client key or one account, oldest first: (time, other side), where
    the other side is the account (None if unnamed) for a client key and the client key
    for an account."""

    failures: deque[tuple[float, str | None]] = field(default_factory=deque)
    locked_until: float = float("-inf")

    def prune(self, now: float, window: float) -> None:
        failures = self.failures
        while failures and now - failures[0][0] >= window:
            failures.popleft()

    def idle(self, now: float) -> bool:
        return not self.failures and now >= self.locked_until


class AuthLimiter:
    """Counts failed logins per client key and per account; decides refuse/delay.

    Driven only by its methods, each given the current time ``now`` (seconds, from a
    clock that does not go backwards): ``check`` and ``check_account`` before an attempt,
    ``failure`` or ``success`` after it. It holds no timers; expired state is pruned
    when touched and evicted least-recently-touched first beyond ``max_entries``.
    """

    __slots__ = ("_entries", "_settings")

    def __init__(self, settings: LimiterSettings = LimiterSettings()) -> None:
        self._settings = settings
        self._entries: OrderedDict[tuple[_Kind, str], _Entry] = OrderedDict()

    @property
    def settings(self) -> LimiterSettings:
        return self._settings

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, ip: str, now: float) -> Verdict:
        """Before a login attempt from ``ip``: refuse while its client key is locked out,
        else delay in proportion to its recent failures."""
        s = self._settings
        entry = self._touch(("ip", client_key(ip)), now)
        if entry is None:
            return ALLOW
        if now < entry.locked_until:
            return IP_LOCKED
        excess = len(entry.failures) - s.delay_after
        if excess <= 0:
            return ALLOW
        return Verdict(refuse=False, delay=min(s.max_delay, excess * s.delay_step))

    def check_account(self, account: str, now: float) -> Verdict:
        """After the client named ``account``, before the password is verified: refuse
        while that account is locked (from any client)."""
        entry = self._touch(("account", _account_key(account)), now)
        if entry is not None and now < entry.locked_until:
            return ACCOUNT_LOCKED
        return ALLOW

    def failure(self, ip: str, account: str | None, now: float) -> None:
        """Record a failed attempt from ``ip`` for ``account`` (None if the client never
        named one). Trips the client's and the account's lockout when its count reaches
        the maximum within the window."""
        s = self._settings
        ckey = client_key(ip)
        akey = None if account is None else _account_key(account)
        self._record(("ip", ckey), akey, s.max_failures_per_ip, now)
        if akey is not None:
            self._record(("account", akey), ckey, s.max_failures_per_account, now)

    def success(self, ip: str, account: str, now: float) -> None:
        """A successful login: forget the failures for ``account`` from ``ip``'s client
        key, and only those. The client's failures for other accounts (or for none) and
        the account's failures from other clients still count; lockouts stay."""
        ckey = client_key(ip)
        akey = _account_key(account)
        self._forget(("ip", ckey), akey, now)
        self._forget(("account", akey), ckey, now)

    # -- internals ----------------------------------------------------------------

    def _touch(self, key: tuple[_Kind, str], now: float) -> _Entry | None:
        """The live entry for ``key``, pruned and marked most recently used; None (and
        the entry dropped) if it holds nothing any more."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.prune(now, self._settings.window)
        if entry.idle(now):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def _record(self, key: tuple[_Kind, str], other: str | None, limit: int, now: float) -> None:
        entry = self._touch(key, now)
        if entry is None:
            entry = self._entries[key] = _Entry()
            if len(self._entries) > self._settings.max_entries:
                self._entries.popitem(last=False)
        entry.failures.append((now, other))
        if len(entry.failures) >= limit:
            # Tripped: refuse for the cool-down, then start counting afresh.
            entry.locked_until = max(entry.locked_until, now + self._settings.lockout)
            entry.failures.clear()

    def _forget(self, key: tuple[_Kind, str], other: str, now: float) -> None:
        entry = self._touch(key, now)
        if entry is None:
            return
        kept = [f for f in entry.failures if f[1] != other]
        if len(kept) != len(entry.failures):
            entry.failures = deque(kept)
            if entry.idle(now):
                del self._entries[key]


def _account_key(account: str) -> str:
    # Accounts compare case-insensitively, as the store's address keys do (lower()).
    return account.lower()
