"""Resource scaling: knobs with bounds, and the real resources they turn (the ingestor's batch
size and queue bound, the PostgreSQL pool, the optimiser's workers), also through the manager's
RESOURCE_SCALING strategy."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import psycopg
import pytest

from strategylab.errors import ConfigurationError
from strategylab.fault_tolerance import (
    DEFAULT_POLICIES,
    ErrorContext,
    ErrorRecoveryManager,
    ErrorSeverity,
    ErrorType,
    RecoveryPolicy,
    RecoveryStrategyKind,
    Scalable,
    ScalingKnob,
    SlaClass,
    scale_knobs,
)
from strategylab.market import (
    Ingestor,
    IngestorConfig,
    PostgresTickStore,
    SQLiteTickStore,
    Tick,
)
from strategylab.research import Optimizer

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


async def until(predicate: Callable[[], bool | Awaitable[bool]], limit: float = 5.0) -> None:
    """Poll a counter no event announces (a pool slot taken, a server backend), bounded."""
    async with asyncio.timeout(limit):
        while True:
            done = predicate()
            if done if isinstance(done, bool) else await done:
                return
            await asyncio.sleep(0.01)


def ticks(first: int, count: int, symbol: str = "S") -> list[Tick]:
    return [
        Tick(symbol, seq, seq * 1_000, 100.0, 100.5, 1.0, 2.0)
        for seq in range(first, first + count)
    ]


# ------------------------------------------------------------------ the knob


class Box:
    def __init__(self, value: int) -> None:
        self.value = value

    def set(self, value: int) -> None:
        self.value = value


def knob(box: Box, lower: int = 1, upper: int = 10) -> ScalingKnob:
    return ScalingKnob(name="k", getter=lambda: box.value, setter=box.set, lower=lower, upper=upper)


def test_a_knob_grows_by_the_factor_rounded_up_and_stops_at_its_bound() -> None:
    """3 * 1.5 -> 5 (ceil), * 2 -> 10, then at the bound: False and unchanged."""
    box = Box(3)
    k = knob(box)
    assert k.scale(1.5) is True
    assert box.value == 5
    assert k.scale(2.0) is True
    assert box.value == 10
    assert k.scale(2.0) is False
    assert box.value == 10
    assert k.snapshot().value == 10


def test_a_knob_shrinks_rounded_down_to_its_lower_bound() -> None:
    """5 * 0.5 -> 2 (floor), then 1 (the lower bound), then False."""
    box = Box(5)
    k = knob(box, lower=1)
    assert k.scale(0.5) is True
    assert box.value == 2
    assert k.scale(0.1) is True
    assert box.value == 1
    assert k.scale(0.5) is False


def test_scale_knobs_is_true_when_any_knob_moved() -> None:
    """One knob at its bound and one below it: True, and only the second moved."""
    full, room = Box(10), Box(2)
    assert scale_knobs([knob(full), knob(room)], 2.0) is True
    assert (full.value, room.value) == (10, 4)
    assert scale_knobs([knob(full)], 2.0) is False


@pytest.mark.parametrize(("lower", "upper", "key"), [(0, 5, "k.lower"), (5, 2, "k.upper")])
def test_bad_bounds_name_the_field(lower: int, upper: int, key: str) -> None:
    """Bounds below 1 or upper < lower raise ConfigurationError naming the bound."""
    with pytest.raises(ConfigurationError) as info:
        knob(Box(1), lower=lower, upper=upper)
    assert info.value.key == key


def test_a_bad_factor_is_refused() -> None:
    """A factor that is not a finite number > 0 is a ValueError naming it."""
    with pytest.raises(ValueError, match="factor"):
        knob(Box(1)).scale(float("nan"))


# ------------------------------------------------------------------ the ingestor


class GatedStore(SQLiteTickStore):
    """A real SQLite store that records batch sizes and holds its first write until opened."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sizes: list[int] = []
        self.gate = asyncio.Event()

    async def write(self, batch: Sequence[Tick]) -> int:
        self.sizes.append(len(batch))
        await self.gate.wait()
        return await super().write(batch)


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[GatedStore]:
    store = GatedStore(tmp_path / "ticks.db")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.mark.timeout(20)
