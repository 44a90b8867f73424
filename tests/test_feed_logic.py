"""Feed behaviour against a scripted in-test WebSocket server that speaks the wire protocol."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from strategylab.fault_tolerance import ErrorRecoveryManager, ErrorType
from strategylab.market._feed import Feed, FeedConfig
from strategylab.market._feed_backoff import Backoff
from strategylab.market._protocol import (
    KIND_CONTROL,
    KIND_HEARTBEAT,
    KIND_REPLAY_DONE,
    KIND_TICKS,
    ControlReply,
    Heartbeat,
    ReplayDone,
    encode_control,
    encode_frame,
    encode_heartbeat,
    encode_replay_done,
    encode_ticks,
)
from strategylab.market._store import QuarantinedTick
from strategylab.market._tick import Tick
from strategylab.testing import FakeClock

Handler = Callable[["Peer"], Awaitable[None]]


T0 = time.time_ns()
"""Exchange time of the scripted ticks: now, as the feed bounds timestamps to its clock."""


def tick(seq: int, symbol: str = "A", *, bid: float = 1.0, ask: float = 1.1, ts: int = 0) -> Tick:
    return Tick(symbol, seq, ts or T0 + seq * 1000, bid, ask, 1.0, 1.0)


def ticks_frame(ticks: list[Tick], key: bytes | None = None) -> bytes:
    return encode_frame(KIND_TICKS, encode_ticks(ticks), key)


class Peer:
    """The server side of one connection, for a test script."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def subscribe(self, key: bytes | None = None) -> dict[str, object]:
        """Answer the subscribe: JSON text, or with ``key`` a signed control frame bound to the
        feed's session (as a keyed exchange answers)."""
        raw = await self.ws.recv()
        assert isinstance(raw, str), "control messages are JSON text"
        message: dict[str, object] = json.loads(raw)
        assert message["op"] == "subscribe"
        symbols = message["symbols"]
        assert isinstance(symbols, list)
        if key is None:
            await self.ws.send(json.dumps({"type": "subscribed", "symbols": symbols}))
        else:
            reply = ControlReply("subscribed", symbols=symbols, session=str(message["session"]))
            await self.ws.send(encode_frame(KIND_CONTROL, encode_control(reply), key))
        return message

    async def control(self) -> dict[str, object]:
        raw = await self.ws.recv()
        assert isinstance(raw, str), "control messages are JSON text"
        result = json.loads(raw)
        assert isinstance(result, dict)
        return result

    async def ticks(self, seqs: range | list[int], symbol: str = "A") -> None:
        await self.ws.send(ticks_frame([tick(s, symbol) for s in seqs]))


class Sink:
    """A TickSink that records what it is given."""

    def __init__(self, stored: dict[str, int] | None = None) -> None:
        self.ticks: list[Tick] = []
        self.quarantined: list[QuarantinedTick] = []
        self.stored = stored or {}
        self.changed = asyncio.Condition()

    async def put(self, ticks: list[Tick]) -> None:
        self.ticks.extend(ticks)
        async with self.changed:
            self.changed.notify_all()

    async def quarantine(self, entries: list[QuarantinedTick]) -> None:
        self.quarantined.extend(entries)
        async with self.changed:
            self.changed.notify_all()

    async def last_seqs(self) -> dict[str, int]:
        return dict(self.stored)

    async def wait(self, predicate: Callable[[], bool], limit: float = 5.0) -> None:
        async with asyncio.timeout(limit), self.changed:
            await self.changed.wait_for(predicate)

    def seqs(self, symbol: str = "A") -> list[int]:
        return [t.seq for t in self.ticks if t.symbol == symbol]


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[str]:
    async def serve_one(ws: ServerConnection) -> None:
        await handler(Peer(ws))
        await ws.wait_closed()

    async with serve(serve_one, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@asynccontextmanager
async def running(
    url: str, sink: Sink, manager: ErrorRecoveryManager | None = None, **options: object
) -> AsyncIterator[Feed]:
    config = FeedConfig(urls=(url,), symbols=("A",), **options)  # type: ignore[arg-type]
    feed = Feed(config, sink, manager=manager, rng=random.Random(7))
    await feed.start()
    try:
        yield feed
    finally:
        await feed.stop()


async def manager_until(
    manager: ErrorRecoveryManager, predicate: Callable[[], bool], limit: float = 5.0
) -> None:
    """Wait, re-checking on every manager event, until ``predicate()`` holds."""
    changed = asyncio.Event()
    manager.add_listener(lambda _event: changed.set())
    async with asyncio.timeout(limit):
        while not predicate():
            changed.clear()
            await changed.wait()


@pytest.mark.timeout(10)
async def test_duplicates_are_dropped() -> None:
    """Ticks at or below the last delivered sequence are dropped and counted."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 6))
        await peer.ticks(range(3, 8))

    sink = Sink()
    async with scripted(script) as url, running(url, sink) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 7)
        assert sink.seqs() == list(range(1, 8))
        assert feed.statistics().duplicates == 3


@pytest.mark.timeout(10)
async def test_gap_is_replayed_and_delivered_in_order() -> None:
    """A gap holds later ticks, requests the missing range and delivers 1..N in order."""
    requests: list[dict[str, object]] = []

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 4))
        await peer.ticks(range(6, 9))
        requests.append(await peer.control())
        await peer.ticks(range(4, 6))
        await peer.ws.send(encode_frame(KIND_REPLAY_DONE, encode_replay_done(ReplayDone("A", 5))))
        await peer.ticks(range(9, 10))

    sink = Sink()
    async with scripted(script) as url, running(url, sink) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 9)
        assert sink.seqs() == list(range(1, 10))
        assert requests == [
            {"op": "replay", "symbol": "A", "from_seq": 4, "to_seq": 5, "request_id": 1}
        ]
        stats = feed.statistics()
        assert (stats.gaps, stats.replays_requested, stats.lost_ticks) == (1, 1, 0)


@pytest.mark.timeout(10)
async def test_unretained_range_is_an_explicit_counted_loss() -> None:
    """A range the exchange no longer has is quarantined as lost and reported, not skipped."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 3))
        await peer.ticks([10])
        request = await peer.control()
        error = {"type": "error", "reason": "no longer retained", "symbol": "A"}
        await peer.ws.send(json.dumps({**error, "from_seq": request["from_seq"], "to_seq": 9}))

    sink = Sink()
    manager = ErrorRecoveryManager(capture_state=False)
    async with scripted(script) as url, running(url, sink, manager) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 3)
        assert sink.seqs() == [1, 2, 10]
        assert feed.statistics().lost_ticks == 7
        assert feed.statistics().lost_ranges == 1
        [entry] = sink.quarantined
        assert (entry.symbol, entry.seq) == ("A", 3)
        assert "3..9" in entry.reason
        await manager_until(manager, lambda: bool(manager.statistics().error_type_distribution))
        assert manager.statistics().error_type_distribution[ErrorType.DATA_INGESTION_FAILURE] == 1


