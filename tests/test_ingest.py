"""Ingestor: bounded queue with backpressure, batched idempotent writes, acknowledgement."""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._ingest import Ingestor, IngestorConfig
from strategylab.market._ledger import AckLog, read_acks
from strategylab.market._store import QuarantinedTick
from strategylab.market._tick import Tick
from strategylab.testing import FakeClock


def ticks(first: int, last: int, symbol: str = "A") -> list[Tick]:
    return [Tick(symbol, s, s, 1.0, 1.1, 1.0, 1.0) for s in range(first, last + 1)]


class MemoryStore:
    """A TickStore in memory, idempotent on (symbol, seq); can be gated or made to fail."""

    name = "memory-store"

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], Tick] = {}
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.failures: list[Exception] = []
        self.quarantine_rows: list[QuarantinedTick] = []

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def write(self, batch: Sequence[Tick]) -> int:
        self.entered.set()
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        new = 0
        for t in batch:
            if (t.symbol, t.seq) not in self.rows:
                self.rows[t.symbol, t.seq] = t
                new += 1
        self.batches.append(len(batch))
        return new

    async def last_seqs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for symbol, seq in self.rows:
            out[symbol] = max(out.get(symbol, 0), seq)
        return out

    async def read(self, symbol: str, from_seq: int = 1, to_seq: int | None = None) -> list[Tick]:
        return [t for (s, q), t in sorted(self.rows.items()) if s == symbol and q >= from_seq]

    async def symbols(self) -> list[str]:
        return sorted({s for s, _ in self.rows})

    async def duplicates(self) -> int:
        return 0

    async def quarantine(self, entries: Sequence[QuarantinedTick]) -> None:
        self.quarantine_rows.extend(entries)

    async def quarantined(self) -> list[QuarantinedTick]:
        return list(self.quarantine_rows)

    async def health(self) -> bool:
        return not self.failures


@pytest.mark.timeout(10)
async def test_ticks_are_written_in_batches_and_acknowledged(tmp_path: Path) -> None:
    """Every tick is stored once, in batches no bigger than batch_size, and acked in the log."""
    store = MemoryStore()
    acks = AckLog(tmp_path / "acks.jsonl")
    ingestor = Ingestor(store, IngestorConfig(batch_size=100, linger=0.001), ack_log=acks)
    await ingestor.start()
    for first in range(1, 1001, 50):
        await ingestor.put(ticks(first, first + 49))
        await ingestor.put(ticks(first, first + 49, "B"))
    await ingestor.wait_accounted({"A": 1000, "B": 1000}, timeout=5)
    await ingestor.aclose(5)
    assert len(store.rows) == 2000
    assert max(store.batches) <= 100
    stats = ingestor.statistics()
    assert (stats.acknowledged, stats.new, stats.queued) == (2000, 2000, 0)
    assert read_acks(tmp_path / "acks.jsonl") == {"A": 1000, "B": 1000}


@pytest.mark.timeout(10)
async def test_backpressure_keeps_the_queue_bounded_while_the_store_blocks() -> None:
    """With the store stuck, put() waits once max_queue ticks are queued; nothing grows."""
    store = MemoryStore()
    store.gate.clear()
    ingestor = Ingestor(store, IngestorConfig(max_queue=500, batch_size=100, linger=0))
    await ingestor.start()
    accepted = 0

    async def producer() -> None:
        nonlocal accepted
        for first in range(1, 10_001, 50):
            await ingestor.put(ticks(first, first + 49))
            accepted += 50

    task = asyncio.create_task(producer())
    async with asyncio.timeout(5):
        await store.entered.wait()
    for _ in range(50):  # give the producer every chance to overrun the bound
        await asyncio.sleep(0)
    assert not task.done()
    assert ingestor.statistics().queued <= 500
    assert ingestor.statistics().queue_peak <= 500
    assert accepted <= 500
    store.gate.set()
    async with asyncio.timeout(5):
        await task
    await ingestor.wait_accounted({"A": 10_000}, timeout=5)
    assert ingestor.statistics().queue_peak <= 550
    await ingestor.aclose(5)
    assert len(store.rows) == 10_000


