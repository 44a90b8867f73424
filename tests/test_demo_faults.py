"""The demo's fault schedule is a function of ``--seed``, and the exchange's counted api_errors
fault strikes exactly the next N orders (every attempt of each), whatever the timing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from rich.console import Console

from strategylab._demo_faults import FEED_KINDS, FaultRecord, build_injector, plan_faults
from strategylab._demo_report import faults_table
from strategylab.chaos import ApiErrors, ConnectionReset, Partition, Proxy
from strategylab.clock import SYSTEM_CLOCK
from strategylab.errors import ConfigurationError
from strategylab.exchange._faults import FaultBoard, FaultKind, FaultRequestError, parse_fault
from strategylab.market import Exchange, ExchangeConfig
from strategylab.strategy._strategy import OrderRequest, Side
from strategylab.testing import FakeClock
from strategylab.trading._orders import AmbiguousOrderError, OrderClient

BUY = OrderRequest(symbol="A", side=Side.BUY, qty=1)

# --------------------------------------------------------------------------- the schedule


def test_the_same_seed_plans_the_same_faults() -> None:
    """Two plans from one seed and tick count are equal, fault for fault."""
    assert plan_faults(42, 400_000) == plan_faults(42, 400_000)
    assert plan_faults(42, 400_000).lines() == plan_faults(42, 400_000).lines()


def test_another_seed_plans_other_faults() -> None:
    """Seeds 0..9 do not all plan what seed 42 plans (order, points, parameters)."""
    plans = {tuple(plan_faults(seed, 400_000).lines()) for seed in (42, *range(10))}
    assert len(plans) > 1


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40, -7])
def test_a_plan_has_every_feed_fault_once_at_rising_points_in_range(seed: int) -> None:
    """Five feed faults at rising points within 5..75 % of the ticks; two order windows of 1-2."""
    ticks = 100_000
    plan = plan_faults(seed, ticks)
    feed = plan.feed
    assert sorted(f.kind for f in feed) == sorted(FEED_KINDS)
    points = [f.at for f in feed]
    assert points == sorted(points)
    assert all(0.05 * ticks - 100 <= p <= 0.75 * ticks + 100 for p in points)
    assert all(f.hold > 0 for f in feed)
    orders = plan.orders
    assert [f.kind for f in orders] == ["api_errors", "api_errors"]
    assert all(f.count in (1, 2) for f in orders)
    assert orders[0].at < orders[1].at
    assert plan.ambiguous == sum(f.count or 0 for f in orders)


@pytest.mark.parametrize(
    ("seed", "ticks", "field"),
    [("42", 100_000, "seed"), (True, 100_000, "seed"), (42, 999, "ticks"), (42, 1e5, "ticks")],
)
def test_a_bad_seed_or_tick_count_is_refused_by_name(
    seed: object, ticks: object, field: str
) -> None:
    """A seed that is not an int, or fewer than 1,000 ticks: ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=field):
        plan_faults(seed, ticks)  # type: ignore[arg-type]


async def test_planned_faults_build_the_chaos_injectors() -> None:
    """Feed faults become proxy injectors, the orders fault a counted ApiErrors."""
    plan = plan_faults(42, 100_000)
    async with Proxy("p", upstream="127.0.0.1:9") as proxy:
        built = [
            build_injector(
                f,
                proxy=proxy,
                exchange_url="http://127.0.0.1:9",
                admin_token="t",  # noqa: S106 - a test token
                index=i,
            )
            for i, f in enumerate(plan.faults)
        ]
    kinds = {type(b) for b in built}
    assert {ConnectionReset, Partition, ApiErrors} <= kinds
    api = [b for b in built if isinstance(b, ApiErrors)]
    assert [a.body()["count"] for a in api] == [f.count for f in plan.orders]
    assert all(a.body()["phase"] == "after" and a.body()["rate"] == 1.0 for a in api)
    assert len({b.name for b in built}) == len(built)


def test_the_faults_table_fits_80_columns_without_cutting_a_number() -> None:
    """The report's faults table: every planned point appears whole in 80 columns."""
    plan = plan_faults(42, 400_000)
    records = [FaultRecord(planned=f, injected_at=f.at + 1234, held_s=f.hold) for f in plan.faults]
    console = Console(width=80, record=True, color_system=None)
    console.print(faults_table(42, records))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for fault in plan.faults:
        assert f"{fault.at + 1234:,}" in text


