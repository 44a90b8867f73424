"""Fast recovery after a silent outage (issue 13): the outage cap on the reconnect backoff,
hedged connection attempts through a swallowed handshake, and the new defaults.

The timing is judged on a :class:`FakeClock`; the servers are real (sockets on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from strategylab.errors import ConfigurationError
from strategylab.exchange import Exchange, ExchangeConfig
from strategylab.market._feed import Feed, FeedConfig
from strategylab.market._feed_backoff import Backoff, FeedBackoff
from strategylab.market._feed_errors import StaleFeedError
from strategylab.market._tick import Tick
from strategylab.node import NodeConfig
from strategylab.testing import FakeClock
from test_feed_logic import Sink, ticks_frame
from test_feed_reconnect import Counter

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running_feed(
    url: str, sink: Sink, clock: FakeClock, **options: object
) -> AsyncIterator[Feed]:
    config = FeedConfig(urls=(url,), symbols=("A",), **options)  # type: ignore[arg-type]
    feed = Feed(config, sink, rng=random.Random(7), clock=clock)
    await feed.start()
    try:
        yield feed
    finally:
        await feed.stop()


# ------------------------------------------------------------------------- the backoff alone


def test_a_lower_cap_keeps_the_formula_and_the_failure_count() -> None:
    """``next_delay(cap=c)`` draws uniform(0, min(floor * 2**(n-2), c)); the count goes on, so
    the next uncapped delay is as long as if none had been capped."""
    exact = Backoff(0.05, 10.0, jitter=False)
    assert [exact.next_delay(cap=0.1) for _ in range(6)] == [0.0, 0.05, 0.1, 0.1, 0.1, 0.1]
    assert exact.next_delay() == 0.05 * 2**5
    jittered = Backoff(0.05, 10.0, rng=random.Random(3))
    delays = [jittered.next_delay(cap=0.1) for _ in range(200)]
    assert delays[0] == 0.0
    assert all(0.0 <= d <= 0.1 for d in delays)
    assert max(delays) > 0.09  # full jitter reaches the top of the capped range
    assert min(delays[1:]) < 0.01  # and its bottom


def test_a_cap_above_the_configured_one_changes_nothing() -> None:
    b = Backoff(0.05, 0.2, jitter=False)
    assert [b.next_delay(cap=5.0) for _ in range(5)] == [0.0, 0.05, 0.1, 0.2, 0.2]


def test_the_outage_cap_applies_only_to_fast_delays_and_never_beats_a_server_wait() -> None:
    clock = FakeClock()
    b = FeedBackoff(0.1, 10.0, outage_cap=0.2, retry_later_floor=1.5, jitter=False, clock=clock)
    assert [b.next_delay(fast=True) for _ in range(4)] == [0.0, 0.1, 0.2, 0.2]
    assert b.next_delay() == 0.1 * 2**3  # not fast: the schedule as if never capped
    assert b.next_delay(fast=True, close_code=1013) == 1.5  # the server's wait still holds
    off = FeedBackoff(0.1, 10.0, jitter=False, clock=clock)  # no outage cap: fast is a no-op
    assert [off.next_delay(fast=True) for _ in range(4)] == [0.0, 0.1, 0.2, 0.4]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("outage_backoff_cap", 0.0),
        ("outage_backoff_cap", float("nan")),
        ("hedge_after", 0.0),
        ("hedge_after", float("inf")),
        ("max_hedged", 0),
        ("max_hedged", 65),
        ("max_hedged", True),
        ("fast_reconnect_for", -1.0),
    ],
)
def test_bad_fast_reconnect_settings_name_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        FeedConfig(urls=("ws://127.0.0.1:1/ws",), symbols=("A",), **{key: value})  # type: ignore[arg-type]
    assert info.value.key == key


def test_the_new_defaults_detect_silence_within_a_second_of_heartbeats() -> None:
    """The exchange beats every 0.25 s; the node calls a connection stale after a little more
    than three beats (well under the 1 s goal), tries for 1 s per attempt, and reconnects fast;
    the old values still work when given."""
    node = NodeConfig(exchange_url="ws://127.0.0.1:1/ws", symbols=("A",), data_dir=Path())
    beat = ExchangeConfig().heartbeat_interval
    assert beat == 0.25
    assert 3 * beat < node.stale_after < 1.0
    assert node.connect_timeout == 1.0
    assert node.hedge_after == 0.05
    assert node.outage_backoff_cap == 0.1
    old = NodeConfig(
        exchange_url="ws://127.0.0.1:1/ws",
        symbols=("A",),
        data_dir=Path(),
        stale_after=3.0,
        connect_timeout=5.0,
        hedge_after=None,
        outage_backoff_cap=None,
    )
    assert (old.stale_after, old.connect_timeout, old.hedge_after) == (3.0, 5.0, None)


# ------------------------------------------------------------------- fast reconnects, real I/O


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_once(gone: asyncio.Event) -> Callable[[ServerConnection], Awaitable[None]]:
    """Subscribe, deliver tick 1 (stored: the connection proves itself), and once ``gone`` is
    set drop the connection without a close frame (a reset)."""

    async def handler(ws: ServerConnection) -> None:
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        await ws.send(ticks_frame([Tick("A", 1, 0, 1.0, 1.1, 1.0, 1.0)]))
        await gone.wait()
        ws.transport.abort()

    return handler


OUTAGE_OPTIONS = {
    "backoff_floor": 0.05,
    "backoff_cap": 5.0,
    "outage_backoff_cap": 0.1,
    "fast_reconnect_for": 2.0,
    "connect_timeout": 5.0,
}


@pytest.mark.timeout(30)
async def test_refused_attempts_wait_under_the_outage_cap_then_the_plain_backoff() -> None:
    """After a proven connection is lost, a refused attempt is a silent failure: for
    ``fast_reconnect_for`` seconds of the outage every wait is at most the outage cap (full
    jitter below it); after that the plain backoff (up to ``backoff_cap``) applies again."""
    clock = FakeClock()
    gone = asyncio.Event()
    sink = Sink()
    srv = await serve(serving_once(gone), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}/ws"
    async with running_feed(url, sink, clock, **OUTAGE_OPTIONS) as feed:
        await sink.wait(lambda: len(sink.ticks) == 1)
        async with asyncio.timeout(10):
            while not feed.statistics().proven:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.001)
        srv.close(close_connections=False)  # nothing listens any more: attempts are refused
        gone.set()  # and the proven connection is reset
        async with asyncio.timeout(20):
            while feed.statistics().connect_failures < 60:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.001)
        stats = feed.statistics()
    await srv.wait_closed()
    sleeps = list(clock.sleeps)
    elapsed = 0.0
    fast: list[float] = []
    slow: list[float] = []
    for delay in sleeps:
        # The reset starts the outage at fake time 0; a wait's own time counts.
        (fast if elapsed < 2.0 else slow).append(delay)
        elapsed += delay
    assert len(fast) >= 20
    assert all(0.0 <= d <= 0.1 for d in fast)
    assert max(fast) > 0.05  # jittered up to the cap, not pinned at the floor
    assert slow, "the window ended"
    assert max(slow) > 0.1  # the plain backoff again, growing past the outage cap
    assert all(d <= 5.0 for d in slow)
    assert stats.hedged_attempts == 0  # refusals fail at once: nothing to hedge
    assert stats.connect_attempts == stats.connect_failures + 1  # the first one connected


@pytest.mark.timeout(30)
async def test_at_start_up_refused_attempts_meet_the_plain_backoff() -> None:
    """No connection has ever proven itself: an endpoint that refuses from the start is not an
    outage of a known-good one, and is neither hedged nor retried under the outage cap."""
    clock = FakeClock()
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    async with running_feed(url, Sink(), clock, hedge_after=0.05, **OUTAGE_OPTIONS) as feed:
        async with asyncio.timeout(20):
            while feed.statistics().connect_failures < 8:  # noqa: ASYNC110 - no event for it
                await asyncio.sleep(0.001)
        stats = feed.statistics()
    sleeps = clock.sleeps[:7]
    for n, delay in enumerate(sleeps):
        assert 0.0 <= delay <= 0.05 * 2**n
    assert max(sleeps) > 0.1  # grown past the outage cap
    assert stats.hedged_attempts == 0


def subscribing_then_resetting(counter: Counter) -> Callable[[ServerConnection], Awaitable[None]]:
    """Accept, answer "subscribed", then reset the connection (no close frame), every time."""

    async def handler(ws: ServerConnection) -> None:
        counter.hit()
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        ws.transport.abort()

    return handler


@pytest.mark.timeout(30)
async def test_a_server_that_subscribes_and_resets_meets_the_growing_backoff() -> None:
    """Even within an outage of a proven connection, a connection that was answered
    "subscribed" and then dropped before it proved itself is the server's pattern: the plain,
    growing backoff, never the outage cap (no storm of ~20 connections a second)."""
    clock = FakeClock()
    gone = asyncio.Event()
    counter = Counter()
    sink = Sink()
    first = serving_once(gone)
    then = subscribing_then_resetting(counter)

    async def handler(ws: ServerConnection) -> None:
        await (then(ws) if sink.ticks else first(ws))

    async with serve(handler, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}/ws"
        async with running_feed(url, sink, clock, hedge_after=0.05, **OUTAGE_OPTIONS) as feed:
            await sink.wait(lambda: len(sink.ticks) == 1)
            async with asyncio.timeout(10):
                while not feed.statistics().proven:  # noqa: ASYNC110 - no event for it
                    await asyncio.sleep(0.001)
            gone.set()
            await counter.wait_for(8)
            stats = feed.statistics()
    # The reset of the proven connection: a fast (capped) retry; then each subscribe-and-reset
    # grows the wait as the plain backoff does.
    later = clock.sleeps[1:7]
    assert max(later) > 0.1
    assert sum(later) > 0.5
    # Only the attempt right after the proven connection's reset may be hedged (the fake clock
    # jumps while its real handshake runs); none of the subscribe-and-reset ones.
    assert stats.hedged_attempts <= 1


def flapping(counter: Counter) -> Callable[[ServerConnection], Awaitable[None]]:
    """Accept, answer "subscribed", close with 1000: the server's choice, not a silent drop."""

    async def handler(ws: ServerConnection) -> None:
        counter.hit()
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        await ws.close(1000, "bye")

    return handler