async def test_a_scaled_batch_size_makes_the_next_batch_larger(gated: GatedStore) -> None:
    """batch_size 100, scale(2.0) while the first batch is being written: the next ones are 200,
    and every tick is stored once."""
    ingestor = Ingestor(gated, IngestorConfig(batch_size=100, max_queue=10_000, linger=0.0))
    for first in range(1, 1000, 50):
        await ingestor.put(ticks(first, 50))
    await ingestor.start()
    try:
        await until(lambda: bool(gated.sizes))
        assert await ingestor.scale(2.0) is True
        assert ingestor.statistics().batch_size == 200
        gated.gate.set()
        await ingestor.wait_accounted({"S": 1000}, timeout=10)
    finally:
        await ingestor.aclose(5)
    assert gated.sizes == [100, 200, 200, 200, 200, 100]
    assert [t.seq for t in await gated.read("S")] == list(range(1, 1001))


async def test_the_ingestor_knobs_stop_at_scale_limit(tmp_path: Path) -> None:
    """scale_limit=2: one doubling reaches the bound, the next scale() is False; knobs() shows
    the values and bounds."""
    store = SQLiteTickStore(tmp_path / "t.db")
    ingestor = Ingestor(store, IngestorConfig(batch_size=100, max_queue=1000, scale_limit=2))
    assert await ingestor.scale(1.5) is True
    assert await ingestor.scale(2.0) is True
    assert await ingestor.scale(2.0) is False
    values = {k.name: (k.value, k.lower, k.upper) for k in ingestor.knobs()}
    assert values == {"batch_size": (200, 1, 200), "max_queue": (2000, 1, 2000)}