@pytest.mark.timeout(10)
async def test_failed_write_is_reported_and_retried_never_dropped() -> None:
    """A failing write is reported once per outage and the same batch retried until stored."""
    store = MemoryStore()
    store.failures = [ConnectionRefusedError("db down"), ConnectionRefusedError("db down")]
    manager = ErrorRecoveryManager(capture_state=False)
    clock = FakeClock()
    ingestor = Ingestor(
        store,
        IngestorConfig(batch_size=10, linger=0, retry_floor=0.5, retry_cap=4.0, name="ingestor"),
        manager=manager,
        clock=clock,
        rng=random.Random(1),
    )
    await ingestor.start()
    await ingestor.put(ticks(1, 10))
    await ingestor.wait_accounted({"A": 10}, timeout=5)
    assert len(store.rows) == 10
    assert ingestor.statistics().write_failures == 2
    assert clock.sleeps[0] == 0.0  # the first retry is immediate
    assert 0.0 <= clock.sleeps[1] <= 0.5
    await ingestor.aclose(5)
    dist = manager.statistics().error_type_distribution
    assert dist[ErrorType.DATABASE_CONNECTION_LOST] == 1  # one outage, one report


@pytest.mark.timeout(10)
async def test_quarantine_entries_are_written_in_order_and_accounted() -> None:
    """Quarantined input reaches the store and counts as accounted for its sequence."""
    store = MemoryStore()
    ingestor = Ingestor(store, IngestorConfig(batch_size=10, linger=0))
    await ingestor.start()
    await ingestor.put(ticks(1, 4))
    entry = QuarantinedTick(received_ns=1, reason="crossed quote", raw="...", symbol="A", seq=5)
    await ingestor.quarantine([entry])
    await ingestor.wait_accounted({"A": 5}, timeout=5)
    assert store.quarantine_rows == [entry]
    assert ingestor.statistics().acked == {"A": 4}
    assert ingestor.accounted() == {"A": 5}
    await ingestor.aclose(5)


@pytest.mark.timeout(10)
async def test_wait_accounted_names_what_is_behind() -> None:
    """A wait that times out says which symbol is behind and where it is."""
    ingestor = Ingestor(MemoryStore(), IngestorConfig(linger=0))
    await ingestor.start()
    await ingestor.put(ticks(1, 3))
    with pytest.raises(TimeoutError, match="'A': \\(3, 9\\)"):
        await ingestor.wait_accounted({"A": 9}, timeout=0.2)
    await ingestor.aclose(5)


@pytest.mark.timeout(10)
async def test_stop_keeps_the_queue_for_the_next_start() -> None:
    """A restart (stop then start) loses nothing that was queued."""
    store = MemoryStore()
    store.gate.clear()
    ingestor = Ingestor(store, IngestorConfig(batch_size=5, linger=0))
    await ingestor.start()
    await ingestor.put(ticks(1, 20))
    async with asyncio.timeout(5):
        await store.entered.wait()
    await ingestor.restart()
    store.gate.set()
    await ingestor.wait_accounted({"A": 20}, timeout=5)
    assert sorted(q for _, q in store.rows) == list(range(1, 21))
    await ingestor.aclose(5)


