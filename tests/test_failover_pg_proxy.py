"""A PostgreSQL outage through the fault proxy: toxic → spool → toxic removed → drain."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from strategylab.chaos._proxy import Proxy
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._failover_store import FailoverState, FailoverStore
from strategylab.market._pg_store import PostgresTickStore
from strategylab.market._spool import SpoolStore
from strategylab.market._tick import Tick

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def batch(first: int, size: int = 50) -> list[Tick]:
    return [
        Tick(symbol, seq, seq, 100.0, 100.5, 1.0, 2.0)
        for symbol in ("AAA", "BBB")
        for seq in range(first, first + size)
    ]


def state_of(store: FailoverStore) -> FailoverState:
    return store.state


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    try:
        admin = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {DSN!r} is unreachable; this test needs the real server: {exc}")
    name = f"store_proxy_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await admin.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("toxic", ["reset_peer", "blackhole"])
async def test_postgres_outage_through_proxy_spools_then_drains(
    tmp_path: Path, schema: str, toxic: str
) -> None:
    """reset_peer or blackhole between node and PostgreSQL → spool; toxic removed → drained,
    every acknowledged tick in PostgreSQL exactly once, in order."""
    async with Proxy("pg", upstream="127.0.0.1:5432") as proxy:
        primary = PostgresTickStore(
            f"host=127.0.0.1 port={proxy.listen_port} dbname=test user=postgres",
            schema=schema,
            connect_timeout=1,
            timeout=1.0,
        )
        manager = ErrorRecoveryManager(capture_state=False)
        store = FailoverStore(
            primary, SpoolStore(tmp_path / "spool"), manager=manager, probe_interval=0.05
        )
        manager.register(store)
        await store.open()
        acked: list[Tick] = []
        try:
            async with asyncio.timeout(25):
                for first in (1, 51):
                    await store.write(batch(first))
                    acked += batch(first)
                async with proxy.toxic(toxic, stream="upstream"):
                    for first in (101, 151, 201):
                        await store.write(batch(first))
                        acked += batch(first)
                    assert state_of(store) is not FailoverState.PRIMARY
                    assert store.spool.pending_batches == 3
                    assert await store.health() is True
                    assert await primary.health() is False
                await store.wait_for_state(FailoverState.PRIMARY)
                await store.write(batch(251))
                acked += batch(251)
            stats = manager.statistics()
            assert stats.error_type_distribution.get(ErrorType.DATABASE_CONNECTION_LOST) == 1
            assert stats.successful_recoveries == 1
            assert await primary.duplicates() == 0
            for symbol in ("AAA", "BBB"):
                assert await primary.read(symbol) == [t for t in acked if t.symbol == symbol]
            assert store.spool.is_empty()
        finally:
            await store.aclose()
