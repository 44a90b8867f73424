"""PostgresTickStore against the real server at 127.0.0.1:5432 (database ``test``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

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


def priced(symbol: str, first: int, last: int, price: float) -> list[Tick]:
    """Ticks like :func:`ticks` but quoted at ``price``: tells which copy of a key was kept."""
    return [
        Tick(symbol, seq, 1_000 + seq, price, price + 0.5, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


@pytest.mark.timeout(20)
async def test_stored_ticks_win_over_rewrites_overlaps_and_repeats(
    store: PostgresTickStore,
) -> None:
    """Each method: a re-written batch, an overlapping batch (a replay after a crash) and a batch
    repeating a key store each (symbol, seq) once; the values first stored win, and within a
    batch the first occurrence wins."""
    assert await store.write([*priced("AAA", 1, 50, 1.0), *priced("BBB", 1, 10, 1.0)]) == 60
    assert await store.write([*priced("AAA", 1, 50, 2.0), *priced("BBB", 1, 10, 2.0)]) == 0
    # The replay: the stored range first, then new ticks, interleaved symbols.
    replay = [*priced("AAA", 41, 60, 3.0), *priced("BBB", 5, 15, 3.0)]
    assert await store.write(replay) == 15
    repeated = [*priced("AAA", 61, 70, 4.0), *priced("AAA", 65, 72, 5.0), *priced("CCC", 1, 3, 4.0)]
    assert await store.write(repeated) == 15
    assert await store.count() == 90
    assert await store.duplicates() == 0
    assert await store.read("AAA") == [
        *priced("AAA", 1, 50, 1.0),
        *priced("AAA", 51, 60, 3.0),
        *priced("AAA", 61, 70, 4.0),
        *priced("AAA", 71, 72, 5.0),
    ]
    assert await store.read("BBB") == [*priced("BBB", 1, 10, 1.0), *priced("BBB", 11, 15, 3.0)]
    assert await store.last_seqs() == {"AAA": 72, "BBB": 15, "CCC": 3}


@pytest.mark.timeout(20)
async def test_copy_merges_a_replay_then_copies_again(schema: str) -> None:
    """The "copy" method: a batch of new ticks is one COPY (no merge); a batch meeting stored
    ticks is merged; the batch after a merge that met stored ticks is merged directly (it is
    likely more of the replay); once a merge meets none, COPY again."""
    store = PostgresTickStore(DSN, schema=schema, method="copy")
    await store.open()
    try:
        assert await store.write(ticks("AAA", 1, 100)) == 100
        assert store.merges == 0
        assert await store.write(ticks("AAA", 90, 120)) == 20  # overlap: merged
        assert store.merges == 1
        assert await store.write(ticks("AAA", 121, 130)) == 10  # merged directly, met none
        assert store.merges == 2
        assert await store.write(ticks("AAA", 131, 140)) == 10  # COPY again
        assert store.merges == 2
        # A key repeated inside a batch of new ticks: merged, and COPY again after it.
        assert await store.write([*ticks("AAA", 141, 150), *priced("AAA", 150, 151, 9.0)]) == 11
        assert store.merges == 3
        assert await store.write(ticks("AAA", 152, 160)) == 9
        assert store.merges == 3
        assert await store.read("AAA") == [
            *ticks("AAA", 1, 150),
            *priced("AAA", 151, 151, 9.0),
            *ticks("AAA", 152, 160),
        ]
        assert await store.duplicates() == 0
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_concurrent_overlapping_writers_store_each_tick_once(schema: str) -> None:
    """Two connections writing overlapping batches at once: one COPY waits for the other's
    commit, meets its rows, and is merged; every tick is stored once."""
    store = PostgresTickStore(DSN, schema=schema, pool_size=2)
    await store.open()
    try:
        first, second = await asyncio.gather(
            store.write(ticks("AAA", 1, 3000)), store.write(ticks("AAA", 2001, 5000))
        )
        assert first + second == 5000
        assert await store.count() == 5000
        assert await store.read("AAA") == ticks("AAA", 1, 5000)
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_a_table_created_by_the_older_store_opens_and_takes_writes(schema: str) -> None:
    """A tick table made by the earlier code (its exact DDL, rows in it) is used as is: the
    layout did not change, so no migration; COPY and the merge both work on it."""
    conn = await admin()
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".ticks (symbol text NOT NULL, seq bigint NOT NULL, '
            "ts bigint NOT NULL, bid double precision NOT NULL, "
            "ask double precision NOT NULL, bid_size double precision NOT NULL, "
            "ask_size double precision NOT NULL, PRIMARY KEY (symbol, seq))"
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} SELECT %s, g, 1000 + g, 100.0 + g, 100.5 + g, 1.0, 2.0 "
                "FROM generate_series(1, 10) AS g"
            ).format(sql.Identifier(schema, "ticks")),
            ("AAA",),
        )
    finally:
        await conn.close()
    store = PostgresTickStore(DSN, schema=schema)
    await store.open()
    try:
        assert await store.last_seqs() == {"AAA": 10}
        assert await store.write(priced("AAA", 5, 20, 7.0)) == 10
        assert await store.write(ticks("AAA", 21, 30)) == 10
        assert await store.read("AAA") == [
            *ticks("AAA", 1, 10),
            *priced("AAA", 11, 20, 7.0),
            *ticks("AAA", 21, 30),
        ]
    finally:
        await store.aclose()