@pytest.mark.timeout(20)
async def test_a_server_closing_cleanly_is_never_reconnected_at_the_fast_rate() -> None:
    """The outage cap is for silent failures: a server that closes with a close frame every
    time still meets the growing backoff (issue 8's storm stays fixed)."""
    clock = FakeClock()
    counter = Counter()
    async with serve(flapping(counter), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"
        options = {"backoff_floor": 0.1, "backoff_cap": 100.0, "outage_backoff_cap": 0.1}
        async with running_feed(url, Sink(), clock, hedge_after=0.05, **options) as feed:
            await counter.wait_for(9)
            stats = feed.statistics()
    sleeps = clock.sleeps[:7]
    for n, delay in enumerate(sleeps):
        assert 0.0 <= delay <= 0.1 * 2**n
    assert max(sleeps) > 0.1  # not capped at the outage cap
    assert stats.hedged_attempts == 0  # nor hedged


class Gate:
    """A WebSocket server whose handshake is swallowed while the gate is shut.

    Like a blackhole partition (the proxy's ``blackhole`` toxic): a connection whose request
    arrives while the gate is shut never gets an answer, even after the gate opens (the
    request was lost). Once open, new connections are answered, subscribed and sent one tick.
    The first connection (``cut_first``) is answered and then dropped without a close frame.
    """

    def __init__(self) -> None:
        self.open = True
        self.requests = Counter()
        self.closed = Counter()
        self.swallowed: set[int] = set()

    async def process_request(self, connection: ServerConnection, _: Request) -> Response | None:
        self.requests.hit()
        if not self.open:
            self.swallowed.add(id(connection))
            try:
                await connection.wait_closed()  # no answer, for as long as the peer waits
            finally:
                self.closed.hit()
        return None

    async def handler(self, ws: ServerConnection) -> None:
        message = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "subscribed", "symbols": message["symbols"]}))
        seq = message["from_seq"]["A"]
        await ws.send(ticks_frame([Tick("A", seq, seq * 1000, 1.0, 1.1, 1.0, 1.0)]))
        if self.requests.count == 1:
            self.open = False  # the partition starts as the first connection is cut
            ws.transport.abort()  # no close frame: a silent drop (1006)
            return
        await ws.wait_closed()