# --------------------------------------------------------------------------- the counted fault


def _counted(count: int, phase: str = "after", **extra: object) -> dict[str, object]:
    return {"kind": "api_errors", "duration": 30.0, "phase": phase, "count": count, **extra}


def test_a_counted_fault_strikes_the_next_n_orders_and_all_their_attempts() -> None:
    """The first N distinct client ids are chosen; their resubmissions are struck too; the
    (N+1)-th order and every other request are not."""
    board = FaultBoard(clock=FakeClock())
    board.set(parse_fault(_counted(2), 0.0))
    assert board.strike(FaultKind.API_ERRORS) is None  # not a rate fault
    assert board.strike_order("a") is not None
    assert board.strike_order("b") is not None
    assert board.strike_order("c") is None
    assert board.strike_order("a") is not None  # a retry of a chosen order
    assert board.chosen_orders == ("a", "b")
    assert board.strikes[FaultKind.API_ERRORS] == 3
    assert board.snapshot()[0]["orders_struck"] == 2


def test_clearing_a_counted_fault_forgets_its_orders() -> None:
    """After heal (clear) no order is struck; a new counted fault chooses afresh."""
    board = FaultBoard(clock=FakeClock())
    board.set(parse_fault(_counted(1), 0.0))
    assert board.strike_order("a") is not None
    board.clear(FaultKind.API_ERRORS)
    assert board.strike_order("a") is None
    board.set(parse_fault(_counted(1), 0.0))
    assert board.strike_order("b") is not None
    assert board.chosen_orders == ("b",)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "corrupt_frames", "duration": 1.0, "count": 2}, "count"),
        (_counted(0), "count"),
        (_counted(10_001), "count"),
        (_counted(count=True), "count"),
        (_counted(count=2.0), "count"),  # type: ignore[arg-type]
        (_counted(2, rate=0.5), "rate"),
    ],
)
def test_a_bad_count_is_refused_by_name(body: dict[str, object], field: str) -> None:
    """count: api_errors only, an int within 1..10000, and no rate below 1 beside it."""
    with pytest.raises(FaultRequestError) as caught:
        parse_fault(body, 0.0)
    assert caught.value.field == field


def test_api_errors_injector_sends_its_count() -> None:
    """ApiErrors(count=N) asks the exchange for N orders at rate 1; a rate below 1 is refused."""
    injector = ApiErrors("http://127.0.0.1:9", None, phase="after", count=3)
    assert injector.body() == {
        "kind": "api_errors",
        "duration": 60.0,
        "rate": 1.0,
        "status": 503,
        "phase": "after",
        "count": 3,
    }
    with pytest.raises(ConfigurationError, match="rate"):
        ApiErrors("http://127.0.0.1:9", None, count=3, rate=0.5)
    with pytest.raises(ConfigurationError, match="count"):
        ApiErrors("http://127.0.0.1:9", None, count=0)


async def _wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The quotes belong to the exchange's generator, which offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=500, data_dir=tmp_path / "ex"))
    await ex.start()
    await _wait_until(lambda: ex.book.quote("A") is not None)
    yield ex
    await ex.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("concurrent", [False, True])
async def test_exactly_n_orders_turn_ambiguous_through_the_client_s_retries(
    exchange: Exchange, concurrent: bool
) -> None:
    """A real exchange and the real order client (4 attempts each): with a counted fault of 2,
    exactly 2 of 5 orders are ambiguous (each processed once), sent one by one or all at once."""
    exchange.faults.set(parse_fault(_counted(2), SYSTEM_CLOCK.monotonic()))
    client = OrderClient(exchange.url)
    await client.start()
    try:
        cids = [f"o{i}" for i in range(5)]

        async def send(cid: str) -> bool:
            try:
                await client.submit(cid, BUY)
            except AmbiguousOrderError:
                return True
            return False

        if concurrent:
            ambiguous = await asyncio.gather(*(send(c) for c in cids))
        else:
            ambiguous = [await send(c) for c in cids]
    finally:
        await client.stop()
    assert sum(ambiguous) == 2
    assert len(exchange.faults.chosen_orders) == 2
    assert exchange.faults.strikes[FaultKind.API_ERRORS] == 2 * client.retry.max_attempts
    # Phase "after": every order was processed exactly once, the struck ones included.
    assert sorted(o.client_order_id for o in exchange.book.orders()) == cids