@pytest.mark.timeout(10)
async def test_a_larger_queue_bound_releases_a_waiting_put(tmp_path: Path) -> None:
    """With the writer stopped and the queue full, put() waits; scale(2.0) lets it in."""
    store = SQLiteTickStore(tmp_path / "t.db")
    ingestor = Ingestor(store, IngestorConfig(batch_size=50, max_queue=100))
    await ingestor.put(ticks(1, 100))
    blocked = asyncio.create_task(ingestor.put(ticks(101, 50)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert await ingestor.scale(2.0) is True
    async with asyncio.timeout(2):
        await blocked
    assert ingestor.statistics().queued == 150


@pytest.mark.timeout(20)
async def test_the_managers_resource_scaling_turns_the_ingestors_knob(tmp_path: Path) -> None:
    """A SYSTEM_OVERLOAD whose chain starts with RESOURCE_SCALING scales the registered
    ingestor by 1.5 and succeeds once it is healthy."""
    store = SQLiteTickStore(tmp_path / "t.db")
    await store.open()
    ingestor = Ingestor(store, IngestorConfig(batch_size=100, max_queue=1000))
    assert isinstance(ingestor, Scalable)
    policies = {
        **DEFAULT_POLICIES,
        ErrorType.SYSTEM_OVERLOAD: RecoveryPolicy(
            error_type=ErrorType.SYSTEM_OVERLOAD,
            severity=ErrorSeverity.HIGH,
            chain=(RecoveryStrategyKind.RESOURCE_SCALING, RecoveryStrategyKind.CIRCUIT_BREAKER),
            sla=SlaClass.CRITICAL,
        ),
    }
    manager = ErrorRecoveryManager(policies, capture_state=False)
    manager.register(ingestor)
    await ingestor.start()
    try:
        context = ErrorContext.from_exception(
            RuntimeError("queue depth over the limit"),
            component=ingestor.name,
            error_type=ErrorType.SYSTEM_OVERLOAD,
            severity=ErrorSeverity.HIGH,
            capture_state=False,
        )
        outcome = await manager.handle(context)
    finally:
        await ingestor.aclose(5)
        await store.aclose()
    assert outcome.success
    assert outcome.strategy is RecoveryStrategyKind.RESOURCE_SCALING
    values = {k.name: k.value for k in ingestor.knobs()}
    assert values == {"batch_size": 150, "max_queue": 1500}


# ------------------------------------------------------------------ the PostgreSQL pool


async def backends(app: str) -> int:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    try:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        )
        row = await cur.fetchone()
    finally:
        await conn.close()
    assert row is not None
    return int(row[0])


async def backends_are(app: str, count: int) -> bool:
    return await backends(app) == count


async def drop_schema(schema: str) -> None:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.mark.timeout(30)
async def test_scaling_the_pg_pool_really_admits_more_connections() -> None:
    """pool_size 1: a second concurrent hold waits; scale(2.0) admits it and the server sees two
    backends of this store; at max_pool_size scale() is False; shrinking closes idle ones."""
    app = f"scaling_{uuid.uuid4().hex[:10]}"
    schema = f"scaling_{uuid.uuid4().hex[:10]}"
    store = PostgresTickStore(
        f"{DSN} application_name={app}", schema=schema, pool_size=1, max_pool_size=3
    )
    await store.open()
    release = asyncio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        async with store._connection() as conn:  # holding a pool slot
            await conn.execute("SELECT 1")
            held += 1
            await release.wait()
            await conn.rollback()

    try:
        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        await until(lambda: held >= 1)
        await asyncio.sleep(0.1)
        assert held == 1
        assert store.connections_in_use == 1
        assert await backends(app) == 1
        assert await store.scale(2.0) is True
        assert store.pool_size == 2
        await until(lambda: held >= 2)
        assert await backends(app) == 2
        assert await store.scale(2.0) is True
        assert store.pool_size == 3  # ceil(4) clamped to max_pool_size
        assert await store.scale(2.0) is False
        await until(lambda: held >= 3)
        assert await backends(app) == 3
        assert store.knobs()[0].value == 3

        release.set()
        await asyncio.gather(*tasks)
        assert await store.scale(0.5) is True
        assert store.pool_size == 1
        await until(lambda: backends_are(app, 1))
        await store.write(ticks(1, 10))
        assert await store.count() == 10
    finally:
        release.set()
        await store.aclose()
        await drop_schema(schema)


# ------------------------------------------------------------------ the optimiser's workers


def make_spec(
    parameters: Mapping[str, float | int | str | bool], scope: float
) -> dict[str, object]:
    return {**parameters, "scope": scope}


def slow_job(spec: dict[str, object]) -> dict[str, float]:
    """Takes a moment, so that jobs are still waiting when the worker count is scaled."""
    time.sleep(0.3)
    return {"pid": float(os.getpid())}


@pytest.mark.timeout(50)
async def test_scaling_the_optimiser_starts_more_workers_for_jobs_not_yet_started() -> None:
    """One worker; after the first result scale(3.0): the remaining jobs run on three workers."""
    first_done = asyncio.Event()
    optimizer: Optimizer[dict[str, object]] = Optimizer(
        slow_job,
        make_spec,
        max_workers=1,
        worker_limit=3,
        progress=lambda _r, _d, _t: first_done.set(),
    )

    async def scale_after_first() -> bool:
        await first_done.wait()
        return await optimizer.scale(3.0)

    scaler = asyncio.create_task(scale_after_first())
    report = await optimizer.arun([{"n": i} for i in range(12)])
    assert await scaler is True
    assert optimizer.knobs()[0].value == 3
    assert len(report.worker_pids) == 3
    assert len({r.metrics["pid"] for r in report.results}) == 3
    assert all(r.metrics for r in report.results)
