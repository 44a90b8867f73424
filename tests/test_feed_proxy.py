"""Network faults through the fault proxy: exchange → Proxy → node, then an integrity check.

Each test runs the real exchange simulator (in process, real sockets), a real :class:`Proxy` in
front of it and a real :class:`Node` (SQLite in ``tmp_path``) connected through the proxy, injects
one fault with the proxy while ticks flow, heals it, waits until the node has stored every tick
the exchange emitted, and requires: the feed reconnected, the errors reached the node's recovery
manager with the expected type, and the checker finds nothing lost, duplicated, corrupted or
missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from strategylab.chaos import IntegrityReport, Proxy, ProxyStatistics, check
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, RecoveryStatistics
from strategylab.market import (
    Exchange,
    ExchangeConfig,
    FeedStatistics,
    Node,
    NodeConfig,
    SQLiteTickStore,
)

SYMBOLS = ("A", "B")
TOTAL = 12_000
"""Ticks the exchange emits, dealt round-robin: ``TOTAL // 2`` per symbol."""
TICK_RATE = 6_000.0
"""Ticks per second: generation lasts two seconds, so every fault hits a live stream."""
STALE_AFTER = 0.5
HEARTBEAT = 0.1
FINAL = dict.fromkeys(SYMBOLS, TOTAL // len(SYMBOLS))
DROPPED = ErrorType.WEBSOCKET_CONNECTION_DROPPED


@dataclasses.dataclass(frozen=True, slots=True)
class Rig:
    """The parts of one run."""

    exchange: Exchange
    proxy: Proxy
    node: Node
    node_dir: Path


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What a run measured: the feed and recovery statistics, and the integrity report."""

    feed: FeedStatistics
    recovery: RecoveryStatistics
    report: IntegrityReport
    proxy: ProxyStatistics


@asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """Exchange, proxy in front of it, node connected through the proxy; all closed on exit."""
    exchange = Exchange(
        ExchangeConfig(
            symbols=SYMBOLS,
            data_dir=tmp_path / "exchange",
            heartbeat_interval=HEARTBEAT,
            tick_rate=TICK_RATE,
            max_ticks=TOTAL,
            seed=3,
        )
    )
    await exchange.start()
    try:
        async with Proxy("exchange-ws", upstream=f"127.0.0.1:{exchange.port}") as proxy:
            node_dir = tmp_path / "node"
            node = Node(
                NodeConfig(
                    exchange_url=f"ws://127.0.0.1:{proxy.listen_port}/ws",
                    symbols=SYMBOLS,
                    data_dir=node_dir,
                    stale_after=STALE_AFTER,
                    backoff_floor=0.02,
                    backoff_cap=0.2,
                    drain_timeout=10.0,
                )
            )
            await node.start()
            try:
                yield Rig(exchange, proxy, node, node_dir)
            finally:
                await node.aclose()
    finally:
        await exchange.stop()  # flushes and closes the emitted log


async def manager_until(
    manager: ErrorRecoveryManager,
    predicate: Callable[[RecoveryStatistics], bool],
    limit: float = 10.0,
) -> RecoveryStatistics:
    """Wait, re-checking on every recovery event, until ``predicate(statistics)`` holds."""
    changed = asyncio.Event()

    def listener(_event: object) -> None:
        changed.set()

    manager.add_listener(listener)
    try:
        async with asyncio.timeout(limit):
            while not predicate(stats := manager.statistics()):
                changed.clear()
                await changed.wait()
            return stats
    finally:
        manager.remove_listener(listener)


async def run_with_fault(tmp_path: Path, inject: Callable[[Rig], Awaitable[None]]) -> Outcome:
    """Let ticks flow, ``inject`` a fault (it returns healed), catch up, check the store."""
    async with rig(tmp_path) as r:
        await r.node.wait_caught_up(dict.fromkeys(SYMBOLS, 300), timeout=10)
        assert r.node.feed.statistics().reconnects == 0
        await inject(r)
        await r.node.wait_caught_up(FINAL, timeout=20)
        assert r.exchange.last_seqs() == FINAL
        await manager_until(r.node.manager, lambda s: s.successful_recoveries >= 1)
        feed = r.node.feed.statistics()
        recovery = r.node.manager.statistics()
        proxy = r.proxy.statistics()
        assert feed.connected
        assert feed.subscribed
    store = SQLiteTickStore(r.node_dir / "ticks.db")
    await store.open()
    try:
        report = await check(
            r.exchange.config.log_path, store, r.node_dir / "acks.jsonl", require_complete=True
        )
    finally:
        await store.aclose()
    return Outcome(feed=feed, recovery=recovery, report=report, proxy=proxy)


def assert_intact(report: IntegrityReport) -> None:
    """Every emitted tick stored once, unaltered, and acknowledged."""
    assert report.ok, report
    assert report.lost.count == 0
    assert report.duplicated.count == 0
    assert report.corrupted.count == 0
    assert report.missing.count == 0
    assert report.unexpected.count == 0
    assert report.emitted == TOTAL
    assert report.stored == TOTAL
    assert report.acknowledged == TOTAL


def assert_recovered(outcome: Outcome, error_type: ErrorType) -> None:
    """The feed reconnected and the manager saw (and recovered from) the expected error type."""
    assert outcome.feed.reconnects >= 1
    assert outcome.feed.lost_ticks == 0
    assert outcome.recovery.total_errors >= 1
    assert outcome.recovery.error_type_distribution.get(error_type, 0) >= 1
    assert outcome.recovery.successful_recoveries >= 1
    assert_intact(outcome.report)


@pytest.mark.timeout(60)
async def test_connection_reset_while_connected_and_on_reconnect(tmp_path: Path) -> None:
    """reset_peer kills the live connection and the next attempts; the node resumes, loses none."""

    async def inject(r: Rig) -> None:
        opened = r.proxy.statistics().connections_total
        async with (
            r.proxy.toxic("reset_peer", stream="downstream", timeout=0),
            r.proxy.toxic("reset_peer", stream="upstream", timeout=0),
            asyncio.timeout(10),
        ):
            # The live connection is reset, then at least two reconnect attempts are too.
            await r.proxy.wait_for(lambda s: s.connections_total >= opened + 2)
            await r.proxy.wait_for(lambda s: s.connections_active == 0)
            await asyncio.sleep(0.3)  # hold the fault a little longer: more attempts hit it

    async with asyncio.timeout(45):
        outcome = await run_with_fault(tmp_path, inject)
    assert outcome.feed.reconnects >= 2
    assert_recovered(outcome, DROPPED)


@pytest.mark.timeout(60)
async def test_blackhole_partition_is_detected_as_stale_and_healed(tmp_path: Path) -> None:
    """A silent partition (blackhole both ways) for 1 s: stale detection fires, the node heals."""

    async def inject(r: Rig) -> None:
        async with (
            r.proxy.toxic("blackhole", stream="downstream"),
            r.proxy.toxic("blackhole", stream="upstream"),
        ):
            loop = asyncio.get_running_loop()
            began = loop.time()
            # The stale connection is given up (and reported) within the partition, not after
            # a closing handshake that cannot complete.
            await manager_until(
                r.node.manager, lambda s: s.error_type_distribution.get(DROPPED, 0) >= 1, 2.0
            )
            assert r.node.feed.statistics().stale_timeouts >= 1
            await asyncio.sleep(max(0.0, began + 1.0 - loop.time()))  # the rest of the partition

    async with asyncio.timeout(45):
        outcome = await run_with_fault(tmp_path, inject)
    assert outcome.feed.stale_timeouts >= 1
    assert_recovered(outcome, DROPPED)


@pytest.mark.timeout(60)
async def test_latency_beyond_stale_threshold_reconnects_and_resumes(tmp_path: Path) -> None:
    """1.5 s of latency with stale_after 0.5 s: the feed goes stale, reconnects, then resumes."""

    async def inject(r: Rig) -> None:
        async with r.proxy.toxic("latency", stream="downstream", latency=1500):
            # The stale detection reaches the manager promptly (no closing handshake to wait
            # for on a connection that is 1.5 s behind), then the fault is held a while.
            await manager_until(
                r.node.manager, lambda s: s.error_type_distribution.get(DROPPED, 0) >= 1, 3.0
            )
            assert r.node.feed.statistics().stale_timeouts >= 1
            await asyncio.sleep(0.5)

    async with asyncio.timeout(45):
        outcome = await run_with_fault(tmp_path, inject)
    assert outcome.feed.stale_timeouts >= 1
    assert_recovered(outcome, DROPPED)


@pytest.mark.timeout(60)
async def test_proxy_disabled_then_enabled_on_the_same_port(tmp_path: Path) -> None:
    """Disabling the proxy drops the connection and refuses new ones; re-enabled, the node heals."""

    async def inject(r: Rig) -> None:
        port = r.proxy.listen_port
        refused = r.proxy.statistics().connections_total
        await r.proxy.disable()
        assert r.proxy.statistics().connections_active == 0
        await asyncio.sleep(0.5)  # the outage itself: reconnect attempts are refused
        assert r.proxy.statistics().connections_total == refused  # nothing got through
        await r.proxy.enable()
        assert r.proxy.listen_port == port
        async with asyncio.timeout(10):
            await r.proxy.wait_for(lambda s: s.connections_active >= 1)

    async with asyncio.timeout(45):
        outcome = await run_with_fault(tmp_path, inject)
    assert outcome.proxy.enabled
    assert_recovered(outcome, DROPPED)
