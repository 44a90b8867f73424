"""The order client against a real exchange: 5xx, 429, resets, timeouts, never a duplicate."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from strategylab.chaos import Proxy
from strategylab.clock import SYSTEM_CLOCK
from strategylab.exchange._faults import parse_fault
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market import Exchange, ExchangeConfig
from strategylab.strategy._strategy import OrderRequest, OrderType, Side
from strategylab.trading._orders import AmbiguousOrderError, OrderClient, OrderRefusedError

BUY = OrderRequest(symbol="A", side=Side.BUY, qty=1)


async def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    async with asyncio.timeout(limit):
        # The observed state belongs to another component that offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(ExchangeConfig(symbols=("A", "B"), tick_rate=500, data_dir=tmp_path / "ex"))
    await ex.start()
    await wait_until(lambda: ex.book.quote("A") is not None and ex.book.quote("B") is not None)
    yield ex
    await ex.stop()


def fault(ex: Exchange, status: int, phase: str, duration: float = 30.0) -> None:
    body = {"kind": "api_errors", "duration": duration, "status": status, "phase": phase}
    ex.faults.set(parse_fault(body, SYSTEM_CLOCK.monotonic()))


def per_cid(ex: Exchange) -> Counter[str]:
    return Counter(o.client_order_id for o in ex.book.orders())


class RecordingClock:
    """The system clock, recording every async sleep."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)


async def resolve(client: OrderClient, cid: str, request: OrderRequest) -> str:
    """What the engine does with an ambiguous order: ask, resend on 404."""
    found = await client.lookup(cid)
    if found is None:
        found = await client.submit(cid, request)
    return found.status


@pytest.mark.timeout(10)
async def test_submit_twice_with_one_cid_makes_one_order(exchange: Exchange) -> None:
    """The client order id makes a resubmission return the existing order."""
    client = OrderClient(exchange.url)
    await client.start()
    try:
        first = await client.submit("t-1", BUY)
        second = await client.submit("t-1", BUY)
    finally:
        await client.stop()
    assert first.id == second.id
    assert first.status == "filled"
    assert per_cid(exchange)["t-1"] == 1


@pytest.mark.timeout(10)
async def test_bad_request_is_refused_not_retried(exchange: Exchange) -> None:
    """A 4xx answer raises OrderRefusedError naming the field, after one request."""
    client = OrderClient(exchange.url)
    await client.start()
    try:
        with pytest.raises(OrderRefusedError) as info:
            await client.submit("t-bad", OrderRequest(symbol="ZZZ", side=Side.BUY, qty=1))
    finally:
        await client.stop()
    assert info.value.field == "symbol"
    assert client.requests == 1


@pytest.mark.timeout(15)
@pytest.mark.parametrize("phase", ["before", "after"])
async def test_503_is_ambiguous_then_resolved_without_duplicates(
    exchange: Exchange, phase: str
) -> None:
    """503 on every attempt → AmbiguousOrderError; asking afterwards resolves it; one order."""
    manager = ErrorRecoveryManager(capture_state=False)
    client = OrderClient(exchange.url, manager=manager, timeout=3.0)
    await client.start()
    try:
        fault(exchange, 503, phase)
        order = OrderRequest(symbol="A", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=1.0)
        with pytest.raises(AmbiguousOrderError):
            await client.submit("t-503", order)
        exchange.faults.clear()
        status = await resolve(client, "t-503", order)
    finally:
        await client.stop()
    assert status == "open"
    assert per_cid(exchange)["t-503"] == 1
    stats = manager.statistics()
    assert stats.error_type_distribution.get(ErrorType.EXTERNAL_API_FAILURE, 0) >= 1


@pytest.mark.timeout(15)
async def test_429_waits_retry_after_then_succeeds(exchange: Exchange) -> None:
    """A 429 is retried after the Retry-After the exchange sent (1 s)."""
    clock = RecordingClock()
    client = OrderClient(exchange.url, clock=clock, timeout=5.0)
    await client.start()
    try:
        fault(exchange, 429, "before", duration=0.5)
        order = await client.submit("t-429", BUY)
    finally:
        await client.stop()
    assert 1.0 in clock.sleeps
    assert order.status == "filled"
    assert per_cid(exchange)["t-429"] == 1


@pytest.mark.timeout(15)
async def test_reset_peer_through_proxy_is_resolved_without_duplicates(exchange: Exchange) -> None:
    """Connections reset by the fault proxy leave the order ambiguous; asking resolves it."""
    async with Proxy("order-api", upstream=f"127.0.0.1:{exchange.port}") as proxy:
        client = OrderClient(f"http://127.0.0.1:{proxy.listen_port}", timeout=3.0)
        await client.start()
        try:
            order = OrderRequest(symbol="A", side=Side.BUY, qty=1, type=OrderType.LIMIT, price=1.0)
            async with proxy.toxic("reset_peer", stream="downstream", timeout=0):
                with pytest.raises(AmbiguousOrderError):
                    await client.submit("t-reset", order)
            status = await resolve(client, "t-reset", order)
        finally:
            await client.stop()
    assert status == "open"
    assert per_cid(exchange)["t-reset"] == 1


@pytest.mark.timeout(15)
async def test_latency_beyond_timeout_is_resolved_without_duplicates(exchange: Exchange) -> None:
    """Answers slower than the timeout: the exchange has the order; asking finds it, once."""
    async with Proxy("order-api", upstream=f"127.0.0.1:{exchange.port}") as proxy:
        client = OrderClient(
            f"http://127.0.0.1:{proxy.listen_port}", timeout=1.0, attempt_timeout=0.2
        )
        await client.start()
        try:
            async with proxy.toxic("latency", stream="downstream", latency=600):
                with pytest.raises(AmbiguousOrderError):
                    await client.submit("t-slow", BUY)
            status = await resolve(client, "t-slow", BUY)
        finally:
            await client.stop()
    assert status == "filled"
    assert per_cid(exchange)["t-slow"] == 1
