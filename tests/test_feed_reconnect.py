"""Feed reconnects against real servers: no hammering, waits honoured, failures said once."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from strategylab.clock import SYSTEM_CLOCK
from strategylab.exchange._server import Exchange, ExchangeConfig
from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType, RecoveryStrategyKind
from strategylab.market._feed import Feed, FeedConfig
from strategylab.market._ingest import Ingestor
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick
from strategylab.testing import FakeClock
from test_feed_logic import Sink, ticks_frame

pytestmark = pytest.mark.integration

FEED_LOGGER = "strategylab.market._feed"
Handler = Callable[[ServerConnection], Awaitable[None]]


class AckingSink(Sink):
    """A sink whose every delivery is at once acknowledged as stored."""

    def accounted(self) -> dict[str, int]:
        return {t.symbol: t.seq for t in self.ticks}


class NeverAcksSink(Sink):
    """A sink that takes ticks but never reports them stored."""

    def accounted(self) -> dict[str, int]:
        return {}


@asynccontextmanager
async def ws_server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@asynccontextmanager
async def running_feed(
    url: str,
    sink: Sink,
    *,
    clock: FakeClock | None = None,
    manager: ErrorRecoveryManager | None = None,
    symbols: tuple[str, ...] = ("A",),
    **options: object,
) -> AsyncIterator[Feed]:
    config = FeedConfig(urls=(url,), symbols=symbols, **options)  # type: ignore[arg-type]
    feed = Feed(config, sink, manager=manager, rng=random.Random(7), clock=clock or SYSTEM_CLOCK)
    await feed.start()
    try:
        yield feed
    finally:
        await feed.stop()


class Counter:
    """Counts connections; ``reached(n)`` is set once ``n`` have been made."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        self.changed.set()

    async def wait_for(self, n: int, limit: float = 10.0) -> None:
        async with asyncio.timeout(limit):
            while self.count < n:
                self.changed.clear()
                await self.changed.wait()


def flapping(counter: Counter, code: int, reason: str = "try again later") -> Handler:
    """Accept, answer "subscribed", close with ``code``: every time."""

    async def handler(ws: ServerConnection) -> None:
        counter.hit()
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        await ws.close(code, reason)

    return handler


def feed_warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == FEED_LOGGER and r.levelno >= logging.WARNING and needle in r.getMessage()
    ]


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a feed counter (the feed announces no event for it), bounded."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110 - no event exists for these counters
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- 1013, backoff


@pytest.mark.timeout(20)
async def test_a_server_that_subscribes_then_closes_1013_is_not_hammered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Accept, "subscribed", close 1013, every time: a handful of connections in 2 s (not
    thousands), one warning, one reported outage and no recovery claimed."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    counter = Counter()
    manager = ErrorRecoveryManager(capture_state=False)
    async with (
        ws_server(flapping(counter, 1013)) as url,
        running_feed(url, Sink(), manager=manager),
    ):
        await asyncio.sleep(2.0)  # the observation window: the rate is what is measured
        connections = counter.count
    assert 1 <= connections <= 3
    [warning] = feed_warnings(caplog, "lost")
    assert "code 1013" in warning
    stats = manager.statistics()
    assert stats.error_type_distribution.get(ErrorType.WEBSOCKET_CONNECTION_DROPPED) == 1
    assert stats.successful_recoveries == 0


@pytest.mark.timeout(20)
@pytest.mark.parametrize("code", [1012, 1013])
async def test_every_wait_after_a_retry_later_close_is_at_least_the_floor(code: int) -> None:
    """On the fake clock: each reconnect after 1012/1013 waits >= retry_later_floor."""
    clock = FakeClock()
    counter = Counter()
    async with (
        ws_server(flapping(counter, code)) as url,
        running_feed(url, Sink(), clock=clock, retry_later_floor=1.5),
    ):
        await counter.wait_for(6)
    assert len(clock.sleeps) >= 5
    assert all(delay >= 1.5 for delay in clock.sleeps[:5])


