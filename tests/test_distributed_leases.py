"""Sharded ingest on PostgreSQL (issue 14): symbol leases, fencing enforced by the store, and
real ``strategylab node --cluster`` processes taking over a SIGKILLed node's symbols and
giving a returning node its share, with zero lost and zero duplicated ticks.

Against the real server at 127.0.0.1:5432 (database ``test``); every test works in a schema of
its own (the nodes reach it through ``search_path`` in their DSN) and drops it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from strategylab.distributed import LeaseConfig, SymbolLeases
from strategylab.errors import ConfigurationError, StrategyLabError
from strategylab.market import (
    Feed,
    FeedConfig,
    FencedError,
    PostgresTickStore,
    Tick,
    read_emitted,
)

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
SYMBOLS = "S1,S2,S3,S4"


def ticks(symbol: str, first: int, last: int) -> list[Tick]:
    return [
        Tick(symbol, seq, 1_000 + seq, 100.0 + seq, 100.5 + seq, 1.0, 2.0)
        for seq in range(first, last + 1)
    ]


async def admin() -> psycopg.AsyncConnection[tuple[Any, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {DSN!r} is unreachable; these tests need it: {exc}")


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"leases_{uuid.uuid4().hex[:12]}"
    conn = await admin()
    await conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


def in_schema(schema: str) -> str:
    return f"{DSN} options='-c search_path={schema}'"


async def members(schema: str, symbols: tuple[str, ...], *ids: str) -> list[SymbolLeases]:
    out = []
    for member in ids:
        leases = SymbolLeases(
            DSN, LeaseConfig(cluster="c1", symbols=symbols, member=member, schema=schema)
        )
        await leases.open()
        out.append(leases)
    return out


async def expire(schema: str, member: str) -> None:
    """Age ``member``'s leases and heartbeat into the past (as a dead node's would be)."""
    conn = await admin()
    async with conn:
        for table, column in (("strategylab_leases", "owner"), ("strategylab_members", "member")):
            await conn.execute(
                sql.SQL("UPDATE {} SET expires_at = now() - interval '1 s' WHERE {} = %s").format(
                    sql.Identifier(schema, table), sql.Identifier(column)
                ),
                (member,),
            )


# ----------------------------------------------------------------------------- leases alone


def test_lease_config_names_the_bad_field() -> None:
    """A bad lease setting is a ConfigurationError naming the field; the defaults keep a
    takeover (ttl + one balance round) under the issue's 3 s."""
    with pytest.raises(ConfigurationError, match="renew_interval"):
        LeaseConfig(cluster="c", symbols=("A",), ttl=1.0, renew_interval=0.6)
    with pytest.raises(ConfigurationError, match="cluster"):
        LeaseConfig(cluster="no spaces", symbols=("A",))
    with pytest.raises(ConfigurationError, match="symbols"):
        LeaseConfig(cluster="c", symbols=("A", "A"))
    default = LeaseConfig(cluster="c", symbols=("A",))
    assert default.ttl + default.renew_interval < 3.0


@pytest.mark.timeout(20)
async def test_fair_share_takeover_increments_the_token(schema: str) -> None:
    """Two members split four symbols (ceil(4/2) each); when one dies its leases are taken
    by the other only once expired, each with the next fencing token."""
    symbols = ("A", "B", "C", "D")
    one, two = await members(schema, symbols, "m1", "m2")
    try:
        assert len(await one.acquire(4)) == 4  # a first member may hold everything
        plan = await one.plan()
        assert (plan.members, plan.share) == (2, 2)
        assert len(plan.surplus) == 2
        await one.release(plan.surplus)
        taken = await two.acquire((await two.plan()).wanted)
        assert sorted(taken) == sorted(plan.surplus)
        assert set(taken.values()) == {2}  # acquired once by m1, now by m2
        # m1's leases are live: m2 cannot take them, whatever it asks for.
        assert await two.acquire(4) == {}
        await expire(schema, "m1")
        more = await two.acquire(4)
        assert sorted(more) == sorted(s for s in symbols if s not in plan.surplus)
        assert set(more.values()) == {2}  # acquired once by m1, now by m2
        assert await one.renew() == frozenset(more)  # m1 finds them lost
        assert one.held == {}
    finally:
        for leases in (one, two):
            await leases.aclose()


