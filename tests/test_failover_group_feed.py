"""The feed's endpoints as a FailoverGroup, against two real exchange servers: the primary is
stopped -> the feed moves to the backup; the primary is started again -> after N good probes
the feed moves back; the store holds every tick exactly once."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from strategylab.exchange import Exchange, ExchangeConfig
from strategylab.market import Feed, FeedConfig, Ingestor, IngestorConfig, SQLiteTickStore

SYMBOLS = ("A", "B")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ReplicaClock:
    """The system clock, except that ``time()`` is 1 s after the epoch plus the ticks the
    exchange has emitted, in ns: exchanges with the same seed then stamp each sequence number
    alike (replicas of one feed; see test_feed_behind.py)."""

    def __init__(self) -> None:
        self.exchange: Exchange | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        emitted = 0 if self.exchange is None else self.exchange.ticks_emitted
        return (1_000_000_000 + emitted + 0.5) / 1e9

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def exchange(tmp_path: Path, name: str, port: int = 0, tick_rate: float = 2_000) -> Exchange:
    clock = ReplicaClock()
    ex = Exchange(
        ExchangeConfig(
            symbols=SYMBOLS,
            port=port,
            data_dir=tmp_path / name,
            tick_rate=tick_rate,
            heartbeat_interval=0.1,
            seed=7,
        ),
        clock=clock,
    )
    clock.exchange = ex
    return ex


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a feed counter (the feed announces no event for it), bounded."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - no event exists for these counters
            await asyncio.sleep(0.02)


def position(feed: Feed) -> int:
    """The lowest per-symbol position the feed has accounted for."""
    return min(feed.statistics().last_seq.get(s, 0) for s in SYMBOLS)


async def assert_each_tick_once(store: SQLiteTickStore, last: dict[str, int]) -> None:
    """Every symbol's seqs are 1..N, none missing, none twice, none quarantined."""
    assert await store.duplicates() == 0
    assert await store.quarantined() == []
    for symbol in SYMBOLS:
        seqs = [t.seq for t in await store.read(symbol)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert seqs[-1] >= last[symbol]


def feed_of(primary: Exchange, backup: Exchange, ingestor: Ingestor) -> Feed:
    return Feed(
        FeedConfig(
            urls=(primary.ws_url, backup.ws_url),
            symbols=SYMBOLS,
            probe_interval=0.1,
            max_probe_interval=0.4,
            failback_after=3,
            backoff_floor=0.02,
            backoff_cap=0.2,
            max_past=2e9,  # the replicas' timestamps start 1 s after the epoch
        ),
        ingestor,
    )


@pytest.mark.timeout(45)
async def test_the_feed_fails_over_to_the_backup_and_back_losing_and_repeating_nothing(
    tmp_path: Path,
) -> None:
    """Primary down -> backup; primary up again -> back after ``failback_after`` handshakes;
    every symbol's seqs in the store are 1..N, each once, none quarantined."""
    port = free_port()
    primary = exchange(tmp_path, "primary", port)
    await primary.start()
    # Started later: the backup is behind at first (replicas: same ticks under each seq).
    await asyncio.sleep(0.3)
    backup = exchange(tmp_path, "backup")
    await backup.start()
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    ingestor = Ingestor(store, IngestorConfig(linger=0.005))
    feed = feed_of(primary, backup, ingestor)
    restarted: Exchange | None = None
    await ingestor.start()
    await feed.start()
    delivered = functools.partial(position, feed)

    try:
        await until(lambda: delivered() >= 200)
        assert feed.url == primary.ws_url
        await primary.stop()
        await until(lambda: feed.url == backup.ws_url)
        mark = delivered()
        await until(lambda: delivered() >= mark + 300)
        stats = feed.statistics()
        # The backup (started later) is behind at first: refused and retried until it has
        # passed the node's position, alternating with the dead primary meanwhile.
        assert stats.active_url_index == 1
        assert stats.failovers >= 1

        # Restarted, the primary counts from 1 again: the feed switches back only once it has
        # passed the node's position (see test_feed_behind.py), so it must run faster.
        restarted = exchange(tmp_path, "primary", port, tick_rate=8_000)
        await restarted.start()
        await until(lambda: feed.url == primary.ws_url, limit=20)
        mark = delivered()
        await until(lambda: delivered() >= mark + 300)
        stats = feed.statistics()
        assert stats.active_url_index == 0
        assert stats.failbacks >= 1
        group = feed.endpoints.statistics()
        assert group.members[0].consecutive_healthy >= 3
        assert stats.invalid_ticks == 0
        assert stats.lost_ticks == 0
        last = dict(stats.last_seq)
    finally:
        await feed.stop()
        await ingestor.aclose(5)
        for ex in (restarted, backup, primary):
            if ex is not None:
                await ex.stop()
    try:
        await assert_each_tick_once(store, last)
    finally:
        await store.aclose()