@pytest.mark.timeout(30)
async def test_hedged_attempts_get_through_as_soon_as_the_partition_heals() -> None:
    """After a silent drop, attempts whose handshake is swallowed are joined by new ones every
    ``hedge_after`` seconds (on the feed's clock), at most ``max_hedged`` in flight (the oldest
    abandoned and closed); the first attempt after the heal connects, the rest are closed."""
    clock = FakeClock(autojump_threshold=None)  # time moves only when the test says
    gate = Gate()
    sink = Sink()
    async with serve(gate.handler, "127.0.0.1", 0, process_request=gate.process_request) as srv:
        url = f"ws://127.0.0.1:{next(iter(srv.sockets)).getsockname()[1]}/ws"
        options = {"hedge_after": 0.1, "max_hedged": 3, "outage_backoff_cap": 0.1}
        async with running_feed(url, sink, clock, connect_timeout=30.0, **options) as feed:
            # The drop is silent: the first retry is immediate (no wait), and swallowed.
            await gate.requests.wait_for(2)
            assert feed.statistics().hedged_attempts == 0
            for n in (3, 4):  # a new attempt every 0.1 s of the feed's clock
                await wait_sleeper(clock)
                clock.advance(0.1)
                await gate.requests.wait_for(n)
            assert feed.statistics().hedged_attempts == 2
            assert gate.closed.count == 0  # three in flight: none abandoned yet
            await wait_sleeper(clock)
            clock.advance(0.1)
            await gate.requests.wait_for(5)
            await gate.closed.wait_for(1)  # the oldest, abandoned for the fourth
            stats = feed.statistics()
            assert (stats.connect_attempts, stats.abandoned_attempts) == (5, 1)
            gate.open = True  # heal: the swallowed requests stay lost
            await wait_sleeper(clock)
            clock.advance(0.1)
            await asyncio.wait_for(feed.wait_healthy(10.0), 10.0)
            await gate.closed.wait_for(4)  # every swallowed attempt closed, none left hanging
            stats = feed.statistics()
        assert [t.seq for t in sink.ticks] == [1, 2]  # resumed after the stored tick
        assert stats.connect_attempts == 6
        assert stats.hedged_attempts == 4
        assert stats.abandoned_attempts == 4  # two for newer ones, two once one won
        assert len(gate.swallowed) == 4
    # Only the hedge interval was waited on the clock since the drop: no grown backoff.
    assert all(delay in (0.0, 0.1) for delay in clock.sleeps)