# ----------------------------------------------------------------------------- the fence


@pytest.mark.timeout(20)
@pytest.mark.parametrize("method", ["copy", "unnest", "executemany"])
async def test_fenced_out_writer_is_rejected_by_the_store(schema: str, method: str) -> None:
    """The old owner's write, after another member took its lease, raises FencedError naming
    the symbol and both tokens, and stores nothing of the batch; the new owner's write lands."""
    one, two = await members(schema, ("A", "B"), "m1", "m2")
    old = PostgresTickStore(DSN, schema=schema, method=method)  # type: ignore[arg-type]
    new = PostgresTickStore(DSN, schema=schema, method=method)  # type: ignore[arg-type]
    await old.open()
    await new.open()
    try:
        await one.acquire(2)
        stale = one.fence()
        assert await old.write_fenced(ticks("A", 1, 10) + ticks("B", 1, 10), stale) == 20
        await expire(schema, "m1")
        assert await two.acquire(1) == {"A": 2}
        with pytest.raises(FencedError) as caught:
            await old.write_fenced(ticks("B", 11, 20) + ticks("A", 11, 20), stale)
        error = caught.value
        assert isinstance(error, StrategyLabError)
        assert (error.symbol, error.token, error.current, error.owner) == ("A", 1, 2, "m2")
        assert error.symbols == ("A",)
        assert error.rows == 20
        assert all(part in str(error) for part in ("'A'", "token 1", "token 2"))
        # Nothing of the batch was stored, B's ticks included (one transaction).
        assert await new.last_seqs() == {"A": 10, "B": 10}
        assert await new.write_fenced(ticks("A", 11, 15), two.fence()) == 5
        assert await old.write_fenced(ticks("B", 11, 12), stale) == 2  # B is still m1's
        assert await new.last_seqs() == {"A": 15, "B": 12}
    finally:
        for closable in (old, new, one, two):
            await closable.aclose()


@pytest.mark.timeout(20)
async def test_a_write_in_flight_holds_the_takeover_back(schema: str) -> None:
    """A fenced write's share lock makes an acquisition skip that row until the write ends:
    the takeover is ordered after it (the new owner's resume point includes it)."""
    one, two = await members(schema, ("A",), "m1", "m2")
    store = PostgresTickStore(DSN, schema=schema)
    await store.open()
    writer = await admin()
    try:
        await one.acquire(1)
        await expire(schema, "m1")
        from strategylab.market._pg_fence import check_fence  # noqa: PLC0415 - the step alone

        async with writer.transaction():
            await check_fence(writer, one.fence(), ["A"], 1)
            assert await two.acquire(1) == {}  # row share-locked by the write in flight
        assert await two.acquire(1) == {"A": 2}
        with pytest.raises(FencedError):
            await store.write_fenced(ticks("A", 1, 3), one.fence())
        assert await store.last_seqs() == {}
    finally:
        await writer.close()
        for closable in (store, one, two):
            await closable.aclose()


@pytest.mark.timeout(20)
async def test_node_writes_drop_a_fenced_symbol_and_keep_the_others(schema: str) -> None:
    """The node's fenced store, fenced out of one symbol, forgets that lease, says so, and
    stores the rest of the batch; later ticks of that symbol are skipped, not written."""
    from strategylab.node._cluster import FencedWrites  # noqa: PLC0415 - the node's own part

    one, two = await members(schema, ("A", "B"), "m1", "m2")
    store = PostgresTickStore(DSN, schema=schema)
    await store.open()
    dropped: list[list[str]] = []
    writes = FencedWrites(store, one, dropped.append)
    try:
        await one.acquire(2)
        await expire(schema, "m1")
        await two.acquire(1)  # takes A
        assert await writes.write(ticks("A", 1, 5) + ticks("B", 1, 5)) == 5
        assert dropped == [["A"]]
        assert one.held == {"B": 1}
        assert await writes.write(ticks("A", 6, 8) + ticks("B", 6, 6)) == 1
        assert writes.skipped == 8  # A 1..5 (fenced, then skipped) and A 6..8
        assert await store.last_seqs() == {"B": 6}
    finally:
        for closable in (store, one, two):
            await closable.aclose()