@pytest.mark.timeout(10)
async def test_stale_feed_reconnects_and_resumes_after_the_last_delivered() -> None:
    """With no frame for stale_after the feed reconnects and resubscribes from last + 1."""
    subscribes: list[dict[str, object]] = []
    second = asyncio.Event()

    async def script(peer: Peer) -> None:
        subscribes.append(await peer.subscribe())
        if len(subscribes) == 1:
            await peer.ticks(range(1, 4))
            return  # then silence: no ticks, no heartbeats
        second.set()
        await peer.ticks(range(4, 6))

    sink = Sink()
    manager = ErrorRecoveryManager(capture_state=False)
    async with scripted(script) as url, running(url, sink, manager, stale_after=0.3) as feed:
        async with asyncio.timeout(5):
            await second.wait()
        await sink.wait(lambda: len(sink.ticks) >= 5)
        assert sink.seqs() == [1, 2, 3, 4, 5]
        assert subscribes[1]["from_seq"] == {"A": 4}
        stats = feed.statistics()
        assert stats.stale_timeouts >= 1
        assert stats.reconnects >= 1
        await manager_until(manager, lambda: manager.statistics().successful_recoveries >= 1)
        dist = manager.statistics().error_type_distribution
        assert dist[ErrorType.WEBSOCKET_CONNECTION_DROPPED] >= 1


@pytest.mark.timeout(10)
async def test_resume_point_comes_from_the_store() -> None:
    """On connect the feed subscribes from the store's last sequence + 1."""
    got: list[dict[str, object]] = []
    done = asyncio.Event()

    async def script(peer: Peer) -> None:
        got.append(await peer.subscribe())
        done.set()

    async with scripted(script) as url, running(url, Sink(stored={"A": 41})):
        async with asyncio.timeout(5):
            await done.wait()
    assert got[0]["from_seq"] == {"A": 42}
    assert got[0]["symbols"] == ["A"]


@pytest.mark.timeout(10)
async def test_a_forged_frame_is_not_delivered_and_drops_only_its_connection() -> None:
    """A wrong-key or unsigned frame is not delivered and drops its connection (each recorded);
    the feed reconnects and ingests the genuine ticks."""
    key = b"right-key"
    forgeries = [ticks_frame([tick(2)], b"wrong-key"), ticks_frame([tick(3)])]

    async def script(peer: Peer) -> None:
        await peer.subscribe(key)
        await peer.ws.send(ticks_frame([tick(1)], key))
        if forgeries:
            await peer.ws.send(forgeries.pop(0))
        await peer.ws.send(ticks_frame([tick(2), tick(3), tick(4)], key))
        await peer.ws.wait_closed()

    sink = Sink()
    manager = ErrorRecoveryManager(capture_state=False)
    async with scripted(script) as url, running(url, sink, manager, signing_key=key) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 4)
        assert sink.seqs() == [1, 2, 3, 4]
        assert feed.statistics().signature_errors == 2
        assert feed.statistics().reconnects == 2
        await manager_until(manager, lambda: manager.statistics().total_errors >= 2)
        # Each forged frame is recorded; neither is the emergency (SECURITY_VIOLATION) path.
        assert ErrorType.SECURITY_VIOLATION not in manager.statistics().error_type_distribution


