"""A hostile exchange: poison ticks, oversized messages and deep JSON never harm the node."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from websockets.asyncio.server import ServerConnection, serve

from strategylab.errors import ConfigurationError
from strategylab.market._feed import FeedConfig
from strategylab.market._protocol import KIND_TICKS, encode_frame, encode_ticks
from strategylab.market._sqlite_store import SQLiteTickStore
from strategylab.market._tick import Tick
from strategylab.node._node import Node, NodeConfig

pytestmark = pytest.mark.integration

Handler = Callable[[ServerConnection], Awaitable[None]]
_CENTURY_NS = 100 * 365 * 86_400 * 10**9


@asynccontextmanager
async def ws_server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


@asynccontextmanager
async def running_node(url: str, data_dir: Path) -> AsyncIterator[Node]:
    node = Node(NodeConfig(exchange_url=url, symbols=("A",), data_dir=data_dir))
    await node.start()
    try:
        yield node
    finally:
        await node.aclose()


async def subscribed(ws: ServerConnection) -> None:
    request = json.loads(await ws.recv())
    await ws.send(json.dumps({"type": "subscribed", "symbols": request["symbols"], "last": {}}))


def genuine(seq: int, now_ns: int) -> Tick:
    return Tick("A", seq, now_ns + seq, 10.0, 10.5, 100.0, 100.0)


def poisoned_stream(now_ns: int) -> tuple[list[Tick], set[int], set[int]]:
    """Genuine ticks with one hostile tick of every kind in between: (ticks, good, bad seqs)."""
    hostile: dict[int, dict[str, object]] = {
        2: {"ts": now_ns + _CENTURY_NS},
        4: {"ts": 0},
        5: {"ts": -(2**63)},
        6: {"ts": 2**63},
        7: {"ts": 2**64 - 1},
        8: {"bid": math.nan},
        9: {"ask": math.inf},
        10: {"bid_size": -1.0},
        11: {"bid": 1e300, "ask": 1e300},
        12: {"ask_size": 1e300},
        13: {"ts": now_ns - _CENTURY_NS},
    }
    ticks = []
    for seq in range(1, 31):
        fields = {
            "symbol": "A",
            "seq": seq,
            "ts": now_ns + seq,
            "bid": 10.0,
            "ask": 10.5,
            "bid_size": 100.0,
            "ask_size": 100.0,
        }
        fields.update(hostile.get(seq, {}))
        ticks.append(Tick(**fields))  # type: ignore[arg-type]
    # Sequence numbers no store column holds: refused without moving the position.
    ticks[20:20] = [Tick("A", 2**63, now_ns, 10.0, 10.5, 1.0, 1.0)]
    ticks[25:25] = [Tick("A", 2**64 - 1, now_ns, 10.0, 10.5, 1.0, 1.0)]
    good = set(range(1, 31)) - set(hostile)
    return ticks, good, set(hostile)


@pytest.mark.timeout(30)
async def test_hostile_ticks_are_quarantined_and_never_poison_the_stream_or_store(
    tmp_path: Path,
) -> None:
    """Far-future, zero, int64-edge, non-finite, negative and huge ticks are quarantined with
    a reason; every genuine tick after them is stored, and the store survives a restart."""
    now_ns = time.time_ns()
    ticks, good, bad = poisoned_stream(now_ns)

    async def handler(ws: ServerConnection) -> None:
        await subscribed(ws)
        for start in range(0, len(ticks), 4):  # several frames, hostile ticks among them
            await ws.send(encode_frame(KIND_TICKS, encode_ticks(ticks[start : start + 4])))
        await ws.wait_closed()

    data_dir = tmp_path / "node"
    async with ws_server(handler) as url:
        async with running_node(url, data_dir) as node:
            await node.wait_caught_up({"A": 30}, timeout=15)
            stored = await node.store.read("A")
            quarantined = await node.store.quarantined()
            stats = node.feed.statistics()
        assert [t.seq for t in stored] == sorted(good)
        assert all(t == genuine(t.seq, now_ns) for t in stored)
        reasons = {q.seq: q.reason for q in quarantined if q.seq is not None}
        assert set(reasons) == bad
        assert "backwards" not in " ".join(reasons.values())
        assert "timestamp" in reasons[2]
        assert "max_price" in reasons[11]
        assert "max_size" in reasons[12]
        out_of_range = [q for q in quarantined if q.seq is None]
        assert len(out_of_range) == 2
        assert all("outside 1..2**63-1" in q.reason for q in out_of_range)
        assert stats.invalid_ticks >= len(bad) + 2  # a reload by the manager resends some
        assert stats.last_seq["A"] == 30
        # The spool drained and nothing in the store is unreadable: a restart reopens it.
        async with running_node(url, data_dir) as node:
            await node.feed.wait_healthy(10)
            assert [t.seq for t in await node.store.read("A")] == sorted(good)
    store = SQLiteTickStore(data_dir / "ticks.db")
    await store.open()
    try:
        assert (await store.last_seqs())["A"] == max(good)
    finally:
        await store.aclose()


def _huge_frame_header(length: int) -> bytes:
    """An unmasked, final, binary frame header declaring ``length`` payload bytes."""
    return bytes((0x82, 127)) + struct.pack(">Q", length)


@pytest.mark.timeout(60)
async def test_a_huge_declared_message_is_refused_at_the_header_with_bounded_memory(
    tmp_path: Path,
) -> None:
    """A server declaring a 2**40-byte message and streaming data into it is cut off at the
    header on every connection: the node's RSS stays bounded and it keeps reconnecting."""
    connections = 0
    streamed = 0
    budget = 256 * 1024 * 1024
    chunk = b"\0" * (1024 * 1024)

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections, streamed
        connections += 1
        await subscribed(ws)
        transport = ws.transport
        transport.write(_huge_frame_header(2**40))
        while streamed < budget and not transport.is_closing():
            if transport.get_write_buffer_size() > 4 * len(chunk):
                await asyncio.sleep(0.001)  # the peer reads at its own pace; bound our buffer
                continue
            transport.write(chunk)
            streamed += len(chunk)
        await ws.wait_closed()

    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    peak = before
    async with ws_server(handler) as url, running_node(url, tmp_path / "node") as node:
        async with asyncio.timeout(30):
            while connections < 3:
                peak = max(peak, process.memory_info().rss)
                await asyncio.sleep(0.01)
        stats = node.feed.statistics()
    assert stats.reconnects >= 2
    assert streamed < budget, "the node read a declared 1 TiB message instead of refusing it"
    assert peak - before < 64 * 1024 * 1024