# ----------------------------------------------------------------------------- the feed


class _Sink:
    async def put(self, ticks: list[Tick]) -> None:
        pass

    async def quarantine(self, entries: list[Any]) -> None:
        pass

    async def last_seqs(self) -> dict[str, int]:
        return {}


@pytest.mark.timeout(10)
async def test_feed_resubscribe_parks_on_no_symbols_and_forgets_removed_positions() -> None:
    """A feed given no symbols is parked (not started, healthy: nothing to ingest); given
    symbols again it takes them, and a removed symbol's position is reported and forgotten."""
    feed = Feed(FeedConfig(urls=("ws://127.0.0.1:1/ws",), symbols=("A", "B")), _Sink())
    feed._delivered.update({"A": 7, "B": 9})  # positions handed on earlier
    assert await feed.resubscribe(["B", "C"]) == {"A": 7}
    assert list(feed.symbols) == ["B", "C"]
    assert feed.statistics().last_seq == {"B": 9}
    assert await feed.resubscribe([]) == {"B": 9, "C": 0}
    assert list(feed.symbols) == []
    await feed.start()
    assert feed.statistics().connect_attempts == 0
    assert await feed.health() is True
    assert await feed.resubscribe(["D"]) == {}
    assert list(feed.symbols) == ["D"]
    assert await feed.health() is False  # taken, not yet connected
    await feed.stop()


# ----------------------------------------------------------------------------- real nodes

Proc = asyncio.subprocess.Process


class NodeProc:
    """A ``strategylab node --cluster`` process whose status lines are read as they come."""

    def __init__(self, proc: Proc, name: str) -> None:
        self.proc = proc
        self.name = name
        self.status: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if data.get("event") == "status":
                    self.status = data
                    self.changed.set()

    def owned(self) -> set[str]:
        return set(self.status.get("cluster", {}).get("symbols", ()))

    async def until(self, done: Callable[[NodeProc], bool], limit: float = 15.0) -> None:
        async with asyncio.timeout(limit):
            while not done(self):
                self.changed.clear()
                if self.proc.returncode is not None or self.reader.done():
                    raise AssertionError(f"{self.name} exited ({self.proc.returncode})")
                await self.changed.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self.reader


async def spawn(*args: str) -> Proc:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


