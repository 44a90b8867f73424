"""The exchange's HTTP order API, admin faults, order book logic and configuration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.errors import ConfigurationError
from strategylab.exchange._book import OrderBook
from strategylab.exchange._faults import FaultBoard, FaultKind, parse_fault
from strategylab.exchange._gen import TickGenerator
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.market._tick import Tick
from strategylab.testing import FakeClock

TOKEN = "s3cret"  # noqa: S105 - a test token


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """An exchange with a few ticks emitted (so there are quotes), on a FakeClock."""
    config = ExchangeConfig(
        symbols=("A", "B"), tick_rate=0, max_ticks=0, data_dir=tmp_path, admin_token=TOKEN
    )
    ex = Exchange(config, clock=FakeClock(start=1000.0))
    await ex.start()
    ex.book.on_ticks([Tick("A", 1, 1, 99.0, 101.0, 1.0, 1.0), Tick("B", 1, 1, 9.0, 11.0, 1.0, 1.0)])
    yield ex
    await ex.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, dict[str, str]]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json(), dict(response.headers)


ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.timeout(10)
async def test_market_order_fills_at_the_quote_and_is_idempotent(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """A market buy fills at the ask; resubmitting its client_order_id returns the same order."""
    order = {"client_order_id": "c1", "symbol": "A", "side": "buy", "qty": 5, "type": "market"}
    status, first, _ = await call(http, "POST", f"{exchange.url}/api/orders", json=order)
    assert status == 201
    assert (first["status"], first["avg_fill_price"], first["filled_qty"]) == ("filled", 101.0, 5)
    status, again, _ = await call(http, "POST", f"{exchange.url}/api/orders", json=order)
    assert status == 200
    assert again == first
    _, fills, _ = await call(http, "GET", f"{exchange.url}/api/fills")
    assert len(fills) == 1
    _, positions, _ = await call(http, "GET", f"{exchange.url}/api/positions")
    assert positions == [{"symbol": "A", "qty": 5.0, "avg_price": 101.0, "realized_pnl": 0.0}]
    _, by_cid, _ = await call(http, "GET", f"{exchange.url}/api/orders/by-client-id/c1")
    assert by_cid["id"] == first["id"]


@pytest.mark.timeout(10)
async def test_limit_order_rests_and_cancels(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """A limit buy below the ask rests as open, shows in ?status=open, and cancels."""
    order = {"client_order_id": "L1", "symbol": "A", "side": "buy", "qty": 1, "type": "limit"}
    order["price"] = 100.0
    status, placed, _ = await call(http, "POST", f"{exchange.url}/api/orders", json=order)
    assert (status, placed["status"]) == (201, "open")
    _, open_orders, _ = await call(http, "GET", f"{exchange.url}/api/orders?status=open")
    assert [o["id"] for o in open_orders] == [placed["id"]]
    status, cancelled, _ = await call(http, "DELETE", f"{exchange.url}/api/orders/{placed['id']}")
    assert (status, cancelled["status"]) == (200, "cancelled")
    status, again, _ = await call(http, "DELETE", f"{exchange.url}/api/orders/{placed['id']}")
    assert (status, again["field"]) == (409, "id")
    _, open_orders, _ = await call(http, "GET", f"{exchange.url}/api/orders?status=open")
    assert open_orders == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"qty": -1}, "qty"),
        ({"qty": "many"}, "qty"),
        ({"side": "hold"}, "side"),
        ({"symbol": "ZZZ"}, "symbol"),
        ({"type": "stop"}, "type"),
        ({"client_order_id": ""}, "client_order_id"),
        ({"type": "limit"}, "price"),
    ],
)
async def test_bad_order_is_400_naming_the_field(
    exchange: Exchange, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    """Each malformed field gets a 400 whose JSON names that field, and no order is created."""
    order = {"client_order_id": "x", "symbol": "A", "side": "buy", "qty": 1} | change
    status, body, _ = await call(http, "POST", f"{exchange.url}/api/orders", json=order)
    assert (status, body["field"]) == (400, field)
    assert exchange.book.orders() == []


@pytest.mark.timeout(10)
async def test_non_json_body_is_400(exchange: Exchange, http: aiohttp.ClientSession) -> None:
    """A body declared JSON that is not JSON is refused with field 'body'."""
    headers = {"Content-Type": "application/json"}
    url = f"{exchange.url}/api/orders"
    status, body, _ = await call(http, "POST", url, data=b"{nope", headers=headers)
    assert (status, body["field"]) == (400, "body")


@pytest.mark.timeout(10)
async def test_admin_without_or_with_wrong_token_is_401_and_counted(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """Admin calls without the bearer token are refused and recorded as security events."""
    fault = {"kind": "api_errors", "duration": 5}
    status, _, _ = await call(http, "POST", f"{exchange.url}/admin/faults", json=fault)
    assert status == 401
    wrong = {"Authorization": "Bearer nope"}
    status, _, _ = await call(http, "GET", f"{exchange.url}/admin/faults", headers=wrong)
    assert status == 401
    assert exchange.security_events == 2
    assert exchange.faults.snapshot() == []


@pytest.mark.timeout(10)
async def test_api_errors_fault_answers_429_until_it_expires(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """api_errors answers its status with Retry-After for its duration, then the API recovers."""
    fault = {"kind": "api_errors", "duration": 5, "status": 429}
    status, _, _ = await call(
        http, "POST", f"{exchange.url}/admin/faults", json=fault, headers=ADMIN
    )
    assert status == 201
    for _ in range(3):
        status, _, headers = await call(http, "GET", f"{exchange.url}/api/status")
        assert status == 429
        assert headers["Retry-After"] == "1"
    clock = exchange._clock
    assert isinstance(clock, FakeClock)
    clock.advance(5.0)
    status, body, _ = await call(http, "GET", f"{exchange.url}/api/status")
    assert status == 200
    assert body["faults"] == []


@pytest.mark.timeout(10)
async def test_api_errors_after_phase_processes_the_order_then_fails(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """phase=after creates the order but answers 503: lookup by client id reconciles it."""
    fault = {"kind": "api_errors", "duration": 5, "phase": "after"}
    await call(http, "POST", f"{exchange.url}/admin/faults", json=fault, headers=ADMIN)
    order = {"client_order_id": "amb", "symbol": "B", "side": "sell", "qty": 2}
    status, _, _ = await call(http, "POST", f"{exchange.url}/api/orders", json=order)
    assert status == 503
    status, _, _ = await call(http, "DELETE", f"{exchange.url}/admin/faults", headers=ADMIN)
    assert status == 200
    status, found, _ = await call(http, "GET", f"{exchange.url}/api/orders/by-client-id/amb")
    assert (status, found["status"], found["avg_fill_price"]) == (200, "filled", 9.0)


def test_fault_expires_on_the_injected_clock() -> None:
    """A fault is active until its duration has passed on the board's clock."""
    clock = FakeClock()
    board = FaultBoard(clock=clock)
    board.set(parse_fault({"kind": "corrupt_frames", "duration": 2.0, "rate": 1.0}, 0.0))
    assert board.strike(FaultKind.CORRUPT_FRAMES) is not None
    clock.advance(1.999)
    assert board.active(FaultKind.CORRUPT_FRAMES) is not None
    clock.advance(0.001)
    assert board.active(FaultKind.CORRUPT_FRAMES) is None
    assert board.rate(FaultKind.CORRUPT_FRAMES) == 0.0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "meteor", "duration": 1}, "kind"),
        ({"kind": "api_errors"}, "duration"),
        ({"kind": "api_errors", "duration": -1}, "duration"),
        ({"kind": "api_errors", "duration": 1, "rate": 2}, "rate"),
        ({"kind": "api_errors", "duration": 1, "status": 200}, "status"),
        ([], "body"),
    ],
)
def test_bad_fault_request_names_the_field(body: object, field: str) -> None:
    """parse_fault refuses a malformed request, naming the field."""
    with pytest.raises(ValueError, match=f"^{field}:"):
        parse_fault(body, 0.0)


