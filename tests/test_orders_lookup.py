"""The order client's bulk lookup, its fallback, Retry-After up to a configured maximum."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from strategylab.errors import ConfigurationError
from strategylab.exchange._book import Order
from strategylab.market import Exchange, ExchangeConfig
from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.testing import FakeClock
from strategylab.trading._orders import OrderClient

RESTING = OrderRequest(symbol="A", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=1.0)


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - the exchange offers no event to wait on
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A",), tick_rate=500, data_dir=tmp_path / "ex"))
    await ex.start()
    await wait_until(lambda: ex.book.quote("A") is not None)
    yield ex
    await ex.stop()


async def serve(routes: list[web.RouteDef]) -> web.AppRunner:
    """A small real HTTP server on an ephemeral port (for answers the exchange cannot give)."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def port_of(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])


def order_json(cid: str) -> bytes:
    order = Order(
        id="O1",
        client_order_id=cid,
        symbol="A",
        side="buy",
        type="market",
        qty=1.0,
        price=None,
        status="filled",
    )
    return msgspec.json.encode(order)


@pytest.mark.timeout(15)
async def test_lookup_many_asks_in_batches_and_names_the_unknown(exchange: Exchange) -> None:
    """450 ids with lookup_batch=200 take 3 requests; found ids map to orders, others to None."""
    client = OrderClient(exchange.url, lookup_batch=200)
    await client.start()
    try:
        placed = [f"b-{n}" for n in range(0, 450, 3)]
        for cid in placed:
            await client.submit(cid, RESTING)
        before = client.requests
        found = await client.lookup_many(f"b-{n}" for n in range(450))
    finally:
        await client.stop()
    assert client.requests - before == 3
    assert len(found) == 450
    assert {cid for cid, order in found.items() if order is not None} == set(placed)
    assert all(found[c] is not None and found[c].client_order_id == c for c in placed)  # type: ignore[union-attr]


@pytest.mark.timeout(15)
async def test_lookup_many_falls_back_to_bounded_single_lookups_without_the_endpoint() -> None:
    """An exchange without POST /api/orders/lookup (405/404): single lookups, at most N at once."""
    in_flight = 0
    most = 0

    async def by_cid(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.02)  # the server's own latency, so that lookups overlap
            cid = request.match_info["cid"]
            if cid.startswith("x"):
                return web.json_response({"error": "unknown"}, status=404)
            return web.Response(body=order_json(cid), content_type="application/json")
        finally:
            in_flight -= 1

    runner = await serve([web.get("/api/orders/by-client-id/{cid}", by_cid)])
    client = OrderClient(f"http://127.0.0.1:{port_of(runner)}", lookup_concurrency=3)
    await client.start()
    try:
        found = await client.lookup_many([f"c{n}" for n in range(10)] + ["x1", "x2"])
        again = await client.lookup_many(["c1"])
    finally:
        await client.stop()
        await runner.cleanup()
    assert most == 3
    assert [c for c, o in found.items() if o is None] == ["x1", "x2"]
    assert all(o is not None for c, o in found.items() if c.startswith("c"))
    assert again["c1"] is not None
    # One refused bulk request, then 12 + 1 single lookups: the bulk endpoint is not asked again.
    assert client.requests == 1 + 12 + 1


@pytest.mark.timeout(15)
@pytest.mark.parametrize(("max_retry_after", "waited"), [(30.0, 7.0), (3.0, 3.0)])
async def test_retry_after_is_honoured_up_to_the_configured_maximum(
    max_retry_after: float, waited: float
) -> None:
    """429 with Retry-After: 7 waits 7 s (on the clock), or max_retry_after if that is less."""
    calls = 0

    async def post(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        body: dict[str, Any] = await request.json()
        if calls == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"Retry-After": "7"}
            )
        return web.Response(
            status=201, body=order_json(body["client_order_id"]), content_type="application/json"
        )

    runner = await serve([web.post("/api/orders", post)])
    clock = FakeClock()
    client = OrderClient(
        f"http://127.0.0.1:{port_of(runner)}", clock=clock, max_retry_after=max_retry_after
    )
    await client.start()
    try:
        order = await client.submit("ra-1", OrderRequest(symbol="A", side=Side.BUY, qty=1))
    finally:
        await client.stop()
        await runner.cleanup()
    assert calls == 2
    assert order.client_order_id == "ra-1"
    assert clock.sleeps == [waited]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_retry_after": 0}, "max_retry_after"),
        ({"max_retry_after": float("nan")}, "max_retry_after"),
        ({"lookup_batch": 0}, "lookup_batch"),
        ({"lookup_batch": 1001}, "lookup_batch"),
        ({"lookup_concurrency": 0}, "lookup_concurrency"),
        ({"timeout": -1.0}, "timeout"),
    ],
)
def test_bad_client_option_names_it(options: dict[str, Any], key: str) -> None:
    """A bad OrderClient option raises ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError) as info:
        OrderClient("http://127.0.0.1:1", **options)
    assert info.value.key == key