@pytest.mark.timeout(20)
async def test_subscribed_then_closed_normally_backs_off_instead_of_resetting() -> None:
    """A normal close right after "subscribed" proves nothing: the waits grow (0, then up to
    floor * 2**n), where a reset on "subscribed" would reconnect at once for ever."""
    clock = FakeClock()
    counter = Counter()
    async with (
        ws_server(flapping(counter, 1000, "bye")) as url,
        running_feed(url, Sink(), clock=clock, backoff_floor=0.1, backoff_cap=100.0) as feed,
    ):
        await counter.wait_for(9)
        assert not feed.statistics().proven
    # 9 connections: the first retry is immediate, the next ones draw from growing ceilings.
    assert len(clock.sleeps) >= 7
    for n, delay in enumerate(clock.sleeps[:7]):
        assert 0.0 <= delay <= 0.1 * 2**n
    assert sum(clock.sleeps[:7]) > 0.1


def serving_ticks(counter: Counter) -> Handler:
    """Answer "subscribed", send one new tick from the requested position, close normally."""

    async def handler(ws: ServerConnection) -> None:
        counter.hit()
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        seq = message["from_seq"]["A"]
        await ws.send(ticks_frame([Tick("A", seq, seq * 1000, 1.0, 1.1, 1.0, 1.0)]))
        await ws.close(1000, "done")

    return handler


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("sink_type", "resets"), [(AckingSink, True), (NeverAcksSink, False)])
async def test_only_data_acknowledged_as_stored_resets_the_backoff(
    sink_type: type[Sink], *, resets: bool
) -> None:
    """Each connection delivers a tick and closes: when the sink acknowledges it as stored the
    next reconnect is immediate; when it never does, the feed backs off."""
    clock = FakeClock()
    counter = Counter()
    sink = sink_type()
    async with (
        ws_server(serving_ticks(counter)) as url,
        running_feed(url, sink, clock=clock, backoff_floor=0.1),
    ):
        await counter.wait_for(6)
        await sink.wait(lambda: len(sink.ticks) >= 5)
    assert [t.seq for t in sink.ticks][:5] == [1, 2, 3, 4, 5]
    if resets:
        assert clock.sleeps == []
    else:
        assert len(clock.sleeps) >= 4


# ----------------------------------------------------------------------------- Retry-After


@asynccontextmanager
async def http_refusing(counter: Counter, status: int, retry_after: str) -> AsyncIterator[str]:
    async def handler(_request: web.Request) -> web.Response:
        counter.hit()
        return web.Response(status=status, text="busy", headers={"Retry-After": retry_after})

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("status", "header", "expected"), [(503, "2", 2.0), (429, "7", 7.0), (503, "86400", 30.0)]
)
async def test_retry_after_on_a_rejected_handshake_is_honoured(
    caplog: pytest.LogCaptureFixture, status: int, header: str, expected: float
) -> None:
    """A 503/429 handshake answer with Retry-After sets every wait (capped at max_server_wait);
    the rejection is logged once, with the status and the header."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    clock = FakeClock()
    counter = Counter()
    async with (
        http_refusing(counter, status, header) as url,
        running_feed(url, Sink(), clock=clock, max_server_wait=30.0) as feed,
    ):
        await counter.wait_for(4)
        assert not feed.statistics().connected
    assert clock.sleeps[:3] == [expected] * 3
    [warning] = feed_warnings(caplog, "cannot connect")
    assert f"HTTP {status}" in warning
    assert f"Retry-After '{header}'" in warning


# ----------------------------------------------------------------------------- said once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def subscribing(counter: Counter, release: asyncio.Event) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        counter.hit()
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        await release.wait()

    return handler


@pytest.mark.timeout(30)
async def test_a_refused_connection_is_logged_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused attempts are logged once with the cause; after a connection in between, the
    next episode of refusals is logged once again."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    counter, release = Counter(), asyncio.Event()
    async with running_feed(url, Sink(), clock=FakeClock(), stale_after=30.0) as feed:
        await until(lambda: feed.statistics().connect_failures >= 5)
        [first] = feed_warnings(caplog, "cannot connect")
        assert "ECONNREFUSED" in first
        assert url in first
        async with serve(subscribing(counter, release), "127.0.0.1", port) as server:
            await feed.wait_healthy(10)
            failures = feed.statistics().connect_failures
            release.set()
            server.close()
        await until(lambda: feed.statistics().connect_failures >= failures + 5)
    refused = feed_warnings(caplog, "cannot connect")
    assert len(refused) == 2
    assert "ECONNREFUSED" in refused[1]


@pytest.mark.timeout(20)
async def test_a_dns_failure_is_logged_once_with_its_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A host name that does not resolve: one warning saying so, however many attempts."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    url = "ws://no-such-host.invalid:8765/ws"
    async with running_feed(url, Sink(), clock=FakeClock()) as feed:
        await until(lambda: feed.statistics().connect_failures >= 5)
    [warning] = feed_warnings(caplog, "cannot connect")
    assert "DNS lookup failed" in warning


@pytest.mark.timeout(20)
async def test_peer_supplied_text_is_escaped_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    """A close reason with a newline cannot forge a second log line: it is logged escaped."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    counter = Counter()
    evil = "x\nCRITICAL:root:forged"
    async with ws_server(flapping(counter, 1013, evil)) as url, running_feed(url, Sink()):
        await counter.wait_for(1)
        await until(lambda: bool(feed_warnings(caplog, "lost")))
    [warning] = feed_warnings(caplog, "lost")
    assert "\n" not in warning
    assert repr(evil) in warning