def test_resting_limit_order_fills_when_the_quote_crosses() -> None:
    """A resting sell limit fills at the bid once the bid reaches its price, not before."""
    book = OrderBook(["A"], clock=FakeClock())
    book.on_ticks([Tick("A", 1, 1, 99.0, 101.0, 1.0, 1.0)])
    order, _ = book.submit(
        {"client_order_id": "s", "symbol": "A", "side": "sell", "qty": 3, "type": "limit"}
        | {"price": 100.5}
    )
    assert order.status == "open"
    book.on_ticks([Tick("A", 2, 2, 100.0, 101.0, 1.0, 1.0)])
    assert book.get(order.id).status == "open"
    book.on_ticks([Tick("A", 3, 3, 100.7, 101.0, 1.0, 1.0), Tick("A", 4, 4, 99.0, 100.0, 1, 1)])
    filled = book.get(order.id)
    assert (filled.status, filled.avg_fill_price) == ("filled", 100.7)


def test_positions_realise_pnl_and_flip() -> None:
    """Buying 10 @100 then selling 15 @110 realises 100 and leaves -5 @110."""
    book = OrderBook(["A"], clock=FakeClock())
    book.on_ticks([Tick("A", 1, 1, 99.0, 100.0, 1.0, 1.0)])
    book.submit({"client_order_id": "b", "symbol": "A", "side": "buy", "qty": 10})
    book.on_ticks([Tick("A", 2, 2, 110.0, 111.0, 1.0, 1.0)])
    book.submit({"client_order_id": "s", "symbol": "A", "side": "sell", "qty": 15})
    (position,) = book.positions()
    assert (position.qty, position.avg_price, position.realized_pnl) == (-5.0, 110.0, 100.0)


