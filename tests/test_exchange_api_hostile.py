"""Hostile callers of the exchange's order API (not only /admin/*): browsers, poisoned bodies.

Real servers on 127.0.0.1 (the exchange in-process, and as its own process), real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.market._tick import Tick
from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.testing import FakeClock
from strategylab.trading._orders import OrderClient

pytestmark = pytest.mark.integration

TOKEN = "t0ken"  # noqa: S105 - a test token
ADMIN = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
JSON = {"Content-Type": "application/json"}
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
ORDER = {"client_order_id": "c1", "symbol": "A", "side": "buy", "qty": 1, "type": "market"}


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    """An exchange with a quote for A (a market order fills), on a FakeClock."""
    config = ExchangeConfig(
        symbols=("A",), tick_rate=0, max_ticks=0, data_dir=tmp_path, admin_token=TOKEN
    )
    ex = Exchange(config, clock=FakeClock(start=1000.0))
    await ex.start()
    ex.book.on_ticks([Tick("A", 1, 1, 99.0, 101.0, 1.0, 1.0)])
    yield ex
    await ex.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def send(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith(("{", "[")) else text


def untouched(exchange: Exchange) -> bool:
    """No order, fill, position or fault was recorded."""
    book = exchange.book
    return not (book.orders() or book.fills() or book.positions() or exchange.faults.snapshot())


ROUTES = [
    ("POST", "/api/orders", ORDER),
    ("POST", "/api/orders/lookup", {"client_order_ids": ["c1"]}),
    ("GET", "/api/orders", None),
    ("GET", "/api/orders/O00000001", None),
    ("GET", "/api/orders/by-client-id/c1", None),
    ("DELETE", "/api/orders/O00000001", None),
    ("GET", "/api/fills", None),
    ("GET", "/api/positions", None),
    ("GET", "/api/status", None),
    ("GET", "/ws", None),
]
BROWSER_HEADERS = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"User-Agent": BROWSER},
    {"Sec-Fetch-Site": "cross-site"},
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("headers", BROWSER_HEADERS, ids=["origin", "null", "agent", "sec-fetch"])
async def test_browser_requests_to_every_route_are_403_and_counted(
    exchange: Exchange,
    http: aiohttp.ClientSession,
    route: tuple[str, str, object],
    headers: dict[str, str],
) -> None:
    """A browser Origin, User-Agent or cross-site fetch is refused on order routes, reads and
    the WebSocket alike; nothing is placed and a security event is counted."""
    method, path, body = route
    data = None if body is None else json.dumps(body).encode()
    status, answer = await send(
        http, method, exchange.url + path, data=data, headers={**JSON, **headers}
    )
    assert status == 403, answer
    assert answer["field"] in {"Origin", "User-Agent", "Sec-Fetch-Site"}
    assert untouched(exchange)
    assert exchange.security_events == 1


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["/api/orders", "/api/orders/lookup"])
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
    ids=["text", "form", "multipart", "none"],
)
async def test_a_body_not_declared_json_is_415(
    exchange: Exchange, http: aiohttp.ClientSession, path: str, content_type: str | None
) -> None:
    """The "simple" cross-site POSTs (no preflight) cannot place or probe orders."""
    body = ORDER if path == "/api/orders" else {"client_order_ids": ["c1"]}
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with http.post(
        exchange.url + path, data=json.dumps(body).encode(), headers=headers
    ) as response:
        assert response.status == 415
        assert (await response.json())["field"] == "Content-Type"
    assert untouched(exchange)


@pytest.mark.timeout(10)
async def test_an_allowed_origin_may_place_orders(tmp_path: Path) -> None:
    """An origin named in ``allowed_origins`` is served on the order API."""
    from strategylab._http_guard import HttpLimits  # noqa: PLC0415 - only this test

    origin = "https://desk.example"
    limits = HttpLimits(allowed_origins=frozenset({origin}))
    config = ExchangeConfig(
        symbols=("A",), tick_rate=0, max_ticks=0, data_dir=tmp_path, http_limits=limits
    )
    ex = Exchange(config, clock=FakeClock(start=1000.0))
    await ex.start()
    ex.book.on_ticks([Tick("A", 1, 1, 99.0, 101.0, 1.0, 1.0)])
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Origin": origin, "User-Agent": BROWSER}
            status, order = await send(
                http, "POST", f"{ex.url}/api/orders", json=ORDER, headers=headers
            )
        assert (status, order["status"]) == (201, "filled")
    finally:
        await ex.stop()


@pytest.mark.timeout(15)
async def test_the_order_client_passes_the_guard(exchange: Exchange) -> None:
    """The engine's OrderClient (application/json, aiohttp's agent) submits, looks up, cancels."""
    client = OrderClient(exchange.url)
    await client.start()
    try:
        filled = await client.submit("ok-1", OrderRequest(symbol="A", side=Side.BUY, qty=2))
        resting = OrderRequest(symbol="A", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=1.0)
        placed = await client.submit("ok-2", resting)
        found = await client.lookup_many(["ok-1", "ok-2", "never"])
        cancelled = await client.cancel(placed.id)
    finally:
        await client.aclose()
    assert filled.status == "filled"
    assert found["ok-1"] is not None
    assert found["never"] is None
    assert cancelled is not None
    assert cancelled.status == "cancelled"
    assert exchange.security_events == 0


def _order(**fields: object) -> bytes:
    return json.dumps({**ORDER, **fields}).encode()


BAD_ORDERS = [
    (b'{"client_order_id":"\\ud800","symbol":"A","side":"buy","qty":1}', "body"),
    (b'{"client_order_id":"ok","symbol":"A","side":"buy","qty":1,"x":"\\udfff"}', "body"),
    (_order(client_order_id="a\x00b"), "client_order_id"),
    (_order(client_order_id="a\x1b[2Jb"), "client_order_id"),
    (_order(client_order_id="a\nCRITICAL"), "client_order_id"),
    (_order(client_order_id="left\u202eright"), "client_order_id"),
    (_order(client_order_id="x" * 129), "client_order_id"),
    (_order(client_order_id=""), "client_order_id"),
    (_order(client_order_id=["c1"]), "client_order_id"),
    (_order(side=["buy"]), "side"),
    (_order(side={"buy": 1}), "side"),
    (_order(type=["market"]), "type"),
    (_order(symbol=["A"]), "symbol"),
    (_order(qty=1e308), "qty"),
    (_order(qty=5e-324), "qty"),
    (_order(qty=int("9" * 64)), "qty"),
    (_order(qty=1e9 + 1), "qty"),
    (_order(qty=-1), "qty"),
    (_order(qty=True), "qty"),
    (_order(qty="1"), "qty"),
    (_order(type="limit", price=1e308), "price"),
    (_order(type="limit", price=-0.0), "price"),
    (_order(type="limit", price=int("9" * 64)), "price"),
    (_order(quantity=1), "quantity"),
    (b'{"client_order_id":"d","symbol":"A","side":"buy","qty":1,"qty":2}', "body"),
    (b'{"client_order_id":"d","client_order_id":"e","symbol":"A","side":"buy","qty":1}', "body"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("raw", "field"), BAD_ORDERS, ids=[str(i) for i in range(len(BAD_ORDERS))])
async def test_a_malformed_order_is_400_naming_the_field_and_stores_nothing(
    exchange: Exchange, http: aiohttp.ClientSession, raw: bytes, field: str
) -> None:
    """Every field is checked before the book changes; the order list stays readable."""
    status, answer = await send(http, "POST", f"{exchange.url}/api/orders", data=raw, headers=JSON)
    assert (status, answer["field"]) == (400, field), answer
    assert untouched(exchange)
    for path in ("/api/orders", "/api/fills", "/api/positions", "/api/status"):
        status, _ = await send(http, "GET", exchange.url + path)
        assert status == 200, path


@pytest.mark.timeout(10)
async def test_a_known_client_id_with_a_malformed_body_is_still_400(
    exchange: Exchange, http: aiohttp.ClientSession
) -> None:
    """Idempotent resubmission answers the stored order, but only for a valid body."""
    status, first = await send(http, "POST", f"{exchange.url}/api/orders", json=ORDER)
    assert status == 201
    status, answer = await send(
        http, "POST", f"{exchange.url}/api/orders", data=_order(side=["buy"]), headers=JSON
    )
    assert (status, answer["field"]) == (400, "side")
    status, again = await send(http, "POST", f"{exchange.url}/api/orders", json=ORDER)
    assert (status, again) == (200, first)


BAD_LOOKUPS = [
    (b'{"client_order_ids":["\\udc80"]}', "body"),
    (b'{"client_order_ids":["a\\u0000b"]}', "client_order_ids"),
    (b'{"client_order_ids":[["c1"]]}', "client_order_ids"),
    (b'{"client_order_ids":["c1"],"client_order_ids":["c2"]}', "body"),
    (b'{"client_order_ids":["c1"],"extra":1}', "extra"),
    (b"[1, 2]", "body"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("raw", "field"), BAD_LOOKUPS, ids=[str(i) for i in range(len(BAD_LOOKUPS))]
)
async def test_a_malformed_lookup_is_400_naming_the_field(
    exchange: Exchange, http: aiohttp.ClientSession, raw: bytes, field: str
) -> None:
    """A bulk lookup with an id no order can have (a surrogate, a NUL, a list) is a 400."""
    url = f"{exchange.url}/api/orders/lookup"
    status, answer = await send(http, "POST", url, data=raw, headers=JSON)
    assert (status, answer["field"]) == (400, field), answer


BAD_FAULTS = [
    (b'{"kind":"bogus","kind":"api_errors","duration":0.01}', "body"),
    (b'{"kind":"api_errors","duration":1e308}', "duration"),
    (b'{"kind":"api_errors","duration":' + b"9" * 64 + b"}", "duration"),
    (b'{"kind":"api_errors","duration":86401}', "duration"),
    (b'{"kind":"api_errors","duration":5e-324}', "duration"),
    (b'{"kind":"api_errors","duration":5,"rate":' + b"9" * 64 + b"}", "rate"),
    (b'{"kind":"api_errors","duration":5,"status":' + b"9" * 64 + b"}", "status"),
    (b'{"kind":["api_errors"],"duration":5}', "kind"),
    (b'{"kind":"api_errors","duration":5,"phase":["after"]}', "phase"),
    (b'{"kind":"api_errors","duration":5,"phase":"after\\u0000"}', "phase"),
    (b'{"kind":"api_errors","duration":5,"forever":true}', "forever"),
    (b'{"kind":"api_errors\\ud800","duration":5}', "body"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("raw", "field"), BAD_FAULTS, ids=[str(i) for i in range(len(BAD_FAULTS))])
async def test_a_malformed_or_unbounded_fault_is_400_and_switches_nothing_on(
    exchange: Exchange, http: aiohttp.ClientSession, raw: bytes, field: str
) -> None:
    """Repeated keys, a permanent duration, a 64-digit number: refused, no fault is on."""
    url = f"{exchange.url}/admin/faults"
    status, answer = await send(http, "POST", url, data=raw, headers=ADMIN)
    assert (status, answer["field"]) == (400, field), answer
    assert exchange.faults.snapshot() == []


@pytest.mark.timeout(10)
async def test_an_unexpected_handler_error_is_a_500_that_changes_nothing(
    exchange: Exchange,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure half-way through a fill records nothing and logs one escaped line."""

    def broken(*_args: object) -> object:
        raise RuntimeError("boom\nCRITICAL:forged\x1b[2J")

    monkeypatch.setattr(exchange.book, "_applied", broken)
    with caplog.at_level(logging.ERROR, logger="strategylab.market.exchange"):
        status, answer = await send(http, "POST", f"{exchange.url}/api/orders", json=ORDER)
    assert status == 500
    assert answer == {"error": "internal error"}
    assert untouched(exchange)
    monkeypatch.undo()
    status, _ = await send(http, "POST", f"{exchange.url}/api/orders", json=ORDER)
    assert status == 201  # the same client_order_id was never taken
    records = [r for r in caplog.records if r.name == "strategylab.market.exchange"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "\n" not in message
    assert "\x1b" not in message
    assert records[0].exc_info is None


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategylab",
        "exchange",
        *("--port", "0", "--symbols", "AAPL", "--tick-rate", "200", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.timeout(30)
async def test_exchange_process_refuses_browser_orders_and_poisoned_ids(tmp_path: Path) -> None:
    """Against the real process: the issue's cross-site text/plain order is a 403, an order
    with a lone surrogate a 400, and the order list stays readable (200, empty)."""
    proc = await _spawn("--data-dir", str(tmp_path))
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            port = json.loads(await proc.stdout.readline())["port"]
            url = f"http://127.0.0.1:{port}/api/orders"
            cross_site = {
                "Origin": "https://evil.example",
                "User-Agent": "Mozilla/5.0",
                "Content-Type": "text/plain",
            }
            evil = {**ORDER, "symbol": "AAPL", "client_order_id": "evil1"}
            surrogate = b'{"client_order_id":"\\ud800","symbol":"AAPL","side":"buy","qty":1}'
            async with aiohttp.ClientSession() as http:
                status, _ = await send(
                    http, "POST", url, data=json.dumps(evil).encode(), headers=cross_site
                )
                assert status == 403
                status, answer = await send(http, "POST", url, data=surrogate, headers=JSON)
                assert (status, answer["field"]) == (400, "body")
                assert await send(http, "GET", url) == (200, [])
            proc.terminate()
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["symlink", "symlinked-dir"])
async def test_exchange_process_exits_2_on_a_planted_symlink(tmp_path: Path, kind: str) -> None:
    """A symlink at emitted.log (or as the data dir) is a usage error: one line naming it, exit
    2 as for the node, and the target is untouched."""
    victim = tmp_path / "outside" / "victim"
    victim.parent.mkdir()
    victim.write_bytes(b"precious\n")
    data = tmp_path / "data"
    if kind == "symlink":
        data.mkdir()
        (data / "emitted.log").symlink_to(victim)
        named = "emitted.log"
    else:
        data.symlink_to(victim.parent)
        named = "data"
    proc = await _spawn("--data-dir", str(data))
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, lines
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "symlink" in lines[0]
    assert victim.read_bytes() == b"precious\n"
    assert [p.name for p in victim.parent.iterdir()] == ["victim"]
