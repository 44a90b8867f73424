"""SQLiteTickStore.health() on a really full disk (a small tmpfs): it must not vouch for writes
that fail, and the failover store must not drain into a disk that cannot take a batch."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from strategylab.fault_tolerance import ErrorType, classify
from strategylab.market._failover_store import FailoverState, FailoverStore
from strategylab.market._spool import SpoolStore
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick
from volumes import fill, tmpfs

BATCH = 20_000


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq / 1e4, 100.5 + seq / 1e4, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root and mount(2), as the storage-full tests do)."""
    with tmpfs(tmp_path / "vol", 16) as mountpoint:
        yield mountpoint


def one_row_commit(store: SQLiteTickStore) -> None:
    """The old health check: a committed one-row upsert (runs on the store's writer thread)."""
    conn = store._ensure()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO health (id, checked_ns) VALUES (1, 1)")
    conn.execute("COMMIT")


def checkpoint(store: SQLiteTickStore, mode: str) -> None:
    store._ensure().execute(f"PRAGMA wal_checkpoint({mode})")


async def loaded(volume: Path) -> SQLiteTickStore:
    """A store on the volume holding a few batches, whose small WAL (a few pages) has been
    checkpointed, so that the next commit reuses its allocated space."""
    store = SQLiteTickStore(volume / "ticks.db", batch_size=BATCH)
    await store.open()
    for first in range(1, 4 * BATCH, BATCH):
        await store.write(ticks("A", first, first + BATCH - 1))
    await store._run(lambda: checkpoint(store, "TRUNCATE"))
    await store.write(ticks("B", 1, 100))
    await store._run(lambda: checkpoint(store, "PASSIVE"))
    return store


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_health_fails_on_a_full_disk_where_a_one_row_commit_succeeds(volume: Path) -> None:
    """On a full tmpfs a one-row commit still succeeds (it reuses allocated WAL space), but a
    batch fails: health() says False; once space returns it says True and the batch commits."""
    store = await loaded(volume)
    try:
        ballast = volume / "ballast"
        assert fill(ballast) > 0
        await store._run(lambda: one_row_commit(store))  # the lie the old check told
        assert await store.health() is False
        with pytest.raises(sqlite3.Error) as caught:
            await store.write(ticks("A", 4 * BATCH + 1, 5 * BATCH))
        assert classify(caught.value, component="sqlite") is ErrorType.DISK_SPACE_EXHAUSTED
        ballast.unlink()
        assert await store.health() is True
        assert await store.write(ticks("A", 4 * BATCH + 1, 5 * BATCH)) == BATCH
    finally:
        await store.aclose()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_health_wants_room_for_a_batch(volume: Path) -> None:
    """Less free space than one batch (batch_size ticks, 64 bytes each) is unhealthy, even though
    small writes still fit."""
    store = await loaded(volume)
    try:
        ballast = volume / "ballast"
        fill(ballast)
        with ballast.open("r+b") as file:
            file.truncate(ballast.stat().st_size - 256 * 1024)  # 256 KiB back: < 1.28 MB
        await store._run(lambda: one_row_commit(store))
        assert await store.write(ticks("B", 101, 110)) == 10
        assert await store.health() is False
    finally:
        await store.aclose()


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_failover_store_does_not_drain_into_a_full_disk(volume: Path, tmp_path: Path) -> None:
    """While the disk is full the failover store's probe fails, so no drain is attempted; once
    space returns it drains everything, in order."""
    primary = await loaded(volume)
    await primary.aclose()
    primary = SQLiteTickStore(volume / "ticks.db", batch_size=BATCH)
    store = FailoverStore(primary, SpoolStore(tmp_path / "spool"), probe_interval=0.01)
    await store.open()
    sent: list[Tick] = ticks("C", 1, 100)
    try:
        async with asyncio.timeout(40):
            # A small commit, checkpointed: the WAL's first pages are allocated and reused, so a
            # one-row probe would still commit on the full disk.
            await store.write(sent)
            await primary._run(lambda: checkpoint(primary, "PASSIVE"))
            ballast = volume / "ballast"
            fill(ballast)
            for first in range(101, 5 * 2_000, 2_000):
                batch = ticks("C", first, first + 1_999)
                await store.write(batch)
                sent += batch
            assert store.state is FailoverState.SPOOLING
            while store.statistics().failed_probes < 10:  # noqa: ASYNC110 - no event per probe
                await asyncio.sleep(0.01)
            assert store.statistics().failed_drains == 0
            assert store.statistics().batches_drained == 0
            ballast.unlink()
            await store.wait_for_state(FailoverState.PRIMARY)
        assert await primary.read("C") == sent
    finally:
        await store.aclose()