@pytest.mark.timeout(10)
async def test_invalid_ticks_are_quarantined_with_reasons_and_advance_the_sequence() -> None:
    """Crossed, non-finite and time-travelling ticks are quarantined; no replay is requested."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        frame = [
            tick(1),
            tick(2, bid=2.0, ask=1.0),
            tick(3, bid=math.nan),
            tick(4, ts=T0 + 10),
            tick(5),
        ]
        await peer.ws.send(ticks_frame(frame))

    sink = Sink()
    async with scripted(script) as url, running(url, sink) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 2 and len(sink.quarantined) >= 3)
        assert sink.seqs() == [1, 5]
        reasons = {q.seq: q.reason for q in sink.quarantined}
        assert set(reasons) == {2, 3, 4}
        assert "crossed" in reasons[2]
        assert "non-finite" in reasons[3]
        assert "backwards" in reasons[4]
        stats = feed.statistics()
        assert (stats.invalid_ticks, stats.gaps, stats.last_seq["A"]) == (3, 0, 5)


@pytest.mark.timeout(10)
async def test_garbage_input_is_counted_and_never_crashes_the_feed() -> None:
    """Random bytes, bad CRC, bad JSON and unknown frame kinds are counted; good frames pass."""

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ws.send(b"\x00garbage")
        corrupt = bytearray(ticks_frame([tick(1)]))
        corrupt[-1] ^= 0xFF
        await peer.ws.send(bytes(corrupt))
        await peer.ws.send(encode_frame(b"Z", b"\x90"))
        await peer.ws.send(encode_frame(KIND_TICKS, b"\xc1not msgpack"))
        await peer.ws.send("{not json")
        await peer.ws.send("[1, 2]")
        await peer.ws.send(json.dumps({"type": "error", "reason": "something odd"}))
        await peer.ticks(range(1, 3))

    sink = Sink()
    async with scripted(script) as url, running(url, sink) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 2)
        assert sink.seqs() == [1, 2]
        stats = feed.statistics()
        assert stats.crc_errors == 4
        assert stats.control_errors == 3
        assert stats.reconnects == 0
        assert await feed.health()


@pytest.mark.timeout(10)
async def test_heartbeat_reveals_a_gap_at_the_tail() -> None:
    """Two heartbeats ahead of the delivered position, with no progress, request the tail."""
    requests: list[dict[str, object]] = []

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks(range(1, 4))
        beat = encode_frame(KIND_HEARTBEAT, encode_heartbeat(Heartbeat(ts=1, last={"A": 5})))
        await peer.ws.send(beat)
        await peer.ws.send(beat)
        requests.append(await peer.control())
        await peer.ticks(range(4, 6))
        await peer.ws.send(encode_frame(KIND_REPLAY_DONE, encode_replay_done(ReplayDone("A", 5))))

    sink = Sink()
    async with scripted(script) as url, running(url, sink) as feed:
        await sink.wait(lambda: len(sink.ticks) >= 5)
        assert sink.seqs() == [1, 2, 3, 4, 5]
        assert requests == [
            {"op": "replay", "symbol": "A", "from_seq": 4, "to_seq": 5, "request_id": 1}
        ]
        assert feed.statistics().gaps == 1


@pytest.mark.timeout(10)
async def test_health_follows_the_connection() -> None:
    """health() is False before subscribing and after the server goes away for good."""
    release = asyncio.Event()

    async def script(peer: Peer) -> None:
        await peer.subscribe()
        await peer.ticks([1])
        await release.wait()

    sink = Sink()
    async with scripted(script) as url:
        async with running(url, sink, stale_after=5.0) as feed:
            assert not await feed.health()
            await feed.wait_healthy(5)
            assert await feed.health()
        assert not await feed.health()
        release.set()


def test_backoff_first_retry_is_immediate_then_exponential_with_capped_full_jitter() -> None:
    """Retry 1 waits 0; retry n waits uniform(0, min(floor * 2**(n-2), cap))."""
    clock = FakeClock()
    backoff = Backoff(0.1, 1.0, rng=random.Random(3), clock=clock)
    delays = []
    for _ in range(8):
        delay = backoff.next_delay()
        clock.sleep(delay)
        delays.append(delay)
    assert delays[0] == 0.0
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for delay, ceiling in zip(delays[1:], ceilings, strict=True):
        assert 0.0 <= delay <= ceiling
    assert len(set(delays[1:])) == 7  # jittered, not fixed
    assert clock.sleeps == delays
    backoff.reset()
    assert backoff.next_delay() == 0.0


def test_backoff_without_jitter_is_exact() -> None:
    """With jitter off the schedule is 0, floor, 2*floor, ... capped."""
    backoff = Backoff(0.05, 0.3, jitter=False, clock=FakeClock())
    assert [backoff.next_delay() for _ in range(6)] == [0.0, 0.05, 0.1, 0.2, 0.3, 0.3]
