"""PostgresTickStore against the real server at 127.0.0.1:5432 (database ``test``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest

from strategylab.fault_tolerance import ErrorType, classify
from strategylab.market._pg_store import PostgresTickStore, WriteMethod
from strategylab.market._store import QuarantinedTick, TickStore
from strategylab.market._tick import Tick

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq, 100.5 + seq, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


async def admin() -> psycopg.AsyncConnection[tuple[object, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {DSN!r} is unreachable; these tests need the real server: {exc}"
        )


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"store_pg_{uuid.uuid4().hex[:12]}"
    conn = await admin()
    try:
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


@pytest.fixture(params=["copy", "unnest", "executemany"])
async def store(request: pytest.FixtureRequest, schema: str) -> AsyncIterator[PostgresTickStore]:
    method: WriteMethod = request.param
    s = PostgresTickStore(DSN, schema=schema, method=method)
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


@pytest.mark.timeout(15)
async def test_write_is_idempotent_and_reads_back(store: PostgresTickStore) -> None:
    """Each write method stores a batch once, counts only new rows, and reads back in order."""
    assert isinstance(store, TickStore)
    batch = [*ticks("AAA", 1, 100), *ticks("BBB", 1, 20)]
    assert await store.write(batch) == 120
    assert await store.write(batch) == 0
    assert await store.write(ticks("AAA", 95, 105)) == 5
    assert await store.count() == 125
    assert await store.duplicates() == 0
    assert await store.read("AAA", 10, 12) == ticks("AAA", 10, 12)
    assert await store.read("AAA") == ticks("AAA", 1, 105)
    assert await store.last_seqs() == {"AAA": 105, "BBB": 20}
    assert await store.symbols() == ["AAA", "BBB"]
    assert await store.health() is True


@pytest.mark.timeout(15)
async def test_quarantine_round_trip(schema: str) -> None:
    """Quarantined entries are stored with their reasons and read back in order."""
    store = PostgresTickStore(DSN, schema=schema)
    await store.open()
    entries = [
        QuarantinedTick(received_ns=5, reason="crossed quote", raw="Tick(...)", symbol="A", seq=2),
        QuarantinedTick(received_ns=6, reason="bad frame", raw="00ff"),
    ]
    await store.quarantine(entries)
    assert await store.quarantined() == entries
    await store.aclose()


@pytest.mark.timeout(20)
async def test_terminated_backend_is_connection_lost_then_reconnects(schema: str) -> None:
    """pg_terminate_backend: the next write raises OperationalError (DATABASE_CONNECTION_LOST);
    the write after that reconnects and succeeds."""
    app = f"store_lost_{uuid.uuid4().hex[:8]}"
    store = PostgresTickStore(f"{DSN} application_name={app}", schema=schema, pool_size=1)
    await store.open()
    assert await store.write(ticks("AAA", 1, 10)) == 10
    conn = await admin()
    cur = await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    )
    assert [row[0] for row in await cur.fetchall()] == [True]
    await conn.close()
    with pytest.raises(psycopg.OperationalError) as caught:
        await store.write(ticks("AAA", 11, 20))
    assert classify(caught.value, component="store") is ErrorType.DATABASE_CONNECTION_LOST
    assert await store.write(ticks("AAA", 11, 20)) == 10
    assert store.reconnects == 1
    assert await store.read("AAA") == ticks("AAA", 1, 20)
    await store.aclose()


@pytest.mark.timeout(15)
async def test_unreachable_server_is_connection_lost(schema: str) -> None:
    """A store pointed at a closed port fails to open with a DATABASE_CONNECTION_LOST error."""
    store = PostgresTickStore("host=127.0.0.1 port=1 dbname=test user=postgres", schema=schema)
    with pytest.raises(psycopg.OperationalError) as caught:
        await store.open()
    assert classify(caught.value, component="store") is ErrorType.DATABASE_CONNECTION_LOST
    assert await store.health() is False