async def wait_sleeper(clock: FakeClock, limit: float = 10.0) -> None:
    """Until the feed's hedge timer sleeps on the fake clock (it announces no event)."""
    async with asyncio.timeout(limit):
        while clock.pending_sleepers == 0:  # noqa: ASYNC110 - the clock has no such event
            await asyncio.sleep(0.001)


# ------------------------------------------------------- stale detection adapts to heartbeats


@pytest.mark.parametrize(
    ("advertised", "quiet_but_fine", "stale_at"),
    [
        (1.0, 3.04, 3.05),  # an exchange beating every 1 s: stale after 3 × 1 + 0.05 s
        (0.05, 0.19, 0.2),  # beats faster than stale_after needs: stale_after (0.2 s) holds
        (3600.0, 15.04, 15.05),  # believed up to 5 s: a peer cannot switch detection off
        (None, 0.19, 0.2),  # an older exchange that advertises nothing: stale_after
        (-1.0, 0.19, 0.2),  # nonsense is ignored
        (float("nan"), 0.19, 0.2),
        (True, 0.19, 0.2),
        ("1.0", 0.19, 0.2),
    ],
)
def test_stale_detection_adapts_to_the_advertised_heartbeat_interval(
    advertised: object, quiet_but_fine: float, stale_at: float
) -> None:
    """A node on the fast default must not take an exchange that beats less often than it
    expects for a silent one (and reconnect forever between two heartbeats): the "subscribed"
    answer's ``heartbeat_interval`` raises the stale deadline to three intervals plus 50 ms, for
    that connection only. (The watchdog waits on the reader with a real timeout, so the verdict
    itself is checked here, at the fake times given, not by waiting.)"""
    clock = FakeClock()
    config = FeedConfig(urls=("ws://127.0.0.1:1/ws",), symbols=("A",), stale_after=0.2)
    feed = Feed(config, Sink(), clock=clock)
    reply: dict[str, object] = {"type": "subscribed", "symbols": ["A"]}
    if advertised is not None:
        reply["heartbeat_interval"] = advertised
    feed._adopt_heartbeat_interval(reply.get("heartbeat_interval"))
    assert feed._deadline(quiet_but_fine) == pytest.approx(stale_at)
    with pytest.raises(StaleFeedError, match="no frame for"):
        feed._deadline(stale_at)
    feed._on_disconnect()  # the next connection starts from stale_after again
    with pytest.raises(StaleFeedError):
        feed._deadline(0.2)


@pytest.mark.timeout(15)
async def test_the_exchange_advertises_its_heartbeat_interval(tmp_path: Path) -> None:
    """The simulator's "subscribed" answer carries the interval its heartbeats are sent at."""
    config = ExchangeConfig(
        symbols=("A",),
        data_dir=tmp_path / "exchange",
        heartbeat_interval=0.7,
        tick_rate=0,
        max_ticks=9,
    )
    exchange = Exchange(config)
    await exchange.start()
    try:
        async with connect(exchange.ws_url) as ws:
            await ws.send(json.dumps({"op": "subscribe", "symbols": ["A"]}))
            async with asyncio.timeout(5):
                while True:
                    message = await ws.recv()
                    if isinstance(message, str):
                        break
        reply = json.loads(message)
        assert reply["type"] == "subscribed"
        assert reply["heartbeat_interval"] == 0.7
    finally:
        await exchange.stop()