@contextlib.asynccontextmanager
async def exchange(tmp_path: Path, symbols: str, max_ticks: int) -> AsyncIterator[str]:
    proc = await spawn(
        "exchange",
        *("--port", "0", "--data-dir", str(tmp_path / "exchange"), "--symbols", symbols),
        *("--tick-rate", "1000", "--max-ticks", str(max_ticks), "--heartbeat-interval", "0.2"),
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while True:
                line = await proc.stdout.readline()
                assert line, "the exchange exited before listening"
                data = json.loads(line)
                if data.get("event") == "listening":
                    break
        yield f"http://127.0.0.1:{data['port']}"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                await proc.wait()


async def node(url: str, tmp_path: Path, name: str, *, schema: str, cluster: str) -> NodeProc:
    proc = await spawn(
        "node",
        *("--exchange-url", url, "--data-dir", str(tmp_path / name), "--symbols", SYMBOLS),
        *("--postgres", in_schema(schema), "--cluster", cluster, "--status-interval", "0.1"),
        *("--name", name),
    )
    return NodeProc(proc, name)


async def complete(tmp_path: Path, schema: str, total: int, limit: float = 20.0) -> None:
    """Wait for every emitted tick to be stored; then 1..last of every symbol, exactly once."""
    emitted = tmp_path / "exchange" / "emitted.log"
    conn = await admin()
    async with conn, asyncio.timeout(limit):
        while True:
            last: dict[str, int] = {}
            for tick in read_emitted(emitted) if emitted.exists() else ():
                last[tick.symbol] = max(last.get(tick.symbol, 0), tick.seq)
            cur = await conn.execute(
                sql.SQL(
                    "SELECT symbol, count(*), count(DISTINCT seq), min(seq), max(seq) FROM {} "
                    "GROUP BY symbol ORDER BY symbol"
                ).format(sql.Identifier(schema, "ticks"))
            )
            rows = {r[0]: r[1:] for r in await cur.fetchall()}
            if sum(last.values()) == total and all(
                rows.get(s, (0,))[0] == n for s, n in last.items()
            ):
                break
            await asyncio.sleep(0.1)
    for symbol, n in last.items():
        assert rows[symbol] == (n, n, 1, n), symbol  # none lost, none twice


async def tokens(schema: str, cluster: str) -> dict[str, tuple[str | None, int]]:
    conn = await admin()
    async with conn:
        cur = await conn.execute(
            sql.SQL("SELECT symbol, owner, token FROM {} WHERE cluster = %s").format(
                sql.Identifier(schema, "strategylab_leases")
            ),
            (cluster,),
        )
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}


def holds(n: int) -> Callable[[NodeProc], bool]:
    return lambda p: len(p.owned()) == n and p.status.get("connected", False)


@pytest.mark.integration
@pytest.mark.timeout(45)
async def test_sigkilled_nodes_symbols_are_taken_over_without_loss(
    schema: str, tmp_path: Path
) -> None:
    """Two nodes share four symbols; one is SIGKILLed: the other takes its symbols over (each
    lease's token incremented) within about ttl + a round, resumes them from the store, and
    the store ends with every emitted tick exactly once."""
    total = 8000
    async with exchange(tmp_path, SYMBOLS, total) as url:
        one = await node(url, tmp_path, "n1", schema=schema, cluster="k1")
        two = await node(url, tmp_path, "n2", schema=schema, cluster="k1")
        try:
            await one.until(holds(2))
            await two.until(holds(2))
            assert one.owned().isdisjoint(two.owned())
            before = await tokens(schema, "k1")
            victim = one.owned()
            one.proc.kill()
            await one.proc.wait()
            await two.until(holds(4))
            after = await tokens(schema, "k1")
            for symbol in victim:
                assert after[symbol][1] == before[symbol][1] + 1
                assert after[symbol][0] == two.status["cluster"]["member"]
            assert two.status["cluster"]["tokens"] == {s: after[s][1] for s in after}
            await complete(tmp_path, schema, total)
        finally:
            one.proc.kill() if one.proc.returncode is None else None
            await one.reader
            await two.stop()


@pytest.mark.integration
@pytest.mark.timeout(45)
async def test_a_node_that_comes_back_takes_its_share_without_gap(
    schema: str, tmp_path: Path
) -> None:
    """A node SIGKILLed and started again takes its fair share back: the other releases
    its surplus gracefully (flushed first), and no tick is lost or stored twice."""
    total = 9000
    async with exchange(tmp_path, SYMBOLS, total) as url:
        one = await node(url, tmp_path, "n1", schema=schema, cluster="k2")
        two = await node(url, tmp_path, "n2", schema=schema, cluster="k2")
        back: NodeProc | None = None
        try:
            await one.until(holds(2))
            await two.until(holds(2))
            two.proc.kill()
            await two.proc.wait()
            await one.until(holds(4))
            back = await node(url, tmp_path, "n2", schema=schema, cluster="k2")
            await back.until(holds(2))
            await one.until(holds(2))
            assert one.owned().isdisjoint(back.owned())
            assert one.status["cluster"]["released"] >= 2
            await complete(tmp_path, schema, total)
        finally:
            two.proc.kill() if two.proc.returncode is None else None
            await two.reader
            await one.stop()
            if back is not None:
                await back.stop()