class FlakyAckLog(AckLog):
    """A real ack log whose first appends fail as given (a full disk, a bug)."""

    def __init__(self, path: Path, failures: Sequence[Exception]) -> None:
        super().__init__(path)
        self.failures = list(failures)

    def append(self, watermarks: Mapping[str, int]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        super().append(watermarks)


@pytest.mark.timeout(10)
async def test_a_full_disk_under_the_ack_log_is_reported_and_only_the_append_retried(
    tmp_path: Path,
) -> None:
    """ENOSPC on the ack log after the commit: reported once as DISK_SPACE_EXHAUSTED, the writer
    stays up, unhealthy and still holding the batch until the append succeeds; no rewrite."""
    store = MemoryStore()
    acks = FlakyAckLog(
        tmp_path / "acks.jsonl",
        [OSError(errno.ENOSPC, "No space left on device") for _ in range(3)],
    )
    manager = ErrorRecoveryManager(capture_state=False)
    clock = FakeClock(autojump_threshold=None)
    ingestor = Ingestor(
        store,
        IngestorConfig(batch_size=10, linger=0, name="ingestor"),
        ack_log=acks,
        manager=manager,
        clock=clock,
    )
    await ingestor.start()
    await ingestor.put(ticks(1, 10))
    async with asyncio.timeout(5):
        while ingestor.statistics().write_failures < 1:  # noqa: ASYNC110 - no event per failure
            await asyncio.sleep(0)
    stats = ingestor.statistics()
    assert (stats.failing, stats.healthy, stats.queued, stats.acknowledged) == (
        "ack_log",
        False,
        10,
        0,
    )
    assert await ingestor.health() is False
    async with asyncio.timeout(5):
        while ingestor.accounted().get("A", 0) < 10:
            clock.advance(10.0)
            await asyncio.sleep(0)
    assert acks.failures == []
    assert store.batches == [10]  # stored once; only the ack was retried
    stats = ingestor.statistics()
    assert (stats.failing, stats.healthy, stats.queued, stats.acknowledged) == (None, True, 0, 10)
    assert stats.restarts == 0
    await ingestor.aclose(5)
    assert read_acks(tmp_path / "acks.jsonl") == {"A": 10}
    assert manager.statistics().error_type_distribution[ErrorType.DISK_SPACE_EXHAUSTED] == 1


@pytest.mark.timeout(10)
async def test_a_writer_that_dies_is_reported_restarted_and_resumes_the_queue(
    tmp_path: Path,
) -> None:
    """An unexpected exception kills the writer run: reported, restarted with backoff, and the
    batch at the head of the queue is written again (idempotently) and acknowledged."""
    store = MemoryStore()
    acks = FlakyAckLog(tmp_path / "acks.jsonl", [RuntimeError("bug in the ack path")])
    manager = ErrorRecoveryManager(capture_state=False)
    ingestor = Ingestor(
        store,
        IngestorConfig(batch_size=10, linger=0, name="ingestor"),
        ack_log=acks,
        manager=manager,
        clock=FakeClock(),
    )
    await ingestor.start()
    await ingestor.put(ticks(1, 10))
    await ingestor.wait_accounted({"A": 10}, timeout=5)
    stats = ingestor.statistics()
    assert stats.restarts == 1
    assert stats.healthy is True
    assert len(store.rows) == 10
    assert store.batches == [10, 10]  # written again after the restart, stored once
    assert await ingestor.health() is True
    await ingestor.aclose(5)
    assert read_acks(tmp_path / "acks.jsonl") == {"A": 10}
    assert manager.statistics().total_errors == 1


class ShardedStore(MemoryStore):
    """A store that, like a cluster node's fenced writes, stores only the symbols it holds and
    says which of the last batch it left to their owner (``not_stored``)."""

    def __init__(self, held: set[str]) -> None:
        super().__init__()
        self.held = held
        self._left: frozenset[str] = frozenset()

    def not_stored(self) -> frozenset[str]:
        return self._left

    async def write(self, batch: Sequence[Tick]) -> int:
        self._left = frozenset(t.symbol for t in batch if t.symbol not in self.held)
        return await super().write([t for t in batch if t.symbol in self.held])


@pytest.mark.timeout(10)
async def test_ticks_a_sharded_store_left_to_their_owner_are_accounted_never_acknowledged(
    tmp_path: Path,
) -> None:
    """A tick is acknowledged only once it is observed in the store: the symbols a cluster
    node no longer holds (given up, fenced out) are accounted for, so the feed moves on, but
    neither the ack log nor the watermarks claim them."""
    store = ShardedStore({"A"})
    acks = AckLog(tmp_path / "acks.jsonl")
    ingestor = Ingestor(store, IngestorConfig(batch_size=100, linger=0.001), ack_log=acks)
    await ingestor.start()
    await ingestor.put(ticks(1, 50) + ticks(1, 30, "B"))
    await ingestor.wait_accounted({"A": 50, "B": 30}, timeout=5)
    await ingestor.aclose(5)
    assert set(store.rows) == {("A", s) for s in range(1, 51)}
    stats = ingestor.statistics()
    assert stats.acknowledged == 50
    assert dict(stats.acked) == {"A": 50}
    assert read_acks(tmp_path / "acks.jsonl") == {"A": 50}