@pytest.mark.timeout(20)
async def test_oversized_and_deeply_nested_control_messages_are_refused_before_parsing(
    tmp_path: Path,
) -> None:
    """A control message too long, too deep or with a huge number is counted and dropped; the
    ticks after it are stored."""
    now_ns = time.time_ns()

    async def handler(ws: ServerConnection) -> None:
        await subscribed(ws)
        await ws.send("[" * 1000 + "]" * 1000)
        await ws.send(json.dumps({"type": "error", "reason": "x" * 200_000}))
        await ws.send('{"type": "error", "symbol": "A", "from_seq": 1' + "0" * 5000 + "}")
        await ws.send(encode_frame(KIND_TICKS, encode_ticks([genuine(1, now_ns)])))
        await ws.wait_closed()

    async with ws_server(handler) as url, running_node(url, tmp_path / "node") as node:
        await node.wait_caught_up({"A": 1}, timeout=10)
        stats = node.feed.statistics()
        assert stats.control_errors >= 3  # the manager's reload may resend them
        assert stats.connected
        assert stats.lost_ticks == 0
        assert [t.seq for t in await node.store.read("A")] == [1]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_future", -1.0),
        ("max_past", math.inf),
        ("max_price", 0.0),
        ("max_size", math.nan),
        ("max_message_bytes", 10),
        ("max_queue", 0),
        ("max_control_bytes", True),
        ("max_control_depth", 1),
        ("max_control_digits", 5),
    ],
)
def test_feed_config_refuses_a_bad_bound_naming_it(key: str, value: object) -> None:
    """Every input bound is validated and a bad one is named in the error."""
    with pytest.raises(ConfigurationError, match=f"^{key}="):
        FeedConfig(urls=("ws://h/ws",), symbols=("A",), **{key: value})  # type: ignore[arg-type]
