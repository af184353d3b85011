"""The outbound scheduler's concurrency limits (issue 4 §1): at most
``delivery.concurrency`` attempts at once, at most ``per_domain_concurrency`` per
destination domain, on the real SQLite queue. Remote attempts are replaced by ones
that wait until the test lets them finish, so that the limits can be watched."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

from postbote.config import parse_config
from postbote.dns import DnsResolver
from postbote.envelope import Envelope, Recipient
from postbote.queue.outbound import Outbound
from postbote.queue.schedule import Attempt
from postbote.store.interfaces import Claim
from postbote.store.sqlite import SqliteStore


def _queue(store: SqliteStore, n: int, domain: str, t0: float) -> None:
    for i in range(n):
        env = Envelope(
            id=f"{domain.split('.')[0]}{i}",
            sender="a@local.test",
            recipients=(Recipient(f"r{i}@{domain}"),),
            received_at=t0,
        )
        store.enqueue(env, b"Subject: x\r\n\r\nbody\r\n", [f"r{i}@{domain}"])


def test_global_and_per_domain_limits(tmp_path: Path) -> None:
    config = parse_config(
        f'data_dir = "{tmp_path / "data"}"\n'
        "[delivery]\nconcurrency = 5\nper_domain_concurrency = 2\n"
        '[dns]\nnameservers = ["127.0.0.1:9"]\n',
        "test",
        tmp_path,
    )
    store = SqliteStore(tmp_path / "db" / "postbote.db", tmp_path / "queue")
    now = 1_000.0
    _queue(store, 4, "one.test", now)
    _queue(store, 4, "two.test", now)
    _queue(store, 4, "three.test", now)
    outbound = Outbound(config, store, DnsResolver([("127.0.0.1", 9)]), node="n", clock=lambda: now)
    running: collections.Counter[str] = collections.Counter()
    peak: collections.Counter[str] = collections.Counter()
    peak_total = 0
    release = asyncio.Event()

    async def attempt(claim: Claim) -> list[Attempt]:
        nonlocal peak_total
        running[claim.domain] += 1
        peak[claim.domain] = max(peak[claim.domain], running[claim.domain])
        peak_total = max(peak_total, sum(running.values()))
        await release.wait()
        running[claim.domain] -= 1
        return [Attempt(r, "250 2.0.0 ok", "delivered") for r in claim.recipients]

    outbound._attempt_remote = attempt  # type: ignore[method-assign]

    async def scenario() -> None:
        await outbound._fill()
        await asyncio.sleep(0)  # let the started attempts run up to their wait
        assert sum(running.values()) <= 5
        assert all(n <= 2 for n in running.values())
        assert sum(len(q) for q in outbound._waiting.values()) + sum(running.values()) == 5
        release.set()
        while outbound._active or outbound._waiting:
            await asyncio.sleep(0.01)
            await outbound._fill()

    asyncio.run(scenario())
    assert peak_total <= 5
    assert max(peak.values()) == 2  # the per-domain limit was reached, never passed
    assert all(e.state == "delivered" for e in store.list_queue())
    assert len(store.list_queue()) == 12
    store.close()