# ----------------------------------------------------------------------------- unknown symbols


@asynccontextmanager
async def exchange(tmp_path: Path) -> AsyncIterator[Exchange]:
    ex = Exchange(
        ExchangeConfig(
            symbols=("A", "B"),
            data_dir=tmp_path / "exchange",
            tick_rate=2_000,
            max_ticks=2_000,
            heartbeat_interval=0.1,
        )
    )
    await ex.start()
    try:
        yield ex
    finally:
        await ex.stop()


@pytest.mark.timeout(30)
async def test_an_unknown_symbol_is_reported_once_and_never_blocks_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``symbols=A,ZZZ``: every A tick is stored, ZZZ is logged (ERROR) and reported as a
    CONFIGURATION_ERROR once, even across the reconnect the recovery makes."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    manager = ErrorRecoveryManager(capture_state=False)
    recovered = asyncio.Event()
    manager.add_listener(
        lambda event: recovered.set() if event.kind == "recovery_finished" else None
    )
    store = SQLiteTickStore(tmp_path / "ticks.db")
    await store.open()
    ingestor = Ingestor(store, manager=manager)
    await ingestor.start()
    try:
        async with exchange(tmp_path) as ex:
            config = FeedConfig(urls=(ex.ws_url,), symbols=("A", "ZZZ"))
            feed = Feed(config, ingestor, manager=manager)
            manager.register(feed)
            await feed.start()
            try:
                async with asyncio.timeout(10):
                    await recovered.wait()
                await ingestor.wait_accounted({"A": 1_000}, timeout=15)
                stats = feed.statistics()
            finally:
                await feed.stop()
        assert [t.seq for t in await store.read("A")] == list(range(1, 1_001))
    finally:
        await ingestor.aclose()
        await store.aclose()
    assert stats.unknown_symbols == ("ZZZ",)
    assert stats.reconnects >= 1, "the CACHE_CLEAR_RELOAD recovery resubscribed"
    errors = [r for r in caplog.records if r.name == FEED_LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "'ZZZ'" in errors[0].getMessage()
    assert "ingesting A" in errors[0].getMessage()
    recovery = manager.statistics()
    assert recovery.error_type_distribution[ErrorType.CONFIGURATION_ERROR] == 1
    assert RecoveryStrategyKind.EMERGENCY_SHUTDOWN not in recovery.strategy_distribution


@pytest.mark.timeout(30)
async def test_only_unknown_symbols_keep_the_feed_connected_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no symbol the exchange knows, the feed stays connected on heartbeats (no reconnect
    loop), says which symbols are unknown, and stores nothing."""
    caplog.set_level(logging.WARNING, FEED_LOGGER)
    sink = Sink()
    async with exchange(tmp_path) as ex:
        url = ex.ws_url
        async with running_feed(url, sink, symbols=("ZZZ", "QQQ"), stale_after=0.5) as feed:
            await feed.wait_healthy(10)
            await until(lambda: feed.statistics().unknown_symbols == ("ZZZ", "QQQ"))
            frames = feed.statistics().frames
            await until(lambda: feed.statistics().frames >= frames + 5)  # heartbeats
            stats = feed.statistics()
    assert stats.reconnects == 0
    assert stats.stale_timeouts == 0
    assert sink.ticks == []
    [error] = [r for r in caplog.records if r.name == FEED_LOGGER and r.levelno == logging.ERROR]
    assert "no configured symbol is known" in error.getMessage()
