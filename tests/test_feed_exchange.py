"""Feed → ingestor → SQLite against the real exchange simulator (in process, real sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from strategylab.exchange._faults import parse_fault
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._feed import Feed, FeedConfig
from strategylab.market._ingest import Ingestor, IngestorConfig
from strategylab.market._ledger import read_acks, read_emitted
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._store import TickStore
from strategylab.market._tick import Tick
from strategylab.node._node import Node, NodeConfig

SYMBOLS = ("A", "B")


@asynccontextmanager
async def exchange(tmp_path: Path, **options: object) -> AsyncIterator[Exchange]:
    config = ExchangeConfig(
        symbols=SYMBOLS,
        data_dir=tmp_path / "exchange",
        heartbeat_interval=0.2,
        **options,  # type: ignore[arg-type]
    )
    ex = Exchange(config)
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for a counter of the in-process exchange, which announces no event: yield to the
    loop until it holds (bounded), never sleeping on the wall clock for a state change."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - no event exists for the exchange's counters
            await asyncio.sleep(0.01)


async def manager_until(
    manager: ErrorRecoveryManager, predicate: Callable[[], bool], limit: float = 10.0
) -> None:
    """Wait, re-checking on every manager event, until ``predicate()`` holds."""
    changed = asyncio.Event()
    manager.add_listener(lambda _event: changed.set())
    async with asyncio.timeout(limit):
        while not predicate():
            changed.clear()
            await changed.wait()


async def emitted_all(ex: Exchange, total: int) -> dict[str, int]:
    await until(lambda: ex.ticks_emitted >= total)
    assert ex._log is not None
    ex._log.flush()  # so that the emitted log on disk holds every tick
    return dict(ex.last_seqs())


async def assert_store_matches_emitted(
    store: TickStore,
    log: Path,
    *,
    allow_missing: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
) -> int:
    emitted: dict[tuple[str, int], Tick] = {(t.symbol, t.seq): t for t in read_emitted(log)}
    stored: dict[tuple[str, int], Tick] = {}
    for symbol in SYMBOLS:
        for t in await store.read(symbol):
            assert (t.symbol, t.seq) not in stored
            stored[t.symbol, t.seq] = t
    assert await store.duplicates() == 0
    missing = set(emitted) - set(stored) - allow_missing
    assert not missing, f"lost {len(missing)}: {sorted(missing)[:5]}"
    assert not set(stored) - set(emitted), "unexpected ticks in the store"
    for key, t in stored.items():
        assert t == emitted[key], f"corrupted {key}"
    return len(stored)


@pytest.mark.timeout(30)
async def test_node_ingests_every_emitted_tick_exactly_once(tmp_path: Path) -> None:
    """End to end: N ticks from the exchange are stored with none lost, duplicated or altered."""
    total = 60_000
    async with exchange(tmp_path, tick_rate=0, max_ticks=total) as ex:
        node = Node(NodeConfig(exchange_url=ex.ws_url, symbols=SYMBOLS, data_dir=tmp_path / "node"))
        await node.start()
        try:
            last = await emitted_all(ex, total)
            await node.wait_caught_up(last, timeout=20)
            assert await assert_store_matches_emitted(node.store, ex.config.log_path) == total
            assert node.feed.statistics().ticks == total
        finally:
            await node.aclose()
    assert read_acks(tmp_path / "node" / "acks.jsonl") == last


@pytest.mark.timeout(30)
async def test_server_side_reset_reconnects_and_resumes_without_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    """The exchange kills the connection mid-stream; the node reconnects, resumes, loses nothing."""
    total = 30_000
    async with exchange(tmp_path, tick_rate=20_000, max_ticks=total) as ex:
        node = Node(NodeConfig(exchange_url=ex.ws_url, symbols=SYMBOLS, data_dir=tmp_path / "node"))
        await node.start()
        try:
            await node.wait_caught_up({"A": 1_000, "B": 1_000}, timeout=10)
            for sub in list(ex._subs):
                ex._drop(sub, "test: reset")
            last = await emitted_all(ex, total)
            await node.wait_caught_up(last, timeout=20)
            assert await assert_store_matches_emitted(node.store, ex.config.log_path) == total
            assert node.feed.statistics().reconnects >= 1
            await manager_until(
                node.manager, lambda: node.manager.statistics().successful_recoveries >= 1
            )
            dist = node.manager.statistics().error_type_distribution
            assert dist[ErrorType.WEBSOCKET_CONNECTION_DROPPED] >= 1
        finally:
            await node.aclose()


@pytest.mark.timeout(30)
async def test_corrupted_frames_are_dropped_counted_and_replayed(tmp_path: Path) -> None:
    """With the exchange corrupting frames, CRC errors are counted and the store is complete."""
    total = 30_000
    async with exchange(tmp_path, tick_rate=30_000, max_ticks=total) as ex:
        ex.faults.set(parse_fault({"kind": "corrupt_frames", "rate": 0.05, "duration": 0.6}, 0.0))
        ex.faults.set(
            parse_fault(
                {"kind": "corrupt_frames", "rate": 0.05, "duration": 0.6},
                asyncio.get_running_loop().time(),
            )
        )
        node = Node(NodeConfig(exchange_url=ex.ws_url, symbols=SYMBOLS, data_dir=tmp_path / "node"))
        await node.start()
        try:
            last = await emitted_all(ex, total)
            await node.wait_caught_up(last, timeout=20)
            stats = node.feed.statistics()
            assert stats.crc_errors > 0
            assert stats.lost_ticks == 0
            assert await assert_store_matches_emitted(node.store, ex.config.log_path) == total
        finally:
            await node.aclose()


@pytest.mark.timeout(30)
async def test_bad_signatures_are_reported_and_never_stored(tmp_path: Path) -> None:
    """Frames with a wrong HMAC are reported and drop their connection (past the kill-switch
    threshold, a SECURITY_VIOLATION); what is stored is exactly what was sent."""
    total = 20_000
    key = b"feed-test-key"
    async with exchange(tmp_path, tick_rate=20_000, max_ticks=total, signing_key=key) as ex:
        now = asyncio.get_running_loop().time()
        ex.faults.set(parse_fault({"kind": "bad_signatures", "rate": 0.05, "duration": 0.5}, now))
        store = SQLiteTickStore(tmp_path / "ticks.db")
        await store.open()
        manager = ErrorRecoveryManager(capture_state=False)
        ingestor = Ingestor(store, IngestorConfig(linger=0.005), manager=manager)
        feed = Feed(
            FeedConfig(urls=(ex.ws_url,), symbols=SYMBOLS, signing_key=key),
            ingestor,
            manager=manager,
        )
        await ingestor.start()
        await feed.start()
        try:
            last = await emitted_all(ex, total)
            await ingestor.wait_accounted(last, timeout=20)
            assert feed.statistics().signature_errors > 0
            await assert_store_matches_emitted(store, ex.config.log_path)
            dist = manager.statistics().error_type_distribution
            # One forged frame is reported as the connection it cost; five within the window
            # pull the kill switch, a SECURITY_VIOLATION.
            reported = dist.get(ErrorType.WEBSOCKET_CONNECTION_DROPPED, 0) + dist.get(
                ErrorType.SECURITY_VIOLATION, 0
            )
            assert reported >= 1
        finally:
            await feed.stop()
            await ingestor.aclose(5)
            await store.aclose()


@pytest.mark.timeout(30)
async def test_invalid_ticks_are_quarantined_and_the_rest_stored(tmp_path: Path) -> None:
    """Invalid ticks from the exchange land in quarantine with a reason; every other is stored."""
    total = 20_000
    async with exchange(tmp_path, tick_rate=20_000, max_ticks=total) as ex:
        now = asyncio.get_running_loop().time()
        ex.faults.set(parse_fault({"kind": "invalid_ticks", "rate": 0.01, "duration": 0.5}, now))
        node = Node(NodeConfig(exchange_url=ex.ws_url, symbols=SYMBOLS, data_dir=tmp_path / "node"))
        await node.start()
        try:
            last = await emitted_all(ex, total)
            await node.wait_caught_up(last, timeout=20)
            quarantined = await node.store.quarantined()
            assert quarantined
            assert all(q.reason and q.symbol in SYMBOLS for q in quarantined)
            refused = {(q.symbol, q.seq) for q in quarantined if q.seq is not None}
            assert node.feed.statistics().invalid_ticks == len(refused)
            stored = await assert_store_matches_emitted(
                node.store,
                ex.config.log_path,
                allow_missing=refused,  # type: ignore[arg-type]
            )
            assert stored + len(refused) == total
        finally:
            await node.aclose()