def test_market_order_without_a_quote_is_rejected_but_recorded() -> None:
    """Before any tick, a market order is rejected with a reason and still found by client id."""
    book = OrderBook(["A"], clock=FakeClock())
    order, created = book.submit({"client_order_id": "e", "symbol": "A", "side": "buy", "qty": 1})
    assert (created, order.status, order.reason) == (True, "rejected", "no quote yet")
    assert book.by_client_id("e") == order


def test_generator_is_deterministic_and_gapless() -> None:
    """The same seed gives the same ticks; seqs run 1..n per symbol; all ticks are valid."""
    one, two = TickGenerator(("A", "B"), 7), TickGenerator(("A", "B"), 7)
    a = one.generate(50, 10).ticks + one.generate(51, 10).ticks
    b = two.generate(50, 10).ticks + two.generate(51, 10).ticks
    assert a == b
    assert [t.seq for t in a if t.symbol == "A"] == list(range(1, 52))
    assert [t.seq for t in a if t.symbol == "B"] == list(range(1, 51))
    assert all(t.bid < t.ask and t.bid > 0 for t in a)
    assert [t.ts for t in a] == sorted(t.ts for t in a)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"port": 70000}, "port"),
        ({"symbols": ()}, "symbols"),
        ({"symbols": ("A", "A")}, "symbols"),
        ({"tick_rate": -1.0}, "tick_rate"),
        ({"ticks_per_frame": 0}, "ticks_per_frame"),
        ({"heartbeat_interval": 0.0}, "heartbeat_interval"),
        ({"retention": 0}, "retention"),
        ({"signing_key": b""}, "signing_key"),
        ({"max_ticks": -5}, "max_ticks"),
        ({"admin_token": ""}, "admin_token"),
    ],
)
def test_bad_config_names_the_option(options: dict[str, Any], key: str) -> None:
    """ExchangeConfig refuses a bad value with a ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError) as info:
        ExchangeConfig(**options)
    assert info.value.key == key


@pytest.mark.timeout(10)
async def test_health_follows_the_server(tmp_path: Path) -> None:
    """health() is False before start and after stop, True while serving."""
    ex = Exchange(ExchangeConfig(data_dir=tmp_path, tick_rate=100))
    assert not await ex.health()
    await ex.start()
    try:
        assert await ex.health()
    finally:
        await ex.stop()
    assert not await ex.health()


@pytest.mark.timeout(10)
async def test_bulk_lookup_answers_found_orders_and_unknown_ids(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """POST /api/orders/lookup: the orders with the ids asked for, and the ids never seen."""
    for cid in ("k1", "k2"):
        order = {"client_order_id": cid, "symbol": "A", "side": "buy", "qty": 1, "type": "limit"}
        status, _, _ = await call(
            http, "POST", f"{exchange.url}/api/orders", json={**order, "price": 50.0}
        )
        assert status == 201
    status, body, _ = await call(
        http,
        "POST",
        f"{exchange.url}/api/orders/lookup",
        json={"client_order_ids": ["k2", "nope", "k1"]},
    )
    assert status == 200
    assert [o["client_order_id"] for o in body["orders"]] == ["k2", "k1"]
    assert {o["status"] for o in body["orders"]} == {"open"}
    assert body["unknown"] == ["nope"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "body",
    [
        {"client_order_ids": "k1"},
        {"client_order_ids": ["k1", 7]},
        {"client_order_ids": [""]},
        {"client_order_ids": ["x"] * 1001},
        {},
    ],
)
async def test_bad_bulk_lookup_is_400_naming_the_field(
    exchange: Exchange, http: aiohttp.ClientSession, body: object
) -> None:
    """A malformed bulk lookup is refused with 400 naming client_order_ids."""
    status, answer, _ = await call(http, "POST", f"{exchange.url}/api/orders/lookup", json=body)
    assert status == 400
    assert answer["field"] == "client_order_ids"
